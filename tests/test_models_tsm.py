"""AdaFocus-TSM (paper Sec. 4.2, Table 3): temporal shift, the network, its GFLOPs, its data and a stage chain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_video import level_to_index, write_frame_folder

from adafocus_pl.data.datasets import ClipDataset
from adafocus_pl.data.listfile import VideoList
from adafocus_pl.data.sampling import GlanceFocusSampler, SegmentSampler
from adafocus_pl.data.storage import FrameFolderStorage
from adafocus_pl.data.synthetic import MOTIONS, SyntheticSpec, class_names, generate, render_video
from adafocus_pl.data.transforms import ClipTrainTransform
from adafocus_pl.evaluation.flops import flops_network, gflops_per_video, model_component_gflops
from adafocus_pl.models.adafocus_tsm import AdaFocusTSMNet
from adafocus_pl.models.build import build_network
from adafocus_pl.models.registry import create_backbone
from adafocus_pl.models.temporal_shift import ShiftedConv2d, temporal_shift
from adafocus_pl.stages.runner import run_stage
from adafocus_pl.utils.config import compose
from tests.conftest import tiny_overrides


# ------------------------------------------------------------------------------------------------ the shift
def test_temporal_shift_moves_one_eighth_of_the_channels_each_way():
    clip = torch.arange(2 * 3 * 16, dtype=torch.float32).reshape(2 * 3, 16, 1, 1)  # 2 videos x 3 frames x 16 ch
    out = temporal_shift(clip, segments=3, fold_div=8).reshape(2, 3, 16)
    x = clip.reshape(2, 3, 16)
    assert torch.equal(out[:, :2, :2], x[:, 1:, :2]) and (out[:, 2, :2] == 0).all()      # from the next frame
    assert torch.equal(out[:, 1:, 2:4], x[:, :2, 2:4]) and (out[:, 0, 2:4] == 0).all()  # from the previous frame
    assert torch.equal(out[:, :, 4:], x[:, :, 4:])                                        # 3/4 of channels stay
    with pytest.raises(ValueError, match="not a multiple of 3"):
        temporal_shift(torch.zeros(4, 16, 1, 1), segments=3)


@pytest.mark.parametrize("name,count", [("resnet50", 16), ("mobilenet_v2", 10), ("tiny_local", 3)])
def test_the_shift_is_a_registry_option_that_keeps_every_parameter_name(name, count):
    plain, shifted = create_backbone(name), create_backbone(name, temporal_shift=4)
    assert sum(isinstance(m, ShiftedConv2d) for m in shifted.modules()) == count  # one per residual branch/block
    assert plain.state_dict().keys() == shifted.state_dict().keys()  # torchvision weights load unchanged
    shifted.load_state_dict(plain.state_dict())


def test_a_frame_sees_its_neighbours_only_through_the_shift():
    torch.manual_seed(0)
    plain = create_backbone("tiny_local").eval()
    shifted = create_backbone("tiny_local", temporal_shift=4).eval()
    shifted.load_state_dict(plain.state_dict())
    clip = torch.randn(4, 3, 32, 32)
    changed = clip.clone()
    changed[2] += 1.0  # perturb frame 2 only
    for net, expect_frame1_changes in ((plain, False), (shifted, True)):
        a, b = net(clip), net(changed)
        assert not torch.allclose(a[2], b[2])
        assert (not torch.allclose(a[1], b[1])) == expect_frame1_changes


# --------------------------------------------------------------------------------------------- the network
def tiny_tsm(**kwargs) -> AdaFocusTSMNet:
    args = dict(num_classes=4, patch_size=32, frame_size=96, glance_frames=4, focus_frames=6,
                glance_backbone="tiny_glance", local_backbone="tiny_local", policy_hidden=32,
                policy_conv_channels=4)
    return AdaFocusTSMNet(**{**args, **kwargs}).eval()


def test_one_patch_location_per_video_after_reading_every_glance_frame():
    net = tiny_tsm()
    frames, focus = torch.randn(2, 4, 3, 96, 96), torch.randn(2, 6, 3, 96, 96)
    out = net(frames, focus_frames=focus)
    assert out.logits.shape == (2, 1, 4) and out.policy_logits.shape == (2, 1, 49)
    assert out.actions.shape == (2, 1) and out.offsets.shape == (2, 6, 2)
    assert (out.offsets == out.offsets[:, :1]).all()  # the same patch in every focus frame
    assert out.glance_features.shape[1] == 4 and out.local_features.shape[1] == 6
    # pi decides from its last state: changing the last glance frame can change the decision's logits
    later = frames.clone()
    later[:, -1] += 1.0
    assert not torch.allclose(net(later, focus_frames=focus).policy_logits, out.policy_logits)
    # f_C is linear on clip averages = the average of frame-wise linear predictions (paper Sec. 4.2), here over
    # every (glance frame, focus frame) pair
    g, loc = out.glance_features, out.local_features
    pairs = torch.cat([g[:, :, None].expand(-1, -1, 6, -1), loc[:, None].expand(-1, 4, -1, -1)], dim=-1)
    assert torch.allclose(out.logits[:, 0], net.classifier.fc(pairs).mean((1, 2)), atol=1e-5)


def test_given_patches_reproduce_the_learned_ones_with_one_location_per_video():
    net = tiny_tsm()
    frames, focus = torch.randn(2, 4, 3, 96, 96), torch.randn(2, 6, 3, 96, 96)
    with torch.no_grad():
        learned = net(frames, focus_frames=focus)
        by_actions = net(frames, patch_policy="given", actions=learned.actions, focus_frames=focus)
        by_offsets = net(frames, patch_policy="given", offsets=learned.offsets, focus_frames=focus)  # [B, T_L, 2]
    for given in (by_actions, by_offsets):
        assert torch.equal(given.offsets, learned.offsets) and given.policy_logits is None
        torch.testing.assert_close(given.logits, learned.logits)
    assert by_actions.actions is learned.actions and by_offsets.actions is None
    with pytest.raises(ValueError, match="exactly one of actions"):
        net(frames, patch_policy="given", focus_frames=focus)
    fixed = net(frames, patch_policy="centre", focus_frames=focus)
    assert fixed.actions is None and (fixed.offsets == 32).all()  # (96 - 32) / 2


def test_gaussian_location_policy_of_the_release():
    net = tiny_tsm(location_policy="gaussian")
    frames, focus = torch.randn(3, 4, 3, 96, 96), torch.randn(3, 6, 3, 96, 96)
    out = net(frames, focus_frames=focus)
    assert out.policy_logits.shape == (3, 1, 2) and out.actions.shape == (3, 1, 2)
    assert ((out.offsets >= 0) & (out.offsets <= 64)).all()
    dist = net.action_distribution(out.policy_logits)
    sample = dist.sample()
    assert dist.log_prob(sample).shape == (3, 1) and dist.entropy().shape == (3, 1)
    assert torch.equal(net.actions_to_offsets(torch.full((1, 1, 2), 2.0)), torch.tensor([[[64, 64]]]))


def test_clear_errors_for_what_tsm_does_not_do():
    with pytest.raises(ValueError, match="plus=off"):  # AdaFocus+ is refused where networks are built
        build_network(dict(architecture="adafocus_tsm", num_classes=4, patch_size=32, frame_size=96,
                           skip_policy=True))
    net = tiny_tsm()
    with pytest.raises(ValueError, match="num_focus_segments"):
        net(torch.randn(1, 4, 3, 96, 96), focus_frames=torch.randn(1, 5, 3, 96, 96))
    with pytest.raises(ValueError, match="location_policy"):
        tiny_tsm(location_policy="grid")
    with pytest.raises(ValueError, match="num_focus_segments=null"):
        tiny_tsm(location_policy="full", focus_frames=None)(torch.randn(1, 4, 3, 96, 96),
                                                            focus_frames=torch.randn(1, 4, 3, 96, 96))


# ------------------------------------------------------------------------------------------------- GFLOPs
PAPER_GFLOPS = {  # paper Table 3: GFLOPs per video on Something-Something (174 classes)
    ("adafocus_tsm", 144): 23.5, ("adafocus_tsm", 160): 27.5, ("adafocus_tsm", 176): 33.7,
    ("tsm", None): 32.7, ("tsm_plus", None): 35.1,
}


@pytest.mark.parametrize("model,patch", list(PAPER_GFLOPS))
def test_gflops_per_video_match_table_3(model, patch):
    overrides = ["experiment=sthv1", f"model={model}"] + ([f"model.patch_size={patch}"] if patch else [])
    cfg = compose("train", overrides)
    assert cfg.data.num_segments == 8 and cfg.data.num_classes == 174
    parts = model_component_gflops(cfg.model, (cfg.data.eval_crop, cfg.data.eval_crop))
    gflops = gflops_per_video(parts, cfg.data.num_segments)
    assert gflops == pytest.approx(PAPER_GFLOPS[(model, patch)], rel=0.01)
    net = flops_network(cfg.model, cfg.data.eval_crop)
    if model == "adafocus_tsm":  # 8 glance frames + 12 patches (Table 3 footnote), TSM on both backbones
        assert (net.glance_frames, net.focus_frames, net.local.shift_segments) == (8, 12, 12)
    else:  # full frames: f_L on the 8 glance frames, no policy
        assert net.policy is None and net.focus_frames == 8 and (net.glance is None) == (model == "tsm")


# --------------------------------------------------------------------------------------------------- data
def test_glance_and_focus_frames_are_sampled_separately_with_one_crop(tmp_path):
    sampler = GlanceFocusSampler(8, 12, "val")
    assert sampler(24) == SegmentSampler(8, "val")(24) + SegmentSampler(12, "val")(24)
    write_frame_folder(tmp_path / "v", 24, height=40, width=48)
    (tmp_path / "list.txt").write_text("v 24 0\n")
    data = ClipDataset(FrameFolderStorage(VideoList.read(tmp_path, "list.txt", "space", num_classes=1)),
                       GlanceFocusSampler(8, 12, "train"), ClipTrainTransform(32, (1.0, 0.75), flip=False))
    sample = data.sample(0, torch.Generator().manual_seed(0))
    assert sample["frames"].shape == (8, 3, 32, 32) and sample["focus_frames"].shape == (12, 3, 32, 32)
    glance = [level_to_index(f.float().mean()) for f in sample["frames"]]
    focus = [level_to_index(f.float().mean()) for f in sample["focus_frames"]]
    assert glance == sorted(glance) and focus == sorted(focus) and len(set(focus)) == 12


def test_motion_task_needs_time_and_the_full_resolution():
    spec = SyntheticSpec(task="motion", num_classes=4, num_frames=12, speed_min=0.2, speed_max=0.5)
    assert class_names(spec) == list(MOTIONS)
    g, b = spec.glyph_size, spec.border
    for label, (d_row, d_col) in enumerate(MOTIONS.values()):
        frames, boxes, _ = render_video(spec, np.random.default_rng(label), label=label)
        bars = []
        for t in range(spec.num_frames):
            x0, y0 = boxes[t, :2]
            inside = frames[t, y0 + b:y0 + g - b, x0 + b:x0 + g - b, 0].astype(float)
            cells = (inside != spec.grey).reshape(spec.grid, spec.cell_size, spec.grid, spec.cell_size).any((1, 3))
            rows, cols = np.nonzero(cells)
            bars.append(rows[0] if d_row else cols[0])
            assert cells.sum() == spec.grid  # one row or column: the axis, never the direction
            pooled = inside.reshape(spec.grid, spec.cell_size, spec.grid, spec.cell_size).mean((1, 3))
            assert np.allclose(pooled, spec.grey)  # invisible at f_G's 4x lower resolution
        steps = np.diff(bars) % spec.grid
        assert (steps == (d_row + d_col) % spec.grid).all()
        assert abs(int(boxes[-1, 0]) - int(boxes[0, 0])) <= 6  # slow glyphs: one location fits the clip


# --------------------------------------------------------------------------------------------- the chain
@pytest.fixture(scope="module")
def motion_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("motion")
    generate(data, SyntheticSpec(task="motion", num_classes=4, num_frames=12, speed_min=0.2, speed_max=0.5,
                                 num_train=16, num_val=6, num_test=6), workers=1, progress=False)
    return data


def motion_overrides(data: Path, logs: Path) -> list[str]:
    overrides = [o for o in tiny_overrides(data, logs) if "classifier_hidden" not in o]  # TSM's f_C is linear
    return overrides + ["experiment=synthetic_motion"]


@pytest.fixture(scope="module")
def motion_chain(motion_data, tmp_path_factory):
    logs = tmp_path_factory.mktemp("motion_logs")
    dirs = {}
    for stage in ("stage1", "stage2", "stage3"):
        cfg = compose("train", motion_overrides(motion_data, logs) + [f"stage={stage}"])
        run_stage(cfg)
        dirs[stage] = Path(cfg.paths.output_dir)
    return dirs


def test_the_three_stage_chain_runs_for_adafocus_tsm(motion_chain):
    for stage, directory in motion_chain.items():
        metrics = json.loads((directory / "metrics.json").read_text())
        assert 0.0 <= metrics["test/top1"] <= 1.0 and 0.0 <= metrics["test/hit_rate"] <= 1.0, stage
        ckpt = torch.load(directory / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["hyper_parameters"]["net"]["architecture"] == "adafocus_tsm"
    s1, s2 = (torch.load(motion_chain[s] / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=False)["state_dict"] for s in ("stage1", "stage2"))
    moved = [k for k in s2 if not torch.equal(s1[k], s2[k])]
    assert moved and all(k.startswith("net.policy.") for k in moved)  # Stage II trains pi only


@pytest.mark.parametrize("model", ["tsm", "tsm_plus"])
def test_full_frame_baselines_train_in_one_supervised_stage(model, motion_data, tmp_path):
    tiny = ["model.glance_backbone=tiny_glance",
            "model.local_backbone=tiny_local"]
    cfg = compose("train", motion_overrides(motion_data, tmp_path) + [f"model={model}", "stage=full_frame", *tiny,
                                                                    "data.num_focus_segments=null"])
    assert cfg.model.patch_size == 96 and cfg.stage.name == "full_frame"
    metrics = run_stage(cfg)
    assert 0.0 <= metrics["test/top1"] <= 1.0 and "test/hit_rate" not in metrics  # no patches
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert not any(k.startswith("net.policy.") for k in state)
    assert any(k.startswith("net.glance.") for k in state) == (model == "tsm_plus")


def test_eval_runs_on_an_adafocus_tsm_checkpoint(motion_chain, motion_data, tmp_path):
    from adafocus_pl.eval import run as run_eval

    ckpt = motion_chain["stage3"] / "checkpoints" / "last.ckpt"
    overrides = [o for o in motion_overrides(motion_data, tmp_path) if not o.startswith(("debug=", "callbacks."))]
    result = run_eval(compose("eval", overrides + ["stage=stage3", f"ckpt_path={ckpt}", "eval.fixed_policies=[centre]"]))
    rows = {row["method"]: row for row in result["rows"]}
    stage3 = json.loads((motion_chain["stage3"] / "metrics.json").read_text())
    learned = rows["AdaFocus (learned policy)"]
    assert learned["top1"] == pytest.approx(stage3["test/top1"])  # the same network, the same test split
    assert learned["gflops_per_video"] == pytest.approx(rows["centre patches (same weights)"]["gflops_per_video"])
    assert Path(result["paths"]["md"]).is_file()
    assert not any("budget" in row for row in result["rows"])  # one prediction per clip: no early exit
