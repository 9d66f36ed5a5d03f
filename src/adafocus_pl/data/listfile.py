"""Parse the official list files of the AdaFocus release (the authors' public release and TSN).

Formats (blank lines and ``#`` comments are skipped):

- ``comma``: ``path,num_frames,label[,label...]`` (ActivityNet, FCVID; multi-label, up to 3 labels);
- ``space``: ``path num_frames label`` (Mini-Kinetics, Something-Something); the path may contain spaces,
  the last two whitespace-separated fields are the numbers;
- ``video``: ``path label[,label...]`` (encoded videos, e.g. the synthetic benchmark); the path may contain
  spaces, the last whitespace-separated field holds the labels. The frame count comes from the container.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adafocus_pl.data import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)


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


class VideoList:
    """The videos a dataset reads: ``root``, the records of a list file (or records given directly, e.g. the
    videos to predict on), their class count and the ``min_frames`` rule; names a video in every message.

    ``VideoList.read(root, list_file, ...)`` parses a list file (relative to ``root`` or absolute);
    ``VideoList(root, records)`` takes records as they are (messages then name the file only, without list
    lines or the training run's data.on_bad_sample hint).
    """

    def __init__(self, root: str | os.PathLike, records: Sequence[VideoRecord], list_file: Path | None = None,
                 num_dropped: int = 0, min_frames: int = 3, num_classes: int | None = None):
        self.root = _existing_root(root)
        self.from_list = list_file is not None
        self.list_file = list_file if list_file is not None else Path("<records>")
        self.records, self.num_dropped, self.min_frames = list(records), int(num_dropped), int(min_frames)
        if not self.records:
            raise ValueError(
                f"list file {self.list_file} has no usable videos ({self.num_dropped} dropped for having fewer than "
                f"{min_frames} frames): add videos to it, or lower data.min_frames")
        if self.num_dropped:
            log.info("%s: dropped %d videos with < %d frames", self.list_file, self.num_dropped, min_frames)
        if num_classes is None:
            num_classes = 1 + max(label for record in self.records for label in record.labels)
            log.info("%s: num_classes not given, using %d (largest label + 1)", self.list_file, num_classes)
        self.num_classes = int(num_classes)

    @classmethod
    def read(cls, root: str | os.PathLike, list_file: str | os.PathLike, list_format: str, min_frames: int = 3,
             num_classes: int | None = None) -> VideoList:
        """The records of ``list_file`` (see :func:`parse_list_file`), under ``root``."""
        path = resolve_under(_existing_root(root), list_file)  # a missing root: its message, not the list's
        records, dropped = parse_list_file(path, list_format, min_frames, num_classes)
        return cls(root, records, path, dropped, min_frames, num_classes)

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, record: VideoRecord) -> str:
        """``<root>/<path> (list line N of <list file>)``: how messages name a video (the path alone for records
        given directly)."""
        if not self.from_list:
            return str(self.root / record.path)
        return f"{self.root / record.path} (list line {record.line} of {self.list_file})"

    def too_short(self, record: VideoRecord, num_frames: int) -> str | None:
        """The message for a video with fewer than ``min_frames`` frames, or None. The same rule as the list
        files' frame counts (the release drops videos under 3 frames), applied where the count is only known
        from the video itself."""
        if num_frames >= self.min_frames:
            return None
        fix = "remove its line, set data.on_bad_sample=skip, or lower data.min_frames" if self.from_list else \
            "videos this short are not used for training or evaluation either (data.min_frames)"
        return (f"{self.describe(record)} has {num_frames} frame(s), fewer than data.min_frames={self.min_frames}: "
                f"{fix}")


def _existing_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} does not exist: set data.root (or paths.data_dir) to the folder that holds "
            f"the videos/frame folders named in the list file"
        )
    return root


def load_class_names(root: str | os.PathLike, classes_file: str | os.PathLike | None, num_classes: int,
                     strict: bool = True) -> list[str] | None:
    """Class ``k``'s name on line ``k + 1`` of ``classes_file`` (relative to ``root`` or absolute), or None when
    no file is configured or it does not exist (logged).

    A file whose count disagrees with ``num_classes``: a ``ValueError`` when ``strict`` (training and evaluation
    must not mislabel classes), else a warning and None (prediction then shows class indices).
    """
    if not classes_file:
        return None
    path = resolve_under(root, classes_file)
    if not path.is_file():
        log.warning("classes file %s not found: class names unavailable", path)
        return None
    names = [line.strip() for line in read_text_lines(path) if line.strip()]
    if len(names) == num_classes:
        return names
    if strict:
        raise ValueError(
            f"classes file {path} (data.classes_file) lists {len(names)} classes but data.num_classes="
            f"{num_classes}: set data.num_classes={len(names)} or fix the file (one class name per line)")
    log.warning("%s lists %d classes, the checkpoint has %d: showing class indices", path, len(names), num_classes)
    return None
