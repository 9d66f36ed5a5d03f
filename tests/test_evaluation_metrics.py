"""Top-1 and the paper's mAP (adafocus_pl.evaluation.metrics, computed by torchmetrics) against hand-worked cases
and a plain-python implementation of the definitions (top-1 of the last step's scores; non-interpolated AP per
class, averaged over all classes)."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from adafocus_pl.evaluation.metrics import (
    average_precision,
    mean_average_precision,
    per_class_average_precision,
    top1_accuracy,
)


# ------------------------------------------------------------------------------------ plain-python references
def reference_ap(scores: list[float], positives: list[bool]) -> float:
    """Non-interpolated AP: the mean over the positives of the precision at their rank. Tied scores form one
    group: every positive in the group gets the precision counted over the whole group (our convention)."""
    num_pos = sum(positives)
    if num_pos == 0:
        return 0.0
    ranked = sorted(zip(scores, positives, strict=True), key=lambda pair: -pair[0])
    total, seen, hits, i = 0.0, 0, 0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        group_hits = sum(1 for _, pos in ranked[i:j] if pos)
        seen, hits = seen + (j - i), hits + group_hits
        total += group_hits * hits / seen
        i = j
    return total / num_pos


def reference_ap_by_rank(scores: list[float], positives: list[bool]) -> float:
    """The literal definition for scores without ties: positive at rank k (1-based) with m positives in the top k
    contributes m / k."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    precisions, hits = [], 0
    for k, i in enumerate(order, start=1):
        if positives[i]:
            hits += 1
            precisions.append(hits / k)
    return sum(precisions) / len(precisions) if precisions else 0.0


def reference_map(scores: torch.Tensor, targets: torch.Tensor, ap=reference_ap) -> float:
    s, t = scores.tolist(), (targets > 0).tolist()
    classes = len(s[0])
    return sum(ap([row[k] for row in s], [row[k] for row in t]) for k in range(classes)) / classes


def reference_top1(scores: torch.Tensor, labels: torch.Tensor) -> float:
    s, y = scores.tolist(), labels.tolist()
    # the first index of the maximum (ties: lowest class index)
    return sum(1 for row, label in zip(s, y, strict=True) if row.index(max(row)) == label) / len(y)


# ------------------------------------------------------------------------------------ hand-worked mAP
SCORES = torch.tensor([
    # class 0, 1, 2
    [0.9, 0.1, 0.2],  # video 0
    [0.8, 0.2, 0.3],  # video 1
    [0.1, 0.7, 0.4],  # video 2
    [0.3, 0.3, 0.5],  # video 3
    [0.5, 0.6, 0.6],  # video 4
])
TARGETS = torch.tensor([
    [1, 0, 0],
    [0, 1, 0],
    [1, 1, 0],  # multi-label
    [0, 0, 0],
    [1, 0, 0],
])  # class 2 has no positive


def test_hand_worked_map_three_classes_five_videos():
    # class 0: ranking 0.9(+) 0.8(-) 0.5(+) 0.3(-) 0.1(+): precisions 1/1, 2/3, 3/5 -> (1 + 2/3 + 3/5) / 3 = 34/45
    # class 1: ranking 0.7(+) 0.6(-) 0.3(-) 0.2(+) 0.1(-): precisions 1/1, 2/4 -> (1 + 1/2) / 2 = 3/4
    # class 2: no positive -> 0
    # mAP over all 3 classes: (34/45 + 3/4 + 0) / 3 = 271/540 = 0.50185...
    aps = per_class_average_precision(SCORES, TARGETS)
    assert aps.tolist() == pytest.approx([34 / 45, 3 / 4, 0.0], abs=1e-6)
    assert mean_average_precision(SCORES, TARGETS) == pytest.approx(271 / 540, abs=1e-6)
    assert average_precision(SCORES[:, 0], TARGETS[:, 0]) == pytest.approx(34 / 45, abs=1e-6)
    assert average_precision(SCORES[:, 2], TARGETS[:, 2]) == 0.0


def test_class_without_positives_counts_zero_and_warns_nothing():
    # the same scores with class 2 dropped: (34/45 + 3/4) / 2; with it: divided by 3, not 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_empty = mean_average_precision(SCORES, TARGETS)
    without = mean_average_precision(SCORES[:, :2], TARGETS[:, :2])
    assert without == pytest.approx((34 / 45 + 3 / 4) / 2, abs=1e-6)
    assert with_empty == pytest.approx(without * 2 / 3, abs=1e-6)
    # no class has a positive: mAP 0 (not NaN)
    assert mean_average_precision(SCORES, torch.zeros_like(TARGETS)) == 0.0


def test_targets_may_be_bool_or_float():
    expected = 271 / 540
    assert mean_average_precision(SCORES, TARGETS.bool()) == pytest.approx(expected, abs=1e-6)
    assert mean_average_precision(SCORES, TARGETS.float()) == pytest.approx(expected, abs=1e-6)


def test_ties_share_one_threshold():
    # scores 0.5 0.5 0.5 0.1 with positives + - - +: the tied group (3 videos, 1 positive) has precision 1/3,
    # then 0.1 (+): 2/4. AP = (1/3 + 2/4) / 2 = 5/12 = 0.41667 -- whatever the order inside the tie
    # (by rank in the given order it would be (1/1 + 2/4) / 2 = 0.75 with the positive first, 5/12 with it last)
    for positives in ([1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1]):
        assert average_precision(torch.tensor([0.5, 0.5, 0.5, 0.1]), torch.tensor(positives)) == pytest.approx(
            5 / 12, abs=1e-6)
    # 0.9 (-), then 0.5 0.5 0.5 with two positives: both get 2/4 -> AP = 1/2
    assert average_precision(torch.tensor([0.9, 0.5, 0.5, 0.5]), torch.tensor([0, 1, 1, 0])) == pytest.approx(
        0.5, abs=1e-6)
    # all scores equal: every positive gets the base rate, 2/5
    assert average_precision(torch.full((5,), 0.2), torch.tensor([1, 0, 1, 0, 0])) == pytest.approx(0.4, abs=1e-6)


