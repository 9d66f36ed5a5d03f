"""Run stages of the AdaFocus chain as ``python -m adafocus_pl.train`` processes: skip, resume or start each one.

The steps are those of the plan (:mod:`adafocus_pl.plan`). A stage's run directory is a pure function of its
overrides (``paths.run_dir``, :func:`adafocus_pl.plan.run_directory`). Before running a stage:

- ``done``: ``metrics.json`` is there and the saved composed config equals this one → skipped;
- ``resume``: the same config but no ``metrics.json`` (the run was killed) → re-run with ``ckpt_path=auto``, which
  continues from ``checkpoints/last.ckpt`` (weights, optimiser, epoch and W&B run) when there is one;
- ``fresh``: no run directory yet → run;
- ``replaced``: the directory holds a run of a *different* config (a changed default or config file) → it is moved
  to ``<log_dir>/<experiment>/_replaced/...`` (nothing is deleted) and the stage runs fresh.

A file lock per run directory lets parallel sweep jobs (e.g. AdaFocus and AdaFocus+ of one patch size, which share
Stage I) run the shared stage once. Under SLURM with several tasks per job (one per GPU), every task runs the same
chain and the stage processes join one DDP group; only task 0 takes locks and moves directories.
"""

from __future__ import annotations

import copy
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from adafocus_pl.plan import ADAFOCUS, ADAFOCUS_PLUS, EVAL, TRAIN, select
from adafocus_pl.utils.config import compose

# how a run was started (fresh or resumed, by which pipeline) does not change what it computes
IGNORED_KEYS = ("ckpt_path", "pipeline")


@dataclass(frozen=True)
class Step:
    label: str
    overrides: list[str]
    name: str = ""     # the plan's step (adafocus_pl.plan.PLAN): stage0, stage1, stage2, stage3_plus, baseline_<policy>
    after: str = ""    # the step whose checkpoint it starts from, or that it evaluates ("" = none)
    kind: str = TRAIN  # TRAIN | EVAL (the pipeline's evaluations)


def plan_steps(overrides: list[str], variants: tuple[str, ...], stage0: bool = False, baselines: bool = False,
               evaluations: bool = False) -> list[Step]:
    """The steps of :data:`adafocus_pl.plan.PLAN` for ``variants`` as runnable steps: each training step is the
    ``python -m adafocus_pl.train`` run of the user's ``overrides`` with its stage and variant; an evaluation has
    the overrides of the run it evaluates.

    The user's own ``stage=`` and ``plus=`` are dropped. Shared steps (Stages 0 and I) never have pi' and always
    run with ``plus=off``, so both variants find the same run (and Stage 0 serves every patch size:
    ``stage.shared_by``). A baseline is Stage III with a fixed patch policy under its own ``stage.name``, started
    from the weights of the step it comes after (Stage I)."""
    base = [o for o in overrides if not o.lstrip("+~").startswith(("stage=", "plus="))]
    steps: dict[str, Step] = {}
    for spec in select(variants, stage0=stage0, baselines=baselines, evaluations=evaluations):
        if spec.kind == EVAL:
            evaluated = steps[spec.after].overrides
            steps[spec.name] = Step(spec.label, evaluated, spec.name, spec.after, EVAL)
            continue
        stage = [f"stage={spec.stage}", "plus=on" if spec.variant == ADAFOCUS_PLUS else "plus=off"]
        if spec.patch_policy is not None:
            start = Path(run_dir(steps[spec.after].overrides)) / "checkpoints" / "last.ckpt"
            stage += [f"stage.name={spec.stage}_{spec.patch_policy}", f"stage.module.patch_policy={spec.patch_policy}",
                      f"init_from={start}"]
        steps[spec.name] = Step(spec.label, [*base, *stage], spec.name, spec.after)
    return list(steps.values())


def stage_chain(overrides: list[str], plus: bool, stage0: bool = False, baselines: bool = False) -> list[Step]:
    """One sweep point's chain: Stage I -> II -> III of AdaFocus, or Stage I -> II+ -> III+ of AdaFocus+ (Sec. 3.3),
    after the release's Stage 0 when ``stage0`` (the schedule runs it: :func:`runs_stage0`), and with ``baselines``
    the fixed-policy and glance-only runs (:data:`adafocus_pl.plan.BASELINES`) after Stage I (AdaFocus's point only:
    AdaFocus+ shares its Stage I)."""
    return plan_steps(overrides, (ADAFOCUS_PLUS if plus else ADAFOCUS,), stage0, baselines)


