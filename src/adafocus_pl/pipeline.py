"""The whole AdaFocus chain for one experiment: ``python -m adafocus_pl.pipeline [hydra overrides...]``.

1. data: generate the synthetic benchmark when it is missing (``adafocus_pl.data.synthetic.prepare``);
2. Stage 0 when the schedule has one (the release's backbones on whole frames), then Stage I -> II -> III, each
   the ``python -m adafocus_pl.train`` run of its own deterministic directory;
3. the baselines of the paper's Table 5 and a glance-only model, each given the same Stage III budget from the
   Stage I weights (a fair comparison, see README);
4. AdaFocus+ (Sec. 3.3): Stage II and III again with ``plus=on``, from the same Stage I;
5. ``adafocus_pl.eval`` on the AdaFocus and AdaFocus+ Stage III checkpoints (online curves, rho per eta, figures);
6. a results table on the test split (top-1, mAP, GFLOPs per video, share of frames through f_L, patch hit rate and
   coverage) with an accuracy-vs-GFLOPs plot, written as ``results.json`` / ``results.md`` /
   ``accuracy_vs_gflops.png`` / ``online.png`` in the pipeline's run directory. Of the evaluations' early-exit
   rows, the table shows one for AdaFocus and one for AdaFocus+ at its smallest eta (``pipeline.exit_budget``,
   :func:`summary_exit_row`); the figure draws their whole curves over ``eval.exit_budgets``.

The steps are those of the plan (:data:`adafocus_pl.plan.PLAN`, one run directory each:
:func:`adafocus_pl.plan.run_directory`). They form a graph (after Stage I, the AdaFocus chain, the AdaFocus+
chain and the baselines are independent) and run side by side, ``pipeline.jobs`` at a time, in worker processes
that import the libraries once (:mod:`adafocus_pl.workers`); the CPU cores are shared among the steps that run. Each step's console goes to
``<run dir>/console.log``; the terminal shows one line per epoch and per finished step. Each stage is skipped when
finished with the same config, resumed when interrupted (``adafocus_pl.chain``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from adafocus_pl.chain import Step, plan_steps, run_dir, run_step, run_train_process
from adafocus_pl.plan import ADAFOCUS, ADAFOCUS_PLUS, EVAL, PIPELINE, PLAN, TRAIN, run_dir_of
from adafocus_pl.utils.config import compose


@dataclass(frozen=True)
class Job:
    name: str                           # the key other jobs wait for
    label: str                          # as printed; a train job's results row (when it has one) has this name
    kind: str                           # TRAIN | EVAL
    overrides: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    patch_policy: str | None = None     # train jobs with a results row from their own test metrics
    plus: bool = False                  # an AdaFocus+ evaluation (its rows are the eta curve)
    directory: Path | None = None       # train: its run directory; eval: the run directory it evaluates


def plan(user: list[str], stage0: bool, plus: bool) -> list[Job]:
    """The steps of ``make train`` (:data:`adafocus_pl.plan.PLAN`: the chains of both variants, the baselines and
    the evaluations) and what each waits for, in the plan's order, which the scheduler prefers among ready steps:
    the longest chains first, so that the baselines fill the gaps."""
    specs = {spec.name: spec for spec in PLAN}
    steps = plan_steps(user, (ADAFOCUS, ADAFOCUS_PLUS) if plus else (ADAFOCUS,), stage0=stage0, baselines=True,
                       evaluations=True)
    jobs: dict[str, Job] = {}
    for step in steps:
        if step.kind == EVAL:  # the final model of its chain, in that run's directory
            evaluated = jobs[step.after]
            jobs[step.name] = Job(step.name, step.label, EVAL, evaluated.overrides, (evaluated.name,),
                                  plus=specs[step.name].variant == ADAFOCUS_PLUS, directory=evaluated.directory)
        else:
            jobs[step.name] = Job(step.name, step.label, TRAIN, tuple(step.overrides),
                                  (step.after,) if step.after else (), patch_policy=specs[step.name].patch_policy,
                                  directory=run_dir(step.overrides))
    return list(jobs.values())


# ------------------------------------------------------------------------------------------------- in the workers
def evaluate_run(overrides: list[str], ckpt: str) -> dict:
    """``adafocus_pl.eval`` on a Stage III checkpoint (fine-tuned baselines are separate rows)."""
    from adafocus_pl.eval import run as run_eval

    return run_eval(compose("eval", overrides + [f"ckpt_path={ckpt}", "eval.fixed_policies=[]"]))


def baseline_row(overrides: list[str], job: Job) -> dict:
    """The results row of a baseline from its run's test metrics."""
    from adafocus_pl.evaluation.flops import gflops_per_video, model_component_gflops
    from adafocus_pl.models.patch_policies import get_patch_policy

    uses_local = get_patch_policy(job.patch_policy).uses_local
    cfg = compose("train", overrides)
    parts = model_component_gflops(cfg.model, (cfg.data.eval_crop, cfg.data.eval_crop))
    metrics = json.loads((job.directory / "metrics.json").read_text())
    return {"method": job.label, "family": job.label, "patch_policy": job.patch_policy, "run_dir": str(job.directory),
            "top1": metrics.get("test/top1"), "mAP": metrics.get("test/mAP"),
            "hit_rate": metrics.get("test/hit_rate"), "coverage": metrics.get("test/coverage"),
            "gflops_per_video": gflops_per_video(parts, cfg.data.num_segments, use_local=uses_local),
            "keep_fraction": 1.0 if uses_local else 0.0}


