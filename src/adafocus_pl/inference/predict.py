"""Recognise the action in one video file with a stage checkpoint (the body behind ``python -m adafocus_pl.predict``).

The video is read with PyAV (any container and codec FFmpeg reads, any size and aspect ratio), T frames are
sampled at the segment centres and transformed exactly as in evaluation (Sec. 4.1: resize, centre crop), and the
network runs on the fast path of :mod:`adafocus_pl.inference.fast` (AdaFocus, AdaFocus+) or through its own
forward (AdaFocus-TSM). The video's prediction is f_C's output after the last frame (Sec. 3.4).

Outputs: ``<name>.png`` (the sampled frames with the patch on each) and ``<name>.json`` (the prediction, with the
video's absolute path under ``"path"``), where ``<name>`` is the video's full file name (``bikes.mp4``), or that name
with ``-2``, ``-3``, ... appended when it already belongs to another video (:class:`OutputNames`): a video's outputs
never replace another video's, and predicting the same video again replaces its own.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig

from adafocus_pl.checkpoint import LoadedCheckpoint
from adafocus_pl.data.datasets import eval_dataset
from adafocus_pl.data.listfile import VideoList, VideoRecord, load_class_names
from adafocus_pl.data.options import Sampling, Source, Transforms
from adafocus_pl.data.storage import VideoFileStorage
from adafocus_pl.data.transforms import normalize_on_device
from adafocus_pl.evaluation.plots import plot_patches
from adafocus_pl.inference.fast import FastAdaFocus, supports_fast_path

log = logging.getLogger(__name__)


def run_dir_of(ckpt_path: Path) -> Path:
    """``<run dir>`` for ``<run dir>/checkpoints/x.ckpt``, else the checkpoint's folder."""
    parent = ckpt_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def saved_overrides(ckpt_path: Path) -> list[str]:
    """The training run's Hydra overrides (``<run dir>/.hydra/overrides.yaml``), minus those that only steer the
    run itself (``hydra.*``, ``ckpt_path``); empty when the checkpoint is not in a run directory."""
    path = run_dir_of(ckpt_path) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "ckpt_path="))]


def class_names(data_cfg: DictConfig, num_classes: int) -> list[str]:
    """Names from the data config's classes file when it exists and lists ``num_classes`` names (else a
    warning), otherwise ``class <k>``."""
    names = None
    if data_cfg.get("classes_file"):
        names = load_class_names(data_cfg.root, data_cfg.classes_file, num_classes, strict=False)
    return names or [f"class {k}" for k in range(num_classes)]


def read_video(path: str | os.PathLike, data_cfg: DictConfig, num_classes: int) -> dict[str, torch.Tensor]:
    """The evaluation sample of one video file: uint8 ``frames [T, 3, crop, crop]`` (and ``focus_frames`` for
    AdaFocus-TSM), sampled and transformed as the data config's test split is (the same evaluation path).

    Raises ``FileNotFoundError`` for a missing file, and what the dataset raises for one that does not decode
    (``RuntimeError``) or, like training, for one with fewer than ``data.min_frames`` frames (``ValueError``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a video file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"video file {path} {what}")
    min_frames = data_cfg.get("min_frames", Source.min_frames)  # a data config without the key: the default
    videos = VideoList(path.resolve().parent, [VideoRecord(path.name, None, (0,), 1)], min_frames=min_frames,
                       num_classes=num_classes)
    storage = VideoFileStorage(videos, decoder_threads=min(4, os.cpu_count() or 1))
    return eval_dataset(storage, Sampling.pick(data_cfg), Transforms.pick(data_cfg)).sample(0)


@dataclass
class Prediction:
    video: str
    top_k: list[dict[str, Any]]  # [{"class": k, "name": ..., "probability": p}, ...], most likely first
    offsets: torch.Tensor  # [T_L, 2] top-left (y, x) of each patch (one row repeated for AdaFocus-TSM)
    keep: torch.Tensor | None  # [T] AdaFocus+: False where the frame skipped f_L
    frames: torch.Tensor  # uint8 [T_L, 3, H, W]: the frames the patches were cut from
    figure: Path | None = None
    path: str | None = None  # the video's absolute path (what OutputNames tells videos apart by)

    def as_dict(self) -> dict[str, Any]:
        return {"video": self.video, "path": self.path, "top_k": self.top_k, "offsets": self.offsets.tolist(),
                "keep": None if self.keep is None else self.keep.tolist(),
                "figure": None if self.figure is None else str(self.figure)}


class OutputNames:
    """The name of each video's outputs in ``out_dir`` (``<name>.png``, ``<name>.json``), chosen so that no video's
    outputs replace another video's.

    ``<name>`` is the video's file name with its extension (``bikes.mp4`` and ``bikes.webm`` differ), else, when
    that name is taken, the first of ``<file name>-2``, ``-3``, ... that is free. A name is taken when another
    video got it earlier from this object (``a/clip.mp4`` and ``b/clip.mp4`` in one call), or when ``out_dir``
    already holds ``<name>.json`` of another video (its ``"path"``) or a ``<name>.png``/``<name>.json`` of unknown
    origin. Videos are told apart by their absolute path, so predicting a video again gets (and replaces) the
    outputs it got before.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.claimed: dict[str, str] = {}  # name -> absolute path of the video that got it

    def __call__(self, video: str | os.PathLike) -> str:
        path = video_path(video)
        for k in itertools.count(1):
            name = Path(video).name if k == 1 else f"{Path(video).name}-{k}"
            owner = self.claimed.get(name) or self.owner_on_disk(name)
            if owner is None or owner == path:
                self.claimed[name] = path
                return name
        raise AssertionError("unreachable")

    def owner_on_disk(self, name: str) -> str | None:
        """The absolute path of the video whose outputs ``out_dir`` holds under ``name``; ``""`` for outputs of
        unknown origin (no readable ``"path"``), None when there are none."""
        record, figure = self.out_dir / f"{name}.json", self.out_dir / f"{name}.png"
        if record.exists():
            try:
                owner = json.loads(record.read_text(encoding="utf-8")).get("path")
            except (OSError, ValueError, AttributeError):
                owner = None
            return owner if isinstance(owner, str) and owner else ""
        return "" if figure.exists() else None


