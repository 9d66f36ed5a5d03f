"""GFLOPs per video, counted per component with fvcore.

Convention (paper footnote 1: "FLOPs refers to the number of multiply-add operations"): one FLOP is one
multiply-add of a convolution or of a matrix product (``nn.Linear``, and the two gate matmuls that ``nn.GRUCell``
traces to); bias adds, BatchNorm, activations, pooling, the GRU's elementwise gate arithmetic, softmax and resizing
count nothing. fvcore's defaults also count ``aten::batch_norm`` (and ``FlopCountAnalysis.set_op_handle(op, None)``
does not remove a default handle), so we clear its handles and register only the matrix-product ops. With that
convention fvcore gives the per-component figures that add up to the paper's GFLOPs per video (README, "Evaluation,
GFLOPs and figures"): MobileNetV2 ``features`` @224 = 0.2995 (fvcore's default 0.3142 is the whole torchvision
model: + 0.0134 of BN + 0.0013 of its 1280->1000 classifier + 0.00006 of pooling), ResNet-50 without its ``fc``
@96/128/144/160/176/192/224 = 0.751/1.335/1.758/2.085/2.606/3.003/4.087, one step of pi =
0.0100 and one step of the GRU f_C (200 classes) = 0.0136.

GFLOPs per video as in paper Table 1 / Fig. 5. Per frame (Sec. 3.4): f_G on the (glance-sized) frame, one step
of pi (and of AdaFocus+'s pi'), f_L on one PxP patch, one step of f_C; a video costs T times that, f_L counted
only on the frames it runs on.

AdaFocus-TSM (Table 3) is counted per clip instead (its parts carry ``per_clip``): f_G over the T_G glance frames,
T_G steps of pi (its actor once), f_L over the T_L patches (or whole frames for the TSM / TSM+ baselines) and one
linear f_C; the temporal shift moves memory and costs nothing.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from adafocus_pl.models.build import build_network
from adafocus_pl.models.contract import VideoNet


@functools.cache
def _fvcore():
    """``(FlopCountAnalysis, the counted ops {aten op: fvcore handle})``, imported on the first count.

    Imported here rather than with this module: importing ``fvcore.nn`` runs ``torch.jit.script`` on its focal
    loss, which PyTorch answers with a "``torch.jit.script`` is deprecated" FutureWarning. Modules that only need
    this one's neighbours (``adafocus_pl.evaluation.evaluate``'s checkpoint loading, used by ``predict``) then never
    import fvcore, and the notice is silenced only around this import.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis
        from fvcore.nn.jit_handles import (
            addmm_flop_jit,
            bmm_flop_jit,
            conv_flop_jit,
            einsum_flop_jit,
            linear_flop_jit,
            matmul_flop_jit,
        )
    # the only ops counted: multiply-adds of convolutions and matrix products (weights times activations); every
    # other traced op (batch_norm, relu, add, mul, sigmoid, tanh, mean, pooling, softmax, interpolation) counts 0
    counted_ops = {
        "aten::_convolution": conv_flop_jit,
        "aten::linear": linear_flop_jit,
        "aten::addmm": addmm_flop_jit,
        "aten::mm": matmul_flop_jit,
        "aten::matmul": matmul_flop_jit,
        "aten::bmm": bmm_flop_jit,
        "aten::einsum": einsum_flop_jit,
    }
    return FlopCountAnalysis, counted_ops


class _Call(nn.Module):
    """Traces ``fn(owner, *inputs)`` with ``owner`` registered as a child, so its weights are parameters."""

    def __init__(self, owner: nn.Module, fn) -> None:
        super().__init__()
        self.owner, self.fn = owner, fn

    def forward(self, *args):
        return self.fn(self.owner, *args)


