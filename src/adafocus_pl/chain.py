"""Run stages of the AdaFocus chain as ``python -m adafocus_pl.train`` processes: skip, resume or start each one.

A stage's run directory is a pure function of its overrides (``paths.run_dir``). Before running a stage:

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

from adafocus_pl.utils.config import compose
from adafocus_pl.utils.wandb_run import child_process_env

IGNORED_KEYS = ("ckpt_path",)  # how a run was started (fresh or resumed) does not change what it computes


@dataclass(frozen=True)
class Step:
    label: str
    overrides: list[str]


def stage_chain(overrides: list[str], plus: bool) -> list[Step]:
    """Stage I → II → III of AdaFocus, or Stage I → II+ → III+ of AdaFocus+ (Sec. 3.3).

    Stage I never has pi' and is shared: it always runs with ``plus=off`` so both variants find the same run."""
    base = [o for o in overrides if not o.lstrip("+~").startswith(("stage=", "plus="))]
    variant = "plus=on" if plus else "plus=off"
    suffix = "+" if plus else ""
    return [
        Step("stage I (warm-up)", [*base, "stage=stage1", "plus=off"]),
        Step(f"stage II{suffix} (policy)", [*base, "stage=stage2", variant]),
        Step(f"stage III{suffix} (fine-tuning)", [*base, "stage=stage3", variant]),
    ]


def composed_run(overrides: list[str]):
    """The composed train config of ``overrides`` (with its ``hydra`` node) and its run directory."""
    cfg = compose("train", overrides, return_hydra_config=True)
    return cfg, Path(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])


def run_dir(overrides: list[str]) -> Path:
    return composed_run(overrides)[1]


def comparable(config: dict) -> dict:
    """A config as saved in ``.hydra/config.yaml`` (no ``hydra`` node), minus the keys that do not matter."""
    return {k: v for k, v in config.items() if k not in (*IGNORED_KEYS, "hydra")}


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


def run_chain(overrides: list[str], plus: bool, runner=run_train_process) -> list[tuple[Step, Path, str]]:
    """The whole stage chain of one sweep point; returns (step, run directory, state found) per stage."""
    return [(step, *run_step(step, runner)) for step in stage_chain(overrides, plus)]
