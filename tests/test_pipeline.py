"""`make train`'s pipeline on tiny data: every stage and baseline runs, the results table is written, re-runs skip."""

from __future__ import annotations

import json

from adafocus_pl import pipeline
from tests.conftest import tiny_overrides

METHODS = ["AdaFocus (learned policy)", "glance only", "random patches", "centre patches", "Gaussian patches"]


def test_pipeline_runs_the_chain_and_writes_results(tiny_synthetic, tmp_path, capsys):
    overrides = tiny_overrides(tiny_synthetic, tmp_path / "logs")
    out_dir = pipeline.main(overrides)
    assert out_dir == tmp_path / "logs" / "synthetic" / "pipeline" / "p32" / "seed0"
    summary = json.loads((out_dir / "results.json").read_text())
    assert [row["method"] for row in summary["rows"]] == METHODS
    for row in summary["rows"]:
        assert {"method", "top1", "mAP", "gflops_per_video", "hit_rate"} <= set(row)
        assert 0.0 <= row["top1"] <= 1.0 and row["gflops_per_video"] > 0
    flops = {row["method"]: row["gflops_per_video"] for row in summary["rows"]}
    assert flops["glance only"] < flops["random patches"] == flops["centre patches"]
    assert summary["rows"][1]["hit_rate"] is None  # glance-only crops no patch
    assert "| AdaFocus (learned policy) |" in (out_dir / "results.md").read_text()

    capsys.readouterr()
    pipeline.main(overrides)  # same command again: every stage is found done
    assert capsys.readouterr().out.count("done before, skipping") == 7
