"""The map-style clip dataset: one sample per video per epoch, ``len`` = number of kept videos.

``ClipDataset(storage, sampler, transform, boxes)`` combines the pieces: the storage (:mod:`adafocus_pl.data.storage`,
bound to the :class:`VideoList` it reads) counts and reads frames, the sampler (:mod:`adafocus_pl.data.sampling`)
chooses them, the transform crops them (:mod:`adafocus_pl.data.transforms`), and the optional :class:`Boxes` follow
the chosen frames. :func:`eval_dataset` is the evaluation data path (segment centres, resize + centre crop) that
validation, testing, offline evaluation and prediction all read through.

A sample is the dict of docs/interfaces.md: ``frames`` uint8 ``[T, 3, H, W]``, ``label`` (first label),
``target`` (multi-hot float32), ``index`` (position of the video in ``dataset.records``) and, with a boxes file,
``boxes`` float32 ``[T, 4]`` after the clip transform.

A video that fails to load (missing or undecodable frame or file, no frames) stops training with an error naming the
file and its list line (``on_bad_sample="error"``), or is skipped (``"skip"``): the sample of the next loadable
video is returned instead, each bad file is logged once and counted (``bad_records()``, shared by all workers).
Evaluation drops the stand-in (it carries its own ``index``, already counted), so val/test metrics cover the
loadable videos only.

Randomness: ``__getitem__`` draws the train-mode frame offsets and crop/flip from torch's global RNG. In a DataLoader
worker that RNG is seeded by PyTorch from a base seed drawn in the main process every epoch (and by Lightning's
``seed_everything(workers=True)``), so runs are reproducible for a fixed seed and worker count and epochs differ.
Call ``dataset.sample(index, generator)`` for an explicitly seeded draw. Eval modes draw nothing.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset, get_worker_info

from adafocus_pl.data.listfile import VideoList, VideoRecord, resolve_under
from adafocus_pl.data.options import ON_BAD_SAMPLE, Sampling, Transforms
from adafocus_pl.data.storage import LOAD_ERRORS, Storage, shared

__all__ = ["ON_BAD_SAMPLE", "LOAD_ERRORS", "Boxes", "ClipDataset", "eval_dataset", "load_boxes_file",
           "resolve_under"]

log = logging.getLogger(__name__)

MAX_WORKERS = 256  # DataLoader workers whose current video is tracked (to name it if the worker dies)


def load_boxes_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Boxes file (docs/interfaces.md): JSON ``{key: [[x0, y0, x1, y1], ...one per frame]}`` → float32 tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file {path} does not exist: set data.boxes to null or to an existing file")
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark (Windows editors) is not JSON
        raw = json.load(handle)
    boxes = {}
    for key, rows in raw.items():
        tensor = torch.tensor(rows, dtype=torch.float32)
        if tensor.ndim != 2 or tensor.shape[1] != 4:
            raise ValueError(f"{path}: boxes of {key!r} must be a list of [x0, y0, x1, y1], got {tuple(tensor.shape)}")
        boxes[key] = tensor
    return boxes


class Boxes:
    """Every video's per-frame target boxes, for the frames a clip reads (hit rate and coverage metrics).

    All videos' boxes in one ``[sum F, 4]`` tensor + {key: (first row, F)}: pickling the dataset to spawned
    workers shares one buffer, not thousands of shared-memory handles.
    """

    def __init__(self, path: str | os.PathLike, videos: VideoList):
        self.path = Path(path)
        per_video = load_boxes_file(self.path)
        missing = [r.key for r in videos.records if r.key not in per_video]
        if missing:
            raise KeyError(
                f"boxes file {self.path} has no boxes for {len(missing)} videos of {videos.list_file} "
                f"(first: {missing[0]!r}); keys are list paths without their extension"
            )
        self.rows, chunks, start = {}, [], 0
        for key in dict.fromkeys(r.key for r in videos.records):
            chunks.append(per_video[key])
            self.rows[key] = (start, len(per_video[key]))
            start += len(per_video[key])
        self.table = torch.cat(chunks)

    def __call__(self, record: VideoRecord, indices: list[int]) -> torch.Tensor:
        """The boxes of frames ``indices`` of ``record``."""
        start, count = self.rows[record.key]
        if max(indices) >= count:
            raise IndexError(
                f"boxes file {self.path} has {count} boxes for {record.key!r} but frame {max(indices)} "
                f"was sampled; regenerate the boxes file with one box per frame"
            )
        return self.table[[start + i for i in indices]]


class ClipDataset(Dataset):
    """The videos of ``storage.videos``, read by ``storage``, sampled by ``sampler``, cropped by ``transform``.

    ``sampler(num_frames, generator) -> indices`` (``SegmentSampler``/``GlanceFocusSampler``; with
    ``num_focus_segments`` the indices are [glance | focus] and the two get the very same crop, AdaFocus-TSM);
    ``transform(frames, boxes, generator=...) -> (frames, boxes)`` (``ClipTrainTransform``/``ClipEvalTransform``;
    ``None`` returns the frames as stored); ``boxes``: a :class:`Boxes` of these videos, or None.
    """

    def __init__(self, storage: Storage, sampler, transform=None, boxes: Boxes | None = None,
                 on_bad_sample: str = "error"):
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"data.on_bad_sample={on_bad_sample!r}: use one of {', '.join(ON_BAD_SAMPLE)}")
        self.storage, self.sampler, self.transform, self.boxes = storage, sampler, transform, boxes
        self.on_bad_sample = on_bad_sample
        self.videos = storage.videos
        self.records, self.num_classes = self.videos.records, self.videos.num_classes
        self.num_segments = sampler.num_segments
        self.num_focus_segments = getattr(sampler, "num_focus_segments", None)
        # videos found bad while loading (on_bad_sample=skip): shared memory, so every DataLoader worker sees them
        self._bad = shared(torch.zeros(len(self.records), dtype=torch.bool))
        # the video each DataLoader worker is reading (-1: none): names it when a worker dies in native code
        self._loading = shared(torch.full((MAX_WORKERS,), -1, dtype=torch.int64))
        self._worker_pids = shared(torch.zeros(MAX_WORKERS, dtype=torch.int64))  # 0: no worker in that slot
        self._worker_slot: int | None = None

    @property
    def list_file(self) -> Path:
        return self.videos.list_file

    @property
    def num_dropped(self) -> int:
        return self.videos.num_dropped

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"ClipDataset({self.list_file}, {len(self)} videos, {self.storage}, {self.sampler}, {self.transform})"

    def describe(self, record: VideoRecord) -> str:
        return self.videos.describe(record)

    def file_problems(self, record: VideoRecord, check: str = "stat") -> str | None:
        return self.storage.file_problems(record, check)

    def num_frames(self, record: VideoRecord) -> int:
        return self.storage.num_frames(record)

    def read_clip(self, record: VideoRecord, generator: torch.Generator | None) -> tuple[torch.Tensor, list[int]]:
        """(uint8 ``[T, 3, H, W]``, indices) of the clip the sampler draws with ``generator`` from ``record``."""
        return self.storage.read_clip(record, lambda num_frames: self.sampler(num_frames, generator))

    def worker_pids(self) -> list[int]:
        """The process ids of the DataLoader workers that have read from this dataset."""
        return [pid for pid in self._worker_pids.tolist() if pid > 0]

    def loading_now(self) -> list[VideoRecord]:
        """The videos DataLoader workers are reading right now (after a worker died: the one it died on)."""
        return [self.records[i] for i in self._loading.tolist() if i >= 0]

    def bad_records(self) -> list[VideoRecord]:
        """The videos skipped so far because they failed to load (``on_bad_sample="skip"``)."""
        return [self.records[i] for i in torch.nonzero(self._bad).reshape(-1).tolist()]

    def _load(self, index: int, generator: torch.Generator | None):
        """(record, frames, boxes) of video ``index``, or of the next loadable video when skipping bad ones."""
        for offset in range(len(self.records)):
            position = (index + offset) % len(self.records)
            if self.on_bad_sample == "skip" and bool(self._bad[position]):
                continue
            record = self.records[position]
            if self._worker_slot is not None:
                self._loading[self._worker_slot] = position
            try:
                frames, indices = self.read_clip(record, generator)
                return position, frames, self.boxes(record, indices) if self.boxes is not None else None
            except LOAD_ERRORS as err:
                if self.on_bad_sample == "error":
                    if self.videos.from_list:
                        err.add_note("(data.on_bad_sample=skip skips videos that fail to load, logging each once)")
                    raise
                if not bool(self._bad[position]):
                    self._bad[position] = True
                    log.warning("skipping a video that fails to load (data.on_bad_sample=skip; %d skipped so far): "
                                "%s", int(self._bad.sum()), err)
        raise RuntimeError(f"no video of {self.list_file} can be loaded ({len(self.records)} tried, all failed): "
                           f"check data.root and the list, or run with data.on_bad_sample=error to see the first error")

    def sample(self, index: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The sample of video ``index`` (or its stand-in, see the module docstring); ``generator`` drives frame
        sampling and augmentation."""
        index, frames, boxes = self._load(index, generator)
        record = self.records[index]
        if self.transform is not None:
            frames, boxes = self.transform(frames, boxes, generator=generator)
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[list(record.labels)] = 1.0
        out = {
            "frames": frames,
            "label": torch.tensor(record.label, dtype=torch.int64),
            "target": target,
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if boxes is not None:
            out["boxes"] = boxes.float()
        if self.num_focus_segments is not None:  # [glance frames | focus frames] -> two entries
            t = self.num_segments
            out["frames"], out["focus_frames"] = frames[:t], frames[t:]
            if boxes is not None:
                out["boxes"], out["focus_boxes"] = out["boxes"][:t], out["boxes"][t:]
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        worker = get_worker_info()
        if worker is None:
            return self.sample(index)
        if self._worker_slot is None:  # first sample in this worker process
            self._worker_slot = worker.id % MAX_WORKERS
            self._worker_pids[self._worker_slot] = os.getpid()
            # a native crash (e.g. in a video decoder) prints this worker's Python stack to the process's stderr.
            # Disabled first: an enable() inherited from the parent is a no-op, and PyTorch's worker start-up has
            # replaced its SIGSEGV/SIGBUS handlers (PyTorch's handler still runs after the stack is printed).
            faulthandler.disable()
            faulthandler.enable(file=2)
        out = self.sample(index)
        self._loading[self._worker_slot] = -1
        return out


def eval_dataset(storage: Storage, sampling: Sampling, transforms: Transforms, boxes: Boxes | None = None,
                 on_bad_sample: str = "error") -> ClipDataset:
    """The evaluation data path (paper Sec. 4.1): the centre frame of each of the ``sampling`` segments, resized
    and centre-cropped by ``transforms.eval()``. Validation, testing, offline evaluation (any split, e.g. the
    training split for AdaFocus+'s threshold, Sec. 3.3) and prediction on one video file all read through it."""
    return ClipDataset(storage, sampling.sampler("val"), transforms.eval(), boxes, on_bad_sample)
