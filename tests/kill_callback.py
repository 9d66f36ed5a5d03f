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


class KillDuringSave(pl.Callback):
    """SIGKILLs the process halfway through writing its ``save``-th checkpoint (counting from 1), once.

    ``on_save_checkpoint`` runs just before the checkpoint IO writes the file: it makes the next ``torch.save``
    write half of the bytes, flush them to disk and die there.
    """

    def __init__(self, marker: str, save: int = 3) -> None:
        self.marker, self.save, self.saves = Path(marker), save, 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saves += 1
        if self.saves != self.save or self.marker.exists():
            return
        import io

        import torch

        real_save = torch.save

        def save_half_then_die(obj, handle, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            self.marker.write_text(f"killed while writing {getattr(handle, 'name', handle)} at global step "
                                   f"{trainer.global_step}\n")
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = save_half_then_die


class RecordBatches(pl.Callback):
    """Appends ``epoch batch_idx global_step video indices...`` of every training batch to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        indices = " ".join(str(int(i)) for i in batch["index"])
        with self.path.open("a") as handle:
            handle.write(f"{trainer.current_epoch} {batch_idx} {trainer.global_step} {indices}\n")


class CrashWorkerOn(pl.Callback):
    """From epoch 1 on, a DataLoader worker that reads training video ``video`` dies of a segmentation fault (the
    patch is made after epoch 0, before the next epoch's workers are forked from the main process)."""

    def __init__(self, video: str) -> None:
        self.video = video

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        dataset = trainer.datamodule.datasets["train"]
        read_clip, video = dataset.read_clip, self.video

        def crash_on_video(record, generator):
            if record.path == video:
                os.kill(os.getpid(), signal.SIGSEGV)
            return read_clip(record, generator)

        dataset.read_clip = crash_on_video
