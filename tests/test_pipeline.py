"""`make train`'s pipeline on tiny data: every stage, baseline and AdaFocus+ run, the results table and figures are
written, re-runs skip finished stages, and the walk-through notebook runs on the result."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from adafocus_pl import pipeline
from tests.conftest import tiny_overrides

METHODS = ["AdaFocus (learned policy)", "AdaFocus early exit", "glance only", "random patches", "centre patches",
           "Gaussian patches", "AdaFocus+ network, f_L on every frame", "AdaFocus+ (eta=0.9)", "AdaFocus+ (eta=0.7)",
           "AdaFocus+ (eta=0.5)", "AdaFocus+ (eta=0.5) early exit"]  # early exit: the family (the budget varies)
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


@pytest.fixture(scope="module")
def pipeline_run(tiny_synthetic, tmp_path_factory):
    logs = tmp_path_factory.mktemp("pipeline_logs")
    overrides = tiny_overrides(tiny_synthetic, logs) + ["schedule.stage0.epochs=1"]  # the synthetic default's Stage 0
    return overrides, logs, pipeline.main(overrides)


def test_pipeline_runs_the_chain_and_writes_results(pipeline_run):
    _, logs, out_dir = pipeline_run
    assert out_dir == logs / "synthetic" / "pipeline" / "p32" / "seed0"
    summary = json.loads((out_dir / "results.json").read_text())
    assert [row["family"] if row.get("budget") else row["method"] for row in summary["rows"]] == METHODS
    for row in summary["rows"]:
        assert {"method", "top1", "mAP", "gflops_per_video", "hit_rate", "keep_fraction"} <= set(row)
        assert 0.0 <= row["top1"] <= 1.0 and row["gflops_per_video"] > 0
    rows = {row["method"]: row for row in summary["rows"]}
    flops = {name: row["gflops_per_video"] for name, row in rows.items()}
    assert flops["glance only"] < flops["random patches"] == flops["centre patches"]
    assert flops["AdaFocus (learned policy)"] == pytest.approx(flops["random patches"])
    # AdaFocus+ counts pi' and only the frames that ran f_L
    assert flops["AdaFocus+ (eta=0.5)"] < flops["AdaFocus+ (eta=0.9)"] < flops["AdaFocus+ network, f_L on every frame"]
    assert rows["AdaFocus+ (eta=0.5)"]["keep_fraction"] < rows["AdaFocus+ (eta=0.9)"]["keep_fraction"]
    assert rows["glance only"]["hit_rate"] is None  # glance-only crops no patch
    assert len(rows["AdaFocus (learned policy)"]["online"]) == 8
    # early exit: one row per variant in the table (pipeline.exit_budget=auto), every budget of both curves in
    # results.json and the figure
    curves = summary["early_exit_rows"]
    assert [(r["family"], r["budget"]) for r in curves] == [
        (family, budget) for family in ("AdaFocus early exit", "AdaFocus+ (eta=0.5) early exit")
        for budget in (0.3, 0.4, 0.5, 0.6, 0.8)]
    exits = {row["family"]: row for row in summary["rows"] if row.get("budget")}
    for family, full in (("AdaFocus early exit", "AdaFocus (learned policy)"),
                         ("AdaFocus+ (eta=0.5) early exit", "AdaFocus+ (eta=0.5)")):
        assert exits[family] == pipeline.summary_exit_row([r for r in curves if r["family"] == family], "auto", "top1")
        assert exits[family]["gflops_per_video"] < flops[full]
        assert f"| {exits[family]['method']} |" in (out_dir / "results.md").read_text()
    text = (out_dir / "results.md").read_text()
    assert "| AdaFocus (learned policy) |" in text and "| AdaFocus+ (eta=0.5) |" in text
    for name in ("accuracy_vs_gflops.png", "online.png"):
        assert (out_dir / name).stat().st_size > 1000
    assert (logs / "synthetic" / "stage3_plus" / "p32" / "seed0" / "eval" / "patches_plus.png").is_file()


def test_the_tables_early_exit_row_is_chosen_on_the_threshold_split():
    def row(budget, train_top1):
        return {"budget": budget, "top1_on_threshold_split": train_top1, "full_top1_on_threshold_split": 0.95}

    rows = [row(0.3, 0.90), row(0.4, 0.942), row(0.6, 0.95), row(0.8, 0.96)]
    assert pipeline.summary_exit_row(rows, "auto", "top1")["budget"] == 0.4  # within 1 point of 95%
    assert pipeline.summary_exit_row([row(0.3, 0.5), row(0.6, 0.6)], "auto", "top1")["budget"] == 0.6  # none is
    assert pipeline.summary_exit_row(rows, 0.6, "top1")["budget"] == 0.6
    assert pipeline.summary_exit_row(rows, 0.5, "top1") is None and pipeline.summary_exit_row(rows, None, "top1") is None
    with pytest.raises(SystemExit, match="pipeline.exit_budget=1.5"):
        pipeline.check_exit_budget(1.5)
    with pytest.raises(SystemExit, match="pipeline.exit_budget=most"):
        pipeline.check_exit_budget("most")
    pipeline.check_exit_budget("auto")


def test_rerunning_the_pipeline_skips_every_finished_stage(pipeline_run, capsys):
    overrides, _, _ = pipeline_run
    capsys.readouterr()
    pipeline.main(overrides)  # same command again: every stage is found done
    assert capsys.readouterr().out.count("done before, skipping") == 10  # Stage 0, I, II, III, II+, III+, 4 baselines


def test_walkthrough_notebook_runs_on_the_trained_runs(pipeline_run, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    overrides, _, _ = pipeline_run
    monkeypatch.setenv("ADAFOCUS_NOTEBOOK_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("ADAFOCUS_NOTEBOOK_OUT", str(tmp_path / "nb"))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    for name in ("patches.png", "online.png", "patches_plus.png"):
        assert (tmp_path / "nb" / name).stat().st_size > 1000, name
    printed = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "saves" in printed and os.environ.get("ADAFOCUS_NOTEBOOK_OUT") == str(tmp_path / "nb")
    # early exit (a curve), online recognition (a line per step, the last one matching the offline forward)
    assert (tmp_path / "nb" / "early_exit" / "accuracy_vs_gflops.png").stat().st_size > 1000
    assert "step 1/" in printed and "would exit here" in printed
    last_online, offline = re.search(r"last online step: class (\d+); offline forward: class (\d+)", printed).groups()
    assert last_online == offline