def count_gflops(owner: nn.Module, fn, *inputs: torch.Tensor) -> float:
    """GFLOPs (multiply-adds of conv and matrix products only, see the module docstring) of ``fn(owner, *inputs)``."""
    flop_count_analysis, counted_ops = _fvcore()
    analysis = flop_count_analysis(_Call(owner, fn), inputs)
    analysis.clear_op_handles().set_op_handle(**counted_ops)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


@torch.no_grad()
def component_gflops(net: VideoNet) -> dict[str, float]:
    """GFLOPs of one frame through each component the network declares (:meth:`VideoNet.flops_probes`):
    ``glance`` (f_G), ``policy`` (pi), ``local`` (f_L on one P x P patch, or the whole frame), ``classifier``
    (f_C), and ``skip_policy`` (AdaFocus+'s pi') only when the network has one; a missing f_G or pi counts 0.
    A network that works per clip (AdaFocus-TSM) gives the same keys per clip, with ``per_clip`` set.

    The inputs are zeros on the network's device; the network's train/eval modes are restored afterwards.
    """
    modes = {module: module.training for module in net.modules()}
    net.eval()
    try:
        probes = net.flops_probes()
        counted = {name: count_gflops(probe.module, probe.fn, *probe.inputs) for name, probe in probes.items()}
    finally:
        for module, training in modes.items():
            module.training = training
    parts = {"per_clip": 1.0} if net.capabilities.per_clip else {}
    for name in ("glance", "policy", "local", "classifier"):
        parts[name] = counted.get(name, 0.0)
    if "skip_policy" in counted:
        parts["skip_policy"] = counted["skip_policy"]
    return parts


# component_gflops of networks seen before, keyed by their architecture (see _signature)
_CACHE: dict[str, dict[str, float]] = {}


def _signature(net: VideoNet) -> str:
    """What the count depends on: every layer's hyper-parameters and shapes (``repr``) and the probes' inputs."""
    sizes = {name: [tuple(x.shape) for x in probe.inputs] for name, probe in net.flops_probes().items()}
    return f"{type(net).__qualname__}{sizes}\n{net!r}"


def cached_component_gflops(net: VideoNet) -> dict[str, float]:
    """:func:`component_gflops`, traced once per architecture and input size in this process."""
    key = _signature(net)
    if key not in _CACHE:
        _CACHE[key] = component_gflops(net)
    return dict(_CACHE[key])


def random_weight_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model`` config (DictConfig or mapping) as a plain dict with ``*_pretrained`` set to None: networks built
    from it to count FLOPs or to time have random weights, so nothing is read or downloaded."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    return {**plain, "glance_pretrained": None, "local_pretrained": None}


def flops_network(model_cfg: Mapping[str, Any], frame_hw: tuple[int, int] | int | None = None):
    """The network a ``model`` config describes (at frames of ``frame_hw`` when given), with random weights (the
    count needs no checkpoint)."""
    kwargs = random_weight_config(model_cfg)
    if frame_hw is not None:
        kwargs["frame_size"] = [frame_hw, frame_hw] if isinstance(frame_hw, int) else list(frame_hw)
    return build_network(kwargs)


_CONFIG_CACHE: dict[str, dict[str, float]] = {}


def model_component_gflops(model_cfg: Mapping, frame_hw: tuple[int, int]) -> dict[str, float]:
    """:func:`component_gflops` of the network a ``model`` config describes, at frames of ``frame_hw``
    (cached by config)."""
    plain = random_weight_config(model_cfg)
    key = json.dumps([plain, list(frame_hw) if not isinstance(frame_hw, int) else frame_hw], sort_keys=True,
                     default=str)
    if key not in _CONFIG_CACHE:
        _CONFIG_CACHE[key] = component_gflops(flops_network(plain, frame_hw))
    return dict(_CONFIG_CACHE[key])


