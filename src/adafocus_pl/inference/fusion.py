"""Graph rewrites that make a CNN cheaper at inference without changing its output.

- :func:`fold_batchnorm`: every Conv2d -> BatchNorm2d pair becomes one convolution (``torch.fx`` fusion).
- :func:`fuse_conv_activations`: every Conv2d -> ReLU / ReLU6 pair becomes one oneDNN convolution with the
  activation applied as it writes its output (``torch.ops.mkldnn._convolution_pointwise``, the operator Inductor
  emits for the same pattern), so the activation no longer reads and writes the whole tensor again. It pays off
  where many activations follow wide, cheap convolutions (MobileNetV2's ReLU6), and leaves ResNet-50 as fast as
  before; the outputs equal the unfused module's (timings and the equality check in docs/performance.md).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, fx, nn

from adafocus_pl.inference.onednn import onednn_has

log = logging.getLogger(__name__)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) with every Conv2d -> BatchNorm2d pair folded into one convolution
    (``torch.fx.experimental.optimization.fuse``); the module itself when it cannot be traced symbolically."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(module.eval(), inplace=False)
    except Exception as err:  # data-dependent control flow in a user backbone: keep it unfused
        log.warning("could not fold BatchNorm into the convolutions of %s (%s): running it unfused",
                    type(module).__name__, err)
        return module


def onednn_conv_available() -> bool:
    """Whether this torch build has oneDNN's convolution with a fused activation."""
    return onednn_has("_convolution_pointwise")


class ConvActivation(nn.Module):
    """``activation(conv(x))`` in one oneDNN call (inference only; CPU, float32).

    The weights are plain attributes, not parameters, so ``module.to(memory_format=torch.channels_last)`` leaves
    them in the layout oneDNN reorders fastest (with channels-last weights ResNet-50 ran slower than unfused;
    docs/performance.md). The module therefore stays on the CPU it was made on."""

    def __init__(self, conv: nn.Conv2d, activation: str, scalars: list[float]):
        super().__init__()
        self.weight = conv.weight.detach().contiguous()
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation, self.scalars = activation, scalars

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                       self.dilation, self.groups, self.activation, self.scalars, "")

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, stride={self.stride}, groups={self.groups}, {self.activation}"


def _activation(module: nn.Module) -> tuple[str, list[float]] | None:
    if isinstance(module, nn.ReLU):
        return "relu", []
    if isinstance(module, nn.Hardtanh):  # nn.ReLU6 is Hardtanh(0, 6)
        return "hardtanh", [float(module.min_val), float(module.max_val)]
    return None


def _fusable(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.weight.device.type == "cpu" and conv.weight.dtype == torch.float32)


def fuse_conv_activations(module: nn.Module) -> nn.Module:
    """``module`` with every Conv2d whose only user is a ReLU / ReLU6 / Hardtanh module replaced by one
    :class:`ConvActivation` (see the module docstring): a traced copy, or the ``fx.GraphModule`` given, rewritten in
    place; ``module`` itself when oneDNN lacks the operator or the module cannot be traced. Run it after
    :func:`fold_batchnorm` (a convolution followed by BatchNorm is left as it is)."""
    if not onednn_conv_available():
        return module
    try:
        graph_module = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    except Exception as err:  # data-dependent control flow in a user backbone
        log.warning("could not fuse the activations of %s into its convolutions (%s): running them apart",
                    type(module).__name__, err)
        return module
    modules = dict(graph_module.named_modules())
    fused = 0
    for node in list(graph_module.graph.nodes):
        activation = _activation(modules[node.target]) if node.op == "call_module" else None
        source = node.args[0] if activation is not None else None
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
                and _fusable(modules[source.target])):
            continue
        name = f"{source.target.replace('.', '_')}_with_activation"
        graph_module.add_submodule(name, ConvActivation(modules[source.target], *activation))
        with graph_module.graph.inserting_after(node):
            replacement = graph_module.graph.call_module(name, source.args)
        node.replace_all_uses_with(replacement)
        graph_module.graph.erase_node(node)
        graph_module.graph.erase_node(source)
        fused += 1
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    log.debug("fused %d convolution + activation pairs in %s", fused, type(module).__name__)
    return graph_module
