"""Online recognition (paper Sec. 3.1): a prediction after every frame of a stream or a video file, with early exit.

AdaFocus reads a video one frame at a time: f_G glances at frame t, pi picks the patch from f_G's features and its
own recurrent state, f_L looks at the patch (AdaFocus+: only when pi' keeps the frame, Sec. 3.3) and f_C's recurrent
state gives the prediction after frames 1..t (Eq. 4), so "a prediction may be retrieved after processing any number
of frames". :class:`OnlineRecognizer` steps a network that way over

- any iterable of frames (:meth:`OnlineRecognizer.run`): HxWx3 uint8 arrays, PIL images, or ``[3, H, W]`` tensors
  (uint8, or float in [0, 1], quantised to uint8 as a decoded frame is). Each frame is transformed exactly as
  evaluation transforms one (``data.eval_resize`` / ``eval_crop`` / ``resize_mode``, then ``data.mean`` / ``std``);
- a video file (:class:`VideoFrames`, decoded lazily with PyAV): the frames offline evaluation samples (the centres
  of ``data.num_segments`` segments), so that the prediction at the last step is offline ``predict``'s; or, with a
  ``stride``, every k-th decoded frame (a stream-like run: then the number of steps is the video's frame count / k,
  not ``data.num_segments``).

Early exit: with an :class:`~adafocus_pl.inference.early_exit.ExitRule` each step says whether the rule passes there
(the first step whose confidence reaches its threshold) and :meth:`OnlineRecognizer.run` stops pulling frames after
it: the later frames are never decoded or computed. :func:`exit_rule_from_results` reads the thresholds ``eval``
solved for a budget from its ``results.json``.

Only networks with a patch per frame step online (AdaFocus, AdaFocus+). AdaFocus-TSM chooses one location per clip
after reading every glance frame, and the full-frame baselines have no patch policy: both are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from adafocus_pl.checkpoint import LoadedCheckpoint, load_checkpoint
from adafocus_pl.data.options import Sampling, Transforms
from adafocus_pl.data.transforms import normalize_on_device
from adafocus_pl.evaluation.flops import cached_component_gflops, gflops_per_video
from adafocus_pl.inference.early_exit import ExitRule, confidences
from adafocus_pl.inference.predict import class_names as data_class_names
from adafocus_pl.inference.predict import rho_to_run, saved_overrides, top_classes, video_file_storage
from adafocus_pl.models.contract import VideoNet, has_per_frame_blocks
from adafocus_pl.utils.config import compose

RHO_TOLERANCE = 1e-4  # a results row's rho and predict's rho are the same threshold within this


def check_steps_online(net: VideoNet) -> None:
    """A ``ValueError`` unless ``net`` can be stepped frame by frame (a patch per frame: AdaFocus, AdaFocus+)."""
    if has_per_frame_blocks(net):
        return
    caps = net.capabilities
    if caps.per_clip:
        why = ("chooses one patch location per clip after reading all of its glance frames (AdaFocus-TSM, paper "
               "Sec. 4.2), so it has no prediction after each frame")
    else:
        why = "has no patch policy (a full-frame baseline), so there is no per-frame focus to step"
    raise ValueError(f"online recognition (predict.online, predict.online_stride, predict.exit_*) steps AdaFocus / "
                     f"AdaFocus+ networks (model.architecture=adafocus) frame by frame; this {type(net).__name__} "
                     f"{why}: predict it offline, without those keys")


def check_exit_rule(rule: ExitRule | None, num_segments: int, stride: int | None = None) -> None:
    """A ``ValueError`` when ``rule`` cannot apply to a video read as ``num_segments`` segment centres, or every
    ``stride``-th frame: its thresholds are one per segment-centre frame."""
    if rule is None:
        return
    if stride is not None:
        raise ValueError(f"early-exit thresholds hold for the data.num_segments={num_segments} segment-centre "
                         f"frames; a stride (predict.online_stride={stride}) feeds other frames: drop the stride "
                         f"or the exit rule (predict.exit_*)")
    if rule.steps != num_segments:
        raise ValueError(f"the early-exit rule has {rule.steps} thresholds but data.num_segments={num_segments} "
                         f"frames are read: give one threshold per frame")


def to_uint8_frame(frame: Any, where: str = "frame") -> Tensor:
    """One frame as uint8 ``[3, H, W]``: from an HxWx3 array (uint8, or float in [0, 1]), a PIL image, or a
    ``[3, H, W]`` tensor (uint8, or float in [0, 1]). ``where`` names the frame in error messages."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with torchvision
        Image = None
    if Image is not None and isinstance(frame, Image.Image):
        frame = np.array(frame.convert("RGB"))
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{where}: a numpy frame is H x W x 3 (RGB, as decoders and PIL give it), got shape "
                             f"{frame.shape}")
        # a read-only array (np.asarray of a PIL image, a memory map) is copied: torch wants writable memory
        frame = torch.from_numpy(np.ascontiguousarray(frame) if frame.flags.writeable else frame.copy())
        frame = frame.permute(2, 0, 1)
    elif not isinstance(frame, Tensor):
        raise TypeError(f"{where}: expected an H x W x 3 numpy array, a PIL image or a [3, H, W] tensor, got "
                        f"{type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[0] != 3:
        raise ValueError(f"{where}: a tensor frame is [3, H, W] (RGB, channels first), got shape "
                         f"{list(frame.shape)}; an H x W x 3 tensor needs .permute(2, 0, 1)")
    if frame.dtype == torch.uint8:
        return frame
    if not frame.is_floating_point():
        raise ValueError(f"{where}: frames are uint8 (0-255) or float (0-1), got dtype {frame.dtype}")
    low, high = float(frame.min()), float(frame.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{where}: float frames are read as [0, 1], got values in [{low:g}, {high:g}]: pass uint8 "
                         f"frames, or divide by 255 (frames are normalised here, with data.mean/std)")
    return frame.mul(255.0).round_().to(torch.uint8)


@dataclass
class StepResult:
    """What one online step gives: the prediction after this frame and what it cost."""

    step: int  # 0-based
    frame_index: int  # this frame's index in its source (a video's decoded frame index; else its position)
    logits: Tensor  # [K], float32 on the CPU: f_C's output after frames 1..t
    top_k: list[dict[str, Any]]  # [{"class", "name", "probability"}], most likely first
    confidence: float  # the largest softmax probability (what the exit rule thresholds)
    offset: tuple[int, int]  # top-left (y, x) of this frame's patch, in the transformed frame
    kept: bool | None  # AdaFocus+ with rho: whether f_L ran on this frame (None: f_L runs on every frame)
    gflops: float  # GFLOPs of frames 1..t (f_L counted on the frames it ran on)
    exit_here: bool  # the first step at which the exit rule passes
    exited: bool  # the exit rule passed at this step or an earlier one
    frame: Tensor  # uint8 [3, crop, crop]: the frame as the network saw it, before normalisation

    @property
    def frames_read(self) -> int:
        """Frames of the source read so far (this frame's index + 1)."""
        return self.frame_index + 1

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "frame_index": self.frame_index, "frames_read": self.frames_read,
                "top_k": self.top_k, "confidence": self.confidence, "offset": list(self.offset), "kept": self.kept,
                "gflops": self.gflops, "exit_here": self.exit_here, "exited": self.exited}


