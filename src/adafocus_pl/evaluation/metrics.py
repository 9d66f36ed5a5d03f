"""Offline metrics: top-1 (paper Table 2), the paper's mAP (Table 1, Fig. 5), and how well patches cover the target
region.

Top-1 and AP are computed by torchmetrics, which gives the paper's numbers (checked against a plain definition in
tests/test_evaluation_metrics.py); the conventions it leaves open are fixed here:

* top-1: a tie for the highest score goes to the lowest class index (``torch.argmax``);
* AP: tied scores form one threshold: every positive in a group of equal scores gets the precision over the
  whole group (torchmetrics' and scikit-learn's convention; it does not depend on the order of the videos);
* mAP: a class without positives counts 0 (torchmetrics warns and returns 0 for it; we set it ourselves).
"""

from __future__ import annotations

import warnings

import torch
from torchmetrics.functional.classification import (
    binary_average_precision,
    multiclass_accuracy,
    multilabel_average_precision,
)


def headline_metric(monitor: str) -> str:
    """The metric a run's tables and figures lead with: "mAP" when its ``monitor`` is an mAP (ActivityNet, FCVID,
    Table 1), else "top1" (Mini-Kinetics, Something-Something)."""
    return "mAP" if str(monitor).endswith("mAP") else "top1"


def top1_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of videos whose highest score is the (first) label; the scores are the last step's (paper Sec. 3.4)."""
    labels = labels.to(scores.device).long()
    return multiclass_accuracy(scores, labels, num_classes=scores.shape[1], top_k=1, average="micro").item()


def _as_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """float64 scores in [0, 1] with the same order and ties in every column.

    torchmetrics takes values outside [0, 1] for logits and applies a sigmoid, which can merge distinct large
    scores into ties; a dense rank over all values keeps every column's order and ties exactly.
    """
    scores = scores.detach().double()
    if scores.numel() and (scores.min() < 0 or scores.max() > 1):
        values, rank = torch.unique(scores, sorted=True, return_inverse=True)
        scores = rank.double() / max(len(values) - 1, 1)
    return scores


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Non-interpolated AP of one class: the mean of the precisions at the ranks of the positives (0 if none);
    tied scores share one threshold (see the module docstring)."""
    positives = positives.to(scores.device) > 0
    if not bool(positives.any()):
        return 0.0
    return binary_average_precision(_as_probabilities(scores), positives.long()).item()


def per_class_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AP of every class ``[K]`` (float64) from scores ``[N, K]`` and multi-hot targets ``[N, K]``; 0 for a class
    without positives."""
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores and targets must both be [N, K], got {list(scores.shape)} and {list(targets.shape)}")
    targets = (targets.to(scores.device) > 0).long()
    with warnings.catch_warnings():  # "No positive samples found in target": handled below
        warnings.filterwarnings("ignore", message=".*[Nn]o positive samples.*")
        aps = multilabel_average_precision(_as_probabilities(scores), targets, num_labels=scores.shape[1],
                                           average="none", thresholds=None)
    aps = aps.double()
    return torch.where(targets.any(dim=0), aps.nan_to_num(0.0), torch.zeros_like(aps))


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP over ALL classes, as reported in paper Table 1: softmax scores over the whole split ``[N, K]``,
    multi-hot targets ``[N, K]`` (ActivityNet: first label only; FCVID: all labels); a class without positives
    counts 0."""
    return per_class_average_precision(scores, targets).mean().item()


def patch_box_overlap(offsets: torch.Tensor, patch_size: int, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame: (hit, coverage) of the target box by the patch.

    ``offsets``: ``[..., 2]`` top-left (y, x) of each patch; ``boxes``: ``[..., 4]`` target (x0, y0, x1, y1).
    hit = the patch contains the whole box; coverage = the share of the box's area inside the patch.
    """
    y0, x0 = offsets[..., 0].float(), offsets[..., 1].float()
    y1, x1 = y0 + patch_size, x0 + patch_size
    bx0, by0, bx1, by1 = boxes.unbind(-1)
    inter_w = (torch.minimum(x1, bx1) - torch.maximum(x0, bx0)).clamp(min=0)
    inter_h = (torch.minimum(y1, by1) - torch.maximum(y0, by0)).clamp(min=0)
    area = ((bx1 - bx0) * (by1 - by0)).clamp(min=1e-6)
    coverage = inter_w * inter_h / area
    hit = (x0 <= bx0) & (y0 <= by0) & (x1 >= bx1) & (y1 >= by1)
    return hit.float(), coverage
