"""GFLOPs counting (adafocus_pl.evaluation.flops) against the paper's costs (Table 1 / Fig. 5), and the flops CLI."""

from __future__ import annotations

import re

import pytest
import torch

from adafocus_pl.evaluation import flops
from adafocus_pl.models.adafocus import AdaFocusNet

# GFLOPs per frame of each component of the paper's full-size network (multiply-adds only, paper footnote 1;
# the table in README, "Evaluation, GFLOPs and figures") ...
FACTS_GLANCE = 0.2995  # MobileNetV2 features @224
FACTS_LOCAL = {96: 0.751, 128: 1.335, 144: 1.758, 160: 2.085, 176: 2.606, 192: 3.003, 224: 4.087}  # ResNet-50 @P
FACTS_POLICY = 0.0100
FACTS_CLASSIFIER = 0.0136  # GRU f_C, 200 classes
# ... and per video, 16 frames: the paper's AdaFocus costs at P = 96/128/160/192 (Table 1 / Fig. 5)
FACTS_VIDEO = {96: 17.2, 128: 26.5, 160: 38.5, 192: 53.2}
FRAMES = 16


def tiny_net(skip_policy: bool = False, patch_size: int = 32) -> AdaFocusNet:
    return AdaFocusNet(num_classes=10, patch_size=patch_size, frame_size=96, glance_backbone="tiny_glance",
                       local_backbone="tiny_local", policy_conv_channels=8, policy_hidden=64,
                       classifier_hidden=32, skip_policy=skip_policy)


@pytest.fixture(scope="module", params=sorted(FACTS_VIDEO))
def full_size(request):
    """The paper's network at one patch size (AdaFocus+ variant, so pi' is there too), counted once."""
    torch.manual_seed(0)
    net = AdaFocusNet(num_classes=200, patch_size=request.param, frame_size=224, glance_pretrained=None,
                      local_pretrained=None, skip_policy=True)
    return request.param, net, flops.cached_component_gflops(net)


# --------------------------------------------------------------------------------------- full-size figures
def test_full_size_components_match_the_facts_page(full_size):
    patch, _, parts = full_size
    assert set(parts) == {"glance", "policy", "skip_policy", "local", "classifier"}
    assert round(parts["glance"], 4) == FACTS_GLANCE
    assert round(parts["local"], 3) == FACTS_LOCAL[patch]
    assert round(parts["policy"], 4) == FACTS_POLICY
    assert round(parts["classifier"], 4) == FACTS_CLASSIFIER


def test_full_size_policy_and_classifier_are_exact_multiply_adds(full_size):
    _, _, parts = full_size
    # pi: 1x1 conv 1280->32 on 7x7, Linear 32*49->1024, GRUCell(1024, 1024) = 3 gates x (input + hidden) matmuls,
    # actor 1024->49 (the critic is training-only)
    policy = 1280 * 32 * 49 + 32 * 49 * 1024 + 3 * 1024 * (1024 + 1024) + 1024 * 49
    assert parts["policy"] * 1e9 == pytest.approx(policy, abs=0.5)  # 9,954,304
    # pi' differs only by its head: 1 output instead of 49
    assert parts["skip_policy"] * 1e9 == pytest.approx(policy - 48 * 1024, abs=0.5)
    # f_C: GRUCell(1280 + 2048 -> 1024) + Linear(1024 -> 200)
    classifier = 3 * 1024 * (1280 + 2048 + 1024) + 1024 * 200
    assert parts["classifier"] * 1e9 == pytest.approx(classifier, abs=0.5)  # 13,574,144


def test_full_size_video_totals_within_one_percent(full_size):
    patch, net, parts = full_size
    plain = {k: v for k, v in parts.items() if k != "skip_policy"}  # AdaFocus: no pi'
    total = flops.gflops_per_video(plain, FRAMES)
    assert total == pytest.approx(FACTS_VIDEO[patch], rel=0.01)
    assert round(total, 1) == FACTS_VIDEO[patch]  # in fact to the published digit
    # the AdaFocus+ network also pays pi' on every frame (per video: the sum over frames of f_G + pi + pi' + f_C,
    # plus f_L on the kept frames)
    assert flops.net_gflops_per_video(net, FRAMES) == pytest.approx(total + FRAMES * parts["skip_policy"])


@pytest.mark.parametrize("patch", [144, 176, 224])
def test_resnet50_at_other_sizes(patch):
    from adafocus_pl.models.registry import create_backbone

    local = create_backbone("resnet50", pretrained=None).eval()
    gflops = flops.count_gflops(local, lambda f, x: f(x), torch.zeros(1, 3, patch, patch))
    assert round(gflops, 3) == FACTS_LOCAL[patch]


