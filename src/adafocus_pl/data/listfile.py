"""Parse the official list files of the AdaFocus release (facts page, "Data").

Formats (blank lines and ``#`` comments are skipped):

- ``comma``: ``path,num_frames,label[,label...]`` (ActivityNet, FCVID; multi-label, up to 3 labels);
- ``space``: ``path num_frames label`` (Mini-Kinetics, Something-Something); the path may contain spaces,
  the last two whitespace-separated fields are the numbers;
- ``video``: ``path label[,label...]`` (encoded videos, e.g. the synthetic benchmark); the path may contain
  spaces, the last whitespace-separated field holds the labels. The frame count comes from the container.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from adafocus_pl.data import VIDEO_EXTENSIONS


def resolve_under(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` if absolute, else ``root / path`` (how list, boxes, classes and cache paths are given)."""
    path = Path(path)
    return path if path.is_absolute() else Path(root) / path

LIST_FORMATS = ("comma", "space", "video")


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (lists, class names); a leading byte-order mark, as Windows editors write
    it, is dropped instead of becoming part of the first path. Another encoding is an error naming the file."""
    try:
        return path.read_text(encoding="utf-8-sig").split("\n")  # only newlines end a line (not U+2028 ...)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8 (in most "
                         f"editors: 'Save as', encoding UTF-8)") from None

_EXPECTED = {
    "comma": "'path,num_frames,label[,label...]' with integer num_frames >= 0 and labels >= 0",
    "space": "'path num_frames label' (last two whitespace fields are integers; the path may contain spaces)",
    "video": "'path label[,label...]' (last whitespace field holds the integer labels; the path may contain spaces)",
}


@dataclass(frozen=True)
class VideoRecord:
    """One row of a list file: a frame folder or video file, its frame count (if listed) and its labels."""

    path: str
    num_frames: int | None
    labels: tuple[int, ...]
    line: int

    @property
    def label(self) -> int:
        """The first label (single-label metrics, e.g. ActivityNet mAP, use only this one)."""
        return self.labels[0]

    @property
    def key(self) -> str:
        """Boxes-file key: the path without a video extension (``a/b.mp4`` and frame folder ``a/b`` → ``a/b``)."""
        return video_key(self.path)


def video_key(path: str) -> str:
    """Strip a known video extension only, so frame folders with dots in their names keep their full name."""
    stem, ext = os.path.splitext(path)
    return stem if ext.lower() in VIDEO_EXTENSIONS else path


def _parse_int(text: str) -> int:
    value = int(text)  # raises ValueError on anything but an integer
    if value < 0:
        raise ValueError(f"negative value {value}")
    return value


def _parse_line(text: str, fmt: str) -> tuple[str, int | None, tuple[int, ...]]:
    if fmt == "comma":
        fields = [f.strip() for f in text.split(",")]
        if len(fields) < 3:
            raise ValueError(f"{len(fields)} comma-separated fields, need at least 3")
        path, num_frames, labels = fields[0], _parse_int(fields[1]), tuple(_parse_int(f) for f in fields[2:])
    elif fmt == "space":
        fields = text.rsplit(None, 2)
        if len(fields) < 3:
            raise ValueError(f"{len(fields)} whitespace-separated fields, need 3")
        path, num_frames, labels = fields[0], _parse_int(fields[1]), (_parse_int(fields[2]),)
    elif fmt == "video":
        fields = text.rsplit(None, 1)
        if len(fields) < 2:
            raise ValueError(f"{len(fields)} whitespace-separated field(s), need 2")
        path, num_frames = fields[0], None
        labels = tuple(_parse_int(f.strip()) for f in fields[1].split(","))
    else:
        raise ValueError(f"unknown list format {fmt!r}; use one of {LIST_FORMATS}")
    if not path:
        raise ValueError("empty path")
    return path, num_frames, labels


def parse_list_file(
    path: str | os.PathLike, fmt: str, min_frames: int = 3, num_classes: int | None = None
) -> tuple[list[VideoRecord], int]:
    """Read a list file; return the kept records and how many were dropped for having < ``min_frames`` frames.

    The release drops videos with fewer than 3 frames. Rows of the ``video`` format carry no frame count: their
    videos are held to ``min_frames`` when they are opened (the preflight's probe, or loading), and refused.
    A malformed row, or a label outside ``[0, num_classes)`` when ``num_classes`` is given, raises ``ValueError``
    naming the file and the 1-based line.
    """
    if fmt not in LIST_FORMATS:
        raise ValueError(f"unknown list format {fmt!r} for {path}; use one of {LIST_FORMATS}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"list file {path} does not exist: check the data config (root / *_list), or generate/download the list"
        )
    records: list[VideoRecord] = []
    dropped = 0
    for lineno, raw in enumerate(read_text_lines(path), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            video_path, num_frames, labels = _parse_line(text, fmt)
        except ValueError as err:
            raise ValueError(
                f"{path}:{lineno}: malformed {fmt!r} list line {text!r} ({err}); expected {_EXPECTED[fmt]}"
            ) from None
        if num_classes is not None:
            bad = [label for label in labels if label >= num_classes]
            if bad:
                raise ValueError(
                    f"{path}:{lineno}: label(s) {bad} outside [0, {num_classes}) in line {text!r}; "
                    f"fix num_classes in the data config or the list file"
                )
        if num_frames is not None and num_frames < min_frames:
            dropped += 1
            continue
        records.append(VideoRecord(video_path, num_frames, labels, lineno))
    return records, dropped
