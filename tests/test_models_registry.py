"""Backbone registry: create/list, unknown names, the backbone contract, and loading local pretrained weights."""

import pytest
import torch
import torchvision

from adafocus_pl.models import create_backbone, list_backbones, register_backbone, registry
from adafocus_pl.models.registry import BackboneWeightsError

# input size per backbone for the contract test (small, to stay fast)
INPUT_SIZE = {"tiny_glance": 96, "tiny_local": 32}


def test_list_contains_builtin_backbones():
    names = list_backbones()
    assert names == sorted(names)
    for name in ["mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101", "tiny_glance", "tiny_local"]:
        assert name in names


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'") as info:
        create_backbone("resnet9000")
    assert "tiny_local" in str(info.value) and "resnet50" in str(info.value)


def test_duplicate_registration_is_an_error():
    name = "_test_duplicate_backbone"
    try:
        register_backbone(name)(lambda: torch.nn.Identity())
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(name)(lambda: torch.nn.Identity())
    finally:
        registry._BACKBONES.pop(name, None)


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_contract(name):
    backbone = create_backbone(name).eval()
    size = INPUT_SIZE.get(name, 64)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feature_map = backbone.forward_features(x)
        pooled = backbone(x)
    assert feature_map.dim() == 4 and feature_map.shape[:2] == (2, backbone.num_features)
    assert pooled.shape == (2, backbone.num_features)
    torch.testing.assert_close(pooled, feature_map.mean(dim=(-2, -1)))
    if name not in INPUT_SIZE:  # torchvision backbones: stride 32
        assert feature_map.shape[-2:] == (2, 2)


def test_torchvision_feature_sizes_and_tiny_maps():
    assert create_backbone("mobilenet_v2").num_features == 1280
    assert create_backbone("resnet50").num_features == 2048
    assert create_backbone("resnet18").num_features == 512
    glance = create_backbone("tiny_glance").eval()
    assert glance.forward_features(torch.zeros(1, 3, 96, 96)).shape[-2:] == (12, 12)
    local = create_backbone("tiny_local", widths=(8, 8, 8, 16))
    assert local.num_features == 16
    assert 100_000 < sum(p.numel() for p in create_backbone("tiny_local").parameters()) < 160_000


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "with_head_and_module_prefix"])
def test_pretrained_local_file_round_trips(tmp_path, wrap):
    source = create_backbone("tiny_local")
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    state = source.state_dict()
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif wrap == "with_head_and_module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
        state["module.fc.weight"] = torch.zeros(10, 128)
        state["module.classifier.1.bias"] = torch.zeros(10)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    _same_state(create_backbone("tiny_local", pretrained=str(path)), source)


@pytest.mark.parametrize(("name", "constructor"), [("resnet18", "resnet18"), ("mobilenet_v2", "mobilenet_v2")])
def test_torchvision_layout_state_dict_loads(tmp_path, name, constructor):
    reference = getattr(torchvision.models, constructor)(weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)  # includes the head (fc.* / classifier.*)
    backbone = create_backbone(name, pretrained=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        if name == "mobilenet_v2":
            expected = reference.features(x)
        else:
            trunk = torch.nn.Sequential(*list(reference.children())[:-2])
            expected = trunk(x)
        torch.testing.assert_close(backbone.forward_features(x), expected)


def test_wrong_shape_file_gives_clear_error(tmp_path):
    path = tmp_path / "narrow.pth"
    torch.save(create_backbone("tiny_local", widths=(16, 64, 64, 128)).state_dict(), path)
    with pytest.raises(BackboneWeightsError) as info:
        create_backbone("tiny_local", pretrained=path)
    message = str(info.value)
    assert str(path) in message and "tiny_local" in message
    assert "shape mismatches" in message
    assert "blocks.0.0.weight: file [16, 3, 3, 3] vs model [32, 3, 3, 3]" in message
    assert "widths" in message  # says how to fix


def test_wrong_keys_file_gives_clear_error(tmp_path):
    path = tmp_path / "prefixed.pth"
    state = {f"net.local.{k}": v for k, v in create_backbone("tiny_local").state_dict().items()}
    torch.save(state, path)
    with pytest.raises(BackboneWeightsError) as info:
        create_backbone("tiny_local", pretrained=path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys" in message and "blocks.0.0.weight [32, 3, 3, 3]" in message
    assert "unexpected keys" in message and "net.local.blocks.0.0.weight" in message
    assert "more)" in message  # long lists are cut


def test_missing_file_and_no_torchvision_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_backbone("tiny_local", pretrained=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="no torchvision weights"):
        create_backbone("tiny_local", pretrained="torchvision")