class VideoFrames:
    """The frames of one video file for online recognition, decoded lazily with PyAV: iterating gives
    ``(frame index, uint8 [3, H, W])`` and decodes each frame only when it is asked for.

    Without ``stride``: the frames evaluation samples (the centre of each of ``data.num_segments`` segments, the
    frame count taken from the container as training and ``predict`` take it), so the last step's prediction is
    offline ``predict``'s. With ``stride=k``: every k-th decoded frame (0, k, 2k, ...). ``num_frames`` and
    ``indices`` are known once the first frame has been read. Raises ``FileNotFoundError`` for a missing file now,
    and what :class:`~adafocus_pl.data.storage.VideoFileStorage` raises for an unreadable or too short one when
    iterated.
    """

    def __init__(self, path: str | os.PathLike, data_cfg: DictConfig | Mapping, num_classes: int,
                 stride: int | None = None):
        data_cfg = _as_config(data_cfg)
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise ValueError(f"stride={stride!r}: give a whole number >= 1 (every k-th frame), or None")
        if stride is None and data_cfg.get("num_focus_segments") is not None:
            raise ValueError("online recognition reads one frame per step: leave data.num_focus_segments null "
                             "(AdaFocus-TSM's separate focus frames)")
        self.path, self.stride = Path(path), stride
        self.storage = video_file_storage(path, data_cfg, num_classes)
        self.sampler = None if stride is not None else Sampling.pick(data_cfg).sampler("val")
        self.num_segments = Sampling.pick(data_cfg).num_segments
        self.num_frames: int | None = None
        self.indices: list[int] | None = None

    def _choose(self, num_frames: int) -> list[int]:
        self.num_frames = num_frames
        if self.sampler is None:
            self.indices = list(range(0, num_frames, self.stride))
        else:
            self.indices = self.sampler(num_frames)
        return self.indices

    @property
    def steps(self) -> int | None:
        """How many frames a full run reads: ``data.num_segments``, or (stride) known once the video is open."""
        if self.indices is not None:
            return len(self.indices)
        return self.num_segments if self.stride is None else None

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        # segment centres: a header count that is a few frames too high repeats the last frame, as offline reading
        # does; a stride run ends with the stream instead
        return self.storage.iter_clip(self.storage.videos.records[0], self._choose, pad=self.stride is None)


