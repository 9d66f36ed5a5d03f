"""AdaFocus+'s inference-time frame skipping (paper Sec. 3.3): the threshold rho on p_t^B for a kept fraction eta.

"Only activate f_L for the frames with the top eta% largest p_t^B": rho is the k-th largest p_t^B over a set of
frames, k = round(eta * N), and a frame is kept when p_t^B >= rho. The paper solves rho on the training set.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def check_keep_ratio(keep_ratio: float) -> float:
    keep_ratio = float(keep_ratio)
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep ratio eta must lie in (0, 1] (the fraction of frames that run f_L), got {keep_ratio}")
    return keep_ratio


def solve_keep_threshold(keep_probs: Tensor, keep_ratio: float) -> float:
    """rho such that exactly the top ``round(keep_ratio * N)`` of the ``N`` values in ``keep_probs`` satisfy
    ``p >= rho`` (ties at rho keep all tied frames; with continuous probabilities there are none)."""
    keep_ratio = check_keep_ratio(keep_ratio)
    values = keep_probs.detach().reshape(-1).float()
    if values.numel() == 0:
        raise ValueError("cannot solve the keep threshold rho on an empty set of frames")
    k = min(values.numel(), max(1, round(keep_ratio * values.numel())))
    return float(torch.topk(values, k, sorted=True).values[-1])


def solve_keep_thresholds(keep_probs: Tensor, keep_ratios: Iterable[float]) -> dict[float, float]:
    """``{eta: rho}`` for each kept fraction eta (e.g. 0.9, 0.7, 0.5, the paper's Fig. 5)."""
    return {float(eta): solve_keep_threshold(keep_probs, eta) for eta in keep_ratios}


def batch_keep_mask(keep_probs: Tensor, keep_ratio: float) -> Tensor:
    """``p >= rho`` with rho solved on this batch itself: the training-time stand-in for a rho solved on the
    whole training set (used to fine-tune f_L/f_C under the skipping they will meet at inference)."""
    return keep_probs >= solve_keep_threshold(keep_probs, keep_ratio)


def keep_mask(keep_logits: Tensor, keep_threshold: float | None = None, keep_ratio: float | None = None
              ) -> Tensor | None:
    """b_t from pi''s logits: p_t^B = sigmoid(logit) >= rho (``keep_threshold``), else the top eta of these frames
    (``keep_ratio``, rho solved on them); None when neither is given (every frame runs f_L)."""
    if keep_threshold is None and keep_ratio is None:
        return None
    keep_probs = torch.sigmoid(keep_logits.detach().float())
    if keep_threshold is not None:
        return keep_probs >= keep_threshold
    return batch_keep_mask(keep_probs, keep_ratio)
