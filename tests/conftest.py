"""Shared fixtures: a tiny synthetic dataset made once per session, and composed configs that train on it fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# one compute thread per test process and per process it starts (set before torch is first imported): the tests'
# networks are tiny, and `make test` runs two workers on two cores, where more threads only contend for them
os.environ.setdefault("OMP_NUM_THREADS", "1")

# `make test` hands whole files to two workers in collection order (--dist loadfile --no-loadscope-reorder). The
# files that train chains of stages go first, longest first, so that the two workers finish together instead of one
# waiting while the other runs a long file it picked up last. A new long file belongs in this list.
LONG_FILES_FIRST = ("test_sweep.py", "test_ddp.py", "test_pipeline.py", "test_resume_killed.py", "test_models_tsm.py",
                    "test_report.py", "test_entrypoints.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every other file keeps its place


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A 24/8/8-video synthetic benchmark (same generator as the default, fewer videos)."""
    from adafocus_pl.data.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, SyntheticSpec(num_train=24, num_val=8, num_test=8), workers=1)
    return out


def tiny_overrides(data_root: Path, log_dir: Path) -> list[str]:
    """Overrides that make every stage a seconds-long run on the tiny data, with CSV logging only."""
    return [
        f"data.root={data_root}", "data.synthetic=null", "data.batch_size=4", "data.num_workers=0",
        f"paths.log_dir={log_dir}", "paths.output_dir=${paths.run_dir}",
        "trainer=cpu", "logger=csv", "callbacks.progress_bar=null", "debug=limit",
        "model.policy_hidden=32", "model.classifier_hidden=32",
        "schedule.stage0.epochs=0",  # the paper's three stages; tests that want the release's Stage 0 turn it on
    ]


@pytest.fixture
def compose_tiny(tiny_synthetic, tmp_path):
    """``compose_tiny(*overrides)`` → a train config on the tiny data, logging under this test's tmp dir."""
    from adafocus_pl.utils.config import compose

    def _compose(*overrides: str):
        return compose("train", tiny_overrides(tiny_synthetic, tmp_path / "logs") + list(overrides))

    return _compose


@pytest.fixture(scope="session")
def plus_chain(tiny_synthetic, tmp_path_factory):
    """Stage I -> II+ -> III+ on the tiny data: ``({"stage1"|"stage2_plus"|"stage3_plus": run dir}, make)`` where
    ``make(*overrides, config="train")`` composes a config logging beside those runs."""
    from adafocus_pl.stages.runner import run_stage
    from adafocus_pl.utils.config import compose

    logs = tmp_path_factory.mktemp("plus_logs")

    def make(*overrides, config="train"):
        return compose(config, tiny_overrides(tiny_synthetic, logs) + list(overrides))

    dirs = {}
    for name, overrides in (("stage1", ["stage=stage1"]), ("stage2_plus", ["stage=stage2", "plus=on"]),
                            ("stage3_plus", ["stage=stage3", "plus=on"])):
        cfg = make(*overrides)
        run_stage(cfg)
        dirs[name] = Path(cfg.paths.output_dir)
    return dirs, make