def _as_config(data: DictConfig | Mapping) -> DictConfig:
    return data if isinstance(data, DictConfig) else OmegaConf.create(dict(data))


class OnlineRecognizer:
    """Step an AdaFocus / AdaFocus+ network frame by frame: ``recognizer.step(frame) -> StepResult``, or
    ``recognizer.run(frames)`` over an iterable (a :class:`VideoFrames` for a video file).

    ``model``: a checkpoint path, a :class:`~adafocus_pl.checkpoint.LoadedCheckpoint` or a network.
    ``data``: the data config (``cfg.data``: the eval transform, ``mean``/``std``, ``num_segments`` for video files
    and the class names of ``classes_file``) or a :class:`~adafocus_pl.data.options.Transforms`; None: the
    defaults. ``rho``: AdaFocus+'s threshold on p_t^B (None: the one a Stage III+ checkpoint stores; a network
    without one runs f_L on every frame). ``exit_rule``: early exit (see the module docstring). ``patch_policy``:
    None for the checkpoint's (a bare network: pi's argmax); ``seed`` drives a random policy's patches (a Stage I
    checkpoint's, which are drawn per frame here, so they differ from offline ``predict``'s draws).
    """

    def __init__(self, model: str | os.PathLike | LoadedCheckpoint | VideoNet,
                 data: DictConfig | Mapping | Transforms | None = None, *, rho: float | None = None,
                 exit_rule: ExitRule | None = None, top_k: int = 5, class_names: Sequence[str] | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, patch_policy: str | None = None):
        if isinstance(model, (str, os.PathLike)):
            model = load_checkpoint(model)
        if isinstance(model, LoadedCheckpoint):
            net, saved_rho = model.net, model.rho
            patch_policy = patch_policy or model.patch_policy
        else:
            net, saved_rho = model, None
            patch_policy = patch_policy or "learned"
        check_steps_online(net)
        self.rho = rho_to_run(net, rho, saved_rho)

        self.data_cfg = None if data is None or isinstance(data, Transforms) else _as_config(data)
        transforms = data if isinstance(data, Transforms) else Transforms.pick(self.data_cfg or {})
        self.transform, self.mean, self.std = transforms.eval(), transforms.mean, transforms.std
        if (transforms.eval_crop, transforms.eval_crop) != tuple(net.frame_hw):
            raise ValueError(f"data.eval_crop={transforms.eval_crop} but the network takes {net.frame_hw[0]}x"
                             f"{net.frame_hw[1]} frames (model.frame_size): give the data config it was trained with")

        if class_names is not None:
            self.names = list(class_names)
        elif self.data_cfg is not None:
            self.names = data_class_names(self.data_cfg, net.num_classes)
        else:
            self.names = [f"class {k}" for k in range(net.num_classes)]
        if len(self.names) != net.num_classes:
            raise ValueError(f"{len(self.names)} class names for a network of {net.num_classes} classes")
        self.top_k = max(1, min(int(top_k), net.num_classes))
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.stepper = net.online(patch_policy=patch_policy, generator=self.generator, rho=self.rho)
        parts = cached_component_gflops(net)
        if self.rho is None:  # pi' only runs to decide skips (as eval counts f_L-on-every-frame rows)
            parts.pop("skip_policy", None)
        self.parts = parts
        self.exit_rule = exit_rule
        self.reset()

    def reset(self) -> None:
        """Start a new video: zero the recurrent states, the step count, the cost and the exit."""
        self.stepper.reset()
        self.steps, self.local_frames, self.exit_step = 0, 0, None

    def full_gflops(self, steps: int, estimate: bool = False) -> float:
        """GFLOPs of a video of ``steps`` frames: with f_L on every frame (AdaFocus+: the most it can cost), or with
        ``estimate`` on the fraction of frames it ran on so far in this video (AdaFocus+'s unread frames are
        unknown; exact for AdaFocus, and once every frame is read)."""
        keep_fraction = self.local_frames / self.steps if estimate and self.steps else 1.0
        return gflops_per_video(self.parts, steps, keep_fraction=keep_fraction)

    def step(self, frame: Any, frame_index: int | None = None) -> StepResult:
        """Read one frame (any form :func:`to_uint8_frame` takes); ``frame_index``: its index in the source
        (default: the number of frames stepped so far)."""
        t = self.steps
        image = to_uint8_frame(frame, f"frame {t if frame_index is None else frame_index}")
        image = self.transform(image[None])[0][0]
        x = normalize_on_device(image[None].to(self.device), self.mean, self.std)
        with torch.inference_mode():
            logits = self.stepper.step(x)[0].float().cpu()
        probs = torch.softmax(logits, dim=-1)
        top = top_classes(probs, self.names, self.top_k)
        confidence = float(confidences(probs))
        keep = self.stepper.last_keep
        kept = None if keep is None else bool(keep[0])
        self.local_frames += kept is not False
        self.steps += 1
        gflops = gflops_per_video(self.parts, self.steps, keep_fraction=self.local_frames / self.steps)
        exit_here = False
        if self.exit_rule is not None and self.exit_step is None:
            # past the rule's steps a video has stopped already (its last threshold is -inf)
            if t >= self.exit_rule.steps or bool(self.exit_rule.exits_at(t, torch.tensor(confidence))):
                self.exit_step, exit_here = t, True
        y, x_ = (int(v) for v in self.stepper.last_offsets[0].tolist())
        return StepResult(step=t, frame_index=t if frame_index is None else int(frame_index), logits=logits,
                          top_k=top, confidence=confidence, offset=(y, x_), kept=kept, gflops=gflops,
                          exit_here=exit_here, exited=self.exit_step is not None, frame=image)

    def run(self, frames: Iterable, stop_at_exit: bool = True) -> Iterator[StepResult]:
        """Step over ``frames`` from the start of a new video, yielding each step's result. With an exit rule and
        ``stop_at_exit``, the run ends at the exit step: no later frame is pulled from ``frames`` (a
        :class:`VideoFrames` is closed there, so they are never decoded). ``frames``: any iterable of frames, or a
        :class:`VideoFrames` (its ``(index, frame)`` pairs)."""
        if isinstance(frames, VideoFrames):
            check_exit_rule(self.exit_rule, frames.num_segments, frames.stride)
        self.reset()
        pairs = iter(frames) if isinstance(frames, VideoFrames) else enumerate(frames)
        with closing(pairs) if isinstance(frames, VideoFrames) else nullcontext():
            for index, frame in pairs:
                result = self.step(frame, index)
                yield result
                if stop_at_exit and result.exited:
                    return

    def video(self, path: str | os.PathLike, stride: int | None = None) -> VideoFrames:
        """The :class:`VideoFrames` of a video file, sampled as this recognizer's data config says."""
        if self.data_cfg is None and stride is None:
            raise ValueError("reading a video's segment centres needs the data config (data.num_segments): build "
                             "the OnlineRecognizer with data=cfg.data, or give a stride")
        return VideoFrames(path, self.data_cfg or {}, self.net.num_classes, stride)

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | os.PathLike, overrides: Sequence[str] = (), **kwargs) -> OnlineRecognizer:
        """A recognizer for a checkpoint with the data config of its training run (read from its run directory,
        as ``predict`` reads it) and ``overrides`` on top (e.g. ``data.root=...`` for the class names)."""
        cfg = compose("predict", saved_overrides(Path(ckpt_path)) + [f"ckpt_path={ckpt_path}", *overrides])
        return cls(load_checkpoint(ckpt_path), cfg.data, **kwargs)


