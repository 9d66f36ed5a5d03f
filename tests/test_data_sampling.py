"""TSN segment sampling: T equal segments, one frame from each."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adafocus_pl.data.sampling import SegmentSampler


@settings(max_examples=300, deadline=None)
@given(
    num_frames=st.integers(1, 5000),
    num_segments=st.integers(1, 32),
    mode=st.sampled_from(["train", "val", "test"]),
    seed=st.integers(0, 2**31),
)
def test_indices_lie_in_their_segments(num_frames, num_segments, mode, seed):
    indices = SegmentSampler(num_segments, mode)(num_frames, torch.Generator().manual_seed(seed))
    assert len(indices) == num_segments
    assert all(isinstance(i, int) and 0 <= i < num_frames for i in indices)
    if num_frames >= num_segments:
        for k, index in enumerate(indices):  # segment k = [floor(kN/T), floor((k+1)N/T))
            assert k * num_frames // num_segments <= index < (k + 1) * num_frames // num_segments
        assert indices == sorted(set(indices))
    else:
        assert indices == list(range(num_frames)) + [num_frames - 1] * (num_segments - num_frames)


@settings(max_examples=100, deadline=None)
@given(num_segments=st.integers(1, 16), per_segment=st.integers(1, 40))
def test_val_centre_matches_release_formula_when_t_divides_n(num_segments, per_segment):
    num_frames = num_segments * per_segment
    tick = num_frames / num_segments
    expected = [int(tick / 2.0 + tick * k) for k in range(num_segments)]
    assert SegmentSampler(num_segments, "val")(num_frames) == expected
    assert SegmentSampler(num_segments, "test")(num_frames) == expected


def test_short_video_repeats_last_frame():
    assert SegmentSampler(8, "train")(3) == [0, 1, 2, 2, 2, 2, 2, 2]
    assert SegmentSampler(8, "val")(8) == list(range(8))


def test_train_is_deterministic_under_a_seeded_generator_and_varies_otherwise():
    sampler = SegmentSampler(16, "train")
    first = sampler(1000, torch.Generator().manual_seed(7))
    assert first == sampler(1000, torch.Generator().manual_seed(7))
    others = {tuple(sampler(1000, torch.Generator().manual_seed(seed))) for seed in range(8)}
    assert len(others) == 8


def test_train_covers_each_segment_uniformly():
    sampler = SegmentSampler(2, "train")
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([sampler(20, generator) for _ in range(2000)])
    assert set(draws[:, 0].tolist()) == set(range(10))
    assert set(draws[:, 1].tolist()) == set(range(10, 20))
    counts = torch.bincount(draws[:, 0], minlength=10).float()
    assert counts.min() > 0.6 * counts.mean()


def test_global_rng_is_used_without_a_generator():
    sampler = SegmentSampler(8, "train")
    torch.manual_seed(3)
    a = sampler(500)
    torch.manual_seed(3)
    assert sampler(500) == a


def test_val_ignores_randomness():
    sampler = SegmentSampler(8, "val")
    assert sampler(100, torch.Generator().manual_seed(1)) == sampler(100, torch.Generator().manual_seed(2))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        SegmentSampler(0, "train")
    with pytest.raises(ValueError):
        SegmentSampler(8, "random")
    with pytest.raises(ValueError):
        SegmentSampler(8, "val")(0)
