"""Classifiers f_C producing a prediction at every step (paper Sec. 3.1, Eq. 4).

Both expose ``init_state(batch, device)``, ``step(x [B, F], state) -> (logits [B, K], new_state)`` and
``forward(x [B, T, F]) -> logits [B, T, K]``; the logits at step t use frames 1..t only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class RecurrentClassifier(nn.Module):
    """``GRUCell(in -> hidden) -> Dropout -> Linear(hidden -> K)`` applied at every step (the "gru" f_C)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024, dropout: float = 0.8):
        super().__init__()
        self.in_features, self.num_classes, self.hidden = in_features, num_classes, hidden
        self.gru = nn.GRUCell(in_features, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(batch_size, self.hidden, device=device, dtype=self.fc.weight.dtype)

    def step(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Eq. (4) online: ``(logits [B, K], h_new)`` after feeding ``[e_G, e_L]`` of one frame."""
        if h is None:
            h = self.init_state(x.shape[0], x.device)
        h_new = self.gru(x, h)
        return self.fc(self.dropout(h_new)), h_new

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        """Per-step logits ``[B, T, K]`` for features ``[B, T, F]``."""
        if h is None:
            h = self.init_state(x.shape[0], x.device)
        states = []
        for t in range(x.shape[1]):
            h = self.gru(x[:, t], h)
            states.append(h)
        return self.fc(self.dropout(torch.stack(states, dim=1)))


class FrameAverageClassifier(nn.Module):
    """Shared per-frame linear layer; step t outputs ``log(mean_{s<=t} softmax(z_s))`` (the "fc" f_C).

    The output is a log-probability, so cross-entropy on it is the cross-entropy of the averaged prediction.
    The step state is ``(log of the running sum of softmaxes [B, K], count)``, kept in log space for stability.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.8):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def frame_log_probs(self, x: Tensor) -> Tensor:
        """Per-frame log-softmax ``[..., K]``."""
        return torch.log_softmax(self.fc(self.dropout(x)).float(), dim=-1)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple[Tensor, int]:
        return torch.full((batch_size, self.num_classes), -math.inf, device=device), 0

    def step(self, x: Tensor, state: tuple[Tensor, int] | None = None) -> tuple[Tensor, tuple[Tensor, int]]:
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        log_sum, count = state
        log_sum = torch.logaddexp(log_sum, self.frame_log_probs(x))
        count += 1
        return log_sum - math.log(count), (log_sum, count)

    def forward(self, x: Tensor) -> Tensor:
        log_sums = torch.logcumsumexp(self.frame_log_probs(x), dim=1)  # [B, T, K]
        counts = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=log_sums.dtype)
        return log_sums - counts.log()[None, :, None]


CLASSIFIERS = ("gru", "fc")


def build_classifier(kind: str, in_features: int, num_classes: int, hidden: int = 1024,
                     dropout: float = 0.8) -> nn.Module:
    """f_C by name: "gru" (:class:`RecurrentClassifier`, the paper's) or "fc" (:class:`FrameAverageClassifier`)."""
    if kind == "gru":
        return RecurrentClassifier(in_features, num_classes, hidden=hidden, dropout=dropout)
    if kind == "fc":
        return FrameAverageClassifier(in_features, num_classes, dropout=dropout)
    raise ValueError(f"classifier must be 'gru' or 'fc', got {kind!r}")
