"""The decode cache of ``VideoFileStorage``: every frame of a video decoded once into one ``.npy`` file.

Worth it for small videos read many times (the synthetic benchmark: ~0.2 ms to load a clip from the cache against
~13 ms to decode it); off by default for a user's own videos, where full-resolution frames are large.

An entry can never serve the frames of another file: its name carries a digest of the video's resolved path, size
and modification time, so a video replaced at the same path, or ``clip.mp4`` beside ``clip.avi``, gets an entry of
its own; writing an entry removes the older entries of the same video. It is bounded: a video whose decoded
frames exceed ``max_video_mb`` is never cached (it is decoded each time, only the sampled frames), and nothing is
written once the cache holds ``max_total_gb`` (counted once per cache directory, shared by every dataset of the
process and its DataLoader workers). Entries are written atomically (a temp file beside them, then renamed), so
concurrent workers are safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_DIGEST = 16  # hex digits of the entry key in the file name
_ENTRY = re.compile(rf"^(?P<name>.+)\.(?P<digest>[0-9a-f]{{{_DIGEST}}})\.npy$")
_usage: dict[str, torch.Tensor] = {}  # cache directory -> bytes held (shared memory), one scan per process


def entry_name(name: str) -> str:
    """The readable part of an entry's path: the video's path as listed, kept inside the cache directory."""
    parts = [p for p in PurePosixPath(str(name).replace("\\", "/")).parts if p not in ("/", "..", ".")]
    return "/".join(parts) or "video"


def entry_key(video_file: str | os.PathLike) -> str:
    """Digest of the video file's resolved path, size and modification time (a changed file: another key)."""
    video_file = Path(video_file)
    stat = video_file.stat()
    text = f"{video_file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:_DIGEST]


def entry_path(cache_dir: str | os.PathLike, name: str, video_file: str | os.PathLike) -> Path:
    """``cache_dir/<name>.<key>.npy``: where the frames of ``video_file`` (listed as ``name``) are cached."""
    return Path(cache_dir) / f"{entry_name(name)}.{entry_key(video_file)}.npy"


def write_entry(path: Path, frames: np.ndarray) -> int:
    """Write uint8 frames ``[F, H, W, 3]`` to ``path`` atomically, then remove older entries of that video; return
    the bytes added to the cache directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, frames)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    added = path.stat().st_size
    stem = _ENTRY.match(path.name)["name"]
    for sibling in path.parent.glob("*.npy"):
        match = _ENTRY.match(sibling.name)
        if match and match["name"] == stem and sibling != path:  # the same video before it was replaced
            try:
                added -= sibling.stat().st_size
                sibling.unlink()
            except FileNotFoundError:  # removed by another worker meanwhile
                pass
    return added


def _shared_usage(directory: Path) -> torch.Tensor:
    import torch  # lazy: the synthetic generator's workers write entries without importing torch

    key = str(directory.absolute())
    if key not in _usage:
        held = sum(f.stat().st_size for f in directory.rglob("*.npy")) if directory.is_dir() else 0
        usage = torch.tensor([held], dtype=torch.int64)
        try:
            usage.share_memory_()
        except RuntimeError:  # no shared memory (tiny /dev/shm): each process counts its own writes
            pass
        _usage[key] = usage
    return _usage[key]


class DecodeCache:
    """Looks up and stores decoded videos in ``directory`` within the bounds (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike, max_video_mb: float = 128, max_total_gb: float = 20):
        self.directory = Path(directory)
        if max_video_mb <= 0 or max_total_gb <= 0:
            raise ValueError(f"data.cache_max_video_mb={max_video_mb} / data.cache_max_gb={max_total_gb}: both must "
                             f"be > 0 (data.cache_dir=null turns the cache off)")
        self.max_video_bytes = int(max_video_mb * 2**20)
        self.max_total_bytes = int(max_total_gb * 2**30)
        self.used = _shared_usage(self.directory)
        self._mapped: dict[Path, np.ndarray] = {}  # entries memory-mapped by this process, kept across epochs
        self._full_warned = False

    def __repr__(self) -> str:
        return (f"DecodeCache({self.directory}, {self.max_video_bytes / 2**20:g} MiB per video, "
                f"{self.max_total_bytes / 2**30:g} GiB in all)")

    def lookup(self, name: str, video_file: Path) -> np.ndarray | None:
        """The cached frames ``[F, H, W, 3]`` of ``video_file`` as it is now, or None (also for a missing
        ``video_file``: reading it then fails with the reader's own message)."""
        try:
            path = entry_path(self.directory, name, video_file)  # stats the video file (its key)
        except FileNotFoundError:
            return None
        video = self._mapped.get(path)
        if video is None and path.is_file():
            # mapped once per process and kept: later epochs index it directly and read only the sampled frames
            video = self._mapped[path] = np.asarray(np.load(path, mmap_mode="r"))
        return video

    def admits(self, nbytes: int, what: str) -> bool:
        """Whether a video of ``nbytes`` decoded bytes may be cached (``what`` names it in the log)."""
        if nbytes > self.max_video_bytes:
            log.debug("%s is not cached: %.0f MiB decoded > data.cache_max_video_mb", what, nbytes / 2**20)
            return False
        if int(self.used[0]) + nbytes > self.max_total_bytes:
            if not self._full_warned:
                self._full_warned = True
                log.warning("the decode cache %s holds %.1f GiB, its limit (data.cache_max_gb): videos not cached "
                            "yet are decoded each time they are read", self.directory, int(self.used[0]) / 2**30)
            return False
        return True

    def store(self, name: str, video_file: Path, frames: np.ndarray) -> None:
        self.used[0] += write_entry(entry_path(self.directory, name, video_file), frames)
