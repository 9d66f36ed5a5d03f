"""Wall-clock speed of AdaFocus against the full-frame baselines (the body behind ``python -m adafocus_pl.bench``).

Contenders, all built from one ``model`` config with random weights (speed does not depend on them) and run on
the fast path of :mod:`adafocus_pl.inference.fast` with the same backend and memory format:

- the reference, f_G + f_L on every full frame (MobileNetV2 + ResNet-50 with the paper's config), and f_L alone;
- AdaFocus at each patch size P;
- AdaFocus+ at P = ``model.patch_size`` with a kept fraction eta (exactly eta of each call's frames run f_L).

Two measurements: latency (one video of T frames) and throughput (a batch of videos). The contenders alternate
within every repeat (the starting one rotates), and warm-up repeats are dropped. Times are the medians over the
repeats; a speed-up is the median over the repeats of the reference's time divided by the contender's *in the same
repeat*, so that drifts in the machine's speed, which hit both alike, cancel (a quotient of two medians can be
off by several points where the paired one is not; docs/performance.md). The FLOPs ratio is the reference's
GFLOPs per video over the contender's (fvcore, :mod:`adafocus_pl.evaluation.flops`); "efficiency" is the speed-up
divided by it.
"outside CNNs" is the share of a call's time spent outside f_G and f_L (policies, crop, f_C, Python).

Early exit (``exit_budget``): two more contenders at P = ``model.patch_size``, both on the frame-by-frame path of
:class:`~adafocus_pl.inference.fast.FastAdaFocus` with imposed exits (random weights give meaningless
confidences): every video reading all frames ("frame by frame, no exit": the per-step overhead alone), and the
videos of a batch stopping at the steps of MSDNet's geometric exit distribution for that budget
(:func:`~adafocus_pl.inference.early_exit.schedule_for_fractions`; a single video, the latency input, stops at the
distribution's median step). Their speed-ups are also given against the whole-clip AdaFocus at the same P, next to
the FLOPs ratio. :func:`run_checkpoint_exit_benchmark` times a trained checkpoint over a data split with the
thresholds ``eval`` solved for it.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from adafocus_pl.evaluation.flops import (
    component_gflops,
    gflops_per_video,
    random_weight_config,
)
from adafocus_pl.inference.early_exit import (
    ExitRule,
    cumulative_costs,
    exit_fractions_for_budget,
    schedule_for_fractions,
)
from adafocus_pl.inference.fast import DEFAULT_GLANCE_CHUNK, FastAdaFocus, FastFullFrame
from adafocus_pl.models.adafocus import AdaFocusNet
from adafocus_pl.models.build import architecture_of
from adafocus_pl.models.contract import NetOutput
from adafocus_pl.models.full_frame import FullFrameNet


@dataclass
class Contender:
    name: str
    engine: Callable[[torch.Tensor], NetOutput]
    gflops_per_video: float
    patch_size: int | None = None
    eta: float | None = None
    times: dict[str, list[float]] = field(default_factory=lambda: {"latency": [], "throughput": []})
    outside: dict[str, list[float]] = field(default_factory=lambda: {"latency": [], "throughput": []})
    parts: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {"latency": [], "throughput": []})
    relative_to: str | None = None  # early exit: the whole-clip contender its speed-ups are also given against
    exit_steps: dict[str, list[int]] | None = None  # early exit: the imposed exit step of each video, per input


class _ImposedExits:
    """A :class:`FastAdaFocus` on its frame-by-frame path whose videos stop at the steps of an exit distribution
    ``fractions [T]``, scheduled for each call's batch size (:func:`schedule_for_fractions`)."""

    def __init__(self, engine: FastAdaFocus, fractions: torch.Tensor):
        self.engine, self.fractions = engine, fractions

    def schedule(self, batch: int):
        return schedule_for_fractions(self.fractions, batch)

    def __call__(self, frames: torch.Tensor) -> NetOutput:
        self.engine.exit_rule = self.schedule(frames.shape[0])
        return self.engine(frames)

    @property
    def timings(self) -> dict[str, float]:
        return self.engine.timings

    def reset_timings(self) -> None:
        self.engine.reset_timings()


