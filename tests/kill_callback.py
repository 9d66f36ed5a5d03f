"""A test-only Lightning callback that SIGKILLs its own training process once, at a chosen stage/epoch/batch.

Given with a Hydra override (``+callbacks.kill._target_=tests.kill_callback.KillOnce ...``) so that the killed run
and its re-run are the very same command: the marker file makes the second run pass the same point unharmed.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class KillOnce(pl.Callback):
    def __init__(self, marker: str, stage_id: int = 2, epoch: int = 1, batch: int = 1) -> None:
        self.marker, self.stage_id, self.epoch, self.batch = Path(marker), stage_id, epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (pl_module.stage_id, trainer.current_epoch, batch_idx) == (self.stage_id, self.epoch, self.batch) \
                and not self.marker.exists():
            self.marker.write_text(f"killed stage {self.stage_id} at epoch {self.epoch}, batch {self.batch}\n")
            os.kill(os.getpid(), signal.SIGKILL)
