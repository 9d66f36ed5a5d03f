"""A few long-lived worker processes that run stages (and evaluations) one after another, in-process.

A ``python -m adafocus_pl.train`` process spends seconds of CPU importing torch, Lightning and W&B before its first
step (docs/performance.md); a worker pays that once. Each job runs exactly what the command line runs (the same
Hydra app, so the same ``.hydra/`` files, ``train.log`` and results), with its console output in a log file of its
own, so that jobs running side by side do not garble the terminal, and with the number of CPU threads the pipeline
gives it.

Used by ``adafocus_pl.pipeline`` for single-device runs; a DDP run needs its own launcher and goes through
``adafocus_pl.chain.run_train_process`` instead.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class JobFailed(RuntimeError):
    """A worker's job raised; the message has the error and where its full log is."""


def _end_with_parent() -> None:
    """Linux: this process is killed when the process that started it dies (a killed pipeline leaves no worker
    training on)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: at once, mid-step (checkpoints are atomic)
    except (OSError, AttributeError):
        pass


def _warm_up() -> None:
    """Worker initialiser: the imports every stage needs, once per worker."""
    _end_with_parent()
    os.environ.pop("WANDB_SERVICE", None)  # each worker starts its own wandb-core (see utils.wandb_run)
    if "fork" in multiprocessing.get_all_start_methods():
        # a spawned process spawns its own children too; DataLoader workers would then re-import torch at every
        # epoch (seconds of CPU each): fork them, as a `python -m adafocus_pl.train` process does on Linux
        multiprocessing.set_start_method("fork", force=True)
    import pytorch_lightning  # noqa: F401

    import adafocus_pl.stages.runner  # noqa: F401
    import adafocus_pl.train  # noqa: F401


@contextmanager
def _console_to(log_file: str | None) -> Iterator[None]:
    """Send this process's stdout and stderr (Python's and the C libraries' alike) to ``log_file``."""
    if log_file is None:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _run_job(target: str, args: tuple, kwargs: dict, threads: int | None, log_file: str | None) -> Any:
    """In the worker: ``module:function(*args, **kwargs)`` with ``threads`` CPU threads, console to ``log_file``."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    module, name = target.split(":")
    with _console_to(log_file):
        try:
            return getattr(importlib.import_module(module), name)(*args, **kwargs)
        except BaseException as err:  # SystemExit included: a failed Hydra app must not end the worker
            traceback.print_exc()
            where = f"; its log: {log_file}" if log_file else ""
            raise JobFailed(f"{type(err).__name__}: {err}{where}") from None


def train_in_process(overrides: list[str]) -> None:
    """``python -m adafocus_pl.train *overrides``, in this process."""
    from hydra.core.global_hydra import GlobalHydra

    from adafocus_pl import train

    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = ["adafocus_pl.train", *overrides]
    try:
        train.main()
    except SystemExit as done:
        if done.code not in (None, 0):
            raise
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


class Workers:
    """``jobs`` worker processes (spawned, so no state is inherited from the caller)."""

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, int(jobs))
        self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_warm_up)
        # start every worker now, from this thread: they import while the caller goes on, and their parent-death
        # signal is tied to this (long-lived) thread, not to whichever thread submits first
        self._started = [self._pool.submit(os.getpid) for _ in range(self.jobs)]

    def submit(self, target: str, *args, threads: int | None = None, log_file: str | Path | None = None,
               **kwargs) -> Future:
        return self._pool.submit(_run_job, target, args, kwargs, threads, None if log_file is None else str(log_file))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