def test_perfect_and_worst_ranking():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    assert average_precision(scores, torch.tensor([1, 1, 0, 0, 0])) == pytest.approx(1.0, abs=1e-6)
    # positives last: precisions 1/4, 2/5 -> (0.25 + 0.4) / 2 = 0.325
    assert average_precision(scores, torch.tensor([0, 0, 0, 1, 1])) == pytest.approx(0.325, abs=1e-6)


def test_scores_outside_unit_interval_keep_their_order():
    # large logits: a sigmoid (torchmetrics' treatment of values outside [0, 1]) rounds 60, 50 and 40 to 1.0, even
    # in float64, and ties them (AP (1/3 + 2/4) / 2 = 5/12). By rank: 60(+) 50(-) 40(-) 30(+) -> (1 + 2/4) / 2 = 3/4
    scores = torch.tensor([60.0, 50.0, 40.0, 30.0])
    positives = torch.tensor([1, 0, 0, 1])
    assert average_precision(scores, positives) == pytest.approx(0.75, abs=1e-6)
    logits = torch.tensor([[60.0, -3.0], [50.0, 4.0], [40.0, 4.0], [30.0, -10.0]])
    targets = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 0]])
    # class 1: 4(+) and 4(-) tied at the top -> 1/2; then -3(-), -10(-) -> AP 1/2
    assert per_class_average_precision(logits, targets).tolist() == pytest.approx([0.75, 0.5], abs=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        mean_average_precision(SCORES, TARGETS[:, :2])


# ------------------------------------------------------------------------------------ against the references
@pytest.mark.parametrize("seed", range(5))
def test_map_agrees_with_the_definition_on_random_data(seed):
    gen = torch.Generator().manual_seed(seed)
    videos, classes = 60, 7
    scores = torch.softmax(3 * torch.randn(videos, classes, generator=gen), dim=1)
    targets = (torch.rand(videos, classes, generator=gen) < 0.2).long()
    targets[:, -1] = 0  # one class without positives
    # continuous scores have no ties: the rank definition and the tie-grouped one agree
    expected = reference_map(scores, targets, ap=reference_ap_by_rank)
    assert reference_map(scores, targets) == pytest.approx(expected)
    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_map_agrees_with_the_tie_convention_on_quantised_scores(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    videos, classes = 80, 5
    scores = torch.randint(0, 6, (videos, classes), generator=gen).float() / 5  # many ties
    targets = (torch.rand(videos, classes, generator=gen) < 0.3).long()
    assert mean_average_precision(scores, targets) == pytest.approx(reference_map(scores, targets), abs=1e-6)
    # shuffling the videos changes nothing
    perm = torch.randperm(videos, generator=gen)
    assert mean_average_precision(scores[perm], targets[perm]) == pytest.approx(
        reference_map(scores, targets), abs=1e-6)


def test_single_label_map_from_first_labels():
    """ActivityNet: one-hot targets of the first label."""
    rng = random.Random(3)
    videos, classes = 40, 6
    labels = torch.tensor([rng.randrange(classes - 1) for _ in range(videos)])  # the last class never occurs
    scores = torch.softmax(torch.randn(videos, classes, generator=torch.Generator().manual_seed(3)), dim=1)
    targets = torch.nn.functional.one_hot(labels, classes)
    aps = per_class_average_precision(scores, targets)
    assert aps[-1].item() == 0.0
    assert mean_average_precision(scores, targets) == pytest.approx(
        reference_map(scores, targets, ap=reference_ap_by_rank), abs=1e-6)


# ------------------------------------------------------------------------------------ top-1
def test_top1_hand_cases():
    scores = torch.tensor([
        [0.1, 0.7, 0.2],  # argmax 1, label 1: right
        [0.5, 0.4, 0.1],  # argmax 0, label 1: wrong
        [0.3, 0.3, 0.4],  # argmax 2, label 2: right
        [0.2, 0.2, 0.6],  # argmax 2, label 0: wrong
    ])
    assert top1_accuracy(scores, torch.tensor([1, 1, 2, 0])) == pytest.approx(0.5)  # 2 of 4
    assert top1_accuracy(scores, torch.tensor([1, 0, 2, 2])) == pytest.approx(1.0)
    assert top1_accuracy(scores, torch.tensor([0, 2, 0, 1])) == pytest.approx(0.0)


def test_top1_tie_goes_to_the_lowest_class_index():
    scores = torch.tensor([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.1, 0.45, 0.45]])
    # row 0: tie 0/1 -> predicts 0 = label: right; row 1: label 1: wrong; row 2: tie 1/2 -> 1 = label: right
    assert top1_accuracy(scores, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(3))
def test_top1_agrees_with_the_definition_on_random_data(seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (50, 6), generator=gen).float()  # integer scores: ties included
    labels = torch.randint(0, 6, (50,), generator=gen, dtype=torch.int32)
    assert top1_accuracy(scores, labels) == pytest.approx(reference_top1(scores, labels))
