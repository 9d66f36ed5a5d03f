"""trainer=ddp_cpu (2 CPU processes, gloo): the same validation/test metrics as one process, every stage trains
without unused-parameter errors and its ranks stay identical, PPO's returns are normalised over the global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adafocus_pl.stages.ppo import normalise
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """7 val and 7 test videos: the distributed sampler must pad them, and the metrics must not count the pads."""
    from adafocus_pl.data.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("odd")
    generate(out, SyntheticSpec(num_train=16, num_val=7, num_test=7), workers=1)
    return out


def train(data: Path, logs: Path, *overrides: str) -> dict:
    cmd = [sys.executable, "-m", "adafocus_pl.train", *tiny_overrides(data, logs), "data.batch_size=2",
           "trainer.limit_val_batches=null", "trainer.limit_test_batches=null", *overrides]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = list(logs.rglob("metrics.json"))
    assert len(metrics) == 1
    return json.loads(metrics[0].read_text())


@pytest.fixture(scope="module")
def stage1_ckpt(odd_data, tmp_path_factory):
    logs = tmp_path_factory.mktemp("stage1")
    train(odd_data, logs, "stage=stage1")
    return next(logs.rglob("last.ckpt"))


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_two_processes_give_the_validation_metrics_of_one(odd_data, stage1_ckpt, tmp_path, stage):
    common = [f"stage={stage}", "train=false", f"ckpt_path={stage1_ckpt}"]
    one = train(odd_data, tmp_path / "one", *common)
    two = train(odd_data, tmp_path / "two", *common, "trainer=ddp_cpu")
    assert {"val/top1", "val/mAP", "val/loss", "test/top1", "val/hit_rate", "val/coverage"} <= set(one)
    assert set(two) == set(one)
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


@pytest.mark.parametrize("stage, extra", [
    ("stage1", []),
    ("stage2", ["plus=on", "stage.module.ppo_epochs=2"]),
    ("stage3", ["stage.name=stage3_none", "stage.module.patch_policy=none"]),
], ids=["stage1", "stage2_plus_ppo2", "stage3_glance_only"])
def test_every_stage_trains_under_ddp_and_its_ranks_stay_identical(odd_data, stage1_ckpt, tmp_path, stage, extra):
    init = [] if stage == "stage1" else [f"init_from={stage1_ckpt}"]
    checks = tmp_path / "checks"
    metrics = train(odd_data, tmp_path / "ddp", f"stage={stage}", *extra, *init, "trainer=ddp_cpu",
                    "+callbacks.check._target_=tests.ddp_callback.TrainableChecksum",
                    f"+callbacks.check.out_dir={checks}")
    ranks = [(checks / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert ranks[0][0] == "2" and ranks[0] == ranks[1]  # both ranks trained the same parameters
    assert 0.0 <= metrics["val/top1"] <= 1.0


def _normalise_on_rank(rank: int, port: int, parts: list, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out[rank] = normalise(parts[rank])
    finally:
        dist.destroy_process_group()


def test_returns_are_normalised_over_the_global_batch(tmp_path):
    returns = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    halves = [returns[:3], returns[3:]]
    out = mp.Manager().dict()
    mp.spawn(_normalise_on_rank, args=(29533, halves, out), nprocs=2, join=True)
    whole = normalise(returns)  # one process, all six videos
    assert torch.allclose(torch.cat([out[0], out[1]]), whole, atol=1e-5)
    assert not torch.allclose(out[0], normalise(halves[0]), atol=1e-3)  # per-rank statistics would differ
