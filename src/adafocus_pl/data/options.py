"""The data config in groups: what to read (:class:`Source`), which frames (:class:`Sampling`), how they are
cropped and normalised (:class:`Transforms`), how loaders run (:class:`Loading`) and how bad input is met
(:class:`Checks`).

The user-facing config stays flat (``data.root``, ``data.num_segments``, ``data.batch_size``, ...; conf/data/*.yaml):
every flat key is the field of exactly one group, and :func:`split_flat` sorts a flat mapping into the groups,
refusing a key no group has. Each group checks and normalises its values when it is made.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adafocus_pl.data.listfile import VideoList
from adafocus_pl.data.sampling import GlanceFocusSampler, SegmentSampler
from adafocus_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ClipEvalTransform, ClipTrainTransform

KINDS = ("frames", "video")
ON_BAD_SAMPLE = ("error", "skip")
# validate(): "stat" looks at every listed file (first/last frame, video size); "probe" also opens every video
# file (a video stream, a decodable first frame in an orientation the reader applies, enough frames: one decoded
# frame per video); "decode" also decodes each video's last frame and checks the stream's length (slow on large
# video datasets); "off" checks only the list files. For frame folders "probe" and "decode" are "stat".
CHECK_FILES = ("stat", "probe", "decode", "off")


def _set(group, **values) -> None:
    """Normalise fields of a frozen group in ``__post_init__``."""
    for name, value in values.items():
        object.__setattr__(group, name, value)


class _Group:
    @classmethod
    def pick(cls, flat: Mapping[str, Any]):
        """The group made of the keys of ``flat`` that are its fields (the others are left to other groups)."""
        return cls(**{f.name: flat[f.name] for f in dataclasses.fields(cls) if f.name in flat})


@dataclass(frozen=True)
class Source(_Group):
    """What to read: ``kind`` (``frames``: folders of pre-extracted images, the release's default; ``video``:
    encoded files read with PyAV), under ``root``; the split lists (relative to ``root`` or absolute) in
    ``list_format``; the classes file and per-split boxes files; ``synthetic`` (a dict of ``SyntheticSpec``
    overrides, possibly empty) when the data is the generated benchmark."""

    kind: str = "frames"
    root: str | os.PathLike = "data"
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    list_format: str = "comma"
    frame_template: str = "image_{:05d}.jpg"
    first_index: int = 1
    num_classes: int = 200
    min_frames: int = 3  # the release drops videos under 3 frames
    classes_file: str | None = None
    boxes: Mapping[str, str | None] | None = None
    name: str | None = None
    synthetic: Mapping | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"data.kind={self.kind!r}: use one of {', '.join(KINDS)}")
        _set(self, root=Path(self.root), first_index=int(self.first_index), num_classes=int(self.num_classes),
             min_frames=int(self.min_frames), boxes=dict(self.boxes or {}),
             synthetic=None if self.synthetic is None else dict(self.synthetic))

    def list_of(self, split: str) -> str | None:
        return {"train": self.train_list, "val": self.val_list, "test": self.test_list}.get(split)

    def videos(self, split: str) -> VideoList:
        """The videos of ``split``'s list file."""
        list_file = self.list_of(split)
        if not list_file:
            raise ValueError(f"no {split}_list configured for data {self.name or self.root}")
        return VideoList.read(self.root, list_file, self.list_format, self.min_frames, self.num_classes)


@dataclass(frozen=True)
class Sampling(_Group):
    """Frames per clip (TSN segments, one frame each): ``num_segments`` for f_G (and f_L), or separately
    ``num_focus_segments`` for f_L (AdaFocus-TSM, paper Sec. 4.2)."""

    num_segments: int = 16
    num_focus_segments: int | None = None

    def __post_init__(self):
        _set(self, num_segments=int(self.num_segments),
             num_focus_segments=None if self.num_focus_segments is None else int(self.num_focus_segments))

    def sampler(self, mode: str) -> SegmentSampler | GlanceFocusSampler:
        """``train``: a random frame in each segment; ``val``/``test``: each segment's centre frame."""
        if self.num_focus_segments is None:
            return SegmentSampler(self.num_segments, mode)
        return GlanceFocusSampler(self.num_segments, self.num_focus_segments, mode)


