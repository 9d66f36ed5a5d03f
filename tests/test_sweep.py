"""`make sweep`'s and `make search`'s machinery on tiny data, over one experiment: a 2-point sweep (AdaFocus and
AdaFocus+ of one patch size) runs every stage, the report lists both, a re-run does nothing twice, and W&B runs carry
project/group/job type/tags; then a 2-trial Optuna search over Stage II's settings finds the sweep's Stage I done,
gives each trial its own Stage II run and W&B group, reports its best trial, runs nothing on a re-run, and stops with
a clear error when its metric is missing; the dashboard spec leaves out the baselines and the trials (a SIGKILLed
stage's resume: tests/test_resume_killed.py; the search's pieces: tests/test_search.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adafocus_pl.evaluation.report import collect_runs
from adafocus_pl.utils.wandb_offline import read_offline_run
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("stage1", "stage2", "stage3", "stage2_plus", "stage3_plus")
# two trials, each ending with its Stage II (the search's pieces, e.g. which stages a trial shares: test_search.py)
SEARCH = ["hparams_search=stage2_optuna", "hydra.sweeper.n_trials=2", "search.until=stage2"]
# the one sweep point of this module's experiment (with W&B): the sweep, the search and the extra runs share its
# Stage I only while they give the same settings
POINT = ["logger=default", "model.patch_size=24"]


def sweep(overrides: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """``python -m adafocus_pl.sweep -m ...``: the grid sweep, or the search with ``hparams_search=``."""
    cmd = [sys.executable, "-m", "adafocus_pl.sweep", "-m", *overrides]
    # src/ too: Hydra finds the project's sweeper in its hydra_plugins package
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def tiny_sweep(tiny_synthetic, tmp_path_factory):
    logs = tmp_path_factory.mktemp("sweep_logs")
    # one patch size keeps this within the test budget: a sweep point's directories and report rows per patch size
    # are the plan's and the report's (tests/test_plan.py, tests/test_report.py); baselines: tests/test_chain.py
    overrides = tiny_overrides(tiny_synthetic, logs) + POINT + ["plus=off,on", "baselines=false"]
    return logs / "synthetic", overrides, sweep(overrides).stdout


@pytest.fixture(scope="module")
def tiny_search(tiny_sweep, tiny_synthetic):
    """The search over the sweep's experiment (its AdaFocus point: the same Stage I, found done)."""
    experiment, _, _ = tiny_sweep
    overrides = tiny_overrides(tiny_synthetic, experiment.parent) + POINT + SEARCH
    return experiment, overrides, sweep(overrides).stdout


@pytest.fixture(scope="module")
def logged_experiment(tiny_sweep, tiny_synthetic):
    """The sweep's W&B runs plus, for P=24, one baseline as the plan runs it (random patches from Stage I) and the
    evaluations of both final models, all logged to W&B offline (in this process: the chain's steps are what
    `make train` runs)."""
    from adafocus_pl import eval as eval_cli
    from adafocus_pl.chain import plan_steps, run_step
    from adafocus_pl.plan import ADAFOCUS, ADAFOCUS_PLUS
    from adafocus_pl.stages.runner import run_stage
    from adafocus_pl.utils.config import compose

    experiment, _, _ = tiny_sweep
    point = tiny_overrides(tiny_synthetic, experiment.parent) + POINT
    steps = {s.name: s for s in plan_steps(point, (ADAFOCUS, ADAFOCUS_PLUS), baselines=True)}
    run_step(steps["baseline_random"], runner=lambda overrides: run_stage(compose("train", overrides)))
    for final in ("stage3", "stage3_plus"):
        ckpt = experiment / final / "p24" / "seed0" / "checkpoints" / "last.ckpt"
        eval_cli.run(compose("eval", [*steps[final].overrides, f"ckpt_path={ckpt}", "eval.exit_budgets=[]",
                                      "eval.fixed_policies=[]", "eval.patch_figure_videos=2"]))
    return experiment


def test_a_baseline_is_told_apart_from_adafocus_stage_iii_by_job_type_and_tags(logged_experiment):
    baseline = read_offline_run(next((logged_experiment / "stage3_random" / "p24" / "seed0" / "wandb")
                                     .glob("offline-run-*")))
    stage3 = read_offline_run(next((logged_experiment / "stage3" / "p24" / "seed0" / "wandb").glob("offline-run-*")))
    assert baseline["job_type"] == "baseline" and stage3["job_type"] == "stage3"
    assert {"baseline", "policy-random"} <= set(baseline["tags"])
    assert {"method", "policy-learned", "adafocus"} <= set(stage3["tags"]) and "baseline" not in stage3["tags"]
    assert baseline["config"]["stage"]["role"] == "baseline" and stage3["config"]["stage"]["patch_policy"] == "learned"


