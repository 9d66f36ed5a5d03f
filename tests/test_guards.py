"""A NaN loss stops the run with a clear message before its update, and last.ckpt stays the last good state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adafocus_pl.stages.guards import NonFiniteLossError
from adafocus_pl.stages.runner import run_stage


@pytest.mark.parametrize("stage_overrides", [["stage=stage1"], ["stage=stage2"]])
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(compose_tiny, plus_chain, stage_overrides):
    dirs, _ = plus_chain
    extra = ([f"init_from={dirs['stage1'] / 'checkpoints' / 'last.ckpt'}"] if stage_overrides == ["stage=stage2"]
             else [])
    cfg = compose_tiny(*stage_overrides, *extra, "trainer.max_epochs=2",
                       "+callbacks.nan._target_=tests.nan_callback.NanFramesOnce")
    with pytest.raises(NonFiniteLossError) as stopped:
        run_stage(cfg)
    message = str(stopped.value)
    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    what = "training loss" if stage_overrides == ["stage=stage1"] else "policy logits"
    assert f"non-finite {what} (nan)" in message and "at epoch 1" in message
    assert str(last) in message and "ckpt_path=auto" in message and "videos [" in message
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0  # written after epoch 0; nothing was saved after the NaN step
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "metrics.json").exists()  # the stage is not marked finished
