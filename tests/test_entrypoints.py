"""The commands a user types work from any directory: the configs are found through the installed package, not the
working directory, and a training run started elsewhere logs (W&B offline) without asking for anything."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_help_lists_the_config_groups(tmp_path):
    out = run(["-m", "adafocus_pl.train", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    for group in ("data:", "model:", "stage:", "schedule:", "trainer:", "logger:", "experiment:", "debug:"):
        assert group in out.stdout


def test_train_cfg_job_composes_from_another_directory(tmp_path):
    out = run(["-m", "adafocus_pl.train", "--cfg", "job", "--resolve", "experiment=activitynet", "stage=stage2",
               "model.patch_size=96", "paths.log_dir=/logs"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "_target_: adafocus_pl.stages.policy.PolicyStage" in out.stdout
    assert "init_from: /logs/activitynet/stage1/p96/seed0/checkpoints/last.ckpt" in out.stdout
    assert "num_classes: 200" in out.stdout and "monitor: val/mAP" in out.stdout


@pytest.mark.parametrize("module", ["adafocus_pl.data.synthetic", "adafocus_pl.data.extract_frames",
                                    "adafocus_pl.data.benchmark", "adafocus_pl.bench", "adafocus_pl.predict",
                                    "adafocus_pl.convert"])
def test_tool_help(module, tmp_path):
    out = run(["-m", module, "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


def test_a_real_training_run_through_the_entry_point(tiny_synthetic, tmp_path):
    from tests.conftest import tiny_overrides

    overrides = [o for o in tiny_overrides(tiny_synthetic, tmp_path / "logs") if not o.startswith("paths.output_dir")]
    out = run(["-m", "adafocus_pl.train", *overrides, "logger=default"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "logs" / "synthetic" / "stage1" / "p32" / "seed0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "metrics.json").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B must log offline without asking for a key"
    for notice in ("set_vital", "LeafSpec", "torch.jit.script", "litlogger", "in eval mode at the start"):
        assert notice not in out.stdout + out.stderr, notice  # third-party notices are silenced
