"""Stage I -> II -> III through init_from on tiny data; frozen weights; resume; load_from_checkpoint; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adafocus_pl.stages.finetune import FinetuneStage
from adafocus_pl.stages.policy import PolicyStage
from adafocus_pl.stages.runner import run_stage
from adafocus_pl.stages.warmup import WarmupStage
from adafocus_pl.utils.config import compose
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def chain(tiny_synthetic, tmp_path_factory):
    """Run the three stages once; return {stage name: run dir} and the compose function used."""
    logs = tmp_path_factory.mktemp("chain_logs")

    def make(*overrides):
        return compose("train", tiny_overrides(tiny_synthetic, logs) + list(overrides))

    dirs = {}
    for stage in ("stage1", "stage2", "stage3"):
        cfg = make(f"stage={stage}")
        run_stage(cfg)
        dirs[stage] = Path(cfg.paths.output_dir)
    return dirs, make


def net_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def part_equal(a: dict, b: dict, part: str) -> bool:
    keys = [k for k in a if k.startswith(part + ".")]
    assert keys, part
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_each_stage_writes_checkpoints_and_test_metrics(chain):
    dirs, make = chain
    assert make("stage=stage2").init_from == str(dirs["stage1"] / "checkpoints" / "last.ckpt")
    for stage, directory in dirs.items():
        ckpt = torch.load(directory / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["adafocus_stage"] == int(stage[-1])
        metrics = json.loads((directory / "metrics.json").read_text())
        assert 0.0 <= metrics["test/top1"] <= 1.0 and 0.0 <= metrics["test/mAP"] <= 1.0
        assert 0.0 <= metrics["test/hit_rate"] <= metrics["test/coverage"] <= 1.0
        assert list((directory / "csv").glob("version_*/metrics.csv"))


def test_frozen_parts_stay_bit_identical(chain):
    dirs, _ = chain
    s1, s2, s3 = (net_state(dirs[s] / "checkpoints" / "last.ckpt") for s in ("stage1", "stage2", "stage3"))
    # stage II: only pi moves (BN statistics of the frozen CNNs included)
    for part in ("glance", "local", "classifier"):
        assert part_equal(s1, s2, part), part
    assert not part_equal(s1, s2, "policy")
    # stage III (default): f_L and f_C move, f_G and pi do not
    for part in ("glance", "policy"):
        assert part_equal(s2, s3, part), part
    assert not part_equal(s2, s3, "local") and not part_equal(s2, s3, "classifier")


@pytest.mark.parametrize("stage,cls", [("stage1", WarmupStage), ("stage2", PolicyStage), ("stage3", FinetuneStage)])
def test_load_from_checkpoint_gives_the_same_network(chain, stage, cls):
    dirs, _ = chain
    path = dirs[stage] / "checkpoints" / "last.ckpt"
    module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=False).eval()
    assert module.stage_id == int(stage[-1])
    frames = torch.randn(2, 3, 3, 96, 96)
    a = module.net(frames, patch_policy="centre").logits
    fresh = cls(**{k: v for k, v in module.hparams.items()}).eval()
    fresh.net.load_state_dict(net_state(path))
    assert torch.allclose(a, fresh.net(frames, patch_policy="centre").logits)


def test_resume_with_ckpt_path_continues_the_epoch_count(compose_tiny):
    cfg = compose_tiny("stage=stage1", "trainer.max_epochs=1")
    run_stage(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=False)
    run_stage(compose_tiny("stage=stage1", "trainer.max_epochs=2", "ckpt_path=auto"))
    second = torch.load(last, map_location="cpu", weights_only=False)
    # the second run continued the first (it did not start over): one more epoch of steps on top of the first
    assert second["epoch"] > first["epoch"]
    assert second["global_step"] == 2 * first["global_step"] > 0


def test_init_from_errors_are_clear_and_come_before_training(chain, tmp_path):
    dirs, make = chain
    with pytest.raises(FileNotFoundError, match="Run the previous stage first"):
        run_stage(make("stage=stage2", f"init_from={tmp_path / 'missing.ckpt'}", f"paths.log_dir={tmp_path}"))
    with pytest.raises(ValueError, match="stage 1 checkpoint, but stage 3 starts from stage 2"):
        run_stage(make("stage=stage3", f"init_from={dirs['stage1'] / 'checkpoints' / 'last.ckpt'}",
                       f"paths.log_dir={tmp_path}"))
    with pytest.raises(ValueError, match="model.patch_size=32 but this run has model.patch_size=24"):
        run_stage(make("stage=stage2", "model.patch_size=24", f"init_from={dirs['stage1'] / 'checkpoints' / 'last.ckpt'}",
                       f"paths.log_dir={tmp_path}"))
    assert not (tmp_path / "synthetic").exists() or not any((tmp_path / "synthetic").rglob("*.ckpt"))


def test_last_ckpt_holds_the_latest_epoch_even_when_the_monitor_does_not_improve(compose_tiny):
    # a monitor-driven "last" (save_last=True, Lightning >= 2.6) would stay at epoch 0 here
    # val/hit_rate of Stage I is constant (random patches from a fixed eval seed): the monitor never improves
    cfg = compose_tiny("stage=stage1", "trainer.max_epochs=3", "monitor=val/hit_rate")
    run_stage(cfg)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2
    assert last["global_step"] == 3 * cfg.trainer.limit_train_batches