EXIT_TOLERANCE = 0.01  # pipeline.exit_budget=auto: the metric may fall this far below the full model's (1 point)


def summary_exit_row(rows: Sequence[dict], budget: float | str | None, metric: str) -> dict | None:
    """The early-exit row of one family that make train's table shows. ``budget`` "auto": the smallest budget whose
    ``metric`` on the threshold split is within :data:`EXIT_TOLERANCE` of the full model's there (the largest
    budget when none is), so that the choice never looks at the test split; a number: that budget's row; None:
    none."""
    if not rows or budget is None:
        return None
    if budget == "auto":
        full = rows[0][f"full_{metric}_on_threshold_split"]
        close = [r for r in rows if r[f"{metric}_on_threshold_split"] >= full - EXIT_TOLERANCE - 1e-9]
        return min(close, key=lambda r: r["budget"]) if close else max(rows, key=lambda r: r["budget"])
    return next((r for r in rows if abs(r["budget"] - float(budget)) < 1e-9), None)


def check_exit_budget(value) -> None:
    """``pipeline.exit_budget`` is auto, null or a fraction in (0, 1]: refused before any step runs."""
    if value is None or value == "auto":
        return
    from adafocus_pl.inference.early_exit import check_budget

    try:
        check_budget(value)
    except (TypeError, ValueError):
        raise SystemExit(f"error: pipeline.exit_budget={value}: give auto, null or one of eval.exit_budgets "
                         f"(a fraction of the GFLOPs in (0, 1], e.g. 0.6)") from None


def write_summary(overrides: list[str], rows: list[dict], eval_paths: list[str], out_dir: str,
                  seconds: dict[str, float], exit_curves: Sequence[dict] = ()) -> str:
    """results.json / results.md and the two figures of the pipeline; returns the table. ``exit_curves``: the
    early-exit rows drawn in the figure (and kept in results.json) beside the table's."""
    from adafocus_pl.evaluation.evaluate import plot_rows, results_markdown
    from adafocus_pl.evaluation.metrics import headline_metric

    cfg = compose("train", overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"experiment": cfg.experiment_name, "patch_size": cfg.model.patch_size, "seed": cfg.seed,
               "split": "test", "frames_per_video": cfg.data.num_segments, "rows": rows, "seconds": seconds,
               "early_exit_rows": list(exit_curves)}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    title = f"{cfg.experiment_name}: P={cfg.model.patch_size}, seed {cfg.seed}, test split"
    shown = [*rows, *(r for r in exit_curves if r["method"] not in {row["method"] for row in rows})]
    figures = plot_rows(shown, out, title, metric=headline_metric(cfg.monitor))
    links = "\n".join(f"- {name}: `{path}`" for name, path in [*figures.items(), *(("evaluation", p)
                                                                                      for p in eval_paths)])
    table = results_markdown(rows, title)
    (out / "results.md").write_text(f"{table}\n{links}\n")
    return table


# ------------------------------------------------------------------------------------------------- the scheduler
def job_count(cfg, cores: int) -> int:
    """``pipeline.jobs``: a number, or ``auto``: one per CPU core (at most 4) on a CPU, one on an accelerator."""
    jobs = OmegaConf.select(cfg, "pipeline.jobs", default="auto")
    if jobs != "auto":
        if int(jobs) < 1:
            raise ValueError(f"pipeline.jobs={jobs}: run at least one step at a time (or auto)")
        return int(jobs)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator in ("gpu", "cuda", "mps", "tpu") or (accelerator == "auto" and _has_accelerator()):
        return 1
    return max(1, min(4, cores))


