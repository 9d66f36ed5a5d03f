"""adafocus_pl.report on hand-made run directories: tables, GFLOPs from each run's own config, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adafocus_pl.evaluation.flops import gflops_per_video, model_component_gflops
from adafocus_pl.evaluation.report import collect_runs, write_report
from adafocus_pl.utils.config import compose


def fake_run(log_dir: Path, metrics: dict, *overrides: str) -> Path:
    cfg = compose("train", [f"paths.log_dir={log_dir}", *overrides])
    directory = Path(cfg.paths.run_dir)
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


@pytest.fixture
def runs(tmp_path):
    for p in (24, 32):
        for seed, top1 in ((0, 0.5), (1, 0.7)):
            fake_run(tmp_path, {"test/top1": top1 + p / 1000, "test/mAP": 0.6}, "stage=stage3",
                     f"model.patch_size={p}", f"seed={seed}")
            fake_run(tmp_path, {"test/top1": 0.4, "test/mAP": 0.5, "test/keep_fraction": 0.5}, "stage=stage3",
                     "plus=on", f"model.patch_size={p}", f"seed={seed}")
        fake_run(tmp_path, {"test/top1": 0.2}, "stage=stage1", f"model.patch_size={p}")
    fake_run(tmp_path, {"test/top1": 0.1}, "stage=stage3", "stage.name=stage3_none",
             "stage.module.patch_policy=none")
    return tmp_path / "synthetic"


def test_the_report_lists_every_patch_size_and_family_with_means_over_seeds(runs):
    out = write_report(runs)
    report = json.loads((out / "report.json").read_text())
    summary = {(r["patch_size"], r["family"]): r for r in report["summary"]}
    assert set(summary) == {(24, "AdaFocus"), (24, "AdaFocus+"), (32, "AdaFocus"), (32, "AdaFocus+"),
                            (32, "glance only")}
    assert summary[(24, "AdaFocus")]["mean"] == pytest.approx(0.624) and summary[(24, "AdaFocus")]["seeds"] == 2
    assert summary[(32, "AdaFocus")]["mean"] == pytest.approx(0.632)
    text = (out / "report.md").read_text()
    assert "| synthetic | 24 | 62.4 ± 14.1 (n=2) |" in text
    assert len(report["runs"]) == 11
    assert (out / "accuracy_vs_gflops.png").stat().st_size > 1000


def test_baselines_are_their_own_rows_not_a_column_beside_adafocus(runs):
    out = write_report(runs)
    text = (out / "report.md").read_text()
    final, baselines = text.split("## Final models")[1].split("## Baselines")[:2]
    assert "glance only" not in final and "AdaFocus+ top1" in final  # the side-by-side table is the two variants'
    assert "| synthetic | 32 | glance only | 1 | 10.0 |" in baselines
    roles = {r["stage"]: r["role"] for r in json.loads((out / "report.json").read_text())["runs"]}
    assert roles == {"stage1": "method", "stage3": "method", "stage3_plus": "method", "stage3_none": "baseline"}


def test_gflops_come_from_each_runs_config_and_adafocus_plus_counts_the_kept_frames(runs):
    by = {(r["stage"], r["patch_size"]): r for r in collect_runs(runs)}
    cfg = compose("train", ["model.patch_size=24"])
    parts = model_component_gflops(OmegaConf.to_container(cfg.model, resolve=True), (96, 96))
    plain = {k: v for k, v in parts.items() if k != "skip_policy"}
    assert by[("stage3", 24)]["gflops_per_video"] == pytest.approx(gflops_per_video(plain, 8))
    plus_cfg = compose("train", ["model.patch_size=24", "plus=on"])
    plus_parts = model_component_gflops(OmegaConf.to_container(plus_cfg.model, resolve=True), (96, 96))
    assert by[("stage3_plus", 24)]["gflops_per_video"] == pytest.approx(
        gflops_per_video(plus_parts, 8, keep_fraction=0.5))
    assert by[("stage3_none", 32)]["gflops_per_video"] == pytest.approx(
        gflops_per_video(model_component_gflops(OmegaConf.to_container(compose("train").model, resolve=True),
                                                (96, 96)), 8, use_local=False))
    assert by[("stage3_plus", 24)]["gflops_per_video"] < by[("stage3", 24)]["gflops_per_video"]


def test_broken_and_replaced_runs_are_skipped(runs, caplog):
    broken = runs / "stage3" / "p48" / "seed0"
    (broken / ".hydra").mkdir(parents=True)
    (broken / ".hydra" / "config.yaml").write_text("stage: [unclosed")
    (broken / "metrics.json").write_text("{}")
    moved = runs / "_replaced" / "stage3" / "p24" / "seed0-20260101"
    (moved / ".hydra").mkdir(parents=True)
    (moved / ".hydra" / "config.yaml").write_text((runs / "stage3/p24/seed0/.hydra/config.yaml").read_text())
    (moved / "metrics.json").write_text(json.dumps({"test/top1": 0.99}))
    found = collect_runs(runs)
    assert len(found) == 11 and all("/_replaced/" not in r["run_dir"] for r in found)
    assert "skipping" in caplog.text and "p48" in caplog.text


def test_clear_errors_for_a_missing_directory_and_one_without_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        collect_runs(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no finished run.*make sweep"):
        collect_runs(tmp_path)
    done = subprocess.run([sys.executable, "-m", "adafocus_pl.report", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and "no finished run" in done.stderr and "Traceback" not in done.stderr


def test_the_command_line_writes_the_report(runs, tmp_path):
    out = tmp_path / "elsewhere"
    done = subprocess.run([sys.executable, "-m", "adafocus_pl.report", str(runs), "--out", str(out), "--metric", "mAP"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "AdaFocus+ mAP (%)" in (out / "report.md").read_text()


def test_make_trains_early_exit_rows_are_one_line_per_family_whatever_budget_each_seed_chose():
    from adafocus_pl.evaluation.report import pipeline_markdown

    def table(seed, budget, top1):
        return {"patch_size": 32, "seed": seed, "rows": [
            {"method": "AdaFocus (learned policy)", "family": "AdaFocus", "top1": 0.99, "gflops_per_video": 0.04,
             "keep_fraction": 1.0},
            {"method": f"AdaFocus early exit (budget {100 * budget:g}%)", "family": "AdaFocus early exit",
             "budget": budget, "top1": top1, "gflops_per_video": budget * 0.04, "keep_fraction": budget}]}

    lines = pipeline_markdown([table(0, 0.3, 0.98), table(1, 0.4, 0.96)], "top1").splitlines()
    assert len(lines) == 4
    assert lines[3] == "| 32 | AdaFocus early exit (budget 30%, 40%) | 0, 1 | 97.0 ± 1.4 | 0.014 | 35.0 |"