# ------------------------------------------------------------------------------------------------ exit rules
def _row_rho(row: Mapping[str, Any], rhos: Mapping[float, float]) -> float | None:
    """The rho an early-exit row of eval's results was solved with: its ``rho``, else its eta's (``eta`` or
    ``eta=...`` in its family / method) in the results' ``rhos``; None for a row without frame skipping."""
    if row.get("rho") is not None:
        return float(row["rho"])
    eta = row.get("eta")
    if eta is None:
        found = re.search(r"eta=([0-9.]+)", f"{row.get('family', '')} {row.get('method', '')}")
        eta = found and float(found.group(1))
    if eta is None:
        return None
    return rhos.get(float(eta), math.nan)  # an eta whose rho the results lack matches no rho


def _setting(rho: float | None) -> str:
    return f"AdaFocus+ skipping f_L at rho={rho:.6g}" if rho is not None else "f_L on every frame"


def exit_rule_from_results(path: str | os.PathLike, budget: float, rho: float | None = None,
                           eval_command: str = "python -m adafocus_pl.eval ckpt_path=CKPT") -> ExitRule:
    """The :class:`ExitRule` of :func:`exit_row_from_results`'s row."""
    return ExitRule.from_dict(exit_row_from_results(path, budget, rho, eval_command))


