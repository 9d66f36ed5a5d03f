"""`make sweep`'s machinery on tiny data: a 2-point patch-size sweep of AdaFocus and AdaFocus+ runs every stage,
the report lists both, a re-run does nothing twice, and W&B runs carry project/group/job type/tags (a SIGKILLed
stage's resume: tests/test_resume_killed.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adafocus_pl.utils.wandb_offline import read_offline_run
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("stage1", "stage2", "stage3", "stage2_plus", "stage3_plus")


def sweep(overrides: list[str]) -> str:
    cmd = [sys.executable, "-m", "adafocus_pl.sweep", "-m", *overrides]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def tiny_sweep(tiny_synthetic, tmp_path_factory):
    logs = tmp_path_factory.mktemp("sweep_logs")
    overrides = tiny_overrides(tiny_synthetic, logs) + ["logger=default", "model.patch_size=24,32", "plus=off,on",
                                                        "baselines=false"]  # tests/test_chain.py covers them
    return logs / "synthetic", overrides, sweep(overrides)


def test_a_two_point_sweep_runs_every_stage_and_the_report_lists_both(tiny_sweep):
    experiment, _, out = tiny_sweep
    for stage in STAGES:
        for p in (24, 32):
            metrics = json.loads((experiment / stage / f"p{p}" / "seed0" / "metrics.json").read_text())
            assert 0.0 <= metrics["test/top1"] <= 1.0, (stage, p)
    assert out.count("$ ") == 10  # Stage I once per patch size, shared by AdaFocus and AdaFocus+
    # each sweep point keeps its Hydra job directory (config + log), a pure function of the overrides
    for p in (24, 32):
        for variant in ("adafocus", "adafocus_plus"):
            assert (experiment / "sweep" / f"p{p}" / "seed0" / variant / ".hydra" / "overrides.yaml").is_file()
    report = (experiment / "report" / "report.md").read_text()
    assert "AdaFocus+" in report and "AdaFocus" in report
    for p in ("24", "32"):
        assert any(f"| {p} " in line or f"P={p}" in line for line in report.splitlines()), p
    assert (experiment / "report" / "accuracy_vs_gflops.png").stat().st_size > 1000


def test_rerunning_the_sweep_runs_no_stage_twice(tiny_sweep):
    _, overrides, _ = tiny_sweep
    out = sweep(overrides)
    assert "$ " not in out  # no training process started
    assert out.count("done before, skipping") == 12


def test_wandb_runs_carry_project_group_job_type_tags_and_metrics(tiny_sweep):
    experiment, _, _ = tiny_sweep
    runs = list((experiment / "stage3_plus" / "p24" / "seed0" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run["project"] == "adafocus-pl-synthetic"
    assert run["group"] == "synthetic/p24/seed0/adafocus_plus" and run["job_type"] == "stage3"
    assert {"adafocus_plus", "p24", "stage3"} <= set(run["tags"])
    assert run["config"]["model"]["patch_size"] == 24  # the full composed config is logged
    metrics = json.loads((experiment / "stage3_plus" / "p24" / "seed0" / "metrics.json").read_text())
    assert run["summary"]["test/top1"] == pytest.approx(metrics["test/top1"])
    assert any("train/loss" in row for row in run["history"])
    plain = read_offline_run(next((experiment / "stage1" / "p32" / "seed0" / "wandb").glob("offline-run-*")))
    assert plain["group"] == "synthetic/p32/seed0/adafocus" and "adafocus" in plain["tags"]