@dataclass(frozen=True)
class Transforms(_Group):
    """Paper Sec. 4.1: training takes a multi-scale crop (``scales``) resized to ``train_size`` and a flip;
    evaluation resizes to ``eval_resize`` (``resize_mode``) and crops the centre ``eval_crop``. ``mean``/``std``
    normalise the uint8 frames on the device."""

    train_size: int = 224
    scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66)
    flip: bool = True
    eval_resize: int = 256
    eval_crop: int = 224
    resize_mode: str = "square"
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self):
        _set(self, scales=tuple(self.scales), mean=tuple(float(m) for m in self.mean),
             std=tuple(float(s) for s in self.std))
        self.train(), self.eval()  # their arguments are checked as the config is read, not at the first batch

    def train(self) -> ClipTrainTransform:
        return ClipTrainTransform(self.train_size, self.scales, self.flip)

    def eval(self) -> ClipEvalTransform:
        return ClipEvalTransform(self.eval_resize, self.eval_crop, self.resize_mode)


@dataclass(frozen=True)
class Loading(_Group):
    """DataLoader settings (``batch_size`` per device) and how video files are decoded: ``decoder_threads``
    (None: 1 per DataLoader worker, whose FFmpeg would otherwise start one thread per core in every worker,
    else up to 4) and the decode cache (``cache_dir`` relative to the data root or absolute; None: off),
    bounded by ``cache_max_video_mb`` and ``cache_max_gb``."""

    batch_size: int = 32
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = False
    multiprocessing_context: str | None = None
    decoder_threads: int | None = None
    cache_dir: str | None = None
    cache_max_video_mb: float = 128
    cache_max_gb: float = 20

    def __post_init__(self):
        workers = int(self.num_workers)
        threads = self.decoder_threads
        if threads is None:
            threads = 1 if workers > 0 else min(4, os.cpu_count() or 1)
        _set(self, batch_size=int(self.batch_size), num_workers=workers, pin_memory=bool(self.pin_memory),
             persistent_workers=bool(self.persistent_workers) and workers > 0, decoder_threads=int(threads),
             multiprocessing_context=self.multiprocessing_context if workers > 0 else None,
             cache_max_video_mb=float(self.cache_max_video_mb), cache_max_gb=float(self.cache_max_gb))


@dataclass(frozen=True)
class Checks(_Group):
    """Bad input (README, "Troubleshooting"): what the preflight checks (``check_files``) and whether a video
    that fails to load stops the run (``on_bad_sample="error"``) or is skipped (``"skip"``)."""

    on_bad_sample: str = "error"
    check_files: str = "probe"

    def __post_init__(self):
        if self.on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"data.on_bad_sample={self.on_bad_sample!r}: use one of {', '.join(ON_BAD_SAMPLE)}")
        if self.check_files not in CHECK_FILES:
            raise ValueError(f"data.check_files={self.check_files!r}: use one of {', '.join(CHECK_FILES)}")


GROUPS = {"source": Source, "sampling": Sampling, "transforms": Transforms, "loading": Loading, "checks": Checks}


def split_flat(flat: Mapping[str, Any]) -> dict[str, _Group]:
    """The groups made of a flat data config (``{"root": ..., "batch_size": ..., ...}``); a key that no group
    has is a ``TypeError`` naming it."""
    known = {f.name for group in GROUPS.values() for f in dataclasses.fields(group)}
    unknown = [key for key in flat if key not in known]
    if unknown:
        raise TypeError(f"unknown data key(s) {', '.join(f'data.{k}' for k in unknown)}: the data config takes "
                        f"{', '.join(sorted(known))}")
    return {name: group.pick(flat) for name, group in GROUPS.items()}
