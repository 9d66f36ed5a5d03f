"""Hydra glue: where the configs live, the resolvers they use, and composing them outside ``@hydra.main``."""

from __future__ import annotations

import threading
from pathlib import Path

from omegaconf import OmegaConf

from adafocus_pl import plan

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# the paper's full-size network (MobileNetV2 + ResNet-50, 224x224 frames, 16 per video, 200 classes): the default
# of the tools that build one without a training run (bench, convert)
PAPER_NETWORK = ("data=activitynet", "model=adafocus")


def project_root() -> Path:
    """The checkout that holds ``conf/`` (src layout: ``<root>/src/adafocus_pl``), else the working directory."""
    candidate = PACKAGE_DIR.parents[1]
    return candidate if (candidate / "conf" / "train.yaml").is_file() else Path.cwd()


def config_dir() -> str:
    """Absolute path of the top-level ``conf/`` directory, with a clear error when it cannot be found."""
    conf = project_root() / "conf"
    if not (conf / "train.yaml").is_file():
        raise FileNotFoundError(
            f"cannot find adafocus-pl's Hydra configs (looked for {conf}/train.yaml). Install the project "
            "editable from its checkout (`make install`, i.e. `pip install -e .`), or pass "
            "`--config-dir /path/to/adafocus-pl/conf`."
        )
    return str(conf)


def register_resolvers() -> None:
    """Resolvers used by conf/ (idempotent): the run layout's (:func:`adafocus_pl.plan.register_resolvers`) and
    these."""
    plan.register_resolvers()
    if not OmegaConf.has_resolver("adafocus.project_root"):
        OmegaConf.register_new_resolver("adafocus.project_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("adafocus.when"):  # ${adafocus.when:COND,VALUE}: VALUE if COND is truthy, else null
        OmegaConf.register_new_resolver("adafocus.when", lambda condition, value: value if condition else None)
    if not OmegaConf.has_resolver("adafocus.role"):  # ${adafocus.role:PATCH_POLICY}: method | baseline
        OmegaConf.register_new_resolver("adafocus.role", lambda policy: plan.run_role(str(policy)))
    if not OmegaConf.has_resolver("adafocus.job_type"):  # ${adafocus.job_type:STAGE_ID,ROLE}: stage<id> | baseline
        OmegaConf.register_new_resolver("adafocus.job_type", lambda stage_id, role: plan.job_type(stage_id, role))


_COMPOSING = threading.Lock()  # Hydra's GlobalHydra is one per process: one composition at a time


def compose(config_name: str = "train", overrides: list[str] | None = None, return_hydra_config: bool = False):
    """Compose a config from ``conf/`` without running a Hydra app (tests, notebooks, the pipeline); safe to call
    from several threads."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    with _COMPOSING:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return hydra_compose(config_name, overrides=list(overrides or []),
                                 return_hydra_config=return_hydra_config)


register_resolvers()
