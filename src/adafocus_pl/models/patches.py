"""Patch locations and batched cropping (paper Sec. 3.1, Eq. 2-3; fixed-policy baselines of Table 5).

Offsets are integer ``(y, x)`` top-left corners of a ``P x P`` patch inside an ``H x W`` frame, in
``[0, H - P] x [0, W - P]`` (both ends included).
"""

from __future__ import annotations

import torch
from torch import Tensor

FrameSize = int | tuple[int, int]


def frame_pair(frame_hw: FrameSize) -> tuple[int, int]:
    """``(H, W)`` from an int or a pair."""
    if isinstance(frame_hw, int):
        return frame_hw, frame_hw
    height, width = frame_hw
    return int(height), int(width)


def check_patch_size(frame_hw: FrameSize, patch_size: int) -> tuple[int, int]:
    """Validate ``0 < P < H`` and ``P < W``; return ``(H, W)``."""
    height, width = frame_pair(frame_hw)
    if not 0 < patch_size < min(height, width):
        raise ValueError(
            f"patch size {patch_size} must be positive and smaller than the frame's height and width "
            f"(frame {height}x{width}; paper: P < H, W)"
        )
    return height, width


def _axis_positions(grid_size: int, length: int, patch_size: int) -> Tensor:
    span = length - patch_size
    if grid_size == 1:
        return torch.tensor([span // 2])
    # floor(k / (n - 1) * span) in exact integer arithmetic
    return torch.arange(grid_size) * span // (grid_size - 1)


def grid_offsets(grid_size: int, frame_hw: FrameSize, patch_size: int) -> Tensor:
    """Top-left ``(y, x)`` of the ``n x n`` candidate patches, row-major: LongTensor ``[n * n, 2]``.

    Corner-aligned: per axis ``floor(k / (n - 1) * (H - P))``, so the borders are included; ``n = 1`` is the centre.
    """
    if grid_size < 1:
        raise ValueError(f"grid size must be >= 1, got {grid_size}")
    height, width = check_patch_size(frame_hw, patch_size)
    ys = _axis_positions(grid_size, height, patch_size)
    xs = _axis_positions(grid_size, width, patch_size)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_y.reshape(-1), grid_x.reshape(-1)], dim=1)


def crop_patches(
    frames: Tensor, offsets: Tensor, patch_size: int, check: bool = True, frame_index: Tensor | None = None
) -> Tensor:
    """Crop ``frames [N, C, H, W]`` at ``offsets [N, 2]`` (long, top-left y, x) -> ``[N, C, P, P]``.

    One batched gather on the flattened frames, equal to ``frames[i, :, y:y+P, x:x+P]`` for every ``i``.
    ``check`` validates the offsets' range (skipped while tracing). With ``frame_index [M]`` only those frames are
    cropped (``offsets [M, 2]``, result ``[M, C, P, P]``), without copying the other frames (AdaFocus+ skipping).
    """
    total, channels, height, width = frames.shape
    check_patch_size((height, width), patch_size)
    n = total if frame_index is None else int(frame_index.numel())
    if offsets.shape != (n, 2):
        raise ValueError(f"offsets must have shape [{n}, 2], got {list(offsets.shape)}")
    offsets = offsets.long()
    if check and not torch.jit.is_tracing():
        limit = torch.tensor([height - patch_size, width - patch_size], device=offsets.device)
        if bool(((offsets < 0) | (offsets > limit)).any()):
            raise ValueError(
                f"patch offsets out of range: (y, x) must lie in [0, {height - patch_size}] x "
                f"[0, {width - patch_size}] for P={patch_size} in a {height}x{width} frame"
            )
    steps = torch.arange(patch_size, device=frames.device)
    rows = offsets[:, 0, None] + steps  # [N, P]
    cols = offsets[:, 1, None] + steps  # [N, P]
    flat_index = (rows[:, :, None] * width + cols[:, None, :]).reshape(n, 1, patch_size * patch_size)
    if frame_index is None:
        patches = frames.reshape(n, channels, height * width).gather(2, flat_index.expand(n, channels, -1))
        return patches.reshape(n, channels, patch_size, patch_size)
    # index into the whole [N*C*H*W] buffer: frame i's channel c starts at (i*C + c)*H*W
    starts = (frame_index.to(frames.device).long()[:, None] * channels + torch.arange(channels, device=frames.device))
    flat = (starts[:, :, None] * (height * width) + flat_index).reshape(-1)
    return frames.reshape(-1).take(flat).reshape(n, channels, patch_size, patch_size)


def random_offsets(
    n: int,
    frame_hw: FrameSize,
    patch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform top-left offsets ``[n, 2]`` in ``[0, H - P] x [0, W - P]``, both ends included (Eq. 5 RandomCrop)."""
    height, width = check_patch_size(frame_hw, patch_size)
    ys = torch.randint(0, height - patch_size + 1, (n,), generator=generator, device=device)
    xs = torch.randint(0, width - patch_size + 1, (n,), generator=generator, device=device)
    return torch.stack([ys, xs], dim=1)


def centre_offsets(n: int, frame_hw: FrameSize, patch_size: int, device: torch.device | str | None = None) -> Tensor:
    """The centre patch for all ``n`` frames: ``[n, 2]`` (Table 5, "centre" fixed policy)."""
    height, width = check_patch_size(frame_hw, patch_size)
    centre = torch.tensor([(height - patch_size) // 2, (width - patch_size) // 2], device=device)
    return centre.expand(n, 2).clone()


def gaussian_offsets(
    n: int,
    frame_hw: FrameSize,
    patch_size: int,
    std: float = 0.25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Offsets ``[n, 2]`` drawn around the centre with ``std`` as a fraction of the frame size, rounded and clamped
    to the valid range (Table 5, "Gaussian" fixed policy)."""
    height, width = check_patch_size(frame_hw, patch_size)
    noise = torch.randn(n, 2, generator=generator, device=device)
    centre = torch.tensor([(height - patch_size) / 2, (width - patch_size) / 2], device=noise.device)
    scale = torch.tensor([float(height), float(width)], device=noise.device)
    offsets = torch.round(centre + std * scale * noise).long()
    low = torch.zeros(2, dtype=torch.long, device=noise.device)
    high = torch.tensor([height - patch_size, width - patch_size], device=noise.device)
    return torch.maximum(torch.minimum(offsets, high), low)