def gflops_per_video(parts: Mapping[str, float], num_frames: int, use_local: bool = True,
                     keep_fraction: float = 1.0) -> float:
    """Total GFLOPs for one video of ``num_frames`` frames from per-frame component ``parts``.

    AdaFocus+ (paper Sec. 3.3): f_G, the policies and f_C run on every frame, f_L(P) only on the kept ones, so a
    video costs the sum over frames of (f_G + policies + f_C) + kept fraction x the sum over frames of f_L(P).
    pi (and pi' when ``parts`` has ``skip_policy``) run on every frame; ``keep_fraction`` of the frames go
    through f_L. ``use_local=False`` is the glance-only network (f_G + f_C: no policy, no f_L).
    AdaFocus-TSM's ``per_clip`` parts already hold a whole clip: ``num_frames`` is then ignored.
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    if parts.get("per_clip"):
        num_frames = 1
    per_frame = parts["glance"] + parts["classifier"]
    if use_local:
        per_frame += parts["policy"] + parts.get("skip_policy", 0.0) + keep_fraction * parts["local"]
    return num_frames * per_frame


def net_gflops_per_video(net: VideoNet, num_frames: int, use_local: bool = True,
                         keep_fraction: float = 1.0) -> float:
    """GFLOPs per video of ``net`` (e.g. logged as ``model/gflops_per_video`` at fit start). The per-component
    count is traced once per architecture (a few seconds for the full-size network) and cached; pi' is counted
    when the network has one (its forward always runs it)."""
    return gflops_per_video(cached_component_gflops(net), num_frames, use_local=use_local,
                            keep_fraction=keep_fraction)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _fmt_total(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.4g}"


def video_rows(parts: Mapping[str, float], num_frames: int,
               etas: tuple[float, ...] | list[float] = ()) -> list[tuple[str, float, float]]:
    """``(method, fraction of frames through f_L, GFLOPs per video)``: AdaFocus (f_L on every frame, no pi'),
    AdaFocus+ at each kept fraction (needs ``parts["skip_policy"]``), and the glance-only network."""
    if etas and "skip_policy" not in parts:
        raise ValueError("AdaFocus+ rows need the skip policy pi' (a network built with skip_policy=True)")
    plain = {k: v for k, v in parts.items() if k != "skip_policy"}
    rows = [("AdaFocus", 1.0, gflops_per_video(plain, num_frames))]
    rows += [(f"AdaFocus+ (eta={eta:g})", float(eta), gflops_per_video(parts, num_frames, keep_fraction=eta))
             for eta in etas]
    rows.append(("glance only (f_G + f_C)", 0.0, gflops_per_video(parts, num_frames, use_local=False)))
    return rows


def gflops_markdown(parts: Mapping[str, float], num_frames: int,
                    etas: tuple[float, ...] | list[float] = (),
                    labels: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """Markdown tables: GFLOPs per frame of each component (``labels`` names them) and per video of
    :func:`video_rows`."""
    names = {"glance": "f_G", "policy": "pi", "skip_policy": "pi'", "local": "f_L", "classifier": "f_C",
             **dict(labels or {})}
    lines = [f"# {title}", ""] if title else []
    unit = "clip" if parts.get("per_clip") else "frame"  # AdaFocus-TSM's parts hold a whole clip
    lines += [f"| component | GFLOPs / {unit} | MFLOPs / {unit} |", "|---|---:|---:|"]
    for key in ("glance", "policy", "skip_policy", "local", "classifier"):
        if key in parts:
            lines.append(f"| {names[key]} | {_fmt(parts[key])} | {_fmt(parts[key] * 1e3)} |")
    lines += ["", f"| method ({num_frames} frames) | frames through f_L (%) | GFLOPs / video |", "|---|---:|---:|"]
    for method, fraction, total in video_rows(parts, num_frames, etas):
        lines.append(f"| {method} | {100 * fraction:.0f} | {_fmt_total(total)} |")
    lines += ["", "GFLOPs = multiply-adds of conv and linear layers (GRU gate matmuls included); BN, activations, "
              "pooling and elementwise ops ignored."]
    return "\n".join(lines) + "\n"
