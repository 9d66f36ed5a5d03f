"""Backbones for f_G and f_L (paper Sec. 3.1, Eq. 1-2): torchvision MobileNetV2 / ResNets and two tiny CPU CNNs.

Every backbone exposes ``num_features``, ``forward_features(x) -> [N, C, h, w]`` and ``forward(x) -> [N, C]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor, nn

from adafocus_pl.models.registry import register_backbone


class Backbone(nn.Module):
    """Base class: ``forward`` is the global average pool of ``forward_features``."""

    num_features: int

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).mean(dim=(-2, -1))


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 ``features`` (1280 x 7 x 7 at 224 for width 1.0)."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        net = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult)
        self.features = net.features
        self.num_features = net.last_channel

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


class ResNetBackbone(Backbone):
    """torchvision ResNet up to ``layer4`` (parameter names as in torchvision, without ``fc``)."""

    def __init__(self, arch: str):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = net.fc.in_features

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyGlance(Backbone):
    """Cheap global CNN for small frames: average-pool by ``downsample``, then one conv block per width.

    Defaults: 96x96 frame -> 24x24 -> 3 conv blocks (the second with stride 2) -> 64 x 12 x 12 map. Average pooling
    (rather than a strided conv) keeps fine textures invisible to f_G, as the synthetic benchmark intends.
    """

    def __init__(
        self, widths: Sequence[int] = (32, 64, 64), strides: Sequence[int] = (1, 2, 1), downsample: int = 4
    ):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths {tuple(widths)} and strides {tuple(strides)} differ in length")
        self.downsample = nn.AvgPool2d(downsample) if downsample > 1 else nn.Identity()
        channels = [3, *widths]
        self.blocks = nn.Sequential(*(conv_bn_relu(channels[i], channels[i + 1], s) for i, s in enumerate(strides)))
        self.num_features = channels[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class TinyLocal(Backbone):
    """Small local CNN for 32x32 patches: 4 conv blocks, the last width x 4 x 4 map at 32 (the synthetic f_L)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 64, 128), strides: Sequence[int] = (1, 2, 2, 2)):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths {tuple(widths)} and strides {tuple(strides)} differ in length")
        channels = [3, *widths]
        self.blocks = nn.Sequential(*(conv_bn_relu(channels[i], channels[i + 1], s) for i, s in enumerate(strides)))
        self.num_features = channels[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(x)


@register_backbone("mobilenet_v2", torchvision_weights="MobileNet_V2_Weights.IMAGENET1K_V1")
def mobilenet_v2(width_mult: float = 1.0) -> Backbone:
    return MobileNetV2Backbone(width_mult=width_mult)


@register_backbone("resnet18", torchvision_weights="ResNet18_Weights.IMAGENET1K_V1")
def resnet18() -> Backbone:
    return ResNetBackbone("resnet18")


@register_backbone("resnet34", torchvision_weights="ResNet34_Weights.IMAGENET1K_V1")
def resnet34() -> Backbone:
    return ResNetBackbone("resnet34")


@register_backbone("resnet50", torchvision_weights="ResNet50_Weights.IMAGENET1K_V1")
def resnet50() -> Backbone:
    return ResNetBackbone("resnet50")


@register_backbone("resnet101", torchvision_weights="ResNet101_Weights.IMAGENET1K_V1")
def resnet101() -> Backbone:
    return ResNetBackbone("resnet101")


@register_backbone("tiny_glance")
def tiny_glance(widths: Sequence[int] = (32, 64, 64), strides: Sequence[int] = (1, 2, 1), downsample: int = 4):
    return TinyGlance(widths=widths, strides=strides, downsample=downsample)


@register_backbone("tiny_local")
def tiny_local(widths: Sequence[int] = (32, 64, 64, 128), strides: Sequence[int] = (1, 2, 2, 2)):
    return TinyLocal(widths=widths, strides=strides)