def test_fvcore_default_is_the_whole_torchvision_model_with_batch_norm():
    """The 0.3142 GFLOPs an out-of-the-box fvcore count gives for MobileNetV2 is its default count of the whole
    torchvision model: features (0.2995) + BN (which fvcore counts by default, 0.0134) + the 1280->1000 classifier
    (0.0013) + the global pool (0.00006). We count none of them."""
    import torchvision
    from fvcore.nn import FlopCountAnalysis

    model = torchvision.models.mobilenet_v2(weights=None).eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        default = analysis.total() / 1e9
        ours = flops.count_gflops(model.features, lambda f, x: f(x), torch.zeros(1, 3, 224, 224))
    assert round(default, 4) == 0.3142
    assert round(ours, 4) == FACTS_GLANCE
    by_op = analysis.by_operator()
    assert default - ours == pytest.approx((by_op["batch_norm"] + 1280 * 1000 + 1280 * 7 * 7) / 1e9)


# --------------------------------------------------------------------------------------- pi', arithmetic, cache
def test_skip_policy_entry_only_with_skip_policy():
    plain, plus = flops.component_gflops(tiny_net(False)), flops.component_gflops(tiny_net(True))
    assert "skip_policy" not in plain
    assert "skip_policy" in plus
    assert plus["skip_policy"] > 0
    # same trunk as pi, one output instead of 49: pi - pi' = 48 x hidden multiply-adds
    assert (plus["policy"] - plus["skip_policy"]) * 1e9 == pytest.approx(48 * 64, abs=0.5)
    for key in plain:
        assert plus[key] == pytest.approx(plain[key])


def test_skip_policy_attribute_may_be_missing():
    net = tiny_net(False)
    # the network declares its parts: without pi' there is no such part, no probe and no count
    assert "skip_policy" not in net.parts() and "skip_policy" not in net.flops_probes()
    assert "skip_policy" not in flops.component_gflops(net)


def test_batch_norm_is_not_counted():
    """tiny_local: 4 x (3x3 conv + BN + ReLU): only the convs count."""
    net = tiny_net(False)
    # 32x32 patch, strides 1/2/2/2: output maps 32, 16, 8, 4; 3x3 kernels, no bias
    convs = [m for m in net.local.modules() if isinstance(m, torch.nn.Conv2d)]
    sizes = [32, 16, 8, 4]
    expected = sum(c.in_channels * c.out_channels * 9 * s * s for c, s in zip(convs, sizes, strict=True))
    assert flops.component_gflops(net)["local"] * 1e9 == pytest.approx(expected, abs=0.5)


def test_gflops_per_video_arithmetic():
    parts = {"glance": 1.0, "policy": 0.1, "local": 10.0, "classifier": 0.01}
    # 16 x (1 + 0.1 + 10 + 0.01) = 177.76
    assert flops.gflops_per_video(parts, 16) == pytest.approx(177.76)
    # f_L on half the frames: 16 x (1 + 0.1 + 0.01) + 0.5 x 16 x 10 = 17.76 + 80 = 97.76
    assert flops.gflops_per_video(parts, 16, keep_fraction=0.5) == pytest.approx(97.76)
    # glance only: 16 x (1 + 0.01) = 16.16 (no policy, no f_L)
    assert flops.gflops_per_video(parts, 16, use_local=False) == pytest.approx(16.16)
    plus = {**parts, "skip_policy": 0.2}
    # AdaFocus+: pi' on every frame: 16 x (1 + 0.1 + 0.2 + 0.01) + 0.7 x 16 x 10 = 20.96 + 112 = 132.96
    assert flops.gflops_per_video(plus, 16, keep_fraction=0.7) == pytest.approx(132.96)
    # glance only never runs pi'
    assert flops.gflops_per_video(plus, 16, use_local=False) == pytest.approx(16.16)
    with pytest.raises(ValueError, match="keep_fraction"):
        flops.gflops_per_video(parts, 16, keep_fraction=1.5)


def test_component_gflops_restores_train_mode():
    net = tiny_net(True).train()
    flops.component_gflops(net)
    assert all(m.training for m in net.modules())
    net.eval()
    flops.component_gflops(net)
    assert not any(m.training for m in net.modules())


