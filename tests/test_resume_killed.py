"""A SIGKILLed stage resumes to the metrics of an uninterrupted run, and its W&B run continues across the resume
(in its own file, so that the test scheduler can run it beside the sweep tests)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from adafocus_pl.chain import run_chain
from adafocus_pl.stages.runner import run_stage
from adafocus_pl.utils.config import compose
from adafocus_pl.utils.wandb_offline import read_offline_run
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_a_stage_killed_mid_epoch_resumes_to_the_metrics_of_an_uninterrupted_run(tiny_synthetic, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    monkeypatch.chdir(ROOT)
    common = ["logger=default", "trainer.max_epochs=2"]
    # the uninterrupted chain runs in this process (no interpreter start-up per stage); the killed one in processes
    reference = run_chain(tiny_overrides(tiny_synthetic, tmp_path / "reference") + common, plus=False,
                          runner=lambda overrides: run_stage(compose("train", overrides)))
    marker = tmp_path / "killed.txt"
    killer = ["+callbacks.kill._target_=tests.kill_callback.KillOnce", f"+callbacks.kill.marker={marker}"]
    command = tiny_overrides(tiny_synthetic, tmp_path / "killed") + common + killer
    with pytest.raises(subprocess.CalledProcessError) as killed:
        run_chain(command, plus=False)
    assert killed.value.returncode == -9 and marker.is_file()  # SIGKILL in Stage II, epoch 1, batch 1
    stage2 = tmp_path / "killed" / "synthetic" / "stage2" / "p32" / "seed0"
    assert (stage2 / "checkpoints" / "last.ckpt").is_file() and not (stage2 / "metrics.json").exists()

    resumed = run_chain(command, plus=False)  # the very same command
    assert [state for _, _, state in resumed] == ["done", "resume", "fresh"]
    for (_, ref_dir, _), (_, dir_, _) in zip(reference, resumed):
        ref = json.loads((ref_dir / "metrics.json").read_text())
        got = json.loads((dir_ / "metrics.json").read_text())
        assert set(got) == set(ref)
        for key in ref:
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), (dir_.parts[-3], key)
    # the resumed stage continued its W&B run: two offline segments of one run id (the id ends the folder name);
    # the second has the test metrics. The killed segment's W&B records were still buffered in wandb-core when
    # the process died (its file holds only the header); the CSV log of that segment keeps epoch 0.
    segments = sorted((stage2 / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and segments[0].name.split("-")[-1] == segments[1].name.split("-")[-1]
    second = read_offline_run(segments[1])
    assert second["run_id"] == segments[0].name.split("-")[-1] and "test/top1" in second["summary"]
    assert "val/top1" in (stage2 / "csv" / "version_0" / "metrics.csv").read_text()