def video_path(video: str | os.PathLike) -> str:
    """The absolute path a video's outputs are recorded under (symbolic links resolved)."""
    return str(Path(video).resolve())


class Predictor:
    """Loads once, predicts many videos: ``Predictor(ckpt, data_cfg, ...)(video_path) -> Prediction``."""

    def __init__(self, ckpt: LoadedCheckpoint, data_cfg: DictConfig, top_k: int = 5, backend: str = "eager",
                 device: torch.device | str = "cpu", rho: float | None = None, seed: int = 0):
        self.ckpt, self.data_cfg, self.device = ckpt, data_cfg, torch.device(device)
        self.net = ckpt.net.eval().to(self.device)
        self.top_k = max(1, min(int(top_k), self.net.num_classes))
        self.names = class_names(data_cfg, self.net.num_classes)
        self.mean, self.std = list(data_cfg.mean), list(data_cfg.std)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        plus = self.net.capabilities.has_skip_policy
        if rho is not None and not plus:
            raise ValueError("predict.rho needs an AdaFocus+ checkpoint (a network with pi')")
        self.rho = (rho if rho is not None else ckpt.rho) if plus else None
        self.engine = None
        if supports_fast_path(self.net, ckpt.patch_policy):
            self.engine = FastAdaFocus(self.net, backend=backend, rho=self.rho, patch_policy=ckpt.patch_policy,
                                       generator=generator)
        self.generator = generator

    def _forward(self, sample: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                    torch.Tensor | None]:
        frames = normalize_on_device(sample["frames"][None].to(self.device), self.mean, self.std)
        if self.engine is not None:
            out = self.engine(frames)
            return out.logits[0, -1], out.offsets[0], None if out.keep is None else out.keep[0]
        focus = sample.get("focus_frames")
        focus = None if focus is None else normalize_on_device(focus[None].to(self.device), self.mean, self.std)
        policy = self.ckpt.patch_policy
        with torch.inference_mode():
            out = self.net(frames, patch_policy=policy, focus_frames=focus, generator=self.generator)
        offsets = out.offsets
        steps = (focus if focus is not None else frames).shape[1]
        offsets = (torch.zeros(steps, 2, dtype=torch.long) if offsets is None
                   else offsets[0].expand(steps, 2) if offsets.shape[1] == 1 else offsets[0])
        return out.logits[0, -1], offsets, None

    def __call__(self, video: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 name: str | None = None) -> Prediction:
        """Predict ``video``; with ``out_dir``, also write ``<name>.png`` and ``<name>.json`` there (``name``:
        from :class:`OutputNames`, which a caller predicting several videos keeps across them)."""
        return self.predict(video, read_video(video, self.data_cfg, self.net.num_classes), out_dir, name)

    def predict(self, video: str | os.PathLike, sample: dict[str, torch.Tensor],
                out_dir: str | os.PathLike | None = None, name: str | None = None) -> Prediction:
        """``__call__`` on a sample already read with :func:`read_video`."""
        logits, offsets, keep = self._forward(sample)
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        values, indices = probs.topk(self.top_k)
        top = [{"class": int(k), "name": self.names[int(k)], "probability": float(p)} for p, k in zip(values, indices)]
        shown = sample.get("focus_frames", sample["frames"])
        prediction = Prediction(str(video), top, offsets.cpu(), None if keep is None else keep.cpu(), shown,
                                path=video_path(video))
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            name = name or OutputNames(out_dir)(video)
            title = f"{top[0]['name']} ({100 * top[0]['probability']:.1f}%)"
            # TSM/TSM+ baselines have patch_size = frame size (their "patch" is the whole frame at offset 0)
            prediction.figure = plot_patches(shown[None], prediction.offsets[None], int(self.net.patch_size),
                                             out_dir / f"{name}.png",
                                             keep=None if keep is None else prediction.keep[None], titles=[title])
            # written last: the record's "path" is what marks these outputs as this video's (OutputNames)
            (out_dir / f"{name}.json").write_text(json.dumps(prediction.as_dict(), indent=2), encoding="utf-8")
        return prediction


def format_prediction(prediction: Prediction) -> str:
    lines = [f"{prediction.video}:", "| rank | class | probability |", "|---:|---|---:|"]
    for rank, row in enumerate(prediction.top_k, 1):
        lines.append(f"| {rank} | {row['name']} ({row['class']}) | {100 * row['probability']:.1f}% |")
    if prediction.keep is not None:
        lines.append(f"f_L ran on {int(prediction.keep.sum())} of {prediction.keep.numel()} frames (AdaFocus+)")
    if prediction.figure is not None:
        lines.append(f"frames and patches: {prediction.figure}")
    return "\n".join(lines) + "\n"
