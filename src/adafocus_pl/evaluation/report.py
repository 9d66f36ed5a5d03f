"""Gather every stage run under a directory into one table and an accuracy-vs-GFLOPs plot (a local dashboard).

A run is a directory with ``metrics.json`` and ``.hydra/config.yaml`` (what ``python -m adafocus_pl.train``
leaves). GFLOPs per video come from the run's own config (conv/matmul multiply-adds, as in the paper); AdaFocus+
runs are counted at the share of frames that went through f_L on the test split. Runs moved aside by the chain
(``_replaced/``) and folders without ``metrics.json`` (sweep jobs, ``pipeline/``) are not runs.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from adafocus_pl.evaluation.flops import gflops_per_video, model_component_gflops
from adafocus_pl.evaluation.metrics import headline_metric
from adafocus_pl.models.patch_policies import get_patch_policy
from adafocus_pl.plan import BASELINE, BASELINES, METHOD, PIPELINE, TRIALS, families, point_dir, run_role
from adafocus_pl.utils.config import register_resolvers

log = logging.getLogger(__name__)

FAMILIES = families()  # (stage 3 patch policy, AdaFocus+) -> the family of a final model, as the plan labels them
NO_RUNS_HINT = ("runs are made by `make sweep`, `python -m adafocus_pl.sweep -m model.patch_size=... plus=off,on` "
                "or `python -m adafocus_pl.train`")


def run_info(directory: Path) -> dict[str, Any]:
    """The settings of one run read from its saved (unresolved) config, and its final metrics."""
    register_resolvers()
    cfg = OmegaConf.create(yaml.safe_load((directory / ".hydra" / "config.yaml").read_text()))

    def get(key: str, default: Any = None) -> Any:
        value = OmegaConf.select(cfg, key, default=default)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    stage_id = int(get("stage.id"))
    plus = bool(get("plus.enabled", False)) and stage_id > 1
    policy = get("stage.module.patch_policy", "learned") if stage_id == 3 else None
    # stage.role since runs name it (method | baseline); a run saved before that: from its Stage III policy
    role = get("stage.role") or (run_role(policy) if policy else METHOD)
    return {
        "run_dir": str(directory), "experiment": get("experiment_name"), "stage": get("stage.name"),
        "stage_id": stage_id, "patch_size": int(get("model.patch_size")), "seed": int(get("seed", 0)),
        "plus": plus, "patch_policy": policy, "role": role, "monitor": get("monitor", "val/top1"),
        "family": FAMILIES.get((policy, plus)) if stage_id == 3 else None,
        "frames": int(get("data.num_segments")), "crop": int(get("data.eval_crop")), "model": get("model"),
        "metrics": json.loads((directory / "metrics.json").read_text()),
    }


def add_gflops(run: dict[str, Any]) -> dict[str, Any]:
    parts = model_component_gflops(run.pop("model"), (run["crop"], run["crop"]))  # cached per distinct config
    if not run["plus"]:
        parts.pop("skip_policy", None)
    # only Stage III names a policy; the earlier stages' runs all cut patches
    uses_local = run["patch_policy"] is None or get_patch_policy(run["patch_policy"]).uses_local
    keep = run["metrics"].get("test/keep_fraction", 1.0) if run["plus"] else (1.0 if uses_local else 0.0)
    run["keep_fraction"] = keep
    run["gflops_per_video"] = gflops_per_video(parts, run["frames"], use_local=uses_local,
                                               keep_fraction=keep if uses_local else 1.0)
    return run


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every run under ``root``, sorted by experiment, stage, patch size and seed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"report: {root} is not a directory; give a sweep or experiment directory, "
                                f"e.g. logs/synthetic")
    runs = []
    for metrics in sorted(root.rglob("metrics.json")):
        directory = metrics.parent
        # runs moved aside, and a search's trials (adafocus_pl.search), are not sweep points
        parts = set(directory.relative_to(root).parts)
        if {"_replaced", TRIALS} & parts or not (directory / ".hydra" / "config.yaml").is_file():
            continue
        try:
            runs.append(add_gflops(run_info(directory)))
        except Exception as error:  # one unreadable run must not hide the others
            log.warning("report: skipping %s (%s: %s)", directory, type(error).__name__, error)
    if not runs:
        raise FileNotFoundError(f"report: no finished run (metrics.json + .hydra/config.yaml) under {root}; "
                                f"{NO_RUNS_HINT}")
    return sorted(runs, key=lambda r: (r["experiment"], r["stage_id"], r["stage"], r["patch_size"], r["seed"]))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return _pct(values[0])
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def summary_rows(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Final models (stage III runs) grouped by experiment, patch size and family; mean (± std) over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        if run["family"]:
            groups[(run["experiment"], run["patch_size"], run["family"])].append(run)
    rows = []
    for (experiment, p, family), members in sorted(groups.items()):
        values = [m["metrics"].get(f"test/{metric}") for m in members]
        values = [v for v in values if v is not None]
        rows.append({"experiment": experiment, "patch_size": p, "family": family, "role": members[0]["role"],
                     "seeds": len(members),
                     "values": values, "mean": statistics.mean(values) if values else None,
                     "gflops_per_video": statistics.mean(m["gflops_per_video"] for m in members),
                     "keep_fraction": statistics.mean(m["keep_fraction"] for m in members)})
    return rows


def side_by_side_markdown(summary: list[dict[str, Any]], metric: str) -> str:
    families = list(dict.fromkeys(r["family"] for r in summary))
    by_key = {(r["experiment"], r["patch_size"], r["family"]): r for r in summary}
    head = "| experiment | P | " + " | ".join(f"{f} {metric} (%) | {f} GFLOPs" for f in families) + " |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(families)]
    for experiment, p in sorted({(r["experiment"], r["patch_size"]) for r in summary}):
        cells = []
        for family in families:
            r = by_key.get((experiment, p, family))
            cells += ["–", "–"] if r is None else [
                (_mean_std(r["values"]) if r["values"] else "–") + (f" (n={r['seeds']})" if r["seeds"] > 1 else ""),
                f"{r['gflops_per_video']:.4g}"]
        lines.append(f"| {experiment} | {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def baselines_markdown(summary: list[dict[str, Any]], metric: str) -> str:
    """The baselines (Table 5's fixed policies and the glance-only network), one row each per patch size."""
    lines = [f"| experiment | P | baseline | seeds | {metric} (%) | GFLOPs / video | frames through f_L (%) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    order = {label: i for i, (label, _) in enumerate(BASELINES)}  # the plan's (and Table 5's) order
    for r in sorted(summary, key=lambda r: (r["experiment"], r["patch_size"], order.get(r["family"], len(order)))):
        lines.append(f"| {r['experiment']} | {r['patch_size']} | {r['family']} | {r['seeds']} | "
                     f"{_mean_std(r['values']) if r['values'] else '–'} | {r['gflops_per_video']:.4g} | "
                     f"{_pct(r['keep_fraction'])} |")
    return "\n".join(lines) + "\n"


def runs_markdown(runs: list[dict[str, Any]]) -> str:
    lines = ["| experiment | stage | role | family | P | seed | top-1 (%) | mAP (%) | GFLOPs / video | "
             "frames through f_L (%) | patch hit rate (%) |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        m = r["metrics"]
        lines.append(f"| {r['experiment']} | {r['stage']} | {r['role']} | {r['family'] or '–'} | {r['patch_size']} | {r['seed']} | "
                     f"{_pct(m.get('test/top1'))} | {_pct(m.get('test/mAP'))} | {r['gflops_per_video']:.4g} | "
                     f"{_pct(r['keep_fraction'])} | {_pct(m.get('test/hit_rate'))} |")
    return "\n".join(lines) + "\n"


def pipeline_tables(root: Path) -> list[dict[str, Any]]:
    """``make train``'s results tables under ``root`` (``results.json`` in the run directory of ``pipeline`` of each
    patch size and seed), one per run."""
    tables = []
    for path in sorted(root.glob(f"{PIPELINE}/{point_dir('*', '*')}/results.json")):
        try:
            tables.append(json.loads(path.read_text()))
        except ValueError as error:
            log.warning("report: skipping %s (%s)", path, error)
    return tables


def _table_key(row: dict[str, Any]) -> str:
    """Rows that are one line of the report: the same method, or the same early-exit family (each seed's table
    picks its own budget, ``pipeline.exit_budget=auto``)."""
    return row["family"] if row.get("budget") is not None else row["method"]


def pipeline_markdown(tables: list[dict[str, Any]], metric: str) -> str:
    """Every row of ``make train``'s table, per patch size: mean ± std over the seeds that ran it (an early-exit
    family on one line, with the budget each seed's table chose)."""
    lines = [f"| P | method | seeds | {metric} (%) | GFLOPs / video | frames through f_L (%) |",
             "|---:|---|---|---:|---:|---:|"]
    for p in sorted({t["patch_size"] for t in tables}):
        runs = [t for t in tables if t["patch_size"] == p]
        methods = list(dict.fromkeys(_table_key(row) for t in runs for row in t["rows"]))
        for method in methods:
            rows = [row for t in runs for row in t["rows"] if _table_key(row) == method]
            seeds = sorted(t["seed"] for t in runs if any(_table_key(row) == method for row in t["rows"]))
            values = [row[metric] for row in rows if row.get(metric) is not None]
            if rows[0].get("budget") is not None:
                budgets = ", ".join(f"{100 * row['budget']:g}%" for row in rows)
                method = f"{method} (budget {budgets})"
            lines.append(f"| {p} | {method} | {', '.join(map(str, seeds))} | {_mean_std(values) if values else '–'} | "
                         f"{statistics.mean(r['gflops_per_video'] for r in rows):.4g} | "
                         f"{_pct(statistics.mean(r.get('keep_fraction') or 0.0 for r in rows))} |")
    return "\n".join(lines) + "\n"


def write_report(root: str | Path, out_dir: str | Path | None = None, metric: str | None = None) -> Path:
    """Collect, tabulate and plot every run under ``root``; returns the output directory."""
    from adafocus_pl.evaluation.plots import plot_accuracy_vs_gflops

    runs = collect_runs(root)
    metric = metric or headline_metric(runs[-1]["monitor"])
    out = Path(out_dir) if out_dir else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_rows(runs, metric)
    figure = None
    points = [{"family": r["family"] if len({s["experiment"] for s in summary}) == 1
               else f"{r['experiment']}: {r['family']}", "gflops": r["gflops_per_video"],
               "value": 100 * r["mean"], "label": f"P={r['patch_size']}"} for r in summary if r["mean"] is not None]
    if points:
        figure = plot_accuracy_vs_gflops(points, out / "accuracy_vs_gflops.png", metric=f"{metric} (%)",
                                         title=f"test split, {Path(root).name}")
    methods = [r for r in summary if r["role"] != BASELINE]
    baselines = [r for r in summary if r["role"] == BASELINE]
    text = [f"# Report: {Path(root).resolve()}", "", f"## Final models (test {metric}, mean ± std over seeds)", "",
            side_by_side_markdown(methods, metric) if methods else "(no stage III run yet)\n"]
    if baselines:
        text += [f"## Baselines (Table 5: Stage III's budget from the Stage I weights; test {metric})", "",
                 baselines_markdown(baselines, metric)]
    tables = pipeline_tables(Path(root))
    if tables:
        text += [f"## make train's table (test {metric}, mean ± std over seeds)", "",
                 pipeline_markdown(tables, metric)]
    text += ["## Every run", "", runs_markdown(runs)]
    if figure:
        text.append(f"![accuracy vs GFLOPs]({figure.name})\n")
    (out / "report.md").write_text("\n".join(text))
    (out / "report.json").write_text(json.dumps({"metric": metric, "summary": summary, "runs": runs,
                                                 "pipeline_tables": tables}, indent=2))
    print("\n".join(text))
    print(f"[report] {out / 'report.md'}")
    return out
