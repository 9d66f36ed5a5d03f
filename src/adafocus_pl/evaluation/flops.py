"""GFLOPs per video, counted per component with fvcore (multiply-adds of conv, linear and GRU-cell layers).

Per frame: f_G on the (glance-sized) frame, one step of pi, f_L on one PxP patch, one step of f_C; a video costs
T times that (f_L only on the frames it runs on). The facts page lists the paper's figures this reproduces.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from adafocus_pl.models.adafocus import AdaFocusNet

# ops that are not multiply-adds of a layer's weights (the paper ignores BN, ReLU, pooling and shifts)
IGNORED_OPS = ("aten::batch_norm", "aten::adaptive_avg_pool2d", "aten::mean", "aten::add", "aten::add_",
               "aten::mul", "aten::mul_", "aten::relu", "aten::relu_", "aten::hardtanh", "aten::hardtanh_",
               "aten::avg_pool2d", "aten::max_pool2d", "aten::upsample_bilinear2d", "aten::softmax",
               "aten::dropout", "aten::sigmoid", "aten::tanh", "aten::rsub", "aten::sub")


class _Call(nn.Module):
    """Traces ``fn(owner, *inputs)`` with ``owner`` registered as a child, so its weights are parameters."""

    def __init__(self, owner: nn.Module, fn) -> None:
        super().__init__()
        self.owner, self.fn = owner, fn

    def forward(self, *args):
        return self.fn(self.owner, *args)


def _gflops(owner: nn.Module, fn, *inputs: torch.Tensor) -> float:
    analysis = FlopCountAnalysis(_Call(owner, fn), inputs)
    for op in IGNORED_OPS:
        analysis.set_op_handle(op, None)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


@torch.no_grad()
def component_gflops(net: AdaFocusNet) -> dict[str, float]:
    """GFLOPs of one frame through each component: ``glance``, ``policy``, ``local``, ``classifier``."""
    net = net.eval()
    frame = torch.zeros(1, 3, *(net.glance_hw or net.frame_hw))
    glance_map = net.glance.forward_features(frame)
    policy_state = net.policy.init_state(1, frame.device)
    patch = torch.zeros(1, 3, net.patch_size, net.patch_size)
    features = torch.zeros(1, net.classifier.in_features)
    classifier_state = net.classifier.init_state(1, frame.device)
    return {
        "glance": _gflops(net.glance, lambda g, x: g.forward_features(x), frame),
        "policy": _gflops(net.policy, lambda p, m, h: p.step(m, h)[0], glance_map, policy_state),
        "local": _gflops(net.local, lambda f, x: f(x), patch),
        "classifier": _gflops(net.classifier, lambda c, x, h: c.step(x, h)[0], features, classifier_state),
    }


def model_component_gflops(model_cfg: Mapping, frame_hw: tuple[int, int]) -> dict[str, float]:
    """:func:`component_gflops` of the network a ``model`` config describes, at frames of ``frame_hw``."""
    return component_gflops(AdaFocusNet(**{**dict(model_cfg), "frame_size": frame_hw}))


def gflops_per_video(parts: Mapping[str, float], num_frames: int, use_local: bool = True,
                     local_fraction: float = 1.0) -> float:
    """Total GFLOPs for one video of ``num_frames`` frames from per-frame component ``parts``;
    ``local_fraction`` of the frames go through f_L (none, and no policy, when ``use_local`` is False)."""
    local = parts["local"] * (local_fraction if use_local else 0.0)
    policy = parts["policy"] if use_local else 0.0
    return num_frames * (parts["glance"] + policy + local + parts["classifier"])
