"""``VideoDataModule``: list-file datasets of frame folders or encoded videos, built from the data config's groups
(:mod:`adafocus_pl.data.options`; conf/data/*.yaml builds it from the flat keys with ``VideoDataModule.from_flat``).

No manual ``DistributedSampler``: Lightning adds one (and calls ``set_epoch``) under DDP. ``batch_size`` is per
device. Workers ship uint8 frames; ``on_after_batch_transfer`` normalises them on the device (mmaction2-style).
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
from collections.abc import Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from adafocus_pl.data.datasets import Boxes, ClipDataset, eval_dataset
from adafocus_pl.data.decode_cache import DecodeCache
from adafocus_pl.data.listfile import VideoList, load_class_names, resolve_under
from adafocus_pl.data.options import (
    CHECK_FILES,
    KINDS,
    Checks,
    Loading,
    Sampling,
    Source,
    Transforms,
    split_flat,
)
from adafocus_pl.data.storage import FrameFolderStorage, Storage, VideoFileStorage
from adafocus_pl.data.transforms import normalize_on_device

__all__ = ["CHECK_FILES", "KINDS", "DataLoaderWorkerError", "VideoDataModule", "focus_inputs"]

log = logging.getLogger(__name__)

SHOWN = 10  # problems listed per split in validate()'s message


class DataLoaderWorkerError(RuntimeError):
    """A DataLoader worker process died (a native crash or a kill), with the video it was reading."""


WORKER_DIED = re.compile(r"DataLoader worker \(pid")


def _lost_handover(error: BaseException) -> bool:
    """Whether ``error`` is a broken connection raised while a batch's shared memory was handed over by a worker."""
    if not isinstance(error, (ConnectionError, EOFError)):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return any(frame.filename.endswith(HANDOVER_FILES) for frame in frames)


# where a worker's batch is received: PyTorch's shared-memory rebuild and multiprocessing's handle sharing
HANDOVER_FILES = (os.path.join("multiprocessing", "reductions.py"), os.path.join("multiprocessing", "resource_sharer.py"))


