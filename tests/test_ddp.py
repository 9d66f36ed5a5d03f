"""DDP: ``trainer=ddp_cpu`` (2 CPU processes over gloo, Lightning's subprocess launcher re-running
``python -m adafocus_pl.train``) against one process, and the distributed pieces on a gloo group of 2.

- val/test metrics of 2 processes equal those of 1 process on the same weights, on splits of odd size (the
  DistributedSampler's padding is dropped);
- every stage trains under DDP with ``find_unused_parameters: false``, and its ranks end with identical weights;
- Stage II's PPO: returns normalised over the global batch, gradients averaged over the ranks in every PPO epoch;
- rows of uneven sizes per rank are gathered exactly (AdaFocus+'s rho solve).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributions import Categorical

from adafocus_pl.models.policy import PatchPolicy
from adafocus_pl.stages.base import gather_rows
from adafocus_pl.stages.ppo import PPOConfig, normalise, ppo_loss, ppo_targets
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
# precise BatchNorm statistics come from each rank's own batches under DDP (then averaged), so they are off here:
# the metrics of N processes are compared with one process's exactly
QUICK = ["data.batch_size=2", "trainer.limit_train_batches=2", "+trainer.num_sanity_val_steps=0",
         "callbacks.precise_bn.num_batches=0"]
FULL_EVAL = ["trainer.limit_val_batches=null", "trainer.limit_test_batches=null"]
TRAIN_ONLY = ["trainer.limit_val_batches=1", "test=false"]  # one val batch: the checkpoints are saved after val


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    """7 val and 7 test videos: the distributed sampler pads them to 8, and the metrics must not count the pad."""
    from adafocus_pl.data.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("odd")
    generate(out, SyntheticSpec(num_train=16, num_val=7, num_test=7), workers=1)
    return out


def train_ddp(data: Path, logs: Path, *overrides: str) -> tuple[dict, Path]:
    """One ``python -m adafocus_pl.train ... trainer=ddp_cpu`` run; (metrics.json, run dir). Both ranks write the
    hash of their trainable parameters (tests/ddp_callback.py) to ``logs/checks``."""
    cmd = [sys.executable, "-m", "adafocus_pl.train", *tiny_overrides(data, logs), *QUICK, "trainer=ddp_cpu",
           "+callbacks.check._target_=tests.ddp_callback.TrainableChecksum", f"+callbacks.check.out_dir={logs}/checks",
           *overrides]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    (metrics,) = logs.rglob("metrics.json")
    return json.loads(metrics.read_text()), metrics.parent


def assert_ranks_identical(logs: Path) -> None:
    rank0, rank1 = ((logs / "checks" / f"rank{r}.txt").read_text().split() for r in (0, 1))
    world, count, start, end = rank0
    assert world == "2" and int(count) > 0
    assert rank1 == rank0  # the same trainable parameters on both ranks, before and after fit
    assert end != start  # and fit changed them


def eval_one_process(data: Path, logs: Path, ckpt: Path, *overrides: str) -> dict:
    """``train=false ckpt_path=...`` on one process (in this process: no second interpreter start-up)."""
    from adafocus_pl.stages.runner import run_stage
    from adafocus_pl.utils.config import compose

    return run_stage(compose("train", tiny_overrides(data, logs) + QUICK + FULL_EVAL + [
        "train=false", f"ckpt_path={ckpt}", *overrides]))


def assert_same_eval_metrics(one: dict, two: dict, expected: set[str]) -> None:
    keys = {k for k in one if k.split("/")[0] in ("val", "test")}
    assert expected <= keys and keys <= set(two)
    for key in sorted(keys):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


EVAL_KEYS = {f"{split}/{name}" for split in ("val", "test") for name in ("top1", "mAP", "loss", "hit_rate", "coverage")}


# ------------------------------------------------------------------ the stages under trainer=ddp_cpu
@pytest.fixture(scope="module")
def stage1(odd_data, tmp_path_factory) -> tuple[dict, Path, Path]:
    logs = tmp_path_factory.mktemp("ddp_stage1")
    metrics, run = train_ddp(odd_data, logs, "stage=stage1", *FULL_EVAL)
    return metrics, run / "checkpoints" / "last.ckpt", logs


@pytest.fixture(scope="module")
def stage2_plus(odd_data, stage1, tmp_path_factory) -> tuple[Path, Path]:
    logs = tmp_path_factory.mktemp("ddp_stage2_plus")
    _, run = train_ddp(odd_data, logs, "stage=stage2", "plus=on", "stage.module.ppo_epochs=2", f"init_from={stage1[1]}",
                       *TRAIN_ONLY)
    return run / "checkpoints" / "last.ckpt", logs


@pytest.fixture(scope="module")
def stage1_one_process(odd_data, stage1, tmp_path_factory) -> dict:
    return eval_one_process(odd_data, tmp_path_factory.mktemp("one"), stage1[1], "stage=stage1", "trainer=cpu")


def test_stage1_trains_under_ddp_and_gives_the_metrics_of_one_process(stage1, stage1_one_process):
    two, _, logs = stage1
    assert_ranks_identical(logs)
    # 2 ranks: fit's last validation and the test after fit; 1 process: the same weights from last.ckpt
    assert_same_eval_metrics(stage1_one_process, two, EVAL_KEYS)


def test_a_checkpoint_evaluated_under_ddp_gives_the_metrics_of_one_process(odd_data, stage1, stage1_one_process,
                                                                          tmp_path):
    two, _ = train_ddp(odd_data, tmp_path, "stage=stage1", "train=false", f"ckpt_path={stage1[1]}", *FULL_EVAL)
    assert_same_eval_metrics(stage1_one_process, two, EVAL_KEYS)


def test_stage2_ppo_with_two_epochs_trains_under_ddp(odd_data, stage1, tmp_path):
    train_ddp(odd_data, tmp_path, "stage=stage2", "stage.module.ppo_epochs=2", f"init_from={stage1[1]}", *TRAIN_ONLY)
    assert_ranks_identical(tmp_path)


def test_stage2_plus_ppo_with_two_epochs_trains_under_ddp(stage2_plus):
    assert_ranks_identical(stage2_plus[1])  # pi and pi' (the run Stage III+ starts from)


def test_stage3_plus_trains_under_ddp_and_gives_the_metrics_of_one_process(odd_data, stage2_plus, tmp_path):
    common = ["stage=stage3", "plus=on"]
    two, run = train_ddp(odd_data, tmp_path / "ddp", *common, f"init_from={stage2_plus[0]}", *FULL_EVAL)
    assert_ranks_identical(tmp_path / "ddp")
    # rho solved from both ranks' p_t^B before validation: the checkpoint holds the rho that fit's val/test used
    one = eval_one_process(odd_data, tmp_path / "one", run / "checkpoints" / "last.ckpt", *common, "trainer=cpu")
    assert_same_eval_metrics(one, two, EVAL_KEYS | {"val/keep_fraction", "test/keep_fraction"})


def test_stage3_glance_only_trains_under_ddp(odd_data, stage1, tmp_path):
    train_ddp(odd_data, tmp_path, "stage=stage3", "stage.name=stage3_none", "stage.module.patch_policy=none",
              f"init_from={stage1[1]}", *TRAIN_ONLY)
    assert_ranks_identical(tmp_path)


def test_glance_without_a_path_to_the_loss_is_not_trained():
    """model.use_glance_features=false (Table 4): f_G gets no gradient in Stages I/III, so it is frozen there
    (DDP with find_unused_parameters=false would fail on its parameters)."""
    from hydra.utils import instantiate

    from adafocus_pl.utils.config import compose

    for stage, use in (("stage1", "false"), ("stage3", "false"), ("stage1", "true")):
        cfg = compose("train", [f"stage={stage}", f"model.use_glance_features={use}", "model.policy_hidden=8",
                                "model.classifier_hidden=8"])
        module = instantiate(cfg.stage.module, _recursive_=False, _convert_="all")
        assert ("glance" in module.trainable) == (use == "true"), (stage, use)
        assert all(p.requires_grad == (use == "true") for p in module.net.glance.parameters())


# ------------------------------------------------------------------ a gloo group of 2 on the pure pieces
PPO = PPOConfig()
BATCH, STEPS, PPO_EPOCHS = 4, 3, 2


def ppo_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Two training steps of (glance maps [B, T, 4, 3, 3], actions [B, T], rewards [B, T])."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, STEPS, 4, 3, 3, generator=g), torch.randint(9, (BATCH, STEPS), generator=g),
             torch.randn(BATCH, STEPS, generator=g)) for _ in range(2)]


class PPOStep(torch.nn.Module):
    """Stage II's PPO update (PolicyStage.training_step) on pi alone, run inside the module's forward: under DDP the
    whole update runs inside DDP's forward, as Lightning runs training_step inside it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.policy = PatchPolicy(4, 3, 9, conv_channels=2, hidden=8)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=1e-2)

    def forward(self, maps, actions, rewards, backward) -> torch.Tensor:
        logits, values = self.policy.rollout(maps)
        old_log_probs = Categorical(logits=logits).log_prob(actions).detach()
        returns, advantages = ppo_targets(rewards, values, PPO)  # normalised over the global batch
        for epoch in range(PPO_EPOCHS):
            if epoch > 0:  # later PPO epochs re-run pi outside DDP's forward, as PolicyStage does
                logits, values = self.policy.rollout(maps)
            pi = Categorical(logits=logits)
            loss = ppo_loss(pi.log_prob(actions), old_log_probs, advantages, values, returns, pi.entropy(), PPO)["loss"]
            self.opt.zero_grad()
            backward(loss, epoch)
            self.opt.step()
        return loss.detach()


