"""``<run dir>/progress.json``: where a stage run is (epoch, batch) and its latest metrics, rewritten as it trains.

What ``adafocus_pl.pipeline`` prints while stages run side by side in worker processes (their own progress bars
go to their log files), and what anyone can read to see how far a run is (``cat .../progress.json``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl


def read_progress(path: str | Path) -> dict | None:
    """The last progress written to ``path``, or None (not started, or being replaced this instant)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class ProgressFile(pl.Callback):
    """Writes the progress at most every ``every_s`` seconds during training and after every validation."""

    def __init__(self, path: str | Path, every_s: float = 2.0) -> None:
        self.path, self.every_s, self._written = Path(path), float(every_s), 0.0

    def _write(self, trainer: pl.Trainer, phase: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
                   if hasattr(v, "numel") and v.numel() == 1}
        state = {"phase": phase, "epoch": trainer.current_epoch, "epochs": trainer.max_epochs,
                 "batch": trainer.fit_loop.epoch_loop.batch_progress.current.completed,
                 "batches": trainer.num_training_batches if phase == "train" else None, "metrics": metrics}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)
        self._written = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._written >= self.every_s:
            self._write(trainer, "train")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, "validated")

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, "tested")
