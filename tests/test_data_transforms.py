"""Clip transforms: one crop/flip per clip, boxes follow the geometry, eval sizes, device normalisation."""

from __future__ import annotations

import pytest
import torch

from adafocus_pl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipEvalTransform,
    ClipTrainTransform,
    CropParams,
    normalize_on_device,
)


def textured_clip(num_frames: int, height: int, width: int, step: int = 10) -> torch.Tensor:
    """Identical random texture on every frame, brightened by ``step * k`` on frame k."""
    base = torch.randint(0, 120, (3, height, width), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return torch.stack([base + step * k for k in range(num_frames)])


def box_clip(num_frames: int, height: int, width: int, box: tuple[int, int, int, int]):
    """Black frames with a white ``box`` (x0, y0, x1, y1; x1/y1 exclusive) and the matching ``[T, 4]`` boxes."""
    frames = torch.zeros(num_frames, 3, height, width, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    frames[:, :, y0:y1, x0:x1] = 255
    return frames, torch.tensor([box] * num_frames, dtype=torch.float32)


def bright_extent(frame: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) of the pixels brighter than mid-grey."""
    mask = frame.float().mean(0) > 127
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_train_crop_and_flip_are_identical_for_every_frame():
    transform = ClipTrainTransform(size=32, scales=(1.0, 0.875, 0.75, 0.66), flip=True)
    clip = textured_clip(4, 60, 80)
    flips = set()
    for seed in range(12):
        generator = torch.Generator().manual_seed(seed)
        params = transform.sample_params(60, 80, torch.Generator().manual_seed(seed))
        flips.add(params.flip)
        out, boxes = transform(clip, generator=generator)
        assert out.dtype == torch.uint8 and out.shape == (4, 3, 32, 32) and boxes is None
        for k in range(1, 4):  # same geometry: frame k = frame 0 + 10k everywhere
            diff = out[k].int() - out[0].int()
            assert (diff - 10 * k).abs().max() <= 1
    assert flips == {True, False}


def test_train_params_follow_tsn_multiscale_rules():
    transform = ClipTrainTransform(size=224, scales=(1.0, 0.875, 0.75, 0.66), max_distort=1)
    sides = [int(240 * s) for s in transform.scales]
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        p = transform.sample_params(240, 320, generator)
        assert p.height in sides and p.width in sides
        assert abs(sides.index(p.height) - sides.index(p.width)) <= 1
        assert 0 <= p.top <= 240 - p.height and 0 <= p.left <= 320 - p.width
        seen.add((p.height, p.width))
    assert len(seen) == 10  # 4 + 2*3 pairs with |i - j| <= 1


def test_train_is_deterministic_under_a_seeded_generator():
    transform = ClipTrainTransform(size=24)
    clip = textured_clip(3, 40, 50)
    a, _ = transform(clip, generator=torch.Generator().manual_seed(5))
    b, _ = transform(clip, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("flip", [False, True])
def test_boxes_follow_crop_resize_and_flip(flip):
    transform = ClipTrainTransform(size=48)
    frames, boxes = box_clip(2, 90, 120, (40, 30, 80, 70))
    params = CropParams(top=20, left=30, height=60, width=72, flip=flip)
    out, out_boxes = transform.apply(frames, boxes, params)
    sy, sx = 48 / 60, 48 / 72
    expected = torch.tensor([(40 - 30) * sx, (30 - 20) * sy, (80 - 30) * sx, (70 - 20) * sy])
    if flip:
        expected = torch.tensor([48 - expected[2], expected[1], 48 - expected[0], expected[3]])
    assert torch.allclose(out_boxes[0], expected, atol=1e-4)
    assert torch.equal(out_boxes[0], out_boxes[1])
    assert (bright_extent(out[0]) - expected).abs().max() <= 1.5  # the pixels agree with the box


def test_boxes_follow_random_train_draws_and_are_clamped():
    transform = ClipTrainTransform(size=40, scales=(0.66,), flip=True)
    frames, boxes = box_clip(2, 80, 80, (5, 5, 70, 70))
    for seed in range(10):
        out, out_boxes = transform(frames, boxes, generator=torch.Generator().manual_seed(seed))
        assert out_boxes.min() >= 0 and out_boxes.max() <= 40
        assert (bright_extent(out[0]) - out_boxes[0]).abs().max() <= 1.5


@pytest.mark.parametrize(
    ("mode", "scale_x", "scale_y", "left", "top"),
    [("square", 64 / 200, 64 / 100, 0, 0), ("short_side", 64 / 100, 64 / 100, (128 - 56) // 2, (64 - 56) // 2)],
)
def test_eval_sizes_and_boxes(mode, scale_x, scale_y, left, top):
    transform = ClipEvalTransform(resize=64, crop=56 if mode == "short_side" else 64, resize_mode=mode)
    frames, boxes = box_clip(3, 100, 200, (60, 20, 120, 80))
    out, out_boxes = transform(frames, boxes)
    size = transform.crop
    assert out.shape == (3, 3, size, size) and out.dtype == torch.uint8
    expected = torch.tensor([60 * scale_x - left, 20 * scale_y - top, 120 * scale_x - left, 80 * scale_y - top])
    assert torch.allclose(out_boxes[0], expected.clamp(0, size), atol=1e-3)
    assert (bright_extent(out[0]) - out_boxes[0]).abs().max() <= 1.5


def test_eval_default_paper_square_256_then_224():
    out, _ = ClipEvalTransform()(torch.zeros(2, 3, 180, 320, dtype=torch.uint8))
    assert out.shape == (2, 3, 224, 224)
    out, _ = ClipEvalTransform(resize_mode="short_side")(torch.zeros(2, 3, 180, 320, dtype=torch.uint8))
    assert out.shape == (2, 3, 224, 224)
    with pytest.raises(ValueError):
        ClipEvalTransform(resize_mode="long_side")


def test_eval_identity_when_sizes_match():
    clip = textured_clip(2, 32, 32)
    out, _ = ClipEvalTransform(resize=32, crop=32)(clip)
    assert torch.equal(out, clip)


def test_train_identity_when_the_crop_is_the_whole_frame_at_its_size():
    clip, boxes = box_clip(3, 48, 48, (5, 6, 25, 26))
    transform = ClipTrainTransform(size=48, scales=(1.0,), flip=False)
    out, out_boxes = transform(clip, boxes)
    assert out is clip and torch.equal(out_boxes, boxes)  # no copy, no resample
    moved, _ = transform.apply(clip, boxes, CropParams(0, 0, 48, 48, flip=True))  # a flip is not the identity
    assert not torch.equal(moved, clip)


def test_normalize_on_device():
    frames = torch.zeros(2, 3, 3, 4, 4, dtype=torch.uint8)
    frames[..., 1, :] = 255  # row 1 of every frame
    out = normalize_on_device(frames)
    assert out.dtype == torch.float32 and out.shape == frames.shape
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[0, 0, :, 0, 0], (0 - mean) / std)
    assert torch.allclose(out[1, 2, :, 1, 3], (1 - mean) / std)
    custom = normalize_on_device(frames, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert custom.min() == -1 and custom.max() == 1


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="T, C, H, W"):
        ClipEvalTransform()(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="boxes"):
        ClipEvalTransform(32, 32)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, 2))