def train_ppo(rows: slice, ddp: bool, sync_every_epoch: bool = True, steps: int = 2) -> torch.Tensor:
    """pi's parameters after ``steps`` training steps on ``rows`` of each batch (DDP: this rank's rows)."""
    from torch.nn.parallel import DistributedDataParallel

    model = PPOStep()
    if not ddp:
        def backward(loss, epoch):
            loss.backward()
        run = model
    else:
        from pytorch_lightning.overrides.distributed import prepare_for_backward

        run = DistributedDataParallel(model)

        def backward(loss, epoch):  # LightningModule.manual_backward -> DDPStrategy.pre_backward
            if sync_every_epoch or epoch == 0:
                prepare_for_backward(run, loss)
            loss.backward()
    for maps, actions, rewards in ppo_batches()[:steps]:
        run(maps[rows], actions[rows], rewards[rows], backward)
    return torch.cat([p.detach().flatten() for p in model.policy.parameters()])


RETURNS = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1


def _on_rank(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from lightning_fabric.utilities.distributed import _all_gather_ddp_if_available

        half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        rows = torch.arange(20.0).reshape(10, 2)[: 3 + 2 * rank] + 100 * rank  # 3 rows on rank 0, 5 on rank 1
        out = {
            "normalised": normalise(RETURNS[rank * 3:(rank + 1) * 3]),
            "gathered": gather_rows(rows, _all_gather_ddp_if_available, 2),
            "ppo": train_ppo(half, ddp=True),
            # (one step: DDP's next forward would fail on the reducer left expecting that backward's hooks)
            "ppo_first_epoch_synced_only": train_ppo(half, ddp=True, sync_every_epoch=False, steps=1),
        }
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gloo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a forked child of a process whose autograd engine has started threads (any earlier test's
    # backward in the same pytest worker) cannot run backward itself
    mp.start_processes(_on_rank, args=(port, str(out)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


def test_returns_are_normalised_over_the_global_batch(gloo_ranks):
    whole = normalise(RETURNS)  # one process, all six videos
    assert torch.allclose(torch.cat([r["normalised"] for r in gloo_ranks]), whole, atol=1e-6)
    assert not torch.allclose(gloo_ranks[0]["normalised"], normalise(RETURNS[:3]), atol=1e-3)  # not per rank


def test_ppo_gradients_are_averaged_over_the_ranks_in_every_ppo_epoch(gloo_ranks):
    whole = train_ppo(slice(None), ddp=False)  # one process, the whole batch
    for rank in gloo_ranks:
        assert torch.allclose(rank["ppo"], whole, atol=1e-6)
    # control: a backward that DDP's reducer is not armed for stays local, and the ranks drift apart
    assert not torch.allclose(gloo_ranks[0]["ppo_first_epoch_synced_only"], gloo_ranks[1]["ppo_first_epoch_synced_only"])


def test_rows_of_uneven_sizes_are_gathered_exactly(gloo_ranks):
    expected = torch.cat([torch.arange(20.0).reshape(10, 2)[:3], torch.arange(20.0).reshape(10, 2)[:5] + 100])
    for rank in gloo_ranks:
        assert torch.equal(rank["gathered"], expected)
