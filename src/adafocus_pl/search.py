"""Hyper-parameter search over the stage chain: ``python -m adafocus_pl.sweep -m hparams_search=stage2_optuna``.

Hydra's Optuna sweeper proposes values for the keys of ``hydra.sweeper.params`` (conf/hparams_search) and of
sweep overrides on the command line (``schedule.stage3.optimizer.lr="tag(log, interval(1e-4, 1e-2))"``); each trial
is one sweep job (:mod:`adafocus_pl.sweep`) that runs its variant's chain through :mod:`adafocus_pl.chain`
(:func:`run_trial`):

- the steps that do not read a searched key (Stage 0 and Stage I for Stage II's settings) run without the trial's
  values, so every trial, ``make train`` and the grid sweep share one run of them (found ``done``);
- from the first step that reads one on (Stage II, then Stage III, which starts from it), the runs are the
  trial's own, under ``<log_dir>/<experiment>/trials/<trial key>/`` (:func:`adafocus_pl.plan.trial_key`, a pure
  function of the values), so trials never replace each other's runs and the same values find their runs again;
- the trial's value is its last run's ``search.metric`` (a ``val/`` metric; tuning on the test split would make
  the test numbers meaningless), read from that run's ``metrics.json``; the chain ends with the variant's final
  model (Stage III) or at ``search.until``.

The sweeper (:class:`ResumingOptunaSweeperImpl`) keeps the study in sqlite and, before sweeping, counts its
finished trials: it runs only those still missing, and a trial a killed search left running runs again with the
same values (its stages resume from ``last.ckpt``). At the end it writes ``best.yaml`` into the search directory.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

# optuna 2.10 (the sweeper's pin) uses SQLAlchemy 1.4 APIs that 2.0 removed; sqlalchemy<2 is pinned for it, so
# SQLAlchemy's "not compatible with 2.0" notice on importing optuna's storage says nothing a user can act on
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
import optuna  # noqa: E402
import yaml  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from adafocus_pl.chain import Step, run_step, runs_stage0, stage_chain  # noqa: E402
from adafocus_pl.plan import SEARCH_TAG, trial_key  # noqa: E402
from adafocus_pl.utils.config import compose  # noqa: E402

log = logging.getLogger(__name__)

TRIAL_FILE, BEST_FILE = "trial.json", "best.yaml"


class MissingMetricError(KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def values_of(cfg: Any, names: list[str]) -> dict[str, Any]:
    """The values ``cfg`` gives the search's parameters (the input of :func:`adafocus_pl.plan.trial_key`)."""
    return {name: OmegaConf.select(cfg, name) for name in names}


def _view(cfg: DictConfig) -> tuple[Any, Any]:
    """What a step's run computes from, but where it starts: its stage node resolved (what it reads of the
    schedule), without ``init_from``, and every other group as given."""
    stage = OmegaConf.to_container(cfg.stage, resolve=True)
    stage.pop("init_from", None)
    rest = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k not in ("schedule", "stage")}
    return stage, rest


def trial_stages(steps: list[Step], searched: list[str]) -> list[str]:
    """The steps whose run a trial's values change: those that read a searched key, and every step after one."""
    own: list[str] = []
    for step in steps:
        shared = [o for o in step.overrides if o not in searched]
        if step.after in own or _view(compose("train", step.overrides)) != _view(compose("train", shared)):
            own.append(step.name)
    return own


def with_tag(overrides: list[str], tag: str) -> list[str]:
    """``overrides`` plus a ``tags=[...]`` that adds ``tag`` to the run's tags (W&B's), whatever they are."""
    tags = OmegaConf.to_container(compose("train", overrides).tags, resolve=True) or []
    quoted = ",".join("'" + str(t).replace("\\", "\\\\").replace("'", "\\'") + "'" for t in [*tags, tag])
    return [*overrides, f"tags=[{quoted}]"]


def trial_steps(overrides: list[str], params: list[str], plus: bool, key: str,
                until: str | None = None) -> list[Step]:
    """Trial ``key``'s chain (no baselines), up to step ``until`` (None: the variant's final model): the shared
    steps without the searched overrides, the trial's own ones with ``trial.key`` / ``trial.stages`` (their runs
    under ``trials/<key>/``) and the search's W&B tag."""
    searched = [o for o in overrides if override_key(o) in params]
    steps = stage_chain(overrides, plus, runs_stage0(overrides))
    if until:
        names = [step.name for step in steps]
        if until not in names:
            raise ValueError(f"search.until={until} is not a step of this chain ({', '.join(names)}); use one of "
                             f"them, or search.until=null for the whole chain")
        steps = steps[:names.index(until) + 1]
    own = trial_stages(steps, searched)
    if searched and not own:
        raise ValueError(f"no stage of this chain ({', '.join(s.name for s in steps)}) reads the searched keys "
                         f"({', '.join(params)}): every trial would be the same run. Search keys the stages read "
                         f"(hydra.sweeper.params), e.g. schedule.stage2.optimizer.lr")
    trial = [f"trial.key='{key}'", f"trial.stages=[{','.join(own)}]"]
    return [replace(step, overrides=with_tag([*step.overrides, *trial], SEARCH_TAG)) if step.name in own
            else replace(step, overrides=[o for o in step.overrides if o not in searched]) for step in steps]