def test_net_gflops_per_video_is_cached_per_architecture(monkeypatch):
    calls = []
    real = flops.component_gflops

    def counting(net):
        calls.append(net.patch_size)
        return real(net)

    monkeypatch.setattr(flops, "_CACHE", {})
    monkeypatch.setattr(flops, "component_gflops", counting)
    first = flops.net_gflops_per_video(tiny_net(True, patch_size=32), 8)
    again = flops.net_gflops_per_video(tiny_net(True, patch_size=32), 8)  # another instance, same architecture
    assert first == again and calls == [32]
    bigger = flops.net_gflops_per_video(tiny_net(True, patch_size=48), 8)
    assert calls == [32, 48] and bigger > first
    parts = real(tiny_net(True))
    assert flops.net_gflops_per_video(tiny_net(True), 8, keep_fraction=0.5) == pytest.approx(
        flops.gflops_per_video(parts, 8, keep_fraction=0.5))
    assert flops.net_gflops_per_video(tiny_net(True), 8, use_local=False) == pytest.approx(
        8 * (parts["glance"] + parts["classifier"]))


# --------------------------------------------------------------------------------------- CLI
def _table(text: str) -> dict[str, list[str]]:
    """Markdown rows by their first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_cli_full_size_activitynet(capsys):
    from adafocus_pl.flops import main

    main(["--etas", "0.9,0.5", "data=activitynet", "model=adafocus", "model.patch_size=128", "plus=on",
          "paths.data_dir=/nonexistent/adafocus-data"])  # no dataset on disk, nothing downloaded
    rows = _table(capsys.readouterr().out)
    assert float(rows["f_G (mobilenet_v2 @ 224x224)"][0]) == pytest.approx(FACTS_GLANCE, abs=5e-5)
    assert float(rows["pi (7x7 candidates)"][0]) == pytest.approx(FACTS_POLICY, abs=5e-5)
    # pi' has pi's trunk and a 1-output head: 48 x 1024 multiply-adds fewer than pi (shown to 4 digits)
    assert float(rows["pi' (AdaFocus+ skip policy)"][0]) == pytest.approx(
        float(rows["pi (7x7 candidates)"][0]) - 48 * 1024 / 1e9, abs=1e-6)
    assert float(rows["f_L (resnet50 @ 128x128)"][0]) == pytest.approx(FACTS_LOCAL[128], abs=5e-4)
    assert float(rows["f_C (gru, 200 classes)"][0]) == pytest.approx(FACTS_CLASSIFIER, abs=5e-5)
    assert float(rows["AdaFocus"][1]) == pytest.approx(26.5, rel=0.01)
    # per-component figures above: 16 x (0.2995 + 2 x 0.0100 + 0.0136) = 5.3296 fixed, + eta x 16 x 1.335 for f_L
    assert float(rows["AdaFocus+ (eta=0.9)"][1]) == pytest.approx(5.3296 + 0.9 * 21.36, rel=0.01)  # 24.55
    assert float(rows["AdaFocus+ (eta=0.5)"][1]) == pytest.approx(5.3296 + 0.5 * 21.36, rel=0.01)  # 16.01
    assert rows["AdaFocus+ (eta=0.5)"][0] == "50"
    assert "AdaFocus+ (eta=0.7)" not in rows
    # glance only: 16 x (0.2995 + 0.0136) = 5.0096
    assert float(rows["glance only (f_G + f_C)"][1]) == pytest.approx(5.0096, rel=0.01)


def test_cli_default_config_without_plus(capsys):
    from adafocus_pl.flops import main

    result = main([])
    out = capsys.readouterr().out
    rows = _table(out)
    assert not any(name.startswith("pi'") or name.startswith("AdaFocus+") for name in rows)
    assert {"AdaFocus", "glance only (f_G + f_C)"} <= set(rows)
    assert re.search(r"8 frames per video", out)  # the synthetic config's data.num_segments
    parts = result["parts"]
    assert float(rows["AdaFocus"][1]) == pytest.approx(flops.gflops_per_video(parts, 8), rel=1e-3)


def test_cli_plus_uses_config_keep_ratios_and_refuses_keep_without_plus(capsys):
    from adafocus_pl.flops import main

    main(["plus=on"])
    rows = _table(capsys.readouterr().out)
    assert {"AdaFocus+ (eta=0.9)", "AdaFocus+ (eta=0.7)", "AdaFocus+ (eta=0.5)"} <= set(rows)
    assert any(name.startswith("pi'") for name in rows)
    with pytest.raises(SystemExit, match="plus=on"):
        main(["--etas", "0.5"])


def test_cli_help(capsys):
    from adafocus_pl.flops import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--etas" in out
