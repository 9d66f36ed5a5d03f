"""Stage 0 (the release's backbones on whole frames): what it trains, what Stage I takes from it, and its checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from adafocus_pl.stages.pretrain import PretrainStage
from adafocus_pl.stages.runner import run_stage
from adafocus_pl.stages.warmup import WarmupStage
from adafocus_pl.utils.config import compose
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def stage0(tiny_synthetic, tmp_path_factory):
    logs = tmp_path_factory.mktemp("stage0_logs")

    def make(*overrides):
        return compose("train", tiny_overrides(tiny_synthetic, logs) + ["schedule.stage0.epochs=1",
                                                                        "schedule.stage0.trainable=[glance,local]",
                                                                        *overrides])

    cfg = make("stage=stage0")
    metrics = run_stage(cfg)
    return Path(cfg.paths.output_dir), metrics, make


def net_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def test_stage_0_trains_the_backbones_through_heads_of_its_own(stage0):
    directory, metrics, _ = stage0
    assert directory.parent.name == "stage0" and directory.name == "seed0"  # no patch-size level
    ckpt = torch.load(directory / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["adafocus_stage"] == 0
    assert {k.split(".")[1] for k in ckpt["state_dict"] if k.startswith("heads.")} == {"glance", "local"}
    saved = json.loads((directory / "metrics.json").read_text())
    for key in ("test/top1", "test/top1_local", "test/top1_glance", "val/top1_local"):
        assert 0.0 <= saved[key] <= 1.0, key
    pl.seed_everything(0, verbose=False)  # as run_stage seeds before it builds the module
    fresh = PretrainStage(**{k: v for k, v in ckpt["hyper_parameters"].items()})
    trained = net_state(directory / "checkpoints" / "last.ckpt")
    init = {k: v for k, v in fresh.net.state_dict().items()}
    for part in ("policy", "classifier"):  # never in the loss: exactly as initialised (same seed)
        assert all(torch.equal(trained[k], init[k]) for k in trained if k.startswith(part + "."))
    assert not all(torch.equal(trained[k], init[k]) for k in trained if k.startswith("local."))


def test_stage_1_takes_the_backbones_only_whatever_the_patch_size(stage0):
    directory, _, make = stage0
    ckpt = directory / "checkpoints" / "last.ckpt"
    cfg = make("stage=stage1", "model.patch_size=48", "model.grid_size=5")  # another P and grid: same Stage 0
    assert cfg.init_from == str(ckpt)
    from hydra.utils import instantiate

    module: WarmupStage = instantiate(cfg.stage.module, _recursive_=False, _convert_="all")
    with torch.no_grad():
        for p in module.net.policy.parameters():
            p.zero_()
    module.load_init_weights(ckpt)
    trained, own = net_state(ckpt), module.net.state_dict()
    for part in ("glance", "local"):
        assert all(torch.equal(own[k], trained[k]) for k in trained if k.startswith(part + "."))
    assert all(bool((p == 0).all()) for p in module.net.policy.parameters())  # left as this run built it
    assert own["policy.actor.weight"].shape[0] == 25  # the 5x5 grid, where Stage 0's network had 49


def test_stage_0_uses_some_frames_of_each_clip(stage0):
    _, _, make = stage0
    from hydra.utils import instantiate

    module = instantiate(make("stage=stage0", "schedule.stage0.segments=2").stage.module, _recursive_=False,
                         _convert_="all")
    frames = torch.arange(3 * 8, dtype=torch.float32).reshape(3, 8, 1, 1, 1).expand(3, 8, 3, 96, 96)
    module.eval()
    chosen = module.chosen_frames(frames)
    assert chosen.shape == (3, 2, 3, 96, 96)
    assert chosen[:, :, 0, 0, 0].tolist() == [[2.0, 6.0], [10.0, 14.0], [18.0, 22.0]]  # the middle of each half
    module.train()
    drawn = module.chosen_frames(frames)[:, :, 0, 0, 0] - torch.arange(3)[:, None] * 8
    assert ((drawn[:, 0] < 4) & (drawn[:, 1] >= 4)).all()  # one frame from each half


def test_stage_0_refuses_what_it_cannot_train(stage0):
    _, _, make = stage0
    cfg = make("stage=stage0")
    base = dict(net=dict(cfg.stage.module.net), optimizer=dict(cfg.stage.module.optimizer))
    with pytest.raises(ValueError, match="trains backbones only"):
        PretrainStage(**base, trainable=["classifier"])
    with pytest.raises(ValueError, match="AdaFocus-TSM"):
        PretrainStage(net={**base["net"], "architecture": "adafocus_tsm"}, optimizer=base["optimizer"])
    with pytest.raises(ValueError, match="segments"):
        PretrainStage(**base, segments=0)