def _exited(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: a zombie still counts as alive here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def focus_inputs(batch: Mapping) -> dict:
    """``{"focus_frames": ...}`` when a batch has separate focus frames (``num_focus_segments``), else ``{}``."""
    return {"focus_frames": batch["focus_frames"]} if "focus_frames" in batch else {}


class VideoDataModule(pl.LightningDataModule):
    """Train/val/test loaders over the official list files of the authors' release, from the data config's groups
    (:mod:`adafocus_pl.data.options`): ``source`` (what to read), ``sampling``, ``transforms``, ``loading`` and
    ``checks``. The flat data config (conf/data/*.yaml) builds one with :meth:`from_flat`.

    ``source.kind="frames"``: folders of pre-extracted JPEGs (the release's default); ``"video"``: encoded files
    read with PyAV. With ``source.synthetic`` (a dict of ``SyntheticSpec`` overrides, possibly empty),
    ``prepare_data`` renders the benchmark into ``root`` unless it is current.
    """

    def __init__(self, source: Source | None = None, sampling: Sampling | None = None,
                 transforms: Transforms | None = None, loading: Loading | None = None, checks: Checks | None = None):
        super().__init__()
        # a group not given: its defaults
        self.source, self.sampling, self.transforms = source or Source(), sampling or Sampling(), transforms or Transforms()
        self.loading, self.checks = loading or Loading(), checks or Checks()
        # video kind only: decoded videos cached as .npy files (relative to root or absolute; None = off)
        self.cache_dir = None if self.loading.cache_dir is None else resolve_under(self.root, self.loading.cache_dir)
        self.datasets: dict[str, ClipDataset] = {}
        self.class_names: list[str] | None = None

    @classmethod
    def from_flat(cls, **flat) -> VideoDataModule:
        """A data module from the flat data config (``root=..., batch_size=..., num_segments=...``, the keys of
        conf/data/*.yaml); a key no group has is a ``TypeError`` naming it."""
        return cls(**split_flat(flat))

    # the values other modules read, by their flat names
    root = property(lambda self: self.source.root)
    name = property(lambda self: self.source.name)
    synthetic = property(lambda self: self.source.synthetic)
    num_classes = property(lambda self: self.source.num_classes)
    num_segments = property(lambda self: self.sampling.num_segments)

    # -- data preparation ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Synthetic config: (re)generate the benchmark into ``root`` unless it is up to date (once per node)."""
        if self.synthetic is None:
            return
        from adafocus_pl.data import synthetic  # lazy: only the synthetic config needs it

        synthetic.prepare({"root": self.root, "synthetic": self.synthetic, "kind": self.source.kind,
                           "cache_dir": None if self.cache_dir is None else self.cache_dir.absolute()})

    def _load_class_names(self) -> None:
        # a classes file that disagrees with num_classes is an error here: training would mislabel the classes
        self.class_names = load_class_names(self.root, self.source.classes_file, self.num_classes, strict=True)

    def validate(self, splits: Sequence[str] = ("train", "val", "test")) -> list[str]:
        """Every problem found in the data of ``splits`` before training, one message each (empty: all good).

        Lists: present, well-formed, labels in range, not empty; the classes file matches ``num_classes``; then
        (``check_files``) every listed video's files. Problems in the files are not errors with
        ``on_bad_sample="skip"``: they are logged here and the videos are skipped when loaded.
        """
        problems: list[str] = []
        try:
            self._load_class_names()
        except ValueError as err:
            problems.append(str(err))
        for split in splits:
            if not self.source.list_of(split):
                continue
            try:
                dataset = self.datasets.get(split) or self.build_dataset(split)
            except (OSError, ValueError, KeyError) as err:
                problems.append(f"data.{split}_list: {err.args[0] if isinstance(err, KeyError) else err}")
                continue
            self.datasets[split] = dataset
            check = self.checks.check_files
            if check == "off":
                continue
            records = dataset.records
            if self.source.kind == "video" and check != "stat" and len(records) > 200:
                from tqdm.auto import tqdm

                what = "opening" if check == "probe" else "decoding the first and last frame of"
                records = tqdm(records, desc=f"{what} every {split} video", leave=False)
            bad = [msg for msg in (dataset.file_problems(r, check) for r in records) if msg]
            if not bad:
                continue
            more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
            if self.checks.on_bad_sample == "skip":
                log.warning("%s: %d of %d videos have missing or broken files and will be skipped when loaded "
                            "(data.on_bad_sample=skip)%s: %s", split, len(bad), len(dataset), more, "; ".join(bad[:SHOWN]))
                continue
            problems.extend(bad[:SHOWN])
            problems.append(f"{split}: {len(bad)} of {len(dataset)} videos of {dataset.list_file} have missing or "
                            f"broken files{more}: fix them, remove their lines, or set data.on_bad_sample=skip")
        return problems

    def explain_worker_failure(self, error: BaseException) -> DataLoaderWorkerError | None:
        """For PyTorch's "DataLoader worker (pid N) ... exited unexpectedly / killed by signal" (which names no file):
        an error naming the videos the workers were reading and what to do; None for any other error.

        A worker that dies while the main process is taking a batch from it (the batch's shared-memory handle is
        passed over a socket) surfaces instead as a ``ConnectionError`` or ``EOFError`` raised inside that hand-over;
        it is explained the same way.

        A Python exception in a worker needs none of this: PyTorch re-raises it with the worker's traceback and
        our message, which names the file."""
        if isinstance(error, RuntimeError) and WORKER_DIED.search(str(error)):
            died = str(error)
        elif _lost_handover(error) and (dead := self._dead_workers()):
            died = f"DataLoader worker (pid(s) {', '.join(map(str, dead))}) exited unexpectedly ({error!r})"
        else:
            return None
        loading = [ds.describe(record) for ds in self.datasets.values() for record in ds.loading_now()]
        where = (f"while reading {', '.join(dict.fromkeys(loading))}" if loading else
                 "between videos (not while reading one)")
        return DataLoaderWorkerError(
            f"a DataLoader worker died {where}: {died}. A native crash (Segmentation fault, Bus error; e.g. in a "
            f"video decoder) printed the worker's Python stack above ('Fatal Python error'): check that video with "
            f"ffprobe and re-encode or remove it. 'Killed' is most often the out-of-memory killer: lower "
            f"data.num_workers or data.batch_size. data.num_workers=0 reads in the main process, where any error "
            f"is raised directly.")

    def _dead_workers(self, wait: float = 2.0) -> list[int]:
        """The DataLoader workers of these datasets that have exited (waiting up to ``wait`` s for a dying one)."""
        pids = sorted({pid for ds in self.datasets.values() for pid in ds.worker_pids()})
        deadline = time.monotonic() + wait
        while True:
            dead = [pid for pid in pids if _exited(pid)]
            if dead or time.monotonic() > deadline:
                return dead
            time.sleep(0.05)

    def bad_records(self) -> dict[str, list]:
        """``{split: [VideoRecord, ...]}`` of the videos skipped so far because they failed to load."""
        return {split: bad for split, ds in self.datasets.items() if (bad := ds.bad_records())}

    def storage(self, videos: VideoList) -> Storage:
        """How ``videos`` are read: frame folders, or video files (with the decode cache when configured)."""
        if self.source.kind == "frames":
            return FrameFolderStorage(videos, self.source.frame_template, self.source.first_index)
        cache = None if self.cache_dir is None else DecodeCache(self.cache_dir, self.loading.cache_max_video_mb,
                                                               self.loading.cache_max_gb)
        return VideoFileStorage(videos, self.loading.decoder_threads, cache=cache)

    def build_dataset(self, split: str, mode: str | None = None) -> ClipDataset:
        """The dataset of ``split`` (train → random sampling + train transform; val/test → the evaluation path,
        :func:`~adafocus_pl.data.datasets.eval_dataset`).

        ``mode="val"`` gives any split the evaluation sampling and transform (e.g. the training split for
        AdaFocus+'s threshold, paper Sec. 3.3)."""
        videos = self.source.videos(split)
        storage = self.storage(videos)
        boxes_file = self.source.boxes.get(split)
        boxes = Boxes(resolve_under(self.root, boxes_file), videos) if boxes_file else None
        if (mode or split) == "train":
            return ClipDataset(storage, self.sampling.sampler("train"), self.transforms.train(), boxes,
                               self.checks.on_bad_sample)
        return eval_dataset(storage, self.sampling, self.transforms, boxes, self.checks.on_bad_sample)

    def setup(self, stage: str | None = None) -> None:
        splits = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ("train", "val", "test"),
        }[stage]
        if self.class_names is None:
            self._load_class_names()
        for split in splits:
            if split not in self.datasets and self.source.list_of(split):
                self.datasets[split] = self.build_dataset(split)
                log.info("%s: %s", split, self.datasets[split])

    # -- loaders ---------------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader | list:
        if split != "train" and not self.source.list_of(split):
            return []  # no list configured: Lightning skips this loop
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        # train: a loader whose position Lightning saves in every checkpoint, so a run resumed from a mid-epoch
        # checkpoint gets the rest of that epoch's videos, in the same order (a DataLoader would restart the epoch)
        loading = self.loading
        return (StatefulDataLoader if split == "train" else DataLoader)(
            self.datasets[split],
            batch_size=loading.batch_size,
            shuffle=shuffle,
            num_workers=loading.num_workers,
            pin_memory=loading.pin_memory and torch.cuda.is_available(),
            persistent_workers=loading.persistent_workers,
            multiprocessing_context=loading.multiprocessing_context,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def eval_dataloader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """``split`` in evaluation mode (centre-frame sampling, eval transform, no shuffle), for offline eval."""
        if self.class_names is None:
            self._load_class_names()
        key = f"{split}@eval"
        if key not in self.datasets:
            self.datasets[key] = self.build_dataset(split, mode="val")
        loading = self.loading
        return DataLoader(
            self.datasets[key],
            batch_size=batch_size or loading.batch_size,
            shuffle=False,
            num_workers=loading.num_workers,
            pin_memory=loading.pin_memory and torch.cuda.is_available(),
            multiprocessing_context=loading.multiprocessing_context,
        )

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # -- device-side normalisation ---------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 ``frames`` (and ``focus_frames``) → float32 normalised with ``mean``/``std`` (ImageNet by
        default), on the device."""
        if isinstance(batch, dict):
            for key in ("frames", "focus_frames"):
                if key in batch and batch[key].dtype == torch.uint8:
                    batch[key] = normalize_on_device(batch[key], self.transforms.mean, self.transforms.std)
        return batch
