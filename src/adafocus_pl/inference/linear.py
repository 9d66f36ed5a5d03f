"""``x @ W^T + b`` for the fast path's small matrix products: the recurrent steps of pi, pi' and f_C.

At inference the recurrent parts multiply few rows (the videos of a batch) by large matrices (f_C's input
projection is 3072x3328, 40 MB). BLAS picks poor kernels for these shapes on a CPU: the transposed product below
beat ``F.linear`` at every shape timed, and oneDNN with ``W`` packed for the row count beat both up to 16 rows but
not at 64 (timings per weight shape and row count in docs/performance.md).

So :class:`FastLinear` computes the product as ``(W @ x^T)^T`` (the same maths; the result is a transposed view),
and on a CPU with oneDNN, for at most :data:`ONEDNN_MAX_ROWS` rows, with a copy of ``W`` that oneDNN re-laid out
for that row count (cached per count; this is what Inductor does for frozen linear layers, through the same
``torch.ops.mkldnn`` operators). Results agree with ``F.linear`` to float32 rounding (about 1e-6 relative).
"""

from __future__ import annotations

import torch
from torch import Tensor

from adafocus_pl.inference.onednn import onednn_has

ONEDNN_MAX_ROWS = 16  # above this the transposed BLAS product is as fast (docs/performance.md)


def onednn_linear_available() -> bool:
    """Whether this torch build has the oneDNN linear operators :class:`FastLinear` uses."""
    return onednn_has("_linear_pointwise", "_reorder_linear_weight")


class FastLinear:
    """Inference-only ``F.linear(x, weight, bias)`` for ``x [M, K]`` (see the module docstring)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, use_onednn: bool | None = None):
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.bias_column = None if bias is None else self.bias.unsqueeze(1)
        cpu_float = self.weight.device.type == "cpu" and self.weight.dtype == torch.float32
        self.use_onednn = cpu_float and (onednn_linear_available() if use_onednn is None else use_onednn)
        self._packed: dict[int, Tensor] = {}

    def __call__(self, x: Tensor) -> Tensor:
        rows = x.shape[0]
        if self.use_onednn and rows <= ONEDNN_MAX_ROWS:
            packed = self._packed.get(rows)
            if packed is None:
                packed = self._packed[rows] = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, self.bias, "none", [], "")
        if self.bias_column is None:
            return torch.mm(self.weight, x.t()).t()
        return torch.addmm(self.bias_column, self.weight, x.t()).t()
