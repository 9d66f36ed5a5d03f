"""The W&B dashboards of an experiment, built from code with W&B's workspace/report library (``wandb-workspaces``).

For an experiment's project, :func:`build_dashboard` makes a saved workspace and a report "AdaFocus vs AdaFocus+":

- run sets filtered by W&B job type and tags (``conf/train.yaml``: every run names its stage, variant, patch policy
  and role): the AdaFocus runs, the AdaFocus+ runs, and the Table 5 baselines in a set of their own;
- per-stage training and validation curves of the two variants side by side (Stages 0 and I are shared: one set);
- test top-1 against GFLOPs per video of the final models, a colour per variant and patch size (the sweep's plot,
  live; paper Fig. 5 / Table 3);
- AdaFocus+'s accuracy and cost per kept fraction eta (Fig. 5), the online curves (Fig. 6) and the evaluation's
  figures, patch images included (Fig. 7).

Every panel names only metrics that the runs its run sets select have logged: the runs are read back from their
W&B files under the experiment's log directory (offline or synced alike), and :func:`selected` applies a run set's
filters to them, so the spec can be checked, and shown, without an account.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adafocus_pl.evaluation import wandb_metrics as eval_keys
from adafocus_pl.plan import ADAFOCUS, ADAFOCUS_PLUS, BASELINE, METHOD, PLAN, SEARCH_TAG, SHARED, TRAIN

TITLE = "AdaFocus vs AdaFocus+"
WORKSPACE_NAME = "AdaFocus vs AdaFocus plus"  # W&B refuses symbols (such as +) in workspace names
VARIANTS = {ADAFOCUS: "AdaFocus", ADAFOCUS_PLUS: "AdaFocus+"}
EVAL_JOB = eval_keys.JOB_TYPE
# runs that are not part of the comparison whatever their variant (a hyper-parameter search's trials)
EXCLUDED_TAGS: tuple[str, ...] = (SEARCH_TAG,)

# the curves of each stage (its W&B job type), in the order they are drawn; a metric no selected run logged is left
# out. Paper: Stage I Eq. 5, Stage II Eqs. 6-7 (AdaFocus+: Eq. 10), Stage III Sec. 3.2.
STAGE_PANELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stage0": ("Stage 0: the backbones on whole frames (the authors' release)",
               ("train/loss", "train/loss_local", "val/top1", "val/top1_local")),
    "stage1": ("Stage I: warm-up with random patches (Eq. 5)", ("train/loss", "val/top1", "val/mAP", "val/hit_rate")),
    "stage2": ("Stage II: the patch policy by PPO (Eqs. 6-7; AdaFocus+: pi' by Eq. 10)",
               ("train/reward", "train/entropy", "train/policy_loss", "train/value_loss", "val/top1", "val/hit_rate",
                "train/skip_reward", "train/keep_fraction", "val/keep_fraction")),
    "stage3": ("Stage III: fine-tuning", ("train/loss", "val/top1", "val/mAP", "val/keep_fraction", "train/rho")),
}
TEST_TOP1, GFLOPS = "test/top1", "test/gflops_per_video"  # GFLOPs of a test video (AdaFocus+: its kept frames)


@dataclass(frozen=True)
class LoggedRun:
    """What one W&B run file holds, as far as the dashboard cares."""
    path: str
    run_id: str
    project: str
    group: str
    job_type: str
    tags: tuple[str, ...]
    config: dict[str, Any]
    history_keys: frozenset[str]
    summary_keys: frozenset[str]

    @property
    def keys(self) -> frozenset[str]:
        return self.history_keys | self.summary_keys


@dataclass(frozen=True)
class RunSet:
    """A named W&B run set: every leaf of ``filters`` must hold (W&B's filter keys, ``(section, name, op, value)``)."""
    name: str
    filters: tuple[tuple[str, str, str, Any], ...]
    groupby: tuple[str, ...] = ()

    def expressions(self):
        """The filters as one ``wandb_workspaces.expr.And`` of expressions."""
        from wandb_workspaces import expr

        out = []
        for section, name, op, value in self.filters:
            metric = expr.Tags() if (section, name) == ("run", "tags") else {
                "run": expr.Metric, "config": expr.Config, "summary": expr.Summary}[section](name)
            out.append({"=": metric.__eq__, "!=": metric.__ne__, "IN": metric.isin, "NIN": metric.notin}[op](value))
        return expr.And(*out)


@dataclass
class Panel:
    kind: str                      # line | scatter | media
    title: str
    y: tuple[str, ...] = ()        # line: the curves; scatter: (y,); media: the image keys
    x: str = "Step"
    runsets: tuple[RunSet, ...] = ()


@dataclass
class Section:
    title: str
    runsets: tuple[RunSet, ...]
    panels: list[Panel] = field(default_factory=list)
    in_workspace: bool = True  # the workspace has one run set, without baselines: their section is the report's


# ------------------------------------------------------------------------------------------------ the logged runs
def run_files(root: str | Path) -> list[Path]:
    """The W&B run files under ``root`` (``wandb/offline-run-*/run-*.wandb`` and synced ``wandb/run-*/...``)."""
    return sorted(p for p in Path(root).rglob("run-*.wandb") if "_replaced" not in p.parts)


def read_runs(root: str | Path) -> list[LoggedRun]:
    """Every W&B run under ``root``, read back from its file (no account, no network)."""
    from adafocus_pl.utils.wandb_offline import read_offline_run

    runs: dict[str, LoggedRun] = {}
    for path in run_files(root):
        run = read_offline_run(path)
        if not run.get("run_id"):
            continue  # a file cut short before its run record
        logged = LoggedRun(str(path), run["run_id"], run.get("project", ""), run.get("group", ""),
                           run.get("job_type", ""), tuple(run.get("tags", ())), run["config"],
                           _metric_keys(run["history"]), _metric_keys([run["summary"]]))
        earlier = runs.get(logged.run_id)
        if earlier is not None:  # a resumed stage continues its W&B run in a second file: W&B syncs them as one
            logged = replace(logged, history_keys=logged.history_keys | earlier.history_keys,
                             summary_keys=logged.summary_keys | earlier.summary_keys)
        runs[logged.run_id] = logged
    return list(runs.values())


def _metric_keys(rows: list[dict[str, Any]]) -> frozenset[str]:
    """The keys logged in ``rows``; a medium (an image, a table) is stored as ``<key>/_type`` etc. and counts as
    ``<key>``, the name a W&B panel gives it."""
    keys = set()
    for row in rows:
        for key in row:
            if key.endswith("/_type"):
                keys.add(key.removesuffix("/_type"))
            elif not key.startswith("_") and "/_" not in key and not _is_media_field(key, row):
                keys.add(key)
    return frozenset(keys)


def _is_media_field(key: str, row: dict[str, Any]) -> bool:
    parent = key.rpartition("/")[0]
    return bool(parent) and f"{parent}/_type" in row


def _config_value(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _leaf_holds(run: LoggedRun, section: str, name: str, op: str, value: Any) -> bool:
    if (section, name) == ("run", "tags"):
        present = bool(set(run.tags) & set(value))
        return present if op == "IN" else not present if op == "NIN" else _compare(run.tags, op, value)
    if section == "run":
        actual = {"jobType": run.job_type, "group": run.group, "name": run.run_id}.get(name)
    elif section == "config":
        actual = _config_value(run.config, name)
    else:
        raise ValueError(f"run-set filter on {section}.{name}: only run and config keys are checked locally")
    return _compare(actual, op, value)


def _compare(actual: Any, op: str, value: Any) -> bool:
    if op in ("=", "=="):
        return actual == value
    if op == "!=":
        return actual != value
    if op == "IN":
        return actual in value
    if op == "NIN":
        return actual not in value
    raise ValueError(f"run-set filter operator {op!r} is not checked locally")


def selected(runset: RunSet, runs: Iterable[LoggedRun]) -> list[LoggedRun]:
    """The runs ``runset``'s filters select (every leaf holds), as W&B would select them."""
    return [run for run in runs if all(_leaf_holds(run, *leaf) for leaf in runset.filters)]


# ------------------------------------------------------------------------------------------------ the run sets
def _not_excluded() -> tuple[tuple[str, str, str, Any], ...]:
    return (("run", "tags", "NIN", list(EXCLUDED_TAGS)),) if EXCLUDED_TAGS else ()


def variant_set(variant: str | None, job_types: Iterable[str], name: str) -> RunSet:
    """The method's runs (not baselines) of ``variant`` (None: both) with one of ``job_types``."""
    leaves = [("run", "jobType", "IN", list(job_types)), ("run", "tags", "IN", [METHOD])]
    if variant is not None:
        leaves.append(("run", "tags", "IN", [variant]))
    return RunSet(name, (*leaves, *_not_excluded()), groupby=("config.model.patch_size",))


def baseline_set(name: str = "baselines (Table 5)") -> RunSet:
    return RunSet(name, (("run", "tags", "IN", [BASELINE]), *_not_excluded()), groupby=("config.model.patch_size",))


def shared_stages() -> set[str]:
    """The stages (job types) both variants share: the plan's shared training steps (Stages 0 and I)."""
    return {step.stage for step in PLAN if step.variant == SHARED and step.kind == TRAIN}


ALL_JOBS = (*STAGE_PANELS, EVAL_JOB)  # every job type of the method's runs


def workspace_set() -> RunSet:
    """The workspace's one run set: every AdaFocus and AdaFocus+ run, no baseline."""
    return variant_set(None, ALL_JOBS, "AdaFocus and AdaFocus+")


def comparison_sets() -> list[RunSet]:
    """The run sets of the comparison: each variant's runs, every stage and evaluation; together they are every
    AdaFocus and AdaFocus+ run, and no baseline."""
    return [variant_set(v, ALL_JOBS, label) for v, label in VARIANTS.items()]


# ------------------------------------------------------------------------------------------------ the sections
def _logged(metrics: Iterable[str], runsets: Iterable[RunSet], runs: list[LoggedRun]) -> list[str]:
    """``metrics`` that at least one run of ``runsets`` logged, in their order."""
    keys = set().union(*(run.keys for rs in runsets for run in selected(rs, runs)))
    return [m for m in metrics if m in keys]


def stage_sections(runs: list[LoggedRun]) -> list[Section]:
    shared = shared_stages()
    sections = []
    for job_type, (title, metrics) in STAGE_PANELS.items():
        if job_type in shared:
            runsets: tuple[RunSet, ...] = (variant_set(None, [job_type], f"{job_type} (both variants)"),)
        else:
            runsets = tuple(variant_set(v, [job_type], f"{label} {job_type}") for v, label in VARIANTS.items())
        logged = _logged(metrics, runsets, runs)
        if logged:
            sections.append(Section(title, runsets, [Panel("line", m, (m,)) for m in logged]))
    return sections


def cost_section(runs: list[LoggedRun]) -> Section | None:
    """Test top-1 against GFLOPs per video of every final model: AdaFocus and AdaFocus+ (a colour per patch size
    within each) and the baselines."""
    final = {v: variant_set(v, ["stage3"], f"{label} (final models)") for v, label in VARIANTS.items()}
    runsets = (*final.values(), baseline_set())
    if len(_logged((TEST_TOP1, GFLOPS), runsets, runs)) < 2:
        return None
    return Section("Test top-1 against GFLOPs per video (one point a final model)", runsets,
                   [Panel("scatter", "test top-1 vs GFLOPs per video", (TEST_TOP1,), x=GFLOPS)])


def evaluation_sections(runs: list[LoggedRun]) -> list[Section]:
    """AdaFocus+'s eta curve, the online curves of both variants and the evaluation's figures."""
    evals = {v: variant_set(v, [EVAL_JOB], f"{label} evaluation") for v, label in VARIANTS.items()}
    sections = []
    eta_metrics = _logged(eval_keys.ETA_METRICS.values(), [evals[ADAFOCUS_PLUS]], runs)
    if eta_metrics and _logged([eval_keys.ETA], [evals[ADAFOCUS_PLUS]], runs):
        sections.append(Section("AdaFocus+: accuracy and cost per kept fraction eta (Fig. 5)", (evals[ADAFOCUS_PLUS],),
                                [Panel("line", m, (m,), x=eval_keys.ETA) for m in eta_metrics]))
    both = tuple(evals.values())
    prefix = eval_keys.ONLINE_TOP1.format(method="")
    online = sorted({k for rs in both for run in selected(rs, runs) for k in run.keys if k.startswith(prefix)})
    if online:
        sections.append(Section("Online recognition: top-1 after the first t frames (Fig. 6)", both,
                                [Panel("line", "online top-1", tuple(online), x=eval_keys.ONLINE_FRAMES)]))
    figures = [eval_keys.FIGURE.format(name=n) for n in ("patches", "patches_plus", "online", "accuracy_vs_gflops")]
    images = _logged(figures, both, runs)
    if images:
        sections.append(Section("The evaluation's figures: where the policy looks (Fig. 7), online and cost curves",
                                both, [Panel("media", "figures", tuple(images))]))
    return sections


def baseline_sections(runs: list[LoggedRun]) -> list[Section]:
    runsets = (baseline_set(), variant_set(ADAFOCUS, ["stage3"], "AdaFocus stage3"))
    logged = _logged(("val/top1", "train/loss"), runsets, runs)
    return [Section("Baselines beside AdaFocus's Stage III (Table 5)", runsets,
                    [Panel("line", m, (m,)) for m in logged], in_workspace=False)] if logged else []


def sections_for(runs: list[LoggedRun]) -> list[Section]:
    cost = cost_section(runs)
    return [*stage_sections(runs), *([cost] if cost else []), *evaluation_sections(runs), *baseline_sections(runs)]


# ------------------------------------------------------------------------------------------------ the W&B objects
def _panel(panel: Panel):
    import wandb_workspaces.reports.v2 as wr

    if panel.kind == "line":
        return wr.LinePlot(title=panel.title, x=panel.x, y=list(panel.y))
    if panel.kind == "scatter":
        return wr.ScatterPlot(title=panel.title, x=wr.SummaryMetric(panel.x), y=wr.SummaryMetric(panel.y[0]))
    return wr.MediaBrowser(title=panel.title, media_keys=list(panel.y), num_columns=2)


def _wr_runset(runset: RunSet, entity: str, project: str):
    import wandb_workspaces.reports.v2 as wr

    return wr.Runset(entity=entity, project=project, name=runset.name, filters=runset.expressions(),
                     groupby=list(runset.groupby))


def build_report(sections: list[Section], entity: str, project: str, description: str):
    """The report: a heading and a panel grid per section, each grid with the section's run sets."""
    import wandb_workspaces.reports.v2 as wr

    blocks: list = [wr.MarkdownBlock(text=description)]
    for section in sections:
        blocks += [wr.H2(text=section.title),
                   wr.PanelGrid(runsets=[_wr_runset(rs, entity, project) for rs in section.runsets],
                                panels=[_panel(p) for p in section.panels])]
    return wr.Report(entity=entity, project=project, title=TITLE, description=description, blocks=blocks)


def build_workspace(sections: list[Section], entity: str, project: str):
    """The saved workspace: one run set (every AdaFocus and AdaFocus+ run, no baseline), grouped by variant, with
    the report's panels in sections."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    return ws.Workspace(
        entity=entity, project=project, name=WORKSPACE_NAME,
        sections=[ws.Section(name=s.title, panels=[_panel(p) for p in s.panels], is_open=True)
                  for s in sections if s.in_workspace],
        runset_settings=ws.RunsetSettings(filters=workspace_set().expressions(),
                                          groupby=[expr.Config("plus.tag"), expr.Metric("JobType")]),
        settings=ws.WorkspaceSettings(x_axis="Step", max_runs=50))


def _json(model) -> Any:
    return json.loads(model.model_dump_json(by_alias=True, exclude_none=True))


@dataclass
class Dashboard:
    project: str
    entity: str
    runs: list[LoggedRun]
    sections: list[Section]
    description: str
    workspace: Any
    report: Any

    def bound_to(self, entity: str) -> Dashboard:
        """The same dashboard with its workspace and report built for ``entity`` (what saving needs)."""
        return replace(self, entity=entity, workspace=build_workspace(self.sections, entity, self.project),
                       report=build_report(self.sections, entity, self.project, self.description))

    def spec(self) -> dict[str, Any]:
        """What would be saved (the workspace's and the report's W&B view specs), and, per run set, the runs its
        filters select among the logged ones."""
        runsets = {rs.name: rs for s in self.sections for rs in s.runsets}
        return {
            "project": self.project, "entity": self.entity or None, "title": TITLE,
            "run_sets": [{"name": rs.name, "filters": [list(leaf) for leaf in rs.filters],
                          "selects": sorted(f"{r.job_type}:{r.group}:{r.run_id}" for r in selected(rs, self.runs))}
                         for rs in [workspace_set(), *comparison_sets(), *runsets.values()]],
            "sections": [{"title": s.title, "run_sets": [rs.name for rs in s.runsets],
                          "panels": [{"kind": p.kind, "title": p.title, "x": p.x, "y": list(p.y)} for p in s.panels]}
                         for s in self.sections],
            "workspace": _json(self.workspace._to_model()),
            "report": _json(self.report._to_model()),
        }


def build_dashboard(root: str | Path, project: str | None = None, entity: str = "") -> Dashboard:
    """The dashboard of the runs logged under ``root`` (an experiment's log directory, e.g. ``logs/synthetic``).
    ``entity`` empty: nothing is looked up online (the spec is complete but not bound to an account)."""
    runs = read_runs(root)
    if not runs:
        raise FileNotFoundError(f"dashboard: no W&B run under {root} (wandb/offline-run-*/run-*.wandb); the runs of "
                                f"`make train` or `make sweep` log there unless logger=csv or logger=none")
    projects = sorted({r.project for r in runs})
    if project is None:
        if len(projects) > 1:
            raise ValueError(f"dashboard: the runs under {root} belong to several W&B projects ({', '.join(projects)});"
                             f" choose one with --project")
        project = projects[0]
    runs = [r for r in runs if r.project == project]
    if not runs:
        raise ValueError(f"dashboard: no run under {root} logs to W&B project {project!r}; "
                         f"its runs log to {', '.join(projects)}")
    sections = sections_for(runs)
    description = (f"{TITLE} on W&B project {project}: per-stage curves, test top-1 against GFLOPs, AdaFocus+ per "
                   f"eta, online curves and the evaluation's figures. Run sets filter on job type and tags; "
                   f"baselines are a set of their own. Made by `python -m adafocus_pl.dashboard`.")
    return Dashboard(project, entity, runs, sections, description, build_workspace(sections, entity, project),
                     build_report(sections, entity, project, description))
