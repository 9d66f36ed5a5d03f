"""Temporal shift module (TSM, Lin et al. ICCV 2019), as used by AdaFocus-TSM (paper Sec. 4.2, Table 3).

A backbone sees the frames of a clip as one batch ``[N * T, C, H, W]`` (video-major). Before a convolution, TSM
moves ``C / fold_div`` channels one frame back in time and another ``C / fold_div`` one frame forward (zeros where
the clip ends), so the convolution mixes neighbouring frames at no multiply-add cost. ``fold_div = 8``: a quarter
of the channels move, an eighth each way (the TSM default).

Placement (:func:`add_temporal_shift`):

- ``residual`` (TSM's choice): the shift is applied at the start of each residual branch, so the identity path
  keeps the frame's own features: the first convolution of every torchvision ResNet block and of every
  MobileNetV2 inverted-residual block that has a skip connection;
- plain conv stacks without residual branches (our tiny CPU backbones) shift the input of every block after the
  first ("in-place" shift in the TSM paper's terms).

The shifted convolution is a ``nn.Conv2d`` subclass with the same parameters, so parameter names, and therefore
torchvision's pretrained weights, are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def temporal_shift(x: Tensor, segments: int, fold_div: int = 8) -> Tensor:
    """Shift ``x [N * segments, C, H, W]`` along time: channels ``[0, C/f)`` take the next frame's values,
    ``[C/f, 2C/f)`` the previous frame's, the rest stay (``f = fold_div``)."""
    total, channels = x.shape[:2]
    if total % segments:
        raise ValueError(
            f"temporal shift over {segments} frames got a batch of {total} frames, not a multiple of {segments}: "
            f"feed whole clips (the backbone was built for {segments} frames per clip)"
        )
    fold = channels // fold_div
    clip = x.reshape(total // segments, segments, *x.shape[1:])
    out = torch.zeros_like(clip)
    out[:, :-1, :fold] = clip[:, 1:, :fold]                     # from the next frame (shift back in time)
    out[:, 1:, fold:2 * fold] = clip[:, :-1, fold:2 * fold]      # from the previous frame (shift forward)
    out[:, :, 2 * fold:] = clip[:, :, 2 * fold:]
    return out.reshape_as(x)


class ShiftedConv2d(nn.Conv2d):
    """``nn.Conv2d`` applied after :func:`temporal_shift` of its input (same parameters as the conv it replaces)."""

    segments: int = 1
    fold_div: int = 8

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(temporal_shift(x, self.segments, self.fold_div))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift_segments={self.segments}, shift_fold_div={self.fold_div}"


def shifted(conv: nn.Conv2d, segments: int, fold_div: int) -> ShiftedConv2d:
    """A :class:`ShiftedConv2d` with ``conv``'s configuration and (shared) parameters."""
    new = ShiftedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                        padding_mode=conv.padding_mode)
    new.weight = conv.weight
    if conv.bias is not None:
        new.bias = conv.bias
    new.segments, new.fold_div = int(segments), int(fold_div)
    return new


def _residual_branch_convs(backbone: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(parent, attribute)`` of the first conv of every residual branch of torchvision ResNets / MobileNetV2."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    found = []
    for module in backbone.modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            found.append((module, "conv1"))
        elif isinstance(module, InvertedResidual) and module.use_res_connect:
            # conv[0] is a Conv2dNormActivation (the expansion, or the depthwise conv when expand_ratio == 1)
            found.append((module.conv[0], "0"))
    return found


def _block_convs(backbone: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(parent, attribute)`` of the first conv of every block after the first of a plain ``blocks`` stack."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return []
    found = []
    for block in list(blocks)[1:]:
        for name, child in block.named_children():
            if isinstance(child, nn.Conv2d):
                found.append((block, name))
                break
    return found


def add_temporal_shift(backbone: nn.Module, segments: int, fold_div: int = 8) -> nn.Module:
    """Insert TSM into ``backbone`` in place (residual shift where it has residual branches, see the module
    docstring) and return it; the backbone then expects whole clips of ``segments`` frames."""
    if segments < 1:
        raise ValueError(f"temporal shift needs segments >= 1 (frames per clip), got {segments}")
    if fold_div < 2:
        raise ValueError(f"temporal shift fold_div must be >= 2 (C / fold_div channels move each way), got {fold_div}")
    places = _residual_branch_convs(backbone) or _block_convs(backbone)
    if not places:
        raise ValueError(
            f"cannot place a temporal shift in {type(backbone).__name__}: it has neither torchvision residual "
            f"blocks nor a 'blocks' stack of conv blocks"
        )
    for parent, name in places:
        conv = getattr(parent, name)
        if isinstance(conv, ShiftedConv2d):
            raise ValueError(f"{type(backbone).__name__} already has a temporal shift")
        setattr(parent, name, shifted(conv, segments, fold_div))
    backbone.shift_segments = int(segments)
    return backbone
