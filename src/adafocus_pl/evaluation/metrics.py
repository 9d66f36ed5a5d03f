"""Offline metrics: top-1, the paper's mAP, and how well patches cover the target region."""

from __future__ import annotations

import torch


def top1_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of videos whose highest score is the (first) label."""
    return (scores.argmax(dim=1) == labels).float().mean().item()


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Non-interpolated AP of one class: the mean of the precisions at the ranks of the positives (0 if none)."""
    num_pos = int(positives.sum().item())
    if num_pos == 0:
        return 0.0
    order = torch.argsort(scores, descending=True, stable=True)
    hits = positives[order].float()
    precision_at_k = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float32)
    return (precision_at_k * hits).sum().item() / num_pos


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP over ALL classes (facts page, "Metrics"): softmax scores over the whole split ``[N, K]``,
    multi-hot targets ``[N, K]`` (ActivityNet: first label only; FCVID: all labels); a class without positives
    counts 0."""
    aps = [average_precision(scores[:, k], targets[:, k] > 0) for k in range(scores.shape[1])]
    return sum(aps) / len(aps)


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