def test_the_dashboard_spec_selects_exactly_the_two_variants_and_names_only_logged_metrics(logged_experiment,
                                                                                             tiny_search, tmp_path):
    from adafocus_pl.dashboard import main as dashboard_main
    from adafocus_pl.evaluation.dashboard import read_runs, selected, variant_set

    out = dashboard_main([str(logged_experiment), "--out", str(tmp_path / "spec.json"), "--dry-run"])
    spec = json.loads(out.read_text())
    runs = {r.run_id: r for r in read_runs(logged_experiment)}
    assert len(runs) == 10  # 5 stages of the sweep, the baseline, 2 evaluations and the search's 2 trials
    trials = {i for i, r in runs.items() if "hparams_search" in r.tags}
    assert len(trials) == 2
    by_name = {rs["name"]: {sel.split(":")[-1] for sel in rs["selects"]} for rs in spec["run_sets"]}
    assert not trials & set().union(*by_name.values())  # a search's trials are in no run set
    # the workspace's set and the two variants' sets: every AdaFocus and AdaFocus+ run, no baseline
    method = {i for i, r in runs.items() if "baseline" not in r.tags} - trials
    assert by_name["AdaFocus and AdaFocus+"] == method and len(method) == 7
    assert by_name["AdaFocus"] | by_name["AdaFocus+"] == method and not by_name["AdaFocus"] & by_name["AdaFocus+"]
    assert {runs[i].job_type for i in by_name["AdaFocus+"]} == {"stage2", "stage3", "eval"}  # Stage I is shared
    assert {runs[i].job_type for i in by_name["baselines (Table 5)"]} == {"baseline"}
    # the spec's filters are the ones saved in the workspace view (W&B's filter format)
    leaves = spec["workspace"]["spec"]["section"]["runSets"][0]["filters"]["filters"]
    assert {(leaf["key"]["name"], leaf["op"]) for leaf in leaves} == {("jobType", "IN"), ("tags", "IN"), ("tags", "NIN")}
    # every panel names metrics that a run of its run sets logged
    sets = {rs["name"]: rs for rs in spec["run_sets"]}
    titles = [s["title"] for s in spec["sections"]]
    assert any("Stage II" in t for t in titles) and any("eta" in t for t in titles) and any("Online" in t for t in titles)
    assert any(p["kind"] == "scatter" for s in spec["sections"] for p in s["panels"])
    assert any(p["kind"] == "media" and "eval/patches" in p["y"] for s in spec["sections"] for p in s["panels"])
    for section in spec["sections"]:
        logged = set().union(*(runs[i].keys for name in section["run_sets"]
                               for i in {sel.split(":")[-1] for sel in sets[name]["selects"]}))
        for panel in section["panels"]:
            assert set(panel["y"]) <= logged, (section["title"], panel)
            assert panel["x"] == "Step" or panel["x"] in logged, (section["title"], panel)
    # a run set's filters applied locally agree with what the spec lists
    assert {r.run_id for r in selected(variant_set("adafocus_plus", ["stage3"], "x"), runs.values())} == {
        i for i, r in runs.items() if r.job_type == "stage3" and "adafocus_plus" in r.tags}


def test_a_two_point_sweep_runs_every_stage_and_the_report_lists_both(tiny_sweep):
    experiment, _, out = tiny_sweep
    for stage in STAGES:
        metrics = json.loads((experiment / stage / "p24" / "seed0" / "metrics.json").read_text())
        assert 0.0 <= metrics["test/top1"] <= 1.0, stage
    assert out.count("$ ") == 5  # Stage I once, shared by AdaFocus and AdaFocus+
    # each sweep point keeps its Hydra job directory (config + log), a pure function of the overrides
    for variant in ("adafocus", "adafocus_plus"):
        assert (experiment / "sweep" / "p24" / "seed0" / variant / ".hydra" / "overrides.yaml").is_file()
    report = (experiment / "report" / "report.md").read_text()
    assert "| synthetic | 24 |" in report and "AdaFocus+ top1 (%)" in report and "AdaFocus top1 (%)" in report
    assert (experiment / "report" / "accuracy_vs_gflops.png").stat().st_size > 1000


