"""The paper's evaluations of one stage checkpoint (the body behind ``python -m adafocus_pl.eval``).

- offline top-1 and mAP from the last step's softmax scores (Sec. 3.4; mAP over all classes as in
  Table 1, see :func:`adafocus_pl.evaluation.metrics.mean_average_precision`);
- the online curve: the metric after t of T frames at the cost of t frames (Fig. 6);
- fixed-policy ablations on the checkpoint's own f_L/f_C (Table 5);
- AdaFocus+: rho solved on the training split for each kept fraction eta, one row per eta (Sec. 3.3, Fig. 5);
- sample-wise early exit: for the main row and each eta row, one row per GFLOPs budget, each video predicted
  after the first frame at which it is confident enough (Sec. 3.1: "a prediction may be retrieved after processing
  any number of frames"; thresholds solved on the training split, :mod:`adafocus_pl.inference.early_exit`);
- GFLOPs per video from the per-component fvcore counts and the frames actually computed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adafocus_pl.checkpoint import LoadedCheckpoint
from adafocus_pl.data.datamodule import focus_inputs
from adafocus_pl.evaluation.flops import component_gflops, gflops_per_video
from adafocus_pl.evaluation.metrics import mean_average_precision, patch_box_overlap, top1_accuracy
from adafocus_pl.inference.early_exit import (
    confidences,
    cumulative_costs,
    exit_steps,
    gather_steps,
    solve_exit_rules,
)
from adafocus_pl.models.contract import VideoNet, has_per_frame_blocks
from adafocus_pl.models.patch_policies import fixed_policy_names, get_patch_policy
from adafocus_pl.models.skipping import keep_mask, solve_rhos

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- inference
@dataclass
class SplitOutputs:
    """Per-video outputs over a split: ``scores [N, T, K]`` (softmax after each step), ``labels [N]``,
    ``targets [N, K]``, and where they exist ``keep [N, T]``, ``hit``/``coverage`` ``[N, T]``."""

    scores: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    keep: torch.Tensor | None = None
    hit: torch.Tensor | None = None
    coverage: torch.Tensor | None = None
    first_batch: dict[str, Any] | None = None  # frames, offsets, keep, labels, predictions of the first batch


def _batches(loader, datamodule, device, desc: str):
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        yield datamodule.on_after_batch_transfer(batch, 0)


@torch.inference_mode()
def run_split(net: VideoNet, loader, datamodule, device, patch_policy: str, rho: float | None = None,
              seed: int = 0, desc: str = "eval") -> SplitOutputs:
    """Run ``net`` with ``patch_policy`` (and AdaFocus+'s threshold ``rho``) over a whole split."""
    generator = torch.Generator(device=device).manual_seed(seed)  # the random baselines are reproducible
    parts: dict[str, list[torch.Tensor]] = {"scores": [], "labels": [], "targets": [], "keep": [], "hit": [],
                                            "coverage": []}
    first = None
    for batch in _batches(loader, datamodule, device, desc):
        out = net(batch["frames"], patch_policy=patch_policy, generator=generator, rho=rho, **focus_inputs(batch))
        scores = F.softmax(out.logits.float(), dim=-1)
        parts["scores"].append(scores.cpu())
        parts["labels"].append(batch["label"].cpu())
        parts["targets"].append(batch["target"].cpu())
        if out.keep is not None:
            parts["keep"].append(out.keep.cpu())
        boxes = batch.get("focus_boxes", batch.get("boxes"))  # patches come from the focus frames
        if out.offsets is not None and boxes is not None:
            hit, coverage = patch_box_overlap(out.offsets, net.patch_size, boxes)
            parts["hit"].append(hit.cpu())
            parts["coverage"].append(coverage.cpu())
        if first is None:
            shown = batch.get("focus_frames", batch["frames"])  # the frames the patches were cut from
            first = {"frames": shown.cpu(), "labels": batch["label"].cpu(),
                     "predictions": scores[:, -1].argmax(-1).cpu(),
                     "offsets": None if out.offsets is None else out.offsets.cpu(),
                     "keep": None if out.keep is None else out.keep.cpu()}
    if not parts["scores"]:
        raise ValueError("the evaluation split is empty: check the list file of eval.split")
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
    return SplitOutputs(first_batch=first, **cat)


@torch.inference_mode()
def keep_probabilities(net: VideoNet, loader, datamodule, device, desc: str = "p_t^B") -> torch.Tensor:
    """AdaFocus+'s p_t^B ``[N, T]`` over a split: f_G and pi' only (f_L never runs)."""
    probs = []
    for batch in _batches(loader, datamodule, device, desc):
        logits, _ = net.skip_rollout(net.glance_maps(batch["frames"]))
        probs.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(probs)


@torch.inference_mode()
def threshold_split_outputs(net: VideoNet, loader, datamodule, device, patch_policy: str,
                            rhos: Sequence[float] = (), seed: int = 0,
                            desc: str = "scores") -> dict[float | None, SplitOutputs]:
    """The split's per-step softmax scores in one pass (the early-exit thresholds are solved on them): key None
    for the network with f_L on every frame and, for AdaFocus+, one key per ``rho``. f_G, pi, pi' and f_L run once
    per video; each rho only re-runs f_C on e_L-bar zeroed where p_t^B < rho, which is what the forward with that
    rho computes (Eq. 9: skipped frames' local features are zeros)."""
    if rhos and not has_per_frame_blocks(net):
        raise ValueError(f"{type(net).__name__} has no per-frame local features to skip")
    generator = torch.Generator(device=device).manual_seed(seed)  # as run_split: the same random patches
    keys: list[float | None] = [None, *rhos]
    parts: dict[float | None, dict[str, list[torch.Tensor]]] = {k: {"scores": [], "keep": []} for k in keys}
    labels, targets = [], []
    for batch in _batches(loader, datamodule, device, desc):
        out = net(batch["frames"], patch_policy=patch_policy, generator=generator, **focus_inputs(batch))
        parts[None]["scores"].append(F.softmax(out.logits.float(), dim=-1).cpu())
        for rho in rhos:
            keep = keep_mask(out.skip_logits, rho)
            logits = net.classifier(net.classifier_inputs(out.glance_features, out.local_features, keep))
            parts[rho]["scores"].append(F.softmax(logits.float(), dim=-1).cpu())
            parts[rho]["keep"].append(keep.cpu())
        labels.append(batch["label"].cpu())
        targets.append(batch["target"].cpu())
    if not labels:
        raise ValueError("the threshold split is empty: check the list file of eval.threshold_split")
    labels_, targets_ = torch.cat(labels), torch.cat(targets)
    return {k: SplitOutputs(torch.cat(v["scores"]), labels_, targets_, torch.cat(v["keep"]) if v["keep"] else None)
            for k, v in parts.items()}


# ------------------------------------------------------------------------------------------------- metrics
def online_metrics(outputs: SplitOutputs, parts: dict[str, float], use_local: bool) -> list[dict[str, float]]:
    """Fig. 6: top-1 and mAP from the prediction after t frames, t = 1..T, at the cost of those t frames
    (f_L counted on the frames it actually ran on)."""
    steps = outputs.scores.shape[1]
    fixed = gflops_per_video(parts, 1, use_local=use_local, keep_fraction=0.0)
    curve = []
    for t in range(1, steps + 1):
        scores = outputs.scores[:, t - 1]
        local_frames = t if outputs.keep is None else outputs.keep[:, :t].float().sum(1).mean().item()
        gflops = t * fixed + (parts["local"] * local_frames if use_local else 0.0)
        curve.append({"frames": t, "gflops": gflops, "top1": top1_accuracy(scores, outputs.labels),
                      "mAP": mean_average_precision(scores, outputs.targets)})
    return curve


def summarise(method: str, family: str, outputs: SplitOutputs, parts: dict[str, float], use_local: bool,
              **extra: Any) -> dict[str, Any]:
    """One results row: offline metrics (last step), GFLOPs per video, patch statistics, the online curve."""
    keep_fraction = 1.0 if outputs.keep is None else outputs.keep.float().mean().item()
    row = {
        "method": method, "family": family, **extra,
        "top1": top1_accuracy(outputs.scores[:, -1], outputs.labels),
        "mAP": mean_average_precision(outputs.scores[:, -1], outputs.targets),
        "gflops_per_video": gflops_per_video(parts, outputs.scores.shape[1], use_local=use_local,
                                             keep_fraction=keep_fraction),
        "keep_fraction": keep_fraction if use_local else 0.0,
        "hit_rate": None if outputs.hit is None else outputs.hit.mean().item(),
        "coverage": None if outputs.coverage is None else outputs.coverage.mean().item(),
    }
    row["online"] = online_metrics(outputs, parts, use_local)
    return row


def early_exit_rows(name: str, outputs: SplitOutputs, threshold: SplitOutputs, parts: dict[str, float],
                    use_local: bool, budgets: Sequence[float], **extra: Any) -> list[dict[str, Any]]:
    """One row per GFLOPs budget: the row ``name``'s network stops reading each video at the first step whose
    confidence reaches that step's threshold and is scored by its prediction there. The thresholds are solved on
    ``threshold`` (the training split's scores from the same network, policy and rho) for MSDNet's geometric
    exit distribution; GFLOPs are each video's cumulative cost at its exit (f_G, pi, pi' and f_C on every frame
    read, f_L on the read frames it ran on), averaged over the videos."""
    steps = outputs.scores.shape[1]
    per_frame = gflops_per_video(parts, 1, use_local=use_local, keep_fraction=0.0)
    local = parts["local"] if use_local else 0.0
    costs = cumulative_costs(per_frame, local, steps, keep=outputs.keep, count=len(outputs.scores))
    threshold_costs = cumulative_costs(per_frame, local, steps, keep=threshold.keep, count=len(threshold.scores))
    confidence, threshold_confidence = confidences(outputs.scores), confidences(threshold.scores)
    local_frames = (torch.ones_like(costs) if outputs.keep is None else outputs.keep.double()).cumsum(dim=1)
    rows = []
    for rule in solve_exit_rules(threshold_confidence, threshold_costs.mean(0), budgets):
        stop, threshold_stop = exit_steps(confidence, rule), exit_steps(threshold_confidence, rule)
        scores, threshold_scores = gather_steps(outputs.scores, stop), gather_steps(threshold.scores, threshold_stop)
        rows.append({
            "method": f"{name} early exit (budget {100 * rule.budget:g}%)", "family": f"{name} early exit",
            **extra, "budget": rule.budget, "thresholds": rule.as_dict()["thresholds"],
            "top1": top1_accuracy(scores, outputs.labels), "mAP": mean_average_precision(scores, outputs.targets),
            "gflops_per_video": gather_steps(costs, stop).mean().item(),
            "full_gflops_per_video": costs[:, -1].mean().item(),
            "mean_frames_read": (stop + 1).double().mean().item(),
            "exit_fractions": (torch.bincount(stop, minlength=steps).double() / len(stop)).tolist(),
            # the share of all the videos' frames that went through f_L
            "keep_fraction": gather_steps(local_frames, stop).mean().item() / steps if use_local else 0.0,
            "hit_rate": None, "coverage": None,
            "gflops_on_threshold_split": gather_steps(threshold_costs, threshold_stop).mean().item(),
            "full_gflops_on_threshold_split": threshold_costs[:, -1].mean().item(),
            "top1_on_threshold_split": top1_accuracy(threshold_scores, threshold.labels),
            "mAP_on_threshold_split": mean_average_precision(threshold_scores, threshold.targets),
            "full_top1_on_threshold_split": top1_accuracy(threshold.scores[:, -1], threshold.labels),
            "full_mAP_on_threshold_split": mean_average_precision(threshold.scores[:, -1], threshold.targets),
        })
    return rows


def results_markdown(rows: list[dict[str, Any]], title: str) -> str:
    def pct(value):
        return "–" if value is None else f"{100 * value:.1f}"

    lines = [f"# {title}", "",
             "| method | top-1 (%) | mAP (%) | GFLOPs / video | frames through f_L (%) | patch hit rate (%) | "
             "target coverage (%) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {pct(r['top1'])} | {pct(r['mAP'])} | {r['gflops_per_video']:.4g} | "
                     f"{pct(r.get('keep_fraction'))} | {pct(r.get('hit_rate'))} | {pct(r.get('coverage'))} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- the whole thing
def evaluate_checkpoint(ckpt: LoadedCheckpoint, datamodule, split: str = "test", threshold_split: str = "train",
                        fixed_policies: list[str] | None = None,
                        etas: list[float] = (0.9, 0.7, 0.5), device: str | torch.device = "cpu",
                        seed: int = 0, exit_budgets: Sequence[float] = ()) -> dict[str, Any]:
    """All rows for one checkpoint, plus AdaFocus+'s rho per eta, the first batch (for figures) and timings.
    ``fixed_policies``: the Table 5 rows on the checkpoint's own f_L/f_C (None: every registered fixed policy).
    ``exit_budgets``: early-exit rows (:func:`early_exit_rows`) for the main row and each eta row, one per budget
    (fractions of the row's GFLOPs per video); empty: none, and the threshold split is only read for rho. A network
    with one prediction per clip (AdaFocus-TSM) has no step to stop at: no early-exit rows."""
    if ckpt.net.capabilities.per_clip:
        exit_budgets = ()
    if fixed_policies is None:
        fixed_policies = fixed_policy_names()
    net = ckpt.net.to(device)
    if torch.device(device).type == "cpu":
        net.to(memory_format=torch.channels_last)
    all_parts = component_gflops(ckpt.net)
    plain_parts = {k: v for k, v in all_parts.items() if k != "skip_policy"}  # f_L on every frame: no pi' needed
    loader = datamodule.eval_dataloader(split)
    seconds: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    figures: dict[str, dict] = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - start, 2)
        return value

    main_policy = ckpt.patch_policy
    main = get_patch_policy(main_policy)
    has_plus = ckpt.net.capabilities.has_skip_policy and main.uses_local
    rhos: dict[float, float] = {}
    probs = None
    if has_plus:
        probs = timed(f"rho on {threshold_split}", lambda: keep_probabilities(
            net, datamodule.eval_dataloader(threshold_split), datamodule, device, desc=f"p_t^B ({threshold_split})"))
        rhos = solve_rhos(probs, etas)
    exits: dict[float | None, SplitOutputs] = {}
    if exit_budgets:  # the threshold split's scores of the main row and of every rho, in one pass
        exits = timed(f"early exit on {threshold_split}", lambda: threshold_split_outputs(
            net, datamodule.eval_dataloader(threshold_split), datamodule, device, main_policy,
            list(rhos.values()), seed=seed, desc=f"exit thresholds ({threshold_split})"))

    if not main.uses_local:
        out = timed(main.label, lambda: run_split(net, loader, datamodule, device, main_policy, seed=seed,
                                                 desc=main.label))
        rows.append(summarise(main.label, main.label, out, plain_parts, use_local=False, patch_policy=main_policy))
        if exits:
            rows += early_exit_rows(main.label, out, exits[None], plain_parts, False, exit_budgets,
                                    patch_policy=main_policy)
    else:
        name = main.label
        family = "AdaFocus" if main.kind == "learned" else name
        out = timed(name, lambda: run_split(net, loader, datamodule, device, main_policy, seed=seed, desc=name))
        rows.append(summarise(name, family, out, plain_parts, use_local=True, patch_policy=main_policy))
        if exits:
            rows += early_exit_rows(family, out, exits[None], plain_parts, True, exit_budgets,
                                    patch_policy=main_policy)
        figures["main"] = out.first_batch
        for policy in fixed_policies:
            if policy == main_policy:
                continue
            label = f"{get_patch_policy(policy).label} (same weights)"
            fixed = timed(label, lambda p=policy, lbl=label: run_split(net, loader, datamodule, device, p, seed=seed,
                                                                      desc=lbl))
            rows.append(summarise(label, get_patch_policy(policy).label, fixed, plain_parts, use_local=True,
                                  patch_policy=policy))

    for eta, rho in rhos.items():
        label = f"AdaFocus+ (eta={eta:g})"
        out = timed(label, lambda r=rho, lbl=label: run_split(net, loader, datamodule, device, main_policy,
                                                             rho=r, seed=seed, desc=lbl))
        rows.append(summarise(label, "AdaFocus+", out, all_parts, use_local=True, patch_policy=main_policy,
                              eta=eta, rho=rho,
                              keep_fraction_on_threshold_split=(probs >= rho).float().mean().item()))
        if exits:
            rows += early_exit_rows(label, out, exits[rho], all_parts, True, exit_budgets, patch_policy=main_policy,
                                    eta=eta, rho=rho)
        figures[f"eta={eta:g}"] = out.first_batch
    return {"rows": rows, "patch_size": ckpt.net.patch_size, "rhos": {str(k): v for k, v in rhos.items()},
            "figures": figures, "component_gflops": all_parts, "seconds": seconds}


def _point_label(row: dict[str, Any]) -> str | None:
    if row.get("budget") is not None:  # an early-exit curve: its points are the budgets
        return f"{100 * row['budget']:g}%"
    return f"η={row['eta']:g}" if row.get("eta") else None


def plot_rows(rows: list[dict[str, Any]], out_dir: Path, title: str, metric: str) -> dict[str, Path]:
    """Fig. 5 (accuracy vs GFLOPs, every row; AdaFocus+ points labelled by eta, early-exit curves, one per
    family, by budget) and Fig. 6 (the online curves of the rows that have one) as ``accuracy_vs_gflops.png`` and
    ``online.png`` in ``out_dir``."""
    from adafocus_pl.evaluation.plots import plot_accuracy_vs_gflops, plot_online_curve

    unit = "top-1 (%)" if metric == "top1" else "mAP (%)"
    points = [{"family": r["family"], "gflops": r["gflops_per_video"], "value": 100 * r[metric],
               "label": _point_label(r)} for r in rows]
    paths = {"accuracy_vs_gflops": plot_accuracy_vs_gflops(points, out_dir / "accuracy_vs_gflops.png",
                                                           metric=unit, title=title)}
    curves = {r["method"]: [(p["gflops"], 100 * p[metric]) for p in r["online"]] for r in rows if r.get("online")}
    if curves:
        paths["online"] = plot_online_curve(curves, out_dir / "online.png", metric=unit, title=f"{title}: online")
    return paths


def write_results(result: dict[str, Any], out_dir: Path, title: str, metric: str, mean, std,
                  patch_figure_videos: int = 4) -> dict[str, Path]:
    """results.json / results.md and the three figures (Fig. 5, 6, 7 styles); returns the written paths."""
    from adafocus_pl.evaluation.plots import plot_patches

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    serialisable = {k: v for k, v in result.items() if k != "figures"}
    paths["json"].write_text(json.dumps(serialisable, indent=2))
    paths["md"].write_text(results_markdown(result["rows"], title))
    paths.update(plot_rows(result["rows"], out_dir, title, metric))
    # Fig. 7: the patches of the main row, and where AdaFocus+ skipped frames at the smallest eta
    figures = result["figures"]
    for key, name in (("main", "patches.png"), (next((k for k in reversed(list(figures)) if k != "main"), None),
                                                "patches_plus.png")):
        batch = figures.get(key) if key else None
        if not batch or batch.get("offsets") is None:
            continue
        n = min(patch_figure_videos, batch["frames"].shape[0])
        titles = [f"label {int(y)} → predicted {int(p)}" for y, p in zip(batch["labels"][:n], batch["predictions"][:n],
                                                                       strict=True)]
        keep = None if batch.get("keep") is None else batch["keep"][:n]
        paths[name.removesuffix(".png")] = plot_patches(batch["frames"][:n], batch["offsets"][:n], result["patch_size"],
                                                        out_dir / name, keep=keep, titles=titles, mean=mean, std=std)
    return paths