def _has_accelerator() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def single_process(cfg) -> bool:
    """A stage of this config runs in one process (no DDP launcher), so a worker can run it."""
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1) or 1
    return str(devices) == "1" and int(nodes) == 1


class Pipeline:
    def __init__(self, cfg, jobs: list[Job], workers, cores: int, in_workers: bool) -> None:
        self.cfg, self.jobs, self.workers, self.cores, self.in_workers = cfg, jobs, workers, cores, in_workers
        self.results: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()
        self._shown: dict[str, tuple] = {}

    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[pipeline {int(elapsed) // 60}:{int(elapsed) % 60:02d}] {message}", flush=True)

    def _drive(self, job: Job, threads: int) -> Any:
        """In a driver thread: run one job through the workers (train jobs through the chain's skip/resume)."""
        if job.kind == EVAL:
            return self.workers.submit("adafocus_pl.pipeline:evaluate_run", list(job.overrides),
                                       str(job.directory / "checkpoints" / "last.ckpt"), threads=threads,
                                       log_file=job.directory / "eval" / "console.log").result()

        def runner(overrides: list[str]) -> None:
            if not self.in_workers:  # DDP: the stage needs its own launcher process
                run_train_process(overrides)
                return
            self.say(f"{job.label}: started, {threads} thread(s); console: {job.directory / 'console.log'}")
            self.workers.submit("adafocus_pl.workers:train_in_process", overrides, threads=threads,
                                log_file=job.directory / "console.log").result()

        return run_step(Step(job.label, list(job.overrides)), runner)

    def _show_progress(self, running: dict[Future, Job]) -> None:
        from adafocus_pl.stages.progress import read_progress

        for job in running.values():
            if job.kind != TRAIN:
                continue
            state = read_progress(job.directory / "progress.json")
            if not state or state.get("phase") != "validated":
                continue
            key = (state["epoch"], state["phase"])
            if self._shown.get(job.name) == key:
                continue
            self._shown[job.name] = key
            metrics = state.get("metrics", {})
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                              if k in ("train/loss", "val/top1", "val/coverage", "val/top1_local"))
            self.say(f"{job.label}: epoch {state['epoch'] + 1}/{state['epochs']} validated: {shown}")

    def _finished(self, job: Job, value: Any) -> None:
        self.results[job.name] = value
        seconds = self.seconds[job.name]
        if job.kind == TRAIN:
            directory, state = value
            if state == "done":
                return
            metrics_file = directory / "metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
            shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("test/top1", "test/top1_local", "test/coverage")
                              if k in metrics)
            self.say(f"{job.label}: finished in {seconds:.0f} s ({shown})")
        else:
            self.say(f"{job.label}: finished in {seconds:.0f} s ({value['paths']['md']})")

    def run(self) -> None:
        pending, running, failed = list(self.jobs), {}, None
        with ThreadPoolExecutor(max_workers=self.workers.jobs) as drivers:
            while pending or running:
                if failed is None:
                    ready = [job for job in pending if all(name in self.results for name in job.after)]
                    share = min(self.workers.jobs, len(ready) + len(running)) or 1
                    for job in ready[: self.workers.jobs - len(running)]:
                        pending.remove(job)
                        threads = max(1, self.cores // share)
                        future = drivers.submit(self._drive, job, threads)
                        future.started = time.perf_counter()
                        running[future] = job
                elif not running:
                    break
                finished, _ = wait(list(running), timeout=2.0, return_when=FIRST_COMPLETED)
                self._show_progress(running)
                for future in finished:
                    job = running.pop(future)
                    self.seconds[job.name] = time.perf_counter() - future.started
                    try:
                        self._finished(job, future.result())
                    except Exception as err:  # the others still finish: a re-run skips them
                        failed = failed or (job, err)
                        self.say(f"{job.label} FAILED: {err}")
        if failed is not None:
            job, err = failed
            raise SystemExit(f"[pipeline] stopped: {job.label} failed ({err}). Fix it and run the same command "
                             f"again: finished steps are skipped, interrupted ones resume.")

    def rows(self) -> tuple[list[dict], list[str], list[dict]]:
        """The results table (AdaFocus's rows, the baselines, AdaFocus+'s eta curve, each variant followed by its
        early-exit row, :func:`summary_exit_row`), the evaluations' results.md, and the early-exit curves drawn in
        the figure: AdaFocus's and AdaFocus+'s at the smallest eta, every budget."""
        rows, eval_paths, exits = [], [], {False: [], True: []}
        for job in self.jobs:
            if job.kind == EVAL:
                result = self.results[job.name]
                smallest_eta = min((row["eta"] for row in result["rows"] if row.get("eta") is not None), default=None)
                for row in result["rows"]:
                    if row.get("budget") is not None:  # early exit: AdaFocus's, and AdaFocus+'s at its smallest eta
                        eta = row.get("eta")
                        if (eta is not None and eta == smallest_eta) if job.plus else eta is None:
                            exits[job.plus].append({**row, "run_dir": str(job.directory)})
                        continue
                    if job.plus and "eta" not in row:  # the eta = 1 end of the AdaFocus+ curve
                        row.update(method="AdaFocus+ network, f_L on every frame", family="AdaFocus+",
                                   eta=1.0)
                    rows.append({**row, "run_dir": str(job.directory)})
                eval_paths.append(str(result["paths"]["md"]))
        budget = OmegaConf.select(self.cfg, "pipeline.exit_budget", default=None)
        from adafocus_pl.evaluation.metrics import headline_metric

        metric = headline_metric(self.cfg.monitor)
        picked = {plus: summary_exit_row(found, budget, metric) for plus, found in exits.items()}
        shown = {plus: [] if row is None else [row] for plus, row in picked.items()}
        if budget is not None and any(found and picked[plus] is None for plus, found in exits.items()):
            self.say(f"pipeline.exit_budget={budget} is not one of eval.exit_budgets: no early-exit row in the table")
        plain = [row for row in rows if row["family"] != "AdaFocus+"]
        plus = [row for row in rows if row["family"] == "AdaFocus+"]
        baselines = [self.workers.submit("adafocus_pl.pipeline:baseline_row", list(job.overrides), job).result()
                     for job in self.jobs if job.patch_policy is not None]
        return plain + shown[False] + baselines + plus + shown[True], eval_paths, exits[False] + exits[True]


def main(argv: list[str] | None = None) -> Path:
    from adafocus_pl.chain import runs_stage0
    from adafocus_pl.data import synthetic
    from adafocus_pl.models.build import architecture_of
    from adafocus_pl.models.contract import architecture_class
    from adafocus_pl.workers import Workers

    user = list(sys.argv[1:] if argv is None else argv)
    cfg = compose("train", user)
    check_exit_budget(OmegaConf.select(cfg, "pipeline.exit_budget", default=None))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # AdaFocus+ runs beside AdaFocus where the architecture can skip frames (not AdaFocus-TSM)
    plus = architecture_class(architecture_of(cfg.model)).supports_skip_policy
    jobs = plan(user, stage0=runs_stage0(user), plus=plus)
    in_workers = single_process(cfg)
    count = job_count(cfg, cores) if in_workers else 1
    out_dir = Path(run_dir_of(cfg, PIPELINE))
    with Workers(count) as workers:  # they start and import while the data is prepared here
        pipeline = Pipeline(cfg, jobs, workers, cores, in_workers)
        pipeline.say(f"{len(jobs)} steps, {count} at a time on {cores} CPU core(s); runs under "
                     f"{Path(cfg.paths.log_dir) / cfg.experiment_name}")
        try:
            synthetic.prepare(cfg.data)
        except synthetic.NotOwnedError as err:
            raise SystemExit(f"error: {err}") from None
        pipeline.seconds["data"] = time.perf_counter() - pipeline.started
        pipeline.say(f"data: {cfg.data.root} ({pipeline.seconds['data']:.0f} s)")
        pipeline.run()
        rows, eval_paths, exit_curves = pipeline.rows()
        seconds = {"data": round(pipeline.seconds["data"], 1),
                   **{job.label: round(pipeline.seconds[job.name], 1) for job in jobs}}
        table = workers.submit("adafocus_pl.pipeline:write_summary", user, rows, eval_paths, str(out_dir),
                               seconds, exit_curves).result()
    print("\n" + table)
    print("[pipeline] wall time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print(f"[pipeline] total {time.perf_counter() - pipeline.started:.0f} s; results: {out_dir / 'results.md'} "
          f"and results.json")
    return out_dir


if __name__ == "__main__":
    main()