def _model_kwargs(model_cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """AdaFocusNet's constructor arguments, random weights (speed does not depend on them)."""
    plain = random_weight_config(model_cfg)
    architecture = architecture_of(plain)
    plain.pop("architecture", None)
    if architecture != "adafocus":
        raise ValueError(f"the benchmark runs AdaFocus (model.architecture=adafocus), got {architecture!r}")
    return plain


def build_contenders(model_cfg: Mapping[str, Any] | DictConfig, frame_size: int, num_frames: int,
                     patch_sizes: Sequence[int], eta: float | None, backend: str = "eager",
                     channels_last: bool = True, fold_bn: bool = True, fuse_activations: bool = True,
                     device: torch.device | str = "cpu",
                     glance_chunk: int | None = DEFAULT_GLANCE_CHUNK, exit_budget: float | None = None,
                     batch_size: int = 1) -> list[Contender]:
    """The contenders, reference first (see the module docstring); ``batch_size``: the throughput input's videos
    (the early-exit schedule and its GFLOPs are those of that batch)."""
    kwargs = _model_kwargs(model_cfg)
    kwargs["frame_size"] = [frame_size, frame_size]
    engine_options = dict(backend=backend, channels_last=channels_last, fold_bn=fold_bn,
                          fuse_activations=fuse_activations, profile=True, glance_chunk=glance_chunk)
    baseline_kwargs = {k: kwargs[k] for k in ("num_classes", "frame_size", "glance_backbone", "local_backbone",
                                              "glance_kwargs", "local_kwargs", "classifier", "classifier_hidden")}
    contenders = []
    for glance in (kwargs["glance_backbone"], None):
        net = FullFrameNet(**{**baseline_kwargs, "glance_backbone": glance}).eval().to(device)
        name = " + ".join(b for b in (glance, kwargs["local_backbone"]) if b)
        contenders.append(Contender(f"full frame: {name}", FastFullFrame(net, **engine_options),
                                    gflops_per_video(component_gflops(net), num_frames)))
    variants = [(int(p), None) for p in patch_sizes]
    if eta is not None:
        variants.append((int(kwargs["patch_size"]), float(eta)))
    for patch_size, eta in variants:
        net = AdaFocusNet(**{**kwargs, "patch_size": patch_size, "skip_policy": eta is not None}).eval().to(device)
        gflops = gflops_per_video(component_gflops(net), num_frames, keep_fraction=1.0 if eta is None else eta)
        name = f"AdaFocus P={patch_size}" if eta is None else f"AdaFocus+ P={patch_size} eta={eta:g}"
        contenders.append(Contender(name, FastAdaFocus(net, eta=eta, **engine_options), gflops,
                                    patch_size=patch_size, eta=eta))
    if exit_budget is not None:
        contenders += _exit_contenders(kwargs, num_frames, float(exit_budget), batch_size, engine_options, device,
                                       [c.name for c in contenders])
    return contenders


def _exit_contenders(kwargs: dict[str, Any], num_frames: int, budget: float, batch_size: int,
                     engine_options: dict[str, Any], device, names: list[str]) -> list[Contender]:
    """Frame by frame without exits, and with the exits of ``budget`` (see the module docstring); the whole-clip
    AdaFocus at the same P first when the patch sizes did not include it."""
    patch_size = int(kwargs["patch_size"])
    net = AdaFocusNet(**{**kwargs, "patch_size": patch_size, "skip_policy": False}).eval().to(device)
    parts = component_gflops(net)
    whole = f"AdaFocus P={patch_size}"
    contenders = []
    if whole not in names:
        contenders.append(Contender(whole, FastAdaFocus(net, **engine_options), gflops_per_video(parts, num_frames),
                                    patch_size=patch_size))
    costs = cumulative_costs(gflops_per_video(parts, 1, keep_fraction=0.0), parts["local"], num_frames, count=1)[0]
    read_all = torch.zeros(num_frames, dtype=torch.float64)
    read_all[-1] = 1.0
    for name, fractions in ((f"AdaFocus P={patch_size} frame by frame, no exit", read_all),
                            (f"AdaFocus P={patch_size} early exit (budget {100 * budget:g}%)",
                             exit_fractions_for_budget(costs, budget))):
        engine = _ImposedExits(FastAdaFocus(net, **engine_options), fractions)
        steps = {"latency": list(engine.schedule(1).exit_steps),
                 "throughput": list(engine.schedule(batch_size).exit_steps)}
        gflops = float(costs[steps["throughput"]].mean())
        contenders.append(Contender(name, engine, gflops, patch_size=patch_size, relative_to=whole,
                                    exit_steps=steps))
    return contenders


def measure(contenders: list[Contender], inputs: Mapping[str, torch.Tensor], repeats: int, warmup: int,
            progress: bool = True) -> None:
    """Fill each contender's ``times`` / ``outside`` per measurement (``inputs``: name -> frames), alternating the
    contenders within each repeat and dropping the first ``warmup`` repeats."""
    rounds = [(kind, r) for kind in inputs for r in range(warmup + repeats)]
    for kind, r in tqdm(rounds, desc="bench", disable=not progress, dynamic_ncols=True):
        start = r % len(contenders)
        for contender in contenders[start:] + contenders[:start]:
            engine = contender.engine
            engine.reset_timings()
            begin = time.perf_counter()
            engine(inputs[kind])
            seconds = time.perf_counter() - begin
            if r >= warmup:
                contender.times[kind].append(seconds)
                inside = sum(engine.timings.values())
                contender.outside[kind].append(max(0.0, 1.0 - inside / seconds))
                contender.parts[kind].append(dict(engine.timings))


def summarise(contenders: list[Contender], batch_size: int) -> list[dict[str, Any]]:
    """One row per contender: median times, paired speed-ups over the first contender, FLOPs ratio, efficiency."""
    reference = contenders[0]
    rows = []
    for c in contenders:
        latency, batch = statistics.median(c.times["latency"]), statistics.median(c.times["throughput"])
        flops_ratio = reference.gflops_per_video / c.gflops_per_video
        speedup_latency = _paired_speedup(reference.times["latency"], c.times["latency"])
        speedup_throughput = _paired_speedup(reference.times["throughput"], c.times["throughput"])
        rows.append({
            "method": c.name, "patch_size": c.patch_size, "eta": c.eta,
            "gflops_per_video": c.gflops_per_video, "flops_ratio": flops_ratio,
            "latency_s": latency, "latency_speedup": speedup_latency,
            "latency_efficiency": speedup_latency / flops_ratio,
            "videos_per_s": batch_size / batch, "throughput_speedup": speedup_throughput,
            "throughput_efficiency": speedup_throughput / flops_ratio,
            "outside_cnns_latency": statistics.median(c.outside["latency"]),
            "outside_cnns_throughput": statistics.median(c.outside["throughput"]),
            "latency_runs_s": c.times["latency"], "batch_runs_s": c.times["throughput"],
            "latency_parts_s": _median_parts(c.parts["latency"]), "batch_parts_s": _median_parts(c.parts["throughput"]),
        })
        if c.relative_to is not None:
            whole = next(other for other in contenders if other.name == c.relative_to)
            rows[-1].update({
                "full_path": whole.name, "exit_steps": c.exit_steps,
                "flops_ratio_vs_full_path": whole.gflops_per_video / c.gflops_per_video,
                "latency_speedup_vs_full_path": _paired_speedup(whole.times["latency"], c.times["latency"]),
                "throughput_speedup_vs_full_path": _paired_speedup(whole.times["throughput"], c.times["throughput"]),
            })
    return rows


NOISY_SPREAD = 0.10  # above the spread of quiet runs, below that of runs on a busy machine (docs/performance.md)


def run_spread(row: dict[str, Any]) -> dict[str, float]:
    """(max - min) / median of a row's measured runs, for latency and throughput: how noisy the machine was."""
    spread = {}
    for kind, key in (("latency", "latency_runs_s"), ("throughput", "batch_runs_s")):
        runs = row[key]
        spread[kind] = (max(runs) - min(runs)) / statistics.median(runs)
    return spread


def _paired_speedup(reference_runs: list[float], runs: list[float]) -> float:
    """Median over repeats of reference time / contender time, both from the same repeat."""
    return statistics.median(ref / own for ref, own in zip(reference_runs, runs, strict=True))


def _median_parts(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds per component (``glance``, ``local``) over the measured runs."""
    names = sorted({name for run in runs for name in run})
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "",
             "| method | GFLOPs/video | FLOPs ratio | latency (s) | latency speed-up | videos/s | "
             "throughput speed-up | speed-up / FLOPs ratio (latency, throughput) | outside f_G+f_L (latency, "
             "throughput) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['gflops_per_video']:.2f} | {r['flops_ratio']:.2f}x | {r['latency_s']:.3f} | "
            f"{r['latency_speedup']:.2f}x | {r['videos_per_s']:.2f} | {r['throughput_speedup']:.2f}x | "
            f"{r['latency_efficiency']:.2f}, {r['throughput_efficiency']:.2f} | "
            f"{100 * r['outside_cnns_latency']:.1f}%, {100 * r['outside_cnns_throughput']:.1f}% |")
    exits = [r for r in rows if r.get("full_path")]
    if exits:
        lines += ["", "Early exit against the whole-clip path at the same P (exits imposed: a batch follows the "
                  "budget's geometric exit distribution, a single video stops at its median step):", "",
                  "| method | exit step per video (throughput batch; latency video) | GFLOPs/video | FLOPs ratio | "
                  "latency speed-up | throughput speed-up |", "|---|---|---:|---:|---:|---:|"]
        for r in exits:
            steps = r["exit_steps"]
            lines.append(
                f"| {r['method']} vs {r['full_path']} | {','.join(str(s + 1) for s in steps['throughput'])}; "
                f"{steps['latency'][0] + 1} | {r['gflops_per_video']:.2f} | {r['flops_ratio_vs_full_path']:.2f}x | "
                f"{r['latency_speedup_vs_full_path']:.2f}x | {r['throughput_speedup_vs_full_path']:.2f}x |")
    return "\n".join(lines) + "\n"


@dataclass
class BenchSettings:
    frames: int
    batch_size: int
    frame_size: int
    patch_sizes: list[int]
    eta: float | None
    repeats: int
    warmup: int
    backend: str
    channels_last: bool
    fold_bn: bool
    device: str
    seed: int = 0
    fuse_activations: bool = True
    glance_chunk: int | None = DEFAULT_GLANCE_CHUNK  # frames per f_G call (None: all of a batch's frames at once)
    keep_freed_memory: bool = False  # glibc malloc tuned by the caller (adafocus_pl.utils.allocator)
    exit_budget: float | None = None  # early-exit contenders at this fraction of AdaFocus's GFLOPs (None: none)


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
            info["cpu"] = model
        except (OSError, StopIteration):
            pass
    return info


def _save_json(result: dict[str, Any], json_path: str | Path | None) -> None:
    """Write ``result`` to ``json_path`` (its folder created) and say where; nothing when it is None."""
    if json_path is None:
        return
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    print(f"[bench] JSON written to {json_path}")


def run_benchmark(model_cfg: Mapping[str, Any] | DictConfig, settings: BenchSettings,
                  json_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Build, measure, print and (optionally) save; returns ``{"settings", "machine", "rows"}``."""
    device = torch.device(settings.device)
    contenders = build_contenders(model_cfg, settings.frame_size, settings.frames, settings.patch_sizes,
                                  settings.eta, backend=settings.backend, channels_last=settings.channels_last,
                                  fold_bn=settings.fold_bn, fuse_activations=settings.fuse_activations,
                                  device=device, glance_chunk=settings.glance_chunk,
                                  exit_budget=settings.exit_budget, batch_size=settings.batch_size)
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (settings.frames, 3, settings.frame_size, settings.frame_size)
    inputs = {"latency": torch.randn(1, *shape, generator=generator).to(device),
              "throughput": torch.randn(settings.batch_size, *shape, generator=generator).to(device)}
    measure(contenders, inputs, settings.repeats, settings.warmup, progress=progress)
    rows = summarise(contenders, settings.batch_size)
    result = {"settings": asdict(settings), "machine": machine_info(device), "rows": rows}
    glance_calls = f"f_G in chunks of {settings.glance_chunk} frames" if settings.glance_chunk else "f_G in one call"
    title = (f"{settings.frames} frames of {settings.frame_size}x{settings.frame_size}; latency = 1 video, "
             f"throughput = {settings.batch_size} videos; median of {settings.repeats} (after {settings.warmup} "
             f"warm-up); backend {settings.backend}, {result['machine']['threads']} threads, {device}, {glance_calls}"
             f"{', freed memory kept' if settings.keep_freed_memory else ''}")
    print(markdown(rows, title), end="")
    result["spread"] = run_spread(rows[0])
    print(f"[bench] run-to-run spread of the reference ((max - min) / median): latency "
          f"{100 * result['spread']['latency']:.0f}%, throughput {100 * result['spread']['throughput']:.0f}%")
    if max(result["spread"].values()) > NOISY_SPREAD:
        print(f"[bench] warning: above {100 * NOISY_SPREAD:.0f}%, something else is using this machine's CPU or "
              f"memory; the quotients may be off by a few per cent: run again when it is idle, or with more --repeats")
    _save_json(result, json_path)
    return result


# ------------------------------------------------------------------------------------------ a trained checkpoint
def run_checkpoint_exit_benchmark(ckpt_path: str | Path, budget: float, batch_size: int, repeats: int, warmup: int,
                                  overrides: Sequence[str] = (), split: str = "test", backend: str = "eager",
                                  results_path: str | Path | None = None, json_path: str | Path | None = None,
                                  progress: bool = True) -> dict[str, Any]:
    """Wall-clock time of a trained checkpoint over a whole data split, in batches of ``batch_size`` videos: the
    whole-clip fast path against the early-exit one with the thresholds ``eval`` solved for ``budget``
    (``results_path``: default ``<run dir>/eval/results.json``). The batches are decoded and normalised before the
    clock starts; the two paths alternate within every repeat. Also checks that the early-exit path reproduces the
    evaluation's row: its top-1 and GFLOPs per video are printed next to ``eval``'s."""
    from hydra.utils import instantiate

    from adafocus_pl.checkpoint import load_checkpoint
    from adafocus_pl.evaluation.metrics import top1_accuracy
    from adafocus_pl.inference.online import exit_row_from_results
    from adafocus_pl.inference.predict import run_dir_of, saved_overrides
    from adafocus_pl.utils.config import compose

    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    results_path = Path(results_path) if results_path else run_dir_of(ckpt_path) / "eval" / "results.json"
    row = exit_row_from_results(results_path, budget,  # the main row: f_L on every frame
                                eval_command=f"python -m adafocus_pl.eval ckpt_path={ckpt_path}")
    rule = ExitRule.from_dict(row)
    cfg = compose("train", saved_overrides(ckpt_path) + list(overrides))
    datamodule = instantiate(cfg.data, _recursive_=False, _convert_="all")
    datamodule.prepare_data()
    batches, labels = [], []
    for batch in datamodule.eval_dataloader(split, batch_size=batch_size):
        batch = datamodule.on_after_batch_transfer(batch, 0)
        batches.append(batch["frames"])
        labels.append(batch["label"])
    net = ckpt.net.eval()
    engines = {"whole clip": FastAdaFocus(net, backend=backend, patch_policy=ckpt.patch_policy),
               "early exit": FastAdaFocus(net, backend=backend, patch_policy=ckpt.patch_policy, exit_rule=rule)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    outputs: dict[str, list[NetOutput]] = {}
    for r in tqdm(range(warmup + repeats), desc="bench", disable=not progress, dynamic_ncols=True):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for name in order:
            begin = time.perf_counter()
            outs = [engines[name](frames) for frames in batches]
            seconds = time.perf_counter() - begin
            outputs.setdefault(name, outs)
            if r >= warmup:
                times[name].append(seconds)
    parts = component_gflops(net)
    parts.pop("skip_policy", None)  # the main row: f_L on every frame, pi' not run
    steps = int(batches[0].shape[1])
    costs = cumulative_costs(gflops_per_video(parts, 1, keep_fraction=0.0), parts["local"], steps, count=1)[0]
    label = torch.cat(labels)
    stops = torch.cat([o.exit_steps for o in outputs["early exit"]])
    result = {
        "checkpoint": str(ckpt_path), "split": split, "videos": len(label), "batch_size": batch_size,
        "budget": budget, "thresholds": rule.as_dict()["thresholds"], "repeats": repeats, "warmup": warmup,
        "backend": backend, "machine": machine_info(torch.device("cpu")),
        "seconds": {name: statistics.median(t) for name, t in times.items()}, "runs_s": times,
        "speedup": _paired_speedup(times["whole clip"], times["early exit"]),
        "gflops_per_video": {"whole clip": float(costs[-1]), "early exit": float(costs[stops].mean())},
        "mean_frames_read": float((stops + 1).double().mean()),
        "top1": {name: top1_accuracy(torch.cat([o.logits[:, -1] for o in outs]), label)
                 for name, outs in outputs.items()},
        "eval_row": {k: row.get(k) for k in ("method", "top1", "gflops_per_video", "mean_frames_read")},
    }
    result["flops_ratio"] = result["gflops_per_video"]["whole clip"] / result["gflops_per_video"]["early exit"]
    print(checkpoint_markdown(result), end="")
    _save_json(result, json_path)
    return result


def checkpoint_markdown(result: dict[str, Any]) -> str:
    e = result["eval_row"]
    lines = [f"### {result['checkpoint']}: {result['videos']} {result['split']} videos in batches of "
             f"{result['batch_size']}, median of {result['repeats']} (after {result['warmup']} warm-up), backend "
             f"{result['backend']}, {result['machine']['threads']} threads", "",
             "| path | seconds for the split | videos/s | speed-up | GFLOPs/video | FLOPs ratio | frames read | "
             "top-1 (%) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    budget = f" (budget {100 * result['budget']:g}%)"
    for name in ("whole clip", "early exit"):
        exit_ = name == "early exit"
        lines.append(
            f"| {name}{budget if exit_ else ''} | {result['seconds'][name]:.2f} | "
            f"{result['videos'] / result['seconds'][name]:.1f} | {result['speedup'] if exit_ else 1.0:.2f}x | "
            f"{result['gflops_per_video'][name]:.4g} | {result['flops_ratio'] if exit_ else 1.0:.2f}x | "
            f"{result['mean_frames_read'] if exit_ else float(len(result['thresholds'])):.2f} | "
            f"{100 * result['top1'][name]:.1f} |")
    lines += ["", f"eval's row {e['method']!r}: top-1 {100 * e['top1']:.1f}%, {e['gflops_per_video']:.4g} GFLOPs per "
              f"video, {e['mean_frames_read']:.2f} frames read"]
    return "\n".join(lines) + "\n"
