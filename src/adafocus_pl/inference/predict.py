"""Recognise the action in one video file with a stage checkpoint (the body behind ``python -m adafocus_pl.predict``).

The video is read with PyAV (any container and codec FFmpeg reads, any size and aspect ratio), T frames are
sampled at the segment centres and transformed exactly as in evaluation (Sec. 4.1: resize, centre crop), and the
network runs on the fast path of :mod:`adafocus_pl.inference.fast` (AdaFocus, AdaFocus+) or through its own
forward (AdaFocus-TSM). The video's prediction is f_C's output after the last frame (Sec. 3.4).

Online (:meth:`Predictor.go_online`, ``predict.online`` / ``predict.exit_*``): the same frames stepped one at a time
by :class:`~adafocus_pl.inference.online.OnlineRecognizer`, with early exit; the JSON then also holds every step
under ``"online"``.

Outputs: ``<name>.png`` (the sampled frames with the patch on each) and ``<name>.json`` (the prediction, with the
video's absolute path under ``"path"``), where ``<name>`` is the video's full file name (``bikes.mp4``), or that name
with ``-2``, ``-3``, ... appended when it already belongs to another video (:class:`OutputNames`): a video's outputs
never replace another video's, and predicting the same video again replaces its own.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from adafocus_pl.inference.early_exit import ExitRule
from adafocus_pl.inference.fast import FastAdaFocus, supports_fast_path

if TYPE_CHECKING:
    from adafocus_pl.inference.online import StepResult, VideoFrames

log = logging.getLogger(__name__)

FIGURE_STEPS = 16  # an online run's figure shows at most this many of the frames it read


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
    storage = video_file_storage(path, data_cfg, num_classes)
    return eval_dataset(storage, Sampling.pick(data_cfg), Transforms.pick(data_cfg)).sample(0)


def video_file_storage(path: str | os.PathLike, data_cfg: DictConfig, num_classes: int) -> VideoFileStorage:
    """A storage of the one video file ``path`` (its only record: ``storage.videos.records[0]``), read as the data
    config's videos are (frame count from the container, ``data.min_frames``). Raises ``FileNotFoundError`` for a
    missing file or a directory."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a video file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"video file {path} {what}")
    min_frames = data_cfg.get("min_frames", Source.min_frames)  # a data config without the key: the default
    videos = VideoList(path.resolve().parent, [VideoRecord(path.name, None, (0,), 1)], min_frames=min_frames,
                       num_classes=num_classes)
    return VideoFileStorage(videos, decoder_threads=min(4, os.cpu_count() or 1))