def test_rerunning_the_sweep_runs_no_stage_twice(tiny_sweep):
    _, overrides, _ = tiny_sweep
    out = sweep(overrides).stdout
    assert "$ " not in out  # no training process started
    assert out.count("done before, skipping") == 6  # Stage I, II, III of each variant


def test_wandb_runs_carry_project_group_job_type_tags_and_metrics(tiny_sweep):
    experiment, _, _ = tiny_sweep
    runs = list((experiment / "stage3_plus" / "p24" / "seed0" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run["project"] == "adafocus-pl-synthetic"
    assert run["group"] == "synthetic/p24/seed0/adafocus_plus" and run["job_type"] == "stage3"
    assert {"adafocus_plus", "p24", "stage3"} <= set(run["tags"])
    assert run["config"]["model"]["patch_size"] == 24  # the full composed config is logged
    metrics = json.loads((experiment / "stage3_plus" / "p24" / "seed0" / "metrics.json").read_text())
    assert run["summary"]["test/top1"] == pytest.approx(metrics["test/top1"])
    assert any("train/loss" in row for row in run["history"])
    plain = read_offline_run(next((experiment / "stage1" / "p24" / "seed0" / "wandb").glob("offline-run-*")))
    assert plain["group"] == "synthetic/p24/seed0/adafocus" and "adafocus" in plain["tags"]


# ------------------------------------------------------------------ the search (make search) over the same experiment
def test_a_two_trial_search_finds_stage_one_done_and_reports_its_best_trial(tiny_search):
    experiment, _, out = tiny_search
    # the sweep's Stage I is found done by each trial; each trial runs its own Stage II
    assert out.count("stage I (warm-up): done before, skipping") == 2 and out.count("$ ") == 2, out
    trials = sorted((experiment / "trials").iterdir())
    assert len(trials) == 2
    groups = set()
    for trial in trials:
        run = trial / "stage2" / "p24" / "seed0"
        assert (run / "metrics.json").is_file()
        saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        assert "hparams_search" in saved["tags"] and saved["trial"]["key"] == trial.name
        assert not (trial / "stage1").exists() and not (trial / "stage3").exists()
        logged = read_offline_run(next((run / "wandb").glob("offline-run-*")))
        assert "hparams_search" in logged["tags"] and trial.name in logged["group"]
        groups.add(logged["group"])
    assert len(groups) == 2  # each trial logs to its own W&B group
    search_dir = experiment / "search" / "stage2_optuna"
    records = [json.loads(p.read_text()) for p in search_dir.glob("trials/*/trial.json")]
    assert len(records) == 2 and records[0]["params"] != records[1]["params"]
    best = yaml.safe_load((search_dir / "best.yaml").read_text())
    assert best["value"] == max(r["value"] for r in records) and best["trials_complete"] == 2
    winner = next(r for r in records if r["key"] == best["trial_key"])
    assert best["params"] == winner["params"] and best["runs"]["stage2"] == winner["runs"]["stage2"]
    assert json.loads((Path(best["runs"]["stage2"]) / "metrics.json").read_text())["val/top1"] == best["value"]
    assert f"best of 2 trials: val/top1 = {best['value']:.4f}" in out
    # the trials are not sweep points: the experiment's report lists the sweep's runs only
    runs = collect_runs(experiment)
    assert set(STAGES) <= {run["stage"] for run in runs}
    assert not any("trials" in Path(run["run_dir"]).parts for run in runs)


def test_rerunning_a_finished_search_trains_nothing_and_reports_the_same_best(tiny_search):
    experiment, overrides, _ = tiny_search
    best = (experiment / "search" / "stage2_optuna" / "best.yaml").read_text()
    out = sweep(overrides).stdout
    assert "$ " not in out and "2 of 2 trials done, 0 to run" in out
    assert (experiment / "search" / "stage2_optuna" / "best.yaml").read_text() == best


def test_a_missing_metric_stops_the_search_with_a_clear_error(tiny_search):
    _, overrides, _ = tiny_search
    # a new study whose first proposal is the first study's (same sampler seed): its runs are found done
    done = sweep([*overrides, "search.study=missing", "search.metric=val/top5", "hydra.sweeper.n_trials=1"],
                 check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "$ " not in done.stdout
    assert "has no val/top5 in" in output and "val/top1" in output and "monitor=" in output