def exit_row_from_results(path: str | os.PathLike, budget: float, rho: float | None = None,
                          eval_command: str = "python -m adafocus_pl.eval ckpt_path=CKPT",
                          nearest_rho: bool = False) -> dict[str, Any]:
    """The early-exit row ``eval`` solved for ``budget`` (a fraction of the full GFLOPs) and the network's setting
    (``rho``: AdaFocus+'s threshold, None for f_L on every frame), from its ``results.json`` at ``path``: the row
    with that ``budget`` and ``thresholds``. Raises ``FileNotFoundError`` / ``ValueError`` with what to run
    (``eval_command``) or which budgets and settings there are."""
    path = Path(path)
    hint = (f"run {eval_command} (it writes the early-exit thresholds to {path}), point predict.exit_from at an "
            f"eval results.json, or give the thresholds with predict.exit_thresholds=[...]")
    if not path.is_file():
        raise FileNotFoundError(f"no early-exit thresholds: {path} does not exist; {hint}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        rows = [r for r in results.get("rows", []) if r.get("thresholds") is not None and r.get("budget") is not None]
        rhos = {float(k): float(v) for k, v in (results.get("rhos") or {}).items()}
    except (ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{path} is not an eval results.json ({err}); {hint}") from err
    if not rows:
        raise ValueError(f"{path} has no early-exit thresholds (rows with budget and thresholds): it was written "
                         f"without early exit; {hint}")

    def same(row) -> bool:
        theirs = _row_rho(row, rhos)
        if rho is None or theirs is None:
            return rho is None and theirs is None
        return abs(theirs - rho) <= RHO_TOLERANCE

    fitting = [r for r in rows if same(r)]
    solved = sorted({theirs for r in rows if (theirs := _row_rho(r, rhos)) is not None})
    if not fitting and nearest_rho and rho is not None and solved:
        # the thresholds hold for the rho they were solved with: take eval's rho nearest to the one asked for
        nearest = min(solved, key=lambda value: abs(value - rho))
        fitting = [r for r in rows if _row_rho(r, rhos) == nearest]
    if not fitting:
        settings = sorted({_setting(_row_rho(r, rhos)) for r in rows})
        fix = ("set predict.rho to one of those" if any(_row_rho(r, rhos) is not None for r in rows)
               else "solve them for AdaFocus+")
        raise ValueError(f"{path} has early-exit thresholds for {'; '.join(settings)}, none for what predict runs "
                         f"({_setting(rho)}): {fix}, or give predict.exit_thresholds=[...]")
    chosen = [r for r in fitting if abs(float(r["budget"]) - float(budget)) <= 1e-9]
    if not chosen:
        budgets = ", ".join(f"{b:g}" for b in sorted({float(r["budget"]) for r in fitting}))
        raise ValueError(f"{path} has no early-exit thresholds for budget {float(budget):g} ({_setting(rho)}); its "
                         f"budgets: {budgets}. Set predict.exit_budget to one of them, or run {eval_command} with "
                         f"that budget")
    return {**chosen[0], "rho": _row_rho(chosen[0], rhos)}


def format_step(result: StepResult, steps: int | None = None, num_frames: int | None = None) -> str:
    """One line per online step: step, frames read, the top-1 class and its probability, the confidence, the patch,
    f_L kept / skipped (AdaFocus+) and ``-> would exit here`` at the exit step."""
    top = result.top_k[0]
    parts = [f"step {result.step + 1}" + (f"/{steps}" if steps else ""),
             f"frames read {result.frames_read}" + (f"/{num_frames}" if num_frames else ""),
             f"top-1 {top['name']} ({top['class']}) {100 * top['probability']:.1f}%",
             f"confidence {result.confidence:.3f}",
             f"patch y={result.offset[0]} x={result.offset[1]}"]
    if result.kept is not None:
        parts.append("f_L kept" if result.kept else "f_L skipped")
    line = " | ".join(parts)
    return line + ("  -> would exit here" if result.exit_here else "")
