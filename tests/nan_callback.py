"""A test-only Lightning callback that turns one training batch's frames into NaN (given with a Hydra override,
``+callbacks.nan._target_=tests.nan_callback.NanFramesOnce``), so the loss of that step is NaN."""

from __future__ import annotations

import pytorch_lightning as pl


class NanFramesOnce(pl.Callback):
    def __init__(self, epoch: int = 1, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            batch["frames"] = batch["frames"].float().fill_(float("nan"))