def composed_run(overrides: list[str]):
    """The composed train config of ``overrides`` (with its ``hydra`` node) and its run directory."""
    cfg = compose("train", overrides, return_hydra_config=True)
    return cfg, Path(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])


def run_dir(overrides: list[str]) -> Path:
    return composed_run(overrides)[1]


def runs_stage0(overrides: list[str]) -> bool:
    """Whether the schedule of ``overrides`` has a Stage 0 (``schedule.stage0.epochs`` > 0)."""
    return bool(OmegaConf.select(compose("train", overrides), "schedule.stage0.epochs", default=0))


def comparable(config: dict) -> dict:
    """A config as saved in ``.hydra/config.yaml`` (no ``hydra`` node), minus the keys that do not matter: how the
    run was started, and the settings its stage does not depend on (``stage.shared_by``, e.g. Stage 0's patch
    size)."""
    config = copy.deepcopy({k: v for k, v in config.items() if k not in (*IGNORED_KEYS, "hydra")})
    for dotted in (config.get("stage") or {}).get("shared_by") or []:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


def stage_state(directory: Path, current: dict) -> str:
    """``done`` | ``resume`` | ``fresh`` | ``replaced`` (see the module docstring); ``current``: the composed config
    as a plain, unresolved container."""
    if not directory.exists() or not any(directory.iterdir()):
        return "fresh"
    saved = directory / ".hydra" / "config.yaml"
    if not saved.is_file():
        return "replaced"
    if comparable(yaml.safe_load(saved.read_text()) or {}) != comparable(current):
        return "replaced"
    return "done" if (directory / "metrics.json").is_file() else "resume"


def move_aside(directory: Path, experiment_dir: Path) -> Path:
    """Move a run of another config out of the way, keeping it under ``<experiment>/_replaced/``."""
    relative = directory.relative_to(experiment_dir) if directory.is_relative_to(experiment_dir) else directory.name
    target = experiment_dir / "_replaced" / f"{relative}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(directory), str(target))
    return target


def launcher_rank() -> int:
    """This process's task rank when a cluster launcher started several copies of the job (SLURM), else 0."""
    return int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")) or 0)


@contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    if launcher_rank() > 0:  # task 0 holds the lock for the whole DDP group (others would deadlock it)
        yield
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_train_process(overrides: list[str]) -> None:
    from adafocus_pl.utils.wandb_run import child_process_env  # imports Lightning: only where a stage runs

    cmd = [sys.executable, "-m", "adafocus_pl.train", *overrides]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=child_process_env())


def run_step(step: Step, runner=run_train_process) -> tuple[Path, str]:
    """Skip, resume or run one stage; returns its run directory and the state it was found in."""
    overrides = [*step.overrides, "ckpt_path=auto"]
    cfg, directory = composed_run(overrides)  # composed once: the directory, the comparison and move_aside
    with run_lock(directory):
        state = stage_state(directory, OmegaConf.to_container(cfg, resolve=False))
        if state == "done":
            print(f"[chain] {step.label}: done before, skipping ({directory})", flush=True)
            return directory, state
        if state == "replaced" and launcher_rank() == 0:
            moved = move_aside(directory, Path(cfg.paths.log_dir) / cfg.experiment_name)
            print(f"[chain] {step.label}: {directory} holds a run of another config; moved it to {moved}",
                  flush=True)
        elif state == "resume":
            print(f"[chain] {step.label}: interrupted before, resuming ({directory})", flush=True)
        runner(overrides)
    return directory, state


def run_chain(overrides: list[str], plus: bool, runner=run_train_process,
              baselines: bool = False) -> list[tuple[Step, Path, str]]:
    """The whole stage chain of one sweep point; returns (step, run directory, state found) per stage."""
    steps = stage_chain(overrides, plus, runs_stage0(overrides), baselines)
    return [(step, *run_step(step, runner)) for step in steps]