def objective(run_dir: Path, metric: str) -> float:
    """``metric`` of the run in ``run_dir`` (its ``metrics.json``), or an error that says what it has instead."""
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    if metric not in metrics:
        have = sorted(k for k in metrics if k.startswith("val/")) or sorted(metrics)
        raise MissingMetricError(
            f"the search maximises {metric} (search.metric, default: monitor) but the trial's last run has no "
            f"{metric} in {path}" + (f"; it has {', '.join(have)}" if have else " (no metrics.json)") +
            ". Set monitor=... (or search.metric=...) to one of the val/ metrics its stage logs, e.g. "
            "monitor=val/top1 or monitor=val/mAP")
    return float(metrics[metric])


def search_metric(cfg: DictConfig) -> str:
    metric = str(cfg.search.metric)
    if not metric.startswith("val/"):
        raise ValueError(f"search.metric={metric}: a search maximises a validation metric (val/...), never a test "
                         f"one: choosing settings on the test split leaves no unbiased test number. Set "
                         f"search.metric=val/{metric.split('/')[-1]}")
    return metric


def run_trial(cfg: DictConfig, overrides: list[str], plus: bool) -> float:
    """One trial (a sweep job of the search): its chain, then its value; writes ``trial.json`` in its job
    directory."""
    metric = search_metric(cfg)
    params = [str(name) for name in cfg.search.params or []]  # set by the sweeper (_configure_trials)
    if not params:
        raise ValueError("search.params is empty: this job was not started by the search's own sweeper; run "
                         "python -m adafocus_pl.sweep -m hparams_search=stage2_optuna (make search), and keep "
                         "hydra.sweeper as conf/hparams_search sets it")
    key = trial_key(values_of(cfg, params))  # as the job directory's ${adafocus.trial_key:}
    steps = trial_steps(overrides, params, plus, key, cfg.search.get("until"))
    results = [(step, *run_step(step)) for step in steps]
    print(f"[search] trial {key}: " + ", ".join(f"{step.label} {state}" for step, _, state in results), flush=True)
    final_dir = results[-1][1]
    value = objective(final_dir, metric)
    record = {"key": key, "params": values_of(cfg, params), "metric": metric, "value": value,
              "runs": {step.name: str(directory) for step, directory, _ in results}}
    (Path(HydraConfig.get().runtime.output_dir) / TRIAL_FILE).write_text(json.dumps(record, indent=2))
    print(f"[search] trial {key}: {metric} = {value:.4f}", flush=True)
    return value


# ------------------------------------------------------------------------------------------------- the sweeper
def resume_study(study: optuna.Study) -> int:
    """Prepare a study for another run of the same search: trials left RUNNING by a killed search are marked
    FAIL and their values queued again (their runs resume), once; returns how many were queued. One search
    process per study at a time: a trial that another running search is working on would look killed."""
    waiting = [t.params for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    queued = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)  # optuna<3 (the plugin's pin)
        if trial.params and trial.params not in waiting:
            with warnings.catch_warnings():  # "enqueue_trial is experimental" in optuna 2.10: nothing to act on
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.enqueue_trial(trial.params)
            waiting.append(trial.params)
            queued += 1
    return queued


class ResumingOptunaSweeperImpl(OptunaSweeperImpl):
    """Optuna's sweeper that runs only the trials its study still lacks (``n_trials`` minus the COMPLETE ones),
    re-runs a killed search's unfinished trials with their values first, and writes the best trial to
    ``<search dir>/best.yaml``. A finished search starts no training and prints its best trial again."""

    def _configure_trials(self, trials, search_space_distributions, fixed_params):
        """Optuna's trial overrides plus ``search.params``: the keys it proposes values for (those of
        ``hydra.sweeper.params`` and of sweep overrides on the command line), which the trial keeps out of its
        shared stages and names its folder by."""
        keys = ",".join(f"'{name}'" for name in sorted(search_space_distributions))
        return [(*overrides, f"search.params=[{keys}]")
                for overrides in super()._configure_trials(trials, search_space_distributions, fixed_params)]

    def sweep(self, arguments: list[str]) -> None:
        if isinstance(self.storage, str) and self.storage.startswith("sqlite:///"):
            Path(self.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    directions=self._get_directions(), load_if_exists=True)
        queued = resume_study(study)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        wanted = self.n_trials
        self.n_trials = max(0, wanted - done)
        print(f"[search] study {self.study_name}: {done} of {wanted} trials done, {self.n_trials} to run"
              + (f" ({queued} interrupted one(s) first, with the same values)" if queued else ""), flush=True)
        if self.n_trials:
            super().sweep(arguments)
        report_best(study, Path(self.sweep_dir), str(OmegaConf.select(self.config, "search.metric")))


def report_best(study: optuna.Study, search_dir: Path, metric: str) -> dict[str, Any]:
    """Write the study's best trial (value, values, run directories) to ``<search_dir>/best.yaml`` and print it."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"the study {study.study_name} has no finished trial; see the errors above")
    best = study.best_trial
    key = trial_key(best.params)
    record_path = search_dir / "trials" / key / TRIAL_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    summary = {"study": study.study_name, "metric": metric, "value": best.value, "trial": best.number,
               "params": dict(best.params), "trial_key": key, "trials_complete": len(complete),
               "overrides": [f"{name}={value}" for name, value in best.params.items()],
               "runs": record.get("runs", {})}
    (search_dir / BEST_FILE).write_text(yaml.safe_dump(summary, sort_keys=False))
    print(f"[search] best of {len(complete)} trials: {metric} = {best.value:.4f} (trial {best.number}, "
          f"{' '.join(summary['overrides'])})", flush=True)
    for name, directory in summary["runs"].items():
        print(f"[search]   {name}: {directory}", flush=True)
    print(f"[search] written to {search_dir / BEST_FILE}", flush=True)
    return summary
