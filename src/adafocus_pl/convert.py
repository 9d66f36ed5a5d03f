"""Convert a checkpoint of the authors' release into a stage checkpoint: ``python -m adafocus_pl.convert
RELEASE_CKPT OUT.ckpt [--stage auto|1|2|3] [--force] [--trust-pickle] [--traceback] [train overrides...]``.

The network is built from the train config, by default the paper's (``data=activitynet model=adafocus``: 200
classes, P=128, MobileNetV2 + ResNet-50), with the release's nearest-neighbour glance resize
(``model.glance_resize=nearest``, used only with ``model.glance_size``); overrides change it, e.g.
``data=fcvid model.patch_size=160`` (an ``experiment=`` replaces these defaults). Every tensor of the release file is mapped onto it
(:mod:`adafocus_pl.release`) and loaded strictly: a tensor of another shape, one missing, or one with no place in
the network stops the conversion, naming it. The release file does not record its patch size: P comes from
``model.patch_size``.

A file whose ``policy`` entry is None (a random-patch run) becomes a Stage I checkpoint (patch policy "random"),
one with a policy a Stage III checkpoint (the learned policy); ``--stage 2`` records the latter as Stage II, the
checkpoint a ``stage=stage3 init_from=OUT`` run starts from. OUT works with ``python -m adafocus_pl.eval
ckpt_path=OUT``, ``python -m adafocus_pl.predict VIDEO ckpt_path=OUT`` and ``init_from=OUT`` (give the same
``data=`` there); it cannot be resumed (no training state). The report (mapped, dropped and missing tensors) is
printed and written to ``OUT.json``; an existing OUT is replaced only with ``--force``.

The file is read weights-only (tensors, plain containers, numpy scalars): one that needs other Python objects is
refused, naming them; ``--trust-pickle`` unpickles it anyway (this can run code: only for files you trust).
Exit status: 0 converted, 2 refused (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from adafocus_pl.utils.config import PAPER_NETWORK, compose, config_dir

# the release's own choices where they are options here: its schedule, its glance resize
DEFAULT_OVERRIDES = [*PAPER_NETWORK, "schedule=paper", "model.glance_resize=nearest"]
EXIT_USER_ERROR = 2
_STAGE_PATCH_POLICY = {1: "random", 2: "learned", 3: "learned"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adafocus_pl.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", metavar="RELEASE_CKPT", help="the release's checkpoint (e.g. model_best.pth.tar)")
    p.add_argument("out", metavar="OUT.ckpt", help="the stage checkpoint to write (its report: OUT.json)")
    p.add_argument("--stage", choices=("auto", "1", "2", "3"), default="auto",
                   help="the stage to record (auto: 1 for a file without policy, else 3)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle a file that holds Python objects beyond plain data (can run code)")
    p.add_argument("--traceback", action="store_true", help="show the Python traceback of an error")
    p.add_argument("overrides", nargs="*", help="train config overrides (default: data=activitynet model=adafocus)")
    return p


def data_configs_with(num_classes: int) -> list[str]:
    """The ``data=`` options whose ``num_classes`` is ``num_classes``."""
    import yaml

    found = []
    for path in sorted(Path(config_dir(), "data").glob("*.yaml")):
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if settings.get("num_classes") == num_classes:
            found.append(f"data={path.stem}")
    return found


def _check_overrides(overrides: list[str]) -> None:
    from adafocus_pl.release import ReleaseError

    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key == "stage" or key.startswith("stage."):
            raise ReleaseError(f"{override}: the stage a converted checkpoint records is chosen by --stage "
                               f"(auto, 1, 2 or 3)")
        if key == "plus" or key == "model.skip_policy" or key.startswith("plus."):
            raise ReleaseError(f"{override}: the release has no AdaFocus+ (no skip policy pi'); its networks "
                               f"convert with plus=off")


def convert(release_path: str | Path, out: str | Path, overrides: list[str] | tuple[str, ...] = (),
            stage: str = "auto", force: bool = False, trust_pickle: bool = False) -> dict[str, Any]:
    """Convert ``release_path`` into the stage checkpoint ``out`` and its report ``out.json``; returns the report.
    Raises :class:`~adafocus_pl.release.ReleaseError` (nothing written but, for a network that does not fit, the
    report) for anything a user has to fix."""
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from adafocus_pl.models.build import architecture_of
    from adafocus_pl.predict import one_line
    from adafocus_pl.release import (
        CLASSIFIER_WEIGHT,
        ReleaseError,
        read_release,
        release_num_classes,
        report_path,
        summary_lines,
        write_converted,
    )

    release_path, out, overrides = Path(release_path), Path(out), list(overrides)
    if out.is_dir():
        raise ReleaseError(f"OUT={out} is a directory: give the file to write, e.g. {out}/adafocus.ckpt")
    if out.exists() and not force:
        raise ReleaseError(f"OUT={out} exists: give another file, or --force to replace it")
    _check_overrides(overrides)
    release = read_release(release_path, trust_pickle=trust_pickle)
    notes = []
    if stage == "auto":
        stage_id = 1 if release.has_policy is False else 3
        if release.has_policy is None:
            notes.append(f"{release_path} does not say whether its policy was trained (no 'policy' entry): "
                         f"converted as Stage III (the learned policy); --stage 1 converts it as a random-patch "
                         f"run (Stage I)")
    else:
        stage_id = int(stage)
        if release.has_policy is False and stage_id != 1:
            raise ReleaseError(f"--stage {stage_id}: {release_path} is a random-patch run (its 'policy' entry is "
                               f"None: pi was never trained): it converts as Stage I (--stage auto or 1)")
    # an experiment= picks its own data, model and schedule: the defaults would override them
    defaults = [] if any(o.startswith("experiment=") for o in overrides) else DEFAULT_OVERRIDES
    try:
        cfg = compose("train", defaults + overrides + [f"stage=stage{stage_id}", "plus=off"],
                      return_hydra_config=True)
        model = OmegaConf.to_container(cfg.model, resolve=True)
        data_choice, model_choice = (cfg.hydra.runtime.choices.get(group) for group in ("data", "model"))
    except (HydraException, OmegaConfBaseException) as err:
        raise ReleaseError(one_line(err)) from err
    if architecture_of(model) != "adafocus":
        raise ReleaseError(f"model.architecture={architecture_of(model)}: the release's ActivityNet/FCVID/"
                           f"Mini-Kinetics checkpoints hold AdaFocus networks: convert with model=adafocus")
    classes = release_num_classes(release.state)
    if classes is not None and classes != model["num_classes"]:
        fits, shape = data_configs_with(classes), list(release.state[CLASSIFIER_WEIGHT].shape)
        raise ReleaseError(
            f"{release_path} has {classes} classes ({CLASSIFIER_WEIGHT} is {shape}) but model.num_classes={model['num_classes']} (data={data_choice}): convert with "
            f"{' or '.join(fits) if fits else f'data.num_classes={classes}'}")

    module = instantiate(cfg.stage.module, _recursive_=False, _convert_="all")
    report = {"release": str(release_path), "out": str(out), "stage": stage_id,
              "patch_policy": _STAGE_PATCH_POLICY[stage_id], "overrides": defaults + overrides, "model": model}
    where = f"model={model_choice}, data={data_choice}"
    plan, report = write_converted(release, release_path, module, out, report, where)

    for d in plan.copy_differs:
        notes.append(f"warning: {d['release']} differs from its policy_old twin (max |diff| {d['max_abs_diff']}): "
                     f"policy_old, the copy the release acts with, was converted")
    # what eval / predict need besides the checkpoint (the data), and what a training run also needs (the model)
    data = " ".join([f"data={data_choice}"] + [o for o in overrides if o.startswith("data.")])
    network = " ".join([f"model={model_choice}"] + [o for o in overrides if o.startswith("model.")])
    print(f"[convert] {release_path}: {release.layout}"
          f"{' (module. prefix stripped)' if release.stripped_prefix else ''}, epoch {release.epoch}, "
          f"best_acc {release.best_acc}")
    for line in summary_lines(plan):
        print(f"[convert] {line}")
    print(f"[convert] wrote {out} (Stage {_roman(stage_id)}, patch policy {report['patch_policy']}; "
          f"{model['num_classes']} classes, P={model['patch_size']} from model.patch_size, which a release file does "
          f"not record) and {report_path(out)}")
    for note in notes:
        print(f"[convert] {note}")
    print(f"[convert] use it: python -m adafocus_pl.eval ckpt_path={out} {data}")
    print(f"[convert]         python -m adafocus_pl.predict VIDEO ckpt_path={out} {data}")
    follows = {1: "stage=stage2 (or a fixed-policy stage=stage3)", 2: "stage=stage3"}.get(stage_id)
    if follows:
        print(f"[convert]         python -m adafocus_pl.train {data} {network} {follows} init_from={out}")
    return report


def _roman(stage: int) -> str:
    return {1: "I", 2: "II", 3: "III"}[stage]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line: returns the report; ``SystemExit(2)`` with one line on stderr when refused."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from adafocus_pl.checkpoint import CheckpointError
    from adafocus_pl.predict import one_line
    from adafocus_pl.release import ReleaseError

    args = parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return convert(args.release, args.out, args.overrides, stage=args.stage, force=args.force,
                       trust_pickle=args.trust_pickle)
    except (ReleaseError, CheckpointError, OSError, HydraException, OmegaConfBaseException) as err:
        if args.traceback:
            traceback.print_exception(err)
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


if __name__ == "__main__":
    main()
