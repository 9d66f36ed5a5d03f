"""``VideoDataModule``: list-file datasets of frame folders or encoded videos, built from plain (Hydra) values.

No manual ``DistributedSampler``: Lightning adds one (and calls ``set_epoch``) under DDP. ``batch_size`` is per
device. Workers ship uint8 frames; ``on_after_batch_transfer`` normalises them on the device (mmaction2-style).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from adafocus_pl.data.datasets import (
    ON_BAD_SAMPLE,
    ClipDataset,
    FrameFolderDataset,
    VideoFileDataset,
    resolve_under,
)
from adafocus_pl.data.listfile import read_text_lines
from adafocus_pl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipEvalTransform,
    ClipTrainTransform,
    normalize_on_device,
)

log = logging.getLogger(__name__)

KINDS = ("frames", "video")
# validate(): "stat" looks at every listed file (first/last frame, video size); "probe" also opens every video
# file (a video stream, a decodable first frame in an orientation the reader applies, enough frames: one decoded
# frame per video); "decode" also decodes each video's last frame and checks the stream's length (slow on large
# video datasets); "off" checks only the list files. For frame folders "probe" and "decode" are "stat".
CHECK_FILES = ("stat", "probe", "decode", "off")
SHOWN = 10  # problems listed per split in validate()'s message
SPLIT_MODES = {"train": "train", "val": "val", "test": "test"}


class DataLoaderWorkerError(RuntimeError):
    """A DataLoader worker process died (a native crash or a kill), with the video it was reading."""


WORKER_DIED = re.compile(r"DataLoader worker \(pid")


def focus_inputs(batch: Mapping) -> dict:
    """``{"focus_frames": ...}`` when a batch has separate focus frames (``num_focus_segments``), else ``{}``."""
    return {"focus_frames": batch["focus_frames"]} if "focus_frames" in batch else {}


class VideoDataModule(pl.LightningDataModule):
    """Train/val/test loaders over the official list files (facts page, "Data").

    ``kind="frames"``: ``FrameFolderDataset`` (pre-extracted JPEGs, the release's default);
    ``kind="video"``: ``VideoFileDataset`` (PyAV). Lists and boxes files are relative to ``root`` or absolute.
    ``decoder_threads=None`` → 1 decoder thread per worker when ``num_workers > 0`` (FFmpeg's one thread per core
    in every worker would oversubscribe the CPU), else up to 4. ``cache_dir``: the decode cache of video files
    (:mod:`adafocus_pl.data.decode_cache`, bounded by ``cache_max_video_mb`` and ``cache_max_gb``).
    ``synthetic`` (a dict of ``SyntheticSpec`` overrides, possibly empty): ``prepare_data`` calls
    ``adafocus_pl.data.synthetic.generate(root, **synthetic)``, which renders the benchmark unless it is current.
    """

    def __init__(
        self,
        kind: str = "frames",
        root: str | os.PathLike = "data",
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        list_format: str = "comma",
        frame_template: str = "image_{:05d}.jpg",
        num_classes: int = 200,
        num_segments: int = 16,
        num_focus_segments: int | None = None,
        train_size: int = 224,
        scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
        flip: bool = True,
        eval_resize: int = 256,
        eval_crop: int = 224,
        resize_mode: str = "square",
        boxes: Mapping[str, str | None] | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        persistent_workers: bool = False,
        name: str | None = None,
        classes_file: str | None = None,
        synthetic: Mapping | None = None,
        first_index: int = 1,
        min_frames: int = 3,
        decoder_threads: int | None = None,
        multiprocessing_context: str | None = None,
        cache_dir: str | None = None,
        on_bad_sample: str = "error",
        check_files: str = "probe",
        cache_max_video_mb: float = 128,
        cache_max_gb: float = 20,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"data.kind={kind!r}: use one of {', '.join(KINDS)}")
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"data.on_bad_sample={on_bad_sample!r}: use one of {', '.join(ON_BAD_SAMPLE)}")
        if check_files not in CHECK_FILES:
            raise ValueError(f"data.check_files={check_files!r}: use one of {', '.join(CHECK_FILES)}")
        self.on_bad_sample = on_bad_sample
        self.check_files = check_files
        self.kind = kind
        self.root = Path(root)
        self.lists = {"train": train_list, "val": val_list, "test": test_list}
        self.list_format = list_format
        self.frame_template = frame_template
        self.num_classes = int(num_classes)
        self.num_segments = int(num_segments)  # frames per clip (f_G's, and f_L's unless num_focus_segments)
        self.num_focus_segments = None if num_focus_segments is None else int(num_focus_segments)  # AdaFocus-TSM's f_L
        self.train_transform = ClipTrainTransform(train_size, tuple(scales), flip)
        self.eval_transform = ClipEvalTransform(eval_resize, eval_crop, resize_mode)
        self.boxes = dict(boxes or {})
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name
        self.classes_file = classes_file
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.first_index = int(first_index)
        self.min_frames = int(min_frames)
        if decoder_threads is None:
            decoder_threads = 1 if self.num_workers > 0 else min(4, os.cpu_count() or 1)
        self.decoder_threads = int(decoder_threads)
        self.multiprocessing_context = multiprocessing_context if self.num_workers > 0 else None
        # video kind only: decoded videos cached as .npy files (relative to root or absolute; None = off)
        self.cache_dir = None if cache_dir is None else resolve_under(self.root, cache_dir)
        self.cache_bounds = {"cache_max_video_mb": float(cache_max_video_mb), "cache_max_gb": float(cache_max_gb)}
        self.datasets: dict[str, ClipDataset] = {}
        self.class_names: list[str] | None = None

    # -- data preparation ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Synthetic config: (re)generate the benchmark into ``root`` unless it is up to date (once per node)."""
        if self.synthetic is None:
            return
        from adafocus_pl.data import synthetic  # lazy: only the synthetic config needs it

        synthetic.prepare({"root": self.root, "synthetic": self.synthetic, "kind": self.kind,
                           "cache_dir": None if self.cache_dir is None else self.cache_dir.absolute()})

    def _load_class_names(self) -> None:
        if not self.classes_file:
            return
        path = resolve_under(self.root, self.classes_file)
        if not path.is_file():
            log.warning("classes file %s not found: class names unavailable", path)
            return
        names = [line.strip() for line in read_text_lines(path) if line.strip()]
        if len(names) != self.num_classes:
            raise ValueError(
                f"classes file {path} (data.classes_file) lists {len(names)} classes but data.num_classes="
                f"{self.num_classes}: set data.num_classes={len(names)} or fix the file (one class name per line)")
        self.class_names = names

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
            if not self.lists.get(split):
                continue
            try:
                dataset = self.datasets.get(split) or self.build_dataset(split)
            except (OSError, ValueError, KeyError) as err:
                problems.append(f"data.{split}_list: {err.args[0] if isinstance(err, KeyError) else err}")
                continue
            self.datasets[split] = dataset
            if self.check_files == "off":
                continue
            check = {"check": self.check_files} if self.kind == "video" else {}
            records = dataset.records
            if check and self.check_files != "stat" and len(records) > 200:
                from tqdm.auto import tqdm

                what = "opening" if self.check_files == "probe" else "decoding the first and last frame of"
                records = tqdm(records, desc=f"{what} every {split} video", leave=False)
            bad = [msg for msg in (dataset.file_problems(r, **check) for r in records) if msg]
            if not bad:
                continue
            more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
            if self.on_bad_sample == "skip":
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

        A Python exception in a worker needs none of this: PyTorch re-raises it with the worker's traceback and
        our message, which names the file."""
        if not isinstance(error, RuntimeError) or not WORKER_DIED.search(str(error)):
            return None
        loading = [ds.describe(record) for ds in self.datasets.values() for record in ds.loading_now()]
        where = (f"while reading {', '.join(dict.fromkeys(loading))}" if loading else
                 "between videos (not while reading one)")
        return DataLoaderWorkerError(
            f"a DataLoader worker died {where}: {error}. A native crash (Segmentation fault, Bus error; e.g. in a "
            f"video decoder) printed the worker's Python stack above ('Fatal Python error'): check that video with "
            f"ffprobe and re-encode or remove it. 'Killed' is most often the out-of-memory killer: lower "
            f"data.num_workers or data.batch_size. data.num_workers=0 reads in the main process, where any error "
            f"is raised directly.")

    def bad_records(self) -> dict[str, list]:
        """``{split: [VideoRecord, ...]}`` of the videos skipped so far because they failed to load."""
        return {split: bad for split, ds in self.datasets.items() if (bad := ds.bad_records())}

    def build_dataset(self, split: str, mode: str | None = None) -> ClipDataset:
        """The dataset of ``split`` (train → random sampling + train transform; val/test → centre + eval).

        ``mode="val"`` gives any split the evaluation sampling and transform (e.g. the training split for
        AdaFocus+'s threshold, paper Sec. 3.3)."""
        list_file = self.lists.get(split)
        if not list_file:
            raise ValueError(f"no {split}_list configured for data {self.name or self.root}")
        mode = mode or SPLIT_MODES[split]
        transform = self.train_transform if mode == "train" else self.eval_transform
        common = dict(
            root=self.root,
            list_file=list_file,
            num_segments=self.num_segments,
            mode=mode,
            transform=transform,
            num_classes=self.num_classes,
            boxes_file=self.boxes.get(split),
            list_format=self.list_format,
            min_frames=self.min_frames,
            num_focus_segments=self.num_focus_segments,
            on_bad_sample=self.on_bad_sample,
        )
        if self.kind == "frames":
            return FrameFolderDataset(frame_template=self.frame_template, first_index=self.first_index, **common)
        return VideoFileDataset(decoder_threads=self.decoder_threads, cache_dir=self.cache_dir, **self.cache_bounds,
                                **common)

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
            if split not in self.datasets and self.lists.get(split):
                self.datasets[split] = self.build_dataset(split)
                log.info("%s: %s", split, self.datasets[split])

    # -- loaders ---------------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader | list:
        if split != "train" and not self.lists.get(split):
            return []  # no list configured: Lightning skips this loop
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        # train: a loader whose position Lightning saves in every checkpoint, so a run resumed from a mid-epoch
        # checkpoint gets the rest of that epoch's videos, in the same order (a DataLoader would restart the epoch)
        return (StatefulDataLoader if split == "train" else DataLoader)(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            multiprocessing_context=self.multiprocessing_context,
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
        return DataLoader(
            self.datasets[key],
            batch_size=batch_size or self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            multiprocessing_context=self.multiprocessing_context,
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
                    batch[key] = normalize_on_device(batch[key], self.mean, self.std)
        return batch
