"""Candidate grid, batched crop (== plain slicing everywhere) and the fixed-policy offset samplers."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adafocus_pl.models.patches import (
    centre_offsets,
    crop_patches,
    gaussian_offsets,
    grid_offsets,
    random_offsets,
)


def _sliced(frames, offsets, p):
    return torch.stack([frames[i, :, y : y + p, x : x + p] for i, (y, x) in enumerate(offsets.tolist())])


def test_grid_offsets_reference_values():
    grid = grid_offsets(7, 224, 128)
    assert grid.dtype == torch.long and grid.shape == (49, 2)
    assert sorted(set(grid[:, 0].tolist())) == [0, 16, 32, 48, 64, 80, 96]
    assert sorted(set(grid[:, 1].tolist())) == [0, 16, 32, 48, 64, 80, 96]
    # row-major: index k -> (row k // 7, column k % 7)
    assert grid[1].tolist() == [0, 16] and grid[7].tolist() == [16, 0] and grid[48].tolist() == [96, 96]


@pytest.mark.parametrize("n", [2, 5, 6, 7, 8])
@pytest.mark.parametrize(("frame_hw", "p"), [((224, 224), 96), ((96, 96), 32), ((50, 70), 17), ((33, 40), 32)])
def test_grid_is_corner_aligned(n, frame_hw, p):
    h, w = frame_hw
    grid = grid_offsets(n, frame_hw, p)
    assert grid[0].tolist() == [0, 0] and grid[-1].tolist() == [h - p, w - p]
    ys = [k * (h - p) // (n - 1) for k in range(n)]
    xs = [k * (w - p) // (n - 1) for k in range(n)]
    assert grid.tolist() == [[y, x] for y in ys for x in xs]


def test_grid_of_one_is_the_centre():
    assert grid_offsets(1, (100, 60), 20).tolist() == [[40, 20]]


@pytest.mark.parametrize("n", [5, 6, 7, 8])
@pytest.mark.parametrize(("frame_hw", "p"), [((96, 96), 32), ((64, 48), 20), ((41, 77), 40), ((30, 30), 1)])
def test_batched_crop_equals_slicing_at_every_grid_position(n, frame_hw, p):
    generator = torch.Generator().manual_seed(n)
    offsets = grid_offsets(n, frame_hw, p)
    h, w = frame_hw
    borders = torch.tensor([[0, 0], [0, w - p], [h - p, 0], [h - p, w - p], [h - p, (w - p) // 2]])
    offsets = torch.cat([offsets, borders])
    frames = torch.randn(len(offsets), 3, h, w, generator=generator)
    patches = crop_patches(frames, offsets, p)
    assert patches.shape == (len(offsets), 3, p, p)
    assert torch.equal(patches, _sliced(frames, offsets, p))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 40), st.integers(2, 40), st.integers(1, 5), st.data()
)
def test_batched_crop_equals_slicing_property(h, w, n, data):
    p = data.draw(st.integers(1, min(h, w) - 1))
    ys = data.draw(st.lists(st.integers(0, h - p), min_size=n, max_size=n))
    xs = data.draw(st.lists(st.integers(0, w - p), min_size=n, max_size=n))
    offsets = torch.tensor(list(zip(ys, xs)))
    frames = torch.arange(n * 2 * h * w, dtype=torch.float32).reshape(n, 2, h, w)
    assert torch.equal(crop_patches(frames, offsets, p), _sliced(frames, offsets, p))


def test_crop_passes_gradients_to_the_frames():
    frames = torch.randn(2, 3, 10, 10, requires_grad=True)
    crop_patches(frames, torch.tensor([[0, 0], [5, 3]]), 4).sum().backward()
    assert frames.grad.sum().item() == 2 * 3 * 16
    assert frames.grad[1, :, 5:9, 3:7].eq(1).all() and frames.grad[1, :, :5].eq(0).all()


@pytest.mark.parametrize(("frame_hw", "p"), [((40, 40), 32), ((36, 50), 32)])
def test_random_offsets_cover_both_extremes(frame_hw, p):
    h, w = frame_hw
    offsets = random_offsets(5000, frame_hw, p, generator=torch.Generator().manual_seed(0))
    assert offsets.dtype == torch.long and offsets.shape == (5000, 2)
    assert offsets[:, 0].min() == 0 and offsets[:, 0].max() == h - p
    assert offsets[:, 1].min() == 0 and offsets[:, 1].max() == w - p


def test_random_offsets_are_reproducible():
    a = random_offsets(16, 96, 32, generator=torch.Generator().manual_seed(3))
    b = random_offsets(16, 96, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_centre_and_gaussian_offsets():
    assert centre_offsets(3, (96, 80), 32).tolist() == [[32, 24]] * 3
    offsets = gaussian_offsets(4000, (96, 80), 32, std=0.25, generator=torch.Generator().manual_seed(0))
    assert offsets.dtype == torch.long and offsets.shape == (4000, 2)
    assert offsets.min() >= 0 and offsets[:, 0].max() <= 64 and offsets[:, 1].max() <= 48
    assert (offsets == 0).any() and (offsets[:, 0] == 64).any()  # clamped at the borders
    mean = offsets.float().mean(0)
    assert abs(mean[0] - 32) < 1.5 and abs(mean[1] - 24) < 1.5
    narrow = gaussian_offsets(100, 96, 32, std=0.0)
    assert narrow.tolist() == [[32, 32]] * 100


def test_validation_errors():
    with pytest.raises(ValueError, match="smaller than the frame"):
        grid_offsets(7, 96, 96)
    with pytest.raises(ValueError, match="smaller than the frame"):
        random_offsets(4, (96, 30), 32)
    with pytest.raises(ValueError, match="grid size"):
        grid_offsets(0, 96, 32)
    frames = torch.zeros(2, 3, 40, 40)
    with pytest.raises(ValueError, match="out of range"):
        crop_patches(frames, torch.tensor([[0, 0], [0, 9]]), 32)
    with pytest.raises(ValueError, match="out of range"):
        crop_patches(frames, torch.tensor([[-1, 0], [0, 0]]), 32)
    with pytest.raises(ValueError, match="shape"):
        crop_patches(frames, torch.tensor([[0, 0]]), 32)
