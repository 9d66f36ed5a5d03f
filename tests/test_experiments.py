"""Every experiment config (conf/experiment/*.yaml, discovered) composes and runs a Lightning fast-dev step of
Stage I with its real architecture and data format, on a tiny dataset written here in that format."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adafocus_pl.data.synthetic import SyntheticSpec, generate
from adafocus_pl.stages.runner import run_stage
from adafocus_pl.utils.config import compose, config_dir
from tests.helpers_video import write_frame_folder

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))


def tiny_dataset(root: Path, cfg) -> list[str]:
    """Two videos per split in the experiment's list format and frame template; returns the data overrides."""
    if cfg.data.kind != "frames":  # the synthetic experiments generate their own data
        if cfg.data.name == "synthetic":
            return []  # tests/conftest.py's tiny_synthetic
        spec = {k: v for k, v in OmegaConf.to_container(cfg.data.synthetic, resolve=True).items()}
        generate(root, SyntheticSpec(**spec, num_train=4, num_val=2, num_test=2), workers=1, progress=False)
        return [f"data.root={root}", "data.synthetic=null"]
    lines = []
    for k in range(2):
        folder = write_frame_folder(root / f"video{k}", 6, height=96, width=128, template=cfg.data.frame_template,
                                    first_index=cfg.data.get("first_index", 1))
        path = folder.name
        lines.append(f"{path},6,{k}" if cfg.data.list_format == "comma" else f"{path} 6 {k}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return [f"data.root={root}", f"data.train_list={root}/list.txt", f"data.val_list={root}/list.txt",
            f"data.test_list={root}/list.txt", "data.classes_file=null"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_runs_a_fast_dev_step(experiment, tmp_path, tiny_synthetic):
    small = ["data.num_segments=2", "data.batch_size=1", "data.num_workers=0", "data.eval_resize=96",
             "data.eval_crop=96", "model.patch_size=64", f"paths.log_dir={tmp_path / 'logs'}",
             "paths.output_dir=${paths.run_dir}", "trainer=cpu", "logger=none", "debug=fdr", "callbacks=none",
             "init_from=null"]  # Stage I on its own (the synthetic schedule starts it from Stage 0)
    cfg = compose("train", [f"experiment={experiment}", *small])
    data = tiny_dataset(tmp_path / "data", cfg) or [f"data.root={tiny_synthetic}", "data.synthetic=null"]
    cfg = compose("train", [f"experiment={experiment}", *small, *data])
    assert cfg.experiment_name == experiment
    metrics = run_stage(cfg)
    assert {"val/top1", "val/mAP", "test/top1"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    if not experiment.startswith("synthetic"):  # the paper's backbones, untrained (nothing downloaded)
        assert (cfg.model.glance_backbone, cfg.model.local_backbone) == ("mobilenet_v2", "resnet50")
