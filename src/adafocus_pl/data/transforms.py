"""Clip transforms on uint8 ``[T, C, H, W]`` frames with torchvision.transforms.v2 (they handle a clip
and its boxes together, so no video-transform library is needed).

One set of parameters is drawn per clip and applied to every frame (as in the authors' release: the same crop and
flip for every frame of a clip), so the focus patch chosen on one frame lines up with the others. Optional ``[T, 4]`` xyxy
boxes (x1/y1 exclusive) follow the crop, resize and flip through ``tv_tensors.BoundingBoxes`` and are clamped to
the output frame. Normalisation is not done here: ``normalize_on_device`` runs after the batch reaches the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("square", "short_side")


@dataclass(frozen=True)
class CropParams:
    """The per-clip draw of ``ClipTrainTransform``: crop window in input pixels and whether to flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def _check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"expected frames [T, C, H, W] with C in (1, 3), got shape {tuple(frames.shape)}")


def _wrap(frames: torch.Tensor, boxes: torch.Tensor | None):
    video = tv_tensors.Video(frames)
    if boxes is None:
        return video, None
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"expected boxes [T, 4] (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    canvas = tuple(frames.shape[-2:])
    return video, tv_tensors.BoundingBoxes(boxes.float(), format="XYXY", canvas_size=canvas)


def _unwrap(video: torch.Tensor, boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    frames = video.as_subclass(torch.Tensor)
    if boxes is None:
        return frames, None
    height, width = frames.shape[-2:]
    out = boxes.as_subclass(torch.Tensor).float().clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return frames, out


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(high, (1,), generator=generator).item())


class ClipTrainTransform:
    """TSN multi-scale crop + resize to ``size`` x ``size`` + horizontal flip, one draw per clip.

    Crop height and width are each picked from ``scales`` x the short side with ``|i - j| <= max_distort``
    (TSN ``GroupMultiScaleCrop``), at a uniformly random position; flip with probability 0.5 when ``flip``.
    """

    def __init__(
        self,
        size: int = 224,
        scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
        flip: bool = True,
        max_distort: int = 1,
    ):
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be non-empty fractions in (0, 1], got {scales}")
        self.size = int(size)
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.max_distort = int(max_distort)

    def __repr__(self) -> str:
        return (
            f"ClipTrainTransform(size={self.size}, scales={self.scales}, flip={self.flip}, "
            f"max_distort={self.max_distort})"
        )

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None) -> CropParams:
        """Draw the crop window and flip for one clip of ``height`` x ``width`` frames."""
        base = min(height, width)
        sides = [max(1, int(base * s)) for s in self.scales]
        pairs = [
            (h, w)
            for i, h in enumerate(sides)
            for j, w in enumerate(sides)
            if abs(i - j) <= self.max_distort
        ]
        crop_h, crop_w = pairs[_randint(len(pairs), generator)]
        top = _randint(height - crop_h + 1, generator)
        left = _randint(width - crop_w + 1, generator)
        flip = self.flip and bool(torch.rand(1, generator=generator).item() < 0.5)
        return CropParams(top, left, crop_h, crop_w, flip)

    def apply(
        self, frames: torch.Tensor, boxes: torch.Tensor | None, params: CropParams
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply one draw to every frame (and box) of the clip."""
        _check_frames(frames)
        if (params.top, params.left, params.height, params.width, params.flip) == (
                0, 0, self.size, self.size, False) and tuple(frames.shape[-2:]) == (self.size, self.size):
            return frames, None if boxes is None else boxes.float()  # the whole frame at its own size: identity
        video, bbox = _wrap(frames, boxes)
        crop = (params.top, params.left, params.height, params.width)
        out_size = [self.size, self.size]
        video = F.resized_crop(video, *crop, size=out_size, antialias=True)
        if bbox is not None:
            bbox = F.resized_crop(bbox, *crop, size=out_size)
        if params.flip:
            video = F.horizontal_flip(video)
            bbox = F.horizontal_flip(bbox) if bbox is not None else None
        return _unwrap(video, bbox)

    def __call__(
        self,
        frames: torch.Tensor,
        boxes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = self.sample_params(frames.shape[-2], frames.shape[-1], generator)
        return self.apply(frames, boxes, params)


class ClipEvalTransform:
    """Resize then centre crop (deterministic).

    ``resize_mode="square"`` (paper): resize to ``resize`` x ``resize``; ``"short_side"`` (release): resize the
    short side to ``resize``, keeping the aspect ratio. Then a ``crop`` x ``crop`` centre crop.
    """

    def __init__(self, resize: int = 256, crop: int = 224, resize_mode: str = "square"):
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {resize_mode!r}; use one of {RESIZE_MODES}")
        self.resize = int(resize)
        self.crop = int(crop)
        self.resize_mode = resize_mode

    def __repr__(self) -> str:
        return f"ClipEvalTransform(resize={self.resize}, crop={self.crop}, resize_mode={self.resize_mode!r})"

    def __call__(
        self,
        frames: torch.Tensor,
        boxes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``generator`` is accepted for interface symmetry and unused."""
        _check_frames(frames)
        video, bbox = _wrap(frames, boxes)
        size = [self.resize, self.resize] if self.resize_mode == "square" else [self.resize]
        height, width = frames.shape[-2:]
        if self.resize_mode == "square" and (height, width) == (self.resize, self.resize):
            size = None  # already the right size: skip a no-op resample
        if size is not None:
            video = F.resize(video, size, antialias=True)
            bbox = F.resize(bbox, size) if bbox is not None else None
        if tuple(video.shape[-2:]) != (self.crop, self.crop):
            video = F.center_crop(video, [self.crop, self.crop])
            bbox = F.center_crop(bbox, [self.crop, self.crop]) if bbox is not None else None
        return _unwrap(video, bbox)


def normalize_on_device(
    frames: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 ``[..., C, H, W]`` (e.g. ``[B, T, C, H, W]``) → float32 ``(x / 255 - mean) / std``, on its device."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=frames.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=frames.device).view(-1, 1, 1)
    return frames.float().div_(255.0).sub_(mean_t).div_(std_t)
