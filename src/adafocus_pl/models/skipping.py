"""AdaFocus+'s inference-time frame skipping (paper Sec. 3.3): the threshold rho on p_t^B for a kept fraction eta.

"Only activate f_L for the frames with the top eta% largest p_t^B": rho is the k-th largest p_t^B over a set of
frames, k = round(eta * N), and a frame is kept when p_t^B >= rho. The paper solves rho on the training set.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

# rho before one is solved: Stage II's validation (rho is solved after Stage III+, on the training split) and
# Stage III+'s validation before its first training epoch has solved one
DEFAULT_RHO = 0.5


def check_eta(eta: float) -> float:
    eta = float(eta)
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"the kept fraction eta must lie in (0, 1] (the fraction of frames that run f_L), got {eta}")
    return eta


def solve_rho(keep_probs: Tensor, eta: float) -> float:
    """rho such that exactly the top ``round(eta * N)`` of the ``N`` values in ``keep_probs`` satisfy
    ``p >= rho`` (ties at rho keep all tied frames; with continuous probabilities there are none)."""
    eta = check_eta(eta)
    values = keep_probs.detach().reshape(-1).float()
    if values.numel() == 0:
        raise ValueError("cannot solve the keep threshold rho on an empty set of frames")
    k = min(values.numel(), max(1, round(eta * values.numel())))
    return float(torch.topk(values, k, sorted=True).values[-1])


def solve_rhos(keep_probs: Tensor, etas: Iterable[float]) -> dict[float, float]:
    """``{eta: rho}`` for each kept fraction eta (e.g. 0.9, 0.7, 0.5, the paper's Fig. 5)."""
    return {float(eta): solve_rho(keep_probs, eta) for eta in etas}


def batch_keep_mask(keep_probs: Tensor, eta: float) -> Tensor:
    """``p >= rho`` with rho solved on this batch itself: the training-time stand-in for a rho solved on the
    whole training set (used to fine-tune f_L/f_C under the skipping they will meet at inference)."""
    return keep_probs >= solve_rho(keep_probs, eta)


def keep_mask(keep_logits: Tensor, rho: float | None = None, eta: float | None = None) -> Tensor | None:
    """b_t from pi''s logits: p_t^B = sigmoid(logit) >= ``rho``, else the top ``eta`` of these frames (rho solved
    on them); None when neither is given (every frame runs f_L)."""
    if rho is None and eta is None:
        return None
    keep_probs = torch.sigmoid(keep_logits.detach().float())
    if rho is not None:
        return keep_probs >= rho
    return batch_keep_mask(keep_probs, eta)