def top_classes(probs: torch.Tensor, names: list[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most likely classes of ``probs [K]``: ``[{"class", "name", "probability"}]``, most likely first."""
    values, indices = probs.topk(k)
    return [{"class": int(c), "name": names[int(c)], "probability": float(p)} for p, c in zip(values, indices)]


def rho_to_run(net, rho: float | None, saved_rho: float | None) -> float | None:
    """AdaFocus+'s threshold on p_t^B to predict with: ``rho`` (predict.rho), else the one the checkpoint stores;
    None for a network without pi' (f_L on every frame), where asking for a rho is a ``ValueError``."""
    if not net.capabilities.has_skip_policy:
        if rho is not None:
            raise ValueError("predict.rho needs an AdaFocus+ checkpoint (a network with pi', model.skip_policy=true)")
        return None
    return rho if rho is not None else saved_rho


@dataclass
class Prediction:
    video: str
    top_k: list[dict[str, Any]]  # [{"class": k, "name": ..., "probability": p}, ...], most likely first
    offsets: torch.Tensor  # [T_L, 2] top-left (y, x) of each patch (one row repeated for AdaFocus-TSM)
    keep: torch.Tensor | None  # [T] AdaFocus+: False where the frame skipped f_L
    frames: torch.Tensor  # uint8 [T_L, 3, H, W]: the frames the patches were cut from
    figure: Path | None = None
    path: str | None = None  # the video's absolute path (what OutputNames tells videos apart by)
    online: dict[str, Any] | None = None  # an online run: its steps, early exit and cost (Predictor.predict_online)

    def as_dict(self) -> dict[str, Any]:
        record = {"video": self.video, "path": self.path, "top_k": self.top_k, "offsets": self.offsets.tolist(),
                  "keep": None if self.keep is None else self.keep.tolist(),
                  "figure": None if self.figure is None else str(self.figure)}
        if self.online is not None:
            record["online"] = self.online
        return record


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
        self.rho = rho_to_run(self.net, rho, ckpt.rho)
        self.backend, self.seed = backend, seed
        self._engine: FastAdaFocus | None = None  # built at the first offline prediction
        self.generator = generator
        self.recognizer = None  # set by go_online: every video is then predicted online
        self.stride: int | None = None
        self.stop_at_exit = True

    @property
    def engine(self) -> FastAdaFocus | None:
        """The fast path for AdaFocus / AdaFocus+ (None for networks that run through their own forward)."""
        if self._engine is None and supports_fast_path(self.net, self.ckpt.patch_policy):
            self._engine = FastAdaFocus(self.net, backend=self.backend, rho=self.rho,
                                        patch_policy=self.ckpt.patch_policy, generator=self.generator)
        return self._engine

    def go_online(self, stride: int | None = None, exit_rule: ExitRule | None = None,
                  stop_at_exit: bool = True) -> None:
        """Predict every video online (:mod:`adafocus_pl.inference.online`): frame by frame, the segment centres
        or (``stride``) every k-th frame, with ``exit_rule``'s early exit (``stop_at_exit``: stop reading there;
        else read every frame and mark the step). A ``ValueError`` for a network that cannot step online."""
        from adafocus_pl.inference.online import OnlineRecognizer, check_exit_rule

        check_exit_rule(exit_rule, self.data_cfg.num_segments, stride)  # now, not at the first video
        self.recognizer = OnlineRecognizer(self.ckpt, self.data_cfg, rho=self.rho, exit_rule=exit_rule,
                                           top_k=self.top_k, class_names=self.names, device=self.device,
                                           seed=self.seed)
        self.stride, self.stop_at_exit = stride, stop_at_exit

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
        top = top_classes(probs, self.names, self.top_k)
        shown = sample.get("focus_frames", sample["frames"])
        prediction = Prediction(str(video), top, offsets.cpu(), None if keep is None else keep.cpu(), shown,
                                path=video_path(video))
        if out_dir is not None:
            self._write(prediction, shown, prediction.offsets, prediction.keep, out_dir, name)
        return prediction

    def _write(self, prediction: Prediction, frames: torch.Tensor, offsets: torch.Tensor, keep: torch.Tensor | None,
               out_dir: str | os.PathLike, name: str | None) -> None:
        """``<name>.png`` (``frames [T, 3, H, W]`` with their patches) and ``<name>.json`` in ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = name or OutputNames(out_dir)(prediction.video)
        top = prediction.top_k[0]
        title = f"{top['name']} ({100 * top['probability']:.1f}%)"
        # TSM/TSM+ baselines have patch_size = frame size (their "patch" is the whole frame at offset 0)
        prediction.figure = plot_patches(frames[None], offsets[None], int(self.net.patch_size),
                                         out_dir / f"{name}.png", keep=None if keep is None else keep[None],
                                         titles=[title])
        # written last: the record's "path" is what marks these outputs as this video's (OutputNames)
        (out_dir / f"{name}.json").write_text(json.dumps(prediction.as_dict(), indent=2), encoding="utf-8")

    def predict_online(self, video: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                       name: str | None = None, on_step: Callable[[StepResult, VideoFrames], None] | None = None
                       ) -> Prediction:
        """Predict ``video`` online (after :meth:`go_online`): ``on_step(result, frames)`` after each step (the
        command prints a line). The prediction is the exit step's with an exit rule, else the last step's; the
        record's ``"online"`` holds every step, the exit and the GFLOPs used against the full video's. The
        figure shows the frames read (at most :data:`FIGURE_STEPS` of them, evenly spaced)."""
        if self.recognizer is None:
            raise RuntimeError("call go_online before predict_online")
        recognizer = self.recognizer
        frames = recognizer.video(video, self.stride)
        # what the record and figure need, not the StepResults: a long stride run keeps no frame it does not show
        records: list[dict[str, Any]] = []
        offsets: list[tuple[int, int]] = []
        kept: list[bool | None] = []
        shown: list[int] = []  # the steps the figure shows
        shown_frames: list[torch.Tensor] = []
        last = final = None
        for result in recognizer.run(frames, stop_at_exit=self.stop_at_exit):
            records.append(result.as_dict())
            offsets.append(result.offset)
            kept.append(result.kept)
            if result.step % max(1, math.ceil(frames.steps / FIGURE_STEPS)) == 0:
                shown.append(result.step)
                shown_frames.append(result.frame)
            if result.exit_here:
                final = result
            last = result
            if on_step is not None:
                on_step(result, frames)
        if last is None:
            raise RuntimeError(f"no frame of {video} could be read")
        final = final or last
        rule, total = recognizer.exit_rule, frames.steps
        read_all = last.step + 1 == total
        online = {
            "stride": self.stride, "num_frames": frames.num_frames, "steps_total": total,
            "exit_rule": None if rule is None else rule.as_dict(), "exit_step": recognizer.exit_step,
            "steps_read": last.step + 1, "frames_read": last.frames_read, "gflops": last.gflops,
            # AdaFocus+ stopped early: the unread frames' f_L estimated at this video's rate so far
            "gflops_full": recognizer.full_gflops(total, estimate=True),
            "gflops_full_estimated": recognizer.rho is not None and not read_all,
            "gflops_full_max": recognizer.full_gflops(total),  # f_L on every frame
            "prediction_step": final.step, "records": records,
        }
        keep = None if kept[0] is None else torch.tensor(kept)
        prediction = Prediction(str(video), final.top_k, torch.tensor(offsets), keep, torch.stack(shown_frames),
                                path=video_path(video), online=online)
        if out_dir is not None:
            self._write(prediction, prediction.frames, prediction.offsets[shown],
                        None if keep is None else keep[shown], out_dir, name)
        return prediction


def format_prediction(prediction: Prediction) -> str:
    lines = [f"{prediction.video}:", "| rank | class | probability |", "|---:|---|---:|"]
    for rank, row in enumerate(prediction.top_k, 1):
        lines.append(f"| {rank} | {row['name']} ({row['class']}) | {100 * row['probability']:.1f}% |")
    if prediction.keep is not None:
        lines.append(f"f_L ran on {int(prediction.keep.sum())} of {prediction.keep.numel()} frames (AdaFocus+)")
    if prediction.online is not None:
        lines.append(format_online(prediction.online))
    if prediction.figure is not None:
        lines.append(f"frames and patches: {prediction.figure}")
    return "\n".join(lines) + "\n"


def format_online(online: dict[str, Any]) -> str:
    """The online run in one line: the step the prediction is from, the frames and GFLOPs used against the full
    video's (AdaFocus+ stopped early: ``~``, an estimate, see :meth:`OnlineRecognizer.full_gflops`)."""
    steps, total, gflops, full = online["steps_read"], online["steps_total"], online["gflops"], online["gflops_full"]
    frames = (f"read {steps} of {total} {'sampled ' if online['stride'] is None else ''}frames (video frames up to "
              f"{online['frames_read']} of {online['num_frames']})")
    estimated = online["gflops_full_estimated"]
    cost = (f"{gflops:.4g} of {'~' if estimated else ''}{full:.4g} GFLOPs ({100 * gflops / full:.0f}%"
            f"{'; the unread frames through f_L at the rate of the frames read' if estimated else ''})")
    rule = online["exit_rule"]
    if rule is None:
        return f"online: prediction after the last step; {frames}, {cost}"
    at = f"step {online['exit_step'] + 1} of {total}" + ("" if rule["budget"] is None else
                                                         f" (budget {rule['budget']:g})")
    if steps == online["exit_step"] + 1:
        return f"early exit at {at}: {frames}, {cost}"
    return f"early exit would stop at {at}; {frames}, {cost}"
