"""Map-style clip datasets: one sample per video per epoch, ``len`` = number of kept videos (pitfall #13).

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
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from adafocus_pl.data.decode_cache import DecodeCache
from adafocus_pl.data.listfile import VideoRecord, parse_list_file, resolve_under
from adafocus_pl.data.sampling import GlanceFocusSampler, SegmentSampler

try:  # libjpeg-turbo through torchvision: about 2x faster than PIL on 96x96 and 480x360 frames
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
except ImportError:  # torchvision.io image decoding is deprecated since 0.29 (TorchCodec replaces it)
    decode_jpeg = None

log = logging.getLogger(__name__)

EXTRACT_HINT = "python -m adafocus_pl.data.extract_frames SRC_DIR OUT_DIR"
ON_BAD_SAMPLE = ("error", "skip")
MAX_WORKERS = 256  # DataLoader workers whose current video is tracked (to name it if the worker dies)
# what reading one video can raise for a bad file (missing, corrupt, empty); anything else is a bug and propagates
LOAD_ERRORS = (OSError, RuntimeError, ValueError, IndexError)


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


class ClipDataset(Dataset):
    """Shared logic: list parsing, TSN sampling, clip transform, labels and boxes. Subclasses read frames.

    ``transform(frames, boxes, generator=...) -> (frames, boxes)`` (``ClipTrainTransform``/``ClipEvalTransform``);
    ``None`` returns the frames as stored. ``list_file`` may also be a list of ``VideoRecord`` (no file parsed).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        list_format: str,
        num_segments: int = 16,
        mode: str = "train",
        transform=None,
        num_classes: int | None = None,
        boxes_file: str | os.PathLike | None = None,
        min_frames: int = 3,
        num_focus_segments: int | None = None,
        on_bad_sample: str = "error",
    ):
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"data.on_bad_sample={on_bad_sample!r}: use one of {', '.join(ON_BAD_SAMPLE)}")
        self.on_bad_sample = on_bad_sample
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data root {self.root} does not exist: set data.root (or paths.data_dir) to the folder that holds "
                f"the videos/frame folders named in the list file"
            )
        # records given directly (e.g. the videos to predict on): messages name the file only, without list lines
        # or the training run's data.on_bad_sample hint
        self.from_list = not isinstance(list_file, (list, tuple))
        if not self.from_list:
            self.list_file, self.records, self.num_dropped = Path("<records>"), list(list_file), 0
        else:
            self.list_file = resolve_under(self.root, list_file)
            self.records, self.num_dropped = parse_list_file(self.list_file, list_format, min_frames, num_classes)
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
        self.min_frames = int(min_frames)
        # AdaFocus-TSM: separate focus frames, read with the glance frames and given the very same crop
        self.num_segments, self.num_focus_segments = int(num_segments), num_focus_segments
        self.sampler = (SegmentSampler(num_segments, mode) if num_focus_segments is None
                        else GlanceFocusSampler(num_segments, num_focus_segments, mode))
        self.transform = transform
        self.boxes_file = resolve_under(self.root, boxes_file) if boxes_file else None
        self.boxes, self._box_rows = (self._pack_boxes(self.boxes_file) if self.boxes_file else (None, {}))
        # videos found bad while loading (on_bad_sample=skip): shared memory, so every DataLoader worker sees them
        self._bad = _shared(torch.zeros(len(self.records), dtype=torch.bool))
        # the video each DataLoader worker is reading (-1: none): names it when a worker dies in native code
        self._loading = _shared(torch.full((MAX_WORKERS,), -1, dtype=torch.int64))
        self._worker_slot: int | None = None

    def _pack_boxes(self, path: Path) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """All videos' boxes in one ``[sum F, 4]`` tensor + {key: (first row, F)}.

        One tensor instead of one per video: pickling the dataset to spawned workers shares one buffer, not
        thousands of shared-memory handles.
        """
        per_video = load_boxes_file(path)
        missing = [r.key for r in self.records if r.key not in per_video]
        if missing:
            raise KeyError(
                f"boxes file {path} has no boxes for {len(missing)} videos of {self.list_file} "
                f"(first: {missing[0]!r}); keys are list paths without their extension"
            )
        rows, chunks, start = {}, [], 0
        for key in dict.fromkeys(r.key for r in self.records):
            chunks.append(per_video[key])
            rows[key] = (start, len(per_video[key]))
            start += len(per_video[key])
        return torch.cat(chunks), rows

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.list_file}, {len(self)} videos, {self.sampler}, {self.transform})"

    # -- subclasses ------------------------------------------------------------------------------------------
    def read_clip(self, record: VideoRecord, generator: torch.Generator | None) -> tuple[torch.Tensor, list[int]]:
        """Sample the clip's frame indices and return (uint8 ``[T, 3, H, W]``, indices)."""
        raise NotImplementedError

    # -- sample assembly -------------------------------------------------------------------------------------
    def _boxes_for(self, record: VideoRecord, indices: list[int]) -> torch.Tensor:
        start, count = self._box_rows[record.key]
        if max(indices) >= count:
            raise IndexError(
                f"boxes file {self.boxes_file} has {count} boxes for {record.key!r} but frame {max(indices)} "
                f"was sampled; regenerate the boxes file with one box per frame"
            )
        return self.boxes[[start + i for i in indices]]

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

    def file_problems(self, record: VideoRecord) -> str | None:
        """A cheap check, before training, of the files a record needs (no decoding): a message, or None."""
        raise NotImplementedError

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
                return position, frames, self._boxes_for(record, indices) if self.boxes is not None else None
            except LOAD_ERRORS as err:
                if self.on_bad_sample == "error":
                    if self.from_list:
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
            # a native crash (e.g. in a video decoder) prints this worker's Python stack to the process's stderr.
            # Disabled first: an enable() inherited from the parent is a no-op, and PyTorch's worker start-up has
            # replaced its SIGSEGV/SIGBUS handlers (PyTorch's handler still runs after the stack is printed).
            faulthandler.disable()
            faulthandler.enable(file=2)
        out = self.sample(index)
        self._loading[self._worker_slot] = -1
        return out


