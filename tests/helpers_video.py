"""Tiny videos and frame folders written inside the tests (PyAV / PIL), with the frame index in the pixels.

Frame ``k`` is a flat grey of level ``index_level(k)`` (optionally with a white rectangle), so a decoded frame
tells which frame it is: ``level_to_index(frame.float().mean())``.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

LEVEL_BASE, LEVEL_STEP, LEVEL_PERIOD = 20, 8, 28  # grey levels 20..236


def index_level(k: int) -> int:
    return LEVEL_BASE + LEVEL_STEP * (k % LEVEL_PERIOD)


def level_to_index(level: float) -> int:
    return int(round((float(level) - LEVEL_BASE) / LEVEL_STEP))


def frame_image(k: int, height: int, width: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """HWC uint8 RGB frame ``k``; ``box`` = (x0, y0, x1, y1) painted white (x1/y1 exclusive)."""
    image = np.full((height, width, 3), index_level(k), dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        image[y0:y1, x0:x1] = 255
    return image


def write_video(
    path: Path,
    num_frames: int,
    height: int = 32,
    width: int = 48,
    fps: int = 25,
    codec: str = "libx264",
    gop: int | None = None,
) -> Path:
    """Near-lossless H.264 (qp 0) or lossless VP9; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        options = {"qp": "0", "preset": "ultrafast"} if codec == "libx264" else {"lossless": "1"}
        if gop:
            options["g"] = str(gop)
        stream.options = options
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(k, height, width), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_frame_folder(
    folder: Path,
    num_frames: int,
    height: int = 32,
    width: int = 48,
    template: str = "image_{:05d}.jpg",
    first_index: int = 1,
    boxes: list[tuple[int, int, int, int]] | None = None,
) -> Path:
    """JPEG frames ``folder/template.format(first_index + k)``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(num_frames):
        box = boxes[k] if boxes is not None else None
        Image.fromarray(frame_image(k, height, width, box)).save(folder / template.format(first_index + k), quality=95)
    return folder


class CountingContainer:
    """Wraps a PyAV container and records the timestamps of the frames it decodes."""

    def __init__(self, container, decoded: list):
        self._container, self._decoded = container, decoded

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._decoded.append(frame.pts)
            yield frame

    def __getattr__(self, name):
        return getattr(self._container, name)