def _shared(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in shared memory (visible to DataLoader workers), or as is where there is none (tiny /dev/shm)."""
    try:
        return tensor.share_memory_()
    except RuntimeError:
        return tensor


class FrameFolderDataset(ClipDataset):
    """Pre-extracted frames ``<root>/<path>/<frame_template.format(first_index + i)>`` (facts page, "Data").

    JPEGs are decoded with ``torchvision.io.decode_jpeg`` (about 2x faster than PIL here); other extensions with
    ``decode_image``. A ``video``-format list (no frame counts) counts the frame files once per folder.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        list_format: str = "comma",
        num_segments: int = 16,
        mode: str = "train",
        transform=None,
        num_classes: int | None = None,
        frame_template: str = "image_{:05d}.jpg",
        first_index: int = 1,
        boxes_file: str | os.PathLike | None = None,
        min_frames: int = 3,
        num_focus_segments: int | None = None,
        on_bad_sample: str = "error",
    ):
        super().__init__(root, list_file, list_format, num_segments, mode, transform, num_classes, boxes_file,
                         min_frames, num_focus_segments, on_bad_sample)
        self.frame_template = frame_template
        self.first_index = int(first_index)
        self._counts: dict[str, int] = {}

    def frame_path(self, record: VideoRecord, index: int) -> Path:
        """File of 0-based frame ``index`` of ``record``."""
        return self.root / record.path / self.frame_template.format(self.first_index + index)

    def file_problems(self, record: VideoRecord) -> str | None:
        if not (self.root / record.path).is_dir():
            return f"frame folder {self.describe(record)} does not exist"
        first = self.frame_path(record, 0)
        if not first.is_file():
            return (f"{self.describe(record)} has no frame {first.name}: check "
                    f"data.frame_template={self.frame_template!r} and data.first_index={self.first_index}")
        if record.num_frames is not None:
            last = self.frame_path(record, record.num_frames - 1)
            if not last.is_file():
                return (f"{self.describe(record)} lacks frames: the list says {record.num_frames} but {last.name} "
                        f"is missing; re-extract it ({EXTRACT_HINT}) or correct the count")
        return None

    def num_frames(self, record: VideoRecord) -> int:
        if record.num_frames is not None:
            return record.num_frames
        if record.path not in self._counts:
            count = 0
            while self.frame_path(record, count).is_file():
                count += 1
            if count == 0:
                raise FileNotFoundError(
                    f"no frames {self.frame_path(record, 0)} for list line {record.line} of {self.list_file}: "
                    f"check frame_template={self.frame_template!r} / first_index={self.first_index}, "
                    f"or extract frames with {EXTRACT_HINT}"
                )
            self._counts[record.path] = count
        return self._counts[record.path]

    def _read_frame(self, record: VideoRecord, index: int) -> torch.Tensor:
        path = self.frame_path(record, index)
        try:
            return _decode_image_file(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"frame file {path} is missing (list line {record.line} of {self.list_file} says "
                f"{record.num_frames} frames): check data.root, frame_template={self.frame_template!r} and "
                f"first_index={self.first_index}, or re-extract with {EXTRACT_HINT}"
            ) from None
        except (RuntimeError, OSError) as err:
            raise RuntimeError(f"cannot decode frame {path} ({err}); re-extract this video with {EXTRACT_HINT}") from err

    def read_clip(self, record: VideoRecord, generator: torch.Generator | None) -> tuple[torch.Tensor, list[int]]:
        count = self.num_frames(record)
        if short := self.too_short(record, count):  # counted from the folder (a `video`-format list)
            raise ValueError(short)
        indices = self.sampler(count, generator)
        decoded = {i: self._read_frame(record, i) for i in sorted(set(indices))}  # repeats decoded once
        try:
            return torch.stack([decoded[i] for i in indices]), indices
        except RuntimeError as err:
            sizes = sorted({tuple(f.shape) for f in decoded.values()})
            raise RuntimeError(f"frames of {self.root / record.path} differ in size {sizes}: re-extract it") from err


def _decode_image_file(path: Path) -> torch.Tensor:
    """Image file → uint8 ``[3, H, W]`` RGB (grey JPEGs are expanded)."""
    if not path.is_file():
        raise FileNotFoundError(path)
    if decode_jpeg is None:
        from PIL import Image

        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    decode = decode_jpeg if path.suffix.lower() in (".jpg", ".jpeg") else decode_image
    with warnings.catch_warnings():  # torchvision 0.29 warns on every call (~2 us to silence, decode ~100 us)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return decode(read_file(str(path)), mode=ImageReadMode.RGB)


class VideoFileDataset(ClipDataset):
    """Encoded videos (mp4/webm/avi/mov/...) decoded with PyAV: video stream only, only the frames the clip needs.

    - The frame count comes from the list when it has one, else from the container header, else by counting
      packets once; counts are cached in a shared-memory tensor (visible across DataLoader workers and epochs).
      A video with fewer than ``min_frames`` frames is refused, as the list files' counts are.
    - One sampling rule for every video, constant or variable frame rate: frame ``i`` is the frame on screen at
      ``i / average_fps`` after the stream's start (its index from its timestamp, ``round((pts - start) *
      time_base * fps)``); frames without timestamps are counted. For a constant frame rate this is the i-th
      decoded frame; for a variable one it samples time uniformly, the same whether the decoder seeks or not.
    - Decoding stops after the last needed frame. Frames are decoded in order, except that in videos longer than
      ``seek_min_gap`` frames the decoder seeks to the keyframe before a needed frame when that frame lies more
      than ``max(seek_min_gap, observed GOP length)`` frames past the decoder's position.
    - The container's display rotation (phone videos) is applied: frames come out upright, as a player shows them.
    - Decoder threads are capped at ``decoder_threads`` (FFmpeg's default is one per core; with DataLoader
      workers that oversubscribes the CPU).
    - ``cache_dir``: every frame of a video decoded once into a bounded cache (:mod:`adafocus_pl.data.decode_cache`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        num_segments: int = 16,
        mode: str = "train",
        transform=None,
        num_classes: int | None = None,
        boxes_file: str | os.PathLike | None = None,
        decoder_threads: int = 1,
        list_format: str = "video",
        min_frames: int = 3,
        seek_min_gap: int = 64,
        cache_dir: str | os.PathLike | None = None,
        num_focus_segments: int | None = None,
        on_bad_sample: str = "error",
        cache_max_video_mb: float = 128,
        cache_max_gb: float = 20,
    ):
        super().__init__(root, list_file, list_format, num_segments, mode, transform, num_classes, boxes_file,
                         min_frames, num_focus_segments, on_bad_sample)
        self.cache = None if cache_dir is None else DecodeCache(cache_dir, cache_max_video_mb, cache_max_gb)
        self.decoder_threads = max(1, int(decoder_threads))
        self.seek_min_gap = int(seek_min_gap)
        self._counts = _shared(torch.full((len(self.records),), -1, dtype=torch.int64))
        self._slot = {record.line: i for i, record in enumerate(self.records)}  # survives pickling to workers

    def video_path(self, record: VideoRecord) -> Path:
        return self.root / record.path

    def file_problems(self, record: VideoRecord, check: str = "stat") -> str | None:
        """What is wrong with a record's file before training (None: nothing found). ``check``: ``stat`` (present,
        not empty), ``probe`` (also opens it: a container with a video stream, a decodable first frame, enough
        frames), ``decode`` (also decodes the first and the last frame, and fails a stream that ends well
        before its frame count: slower)."""
        path = self.video_path(record)
        if not path.is_file():
            return f"video file {self.describe(record)} does not exist"
        if path.stat().st_size == 0:
            return f"video file {self.describe(record)} is empty (0 bytes): download it again"
        if check == "probe":
            return self._probe(record)
        if check == "decode":
            try:
                self._read_clip_decoded(record, None, probe=True)
            except LOAD_ERRORS as err:
                return str(err)
        return None

    def _probe(self, record: VideoRecord) -> str | None:
        """Open the file: a container with a video stream whose first frame decodes and is upright-readable, and
        at least ``min_frames`` frames (by the header's count, else by its first packets). The cost is one
        decoded frame (README, "Troubleshooting")."""
        import av

        try:
            with av.open(str(self.video_path(record))) as container:
                if not container.streams.video:
                    kinds = sorted({s.type for s in container.streams}) or ["none"]
                    return (f"{self.describe(record)} has no video stream (streams: {', '.join(kinds)}): it is "
                            f"not a video; remove its line or replace the file")
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1  # one frame: no decoder threads to start (or frames to queue)
                count = record.num_frames if record.num_frames is not None else int(stream.frames or 0)
                packets, first = 0, None
                for packet in container.demux(stream):  # a last, empty packet flushes the decoder
                    packets += bool(packet.size)
                    if first is None:
                        first = next(iter(packet.decode()), None)
                    if first is not None and (count or packets >= self.min_frames):
                        break
                if first is None:
                    return f"{self.describe(record)} has a video stream without a decodable frame (an empty or " \
                           f"failed encode)"
                quarter_turns(first)  # a display matrix this reader does not apply: refused now, not in a worker
                if short := self.too_short(record, count or packets):
                    return short
        except (av.FFmpegError, OSError, RuntimeError) as err:
            return f"cannot open video {self.describe(record)}: {_av_reason(err)}. {DECODE_HINT}"
        return None

    def _open(self, record: VideoRecord):
        import av  # lazy: keeps `import adafocus_pl.data.datasets` cheap for frame-only users

        path = self.video_path(record)
        if not path.is_file():
            raise FileNotFoundError(
                f"video file {self.describe(record)} does not exist: check data.root "
                f"and the list file"
            )
        container = av.open(str(path))
        if not container.streams.video:
            container.close()
            raise RuntimeError("it has no video stream (audio only, or not a video)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if self.decoder_threads > 1 else "SLICE"
        stream.codec_context.thread_count = self.decoder_threads
        return container, stream

    def _frame_count(self, record: VideoRecord, container, stream) -> int:
        if record.num_frames is not None:
            return record.num_frames
        slot = self._slot[record.line]
        cached = int(self._counts[slot])
        if cached > 0:
            return cached
        count = int(stream.frames or 0)
        if count <= 0:  # no count in the header (webm/mkv): count the packets once, then rewind
            count = sum(1 for packet in container.demux(stream) if packet.size)
            if count > 0:
                container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
        self._counts[slot] = count
        return count

    def num_frames(self, record: VideoRecord) -> int:
        """Frame count of ``record`` (opens the file if neither the list nor the cache has it)."""
        container, stream = self._open(record)
        with container:
            return self._frame_count(record, container, stream)

    def read_clip(self, record: VideoRecord, generator: torch.Generator | None) -> tuple[torch.Tensor, list[int]]:
        if self.cache is not None:
            video = self.cache.lookup(record.path, self.video_path(record)) if self.video_path(record).is_file() \
                else None
            if video is not None:
                if short := self.too_short(record, len(video)):
                    raise ValueError(short)
                indices = self.sampler(len(video), generator)
                return torch.from_numpy(np.ascontiguousarray(video[indices])).permute(0, 3, 1, 2), indices
        return self._read_clip_decoded(record, generator)

    def _read_clip_decoded(self, record: VideoRecord, generator: torch.Generator | None, probe: bool = False):
        """Decode the sampled frames (with a cache that admits this video: every frame, stored, then sampled).
        ``probe``: decode only the first and the last frame, and fail if the stream ends well before the frame
        count (a truncated file) instead of repeating its last frame."""
        import av

        cache_all = False
        try:
            container, stream = self._open(record)  # an unreadable file fails here already
            with container:
                num_frames = self._frame_count(record, container, stream)
                if num_frames < 1:
                    raise RuntimeError("the video has no frames (an empty or failed encode)")
                if short := self.too_short(record, num_frames):
                    raise ValueError(short)
                if probe:
                    indices = sorted({0, num_frames - 1})
                else:
                    size = num_frames * stream.codec_context.width * stream.codec_context.height * 3
                    cache_all = self.cache is not None and self.cache.admits(size, str(self.video_path(record)))
                    indices = list(range(num_frames)) if cache_all else self.sampler(num_frames, generator)
                decoded = self._decode(container, stream, indices, num_frames, strict=probe)
        except (av.FFmpegError, OSError, RuntimeError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise RuntimeError(f"cannot decode video {self.describe(record)}: {_av_reason(err)}. {DECODE_HINT}") \
                from err
        frames = torch.stack([decoded[i] for i in indices])
        if cache_all:
            self.cache.store(record.path, self.video_path(record), frames.permute(0, 2, 3, 1).contiguous().numpy())
            indices = self.sampler(num_frames, generator)
            frames = frames[indices]
        return frames, indices

    def _decode(self, container, stream, indices: list[int], num_frames: int,
                strict: bool = False) -> dict[int, torch.Tensor]:
        """Decode the frames ``indices`` (0-based, the class docstring's rule); frames past the real end repeat the
        last decoded frame (an error with ``strict``)."""
        targets = sorted(set(indices))
        rate, time_base = stream.average_rate or stream.guessed_rate, stream.time_base
        start = stream.start_time or 0
        timed = bool(rate) and bool(time_base)  # frame indices from timestamps
        can_seek = timed and num_frames > self.seek_min_gap
        pts_per_frame = Fraction(1) / (Fraction(rate) * Fraction(time_base)) if timed else None

        out: dict[int, torch.Tensor] = {}
        frames = None  # the decode generator, resumed between targets
        pos, previous, last_key, gop = -1, None, None, 0
        k = 0
        while k < len(targets):
            target = targets[k]
            gap_limit = max(self.seek_min_gap, gop, pos - last_key + 1 if last_key is not None else 0)
            if can_seek and target - pos > gap_limit:
                container.seek(start + int(round(target * pts_per_frame)), stream=stream, backward=True)
                frames = container.decode(stream)
                last_key = None  # keyframes on both sides of a seek are not neighbours: no GOP from them
            elif frames is None:
                frames = container.decode(stream)
            for frame in frames:
                if timed and frame.pts is not None:
                    pos = int(round((frame.pts - start) / pts_per_frame))
                else:
                    pos += 1
                if frame.key_frame:
                    if last_key is not None and pos > last_key:
                        gop = max(gop, pos - last_key)
                    last_key = pos
                previous = frame
                if pos >= target:
                    image = _to_tensor(frame)
                    while k < len(targets) and targets[k] <= pos:
                        out[targets[k]] = image
                        k += 1
                    break
            else:  # stream ended before `target`: the count was too high; repeat the last decoded frame
                if previous is None:
                    raise RuntimeError(f"no decodable frame at or after index {target}")
                if strict and pos + 1 < 0.95 * num_frames:  # header counts may be off by a few frames
                    raise RuntimeError(f"the stream ends at frame {pos} although the video has {num_frames} frames: "
                                       f"the file is truncated (download it again)")
                image = _to_tensor(previous)
                for t in targets[k:]:
                    out[t] = image
                break
        return out


DECODE_HINT = (f"Check that it plays (ffprobe), re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4), or extract frames "
               f"with {EXTRACT_HINT} and use data.kind=frames")


def _av_reason(err: BaseException) -> str:
    import av

    if isinstance(err, av.EOFError):
        return "the file ends before its first video frame (empty or truncated)"
    if isinstance(err, av.FFmpegError) and err.strerror:  # FFmpeg's reason, without its errno and the path again
        return err.strerror[:1].lower() + err.strerror[1:]
    return str(err)


_reformatters: dict[int, object] = {}  # one per process (pid): reuses the swscale context


def _to_tensor(frame) -> torch.Tensor:
    """PyAV frame → uint8 ``[3, H, W]`` RGB.

    A shared ``VideoReformatter`` keeps one swscale context across frames; ``frame.to_ndarray(format=...)``
    builds a new one per frame, which made it ~2x slower than decoding on 96x96 H.264 (measured).
    """
    reformatter = _reformatters.get(os.getpid())
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _reformatters[os.getpid()] = VideoReformatter()
    image = torch.from_numpy(reformatter.reformat(frame, format="rgb24").to_ndarray()).permute(2, 0, 1)
    turns = quarter_turns(frame)
    return torch.rot90(image, turns, dims=(1, 2)) if turns else image


def quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show ``frame`` upright: the container's display rotation (a phone
    records landscape frames and stores how to turn them). A rotation by other angles, or a mirrored display,
    is refused rather than read wrong."""
    rotation = frame.rotation  # degrees counter-clockwise, from the frame's display matrix (0 without one)
    for side in frame.side_data:
        if side.type.name == "DISPLAYMATRIX":
            m = np.frombuffer(bytes(side), dtype="<i4")[:9].astype(np.int64)
            if m[0] * m[4] - m[1] * m[3] < 0:
                raise RuntimeError("its display matrix mirrors the image, which is not supported: re-encode it "
                                   "upright (ffmpeg -i IN -c:v libx264 OUT.mp4 applies the display matrix)")
    turns, rest = divmod(int(rotation), 90)
    if rest:
        raise RuntimeError(f"its display matrix rotates it by {rotation} degrees, not a multiple of 90: re-encode "
                           f"it upright (ffmpeg -i IN -c:v libx264 OUT.mp4 applies the rotation)")
    return turns % 4
