"""Training guards that every stage run gets (added by :func:`adafocus_pl.stages.runner.run_stage`).

``StopOnNonFiniteLoss``: a NaN or infinite loss stops the run *before* its backward pass, so no update with
non-finite gradients ever reaches the weights, and no checkpoint is written after it: ``last.ckpt`` stays the
last good state. The message names the stage, epoch, step, the videos of the batch and the checkpoint to resume
from. Under DDP every rank stops together (a rank that stopped alone would leave the others waiting).

``ReportSkippedVideos``: with ``data.on_bad_sample=skip``, the count and the list of videos that failed to load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def _last_good_checkpoint(trainer) -> Path | None:
    for callback in trainer.checkpoint_callbacks:
        path = Path(callback.dirpath or "") / "last.ckpt"
        if callback.dirpath and path.is_file():
            return path
    return None


def check_finite(trainer, module, what: str, tensor: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLossError` on every rank when ``tensor`` is not finite on any rank."""
    bad = not bool(torch.isfinite(tensor.detach()).all())
    if not trainer.strategy.reduce_boolean_decision(bad, all=False):  # "any rank"
        return
    checkpoint = _last_good_checkpoint(trainer)
    resume = (f"the last good checkpoint is {checkpoint}: rerun the same command to resume from it (ckpt_path="
              f"auto), with a lower learning rate (schedule.*lr*) if the loss diverged"
              if checkpoint else "no checkpoint was written yet: rerun with a lower learning rate (schedule.*lr*) "
                                 "or check the data")
    value = (tensor.detach().float().reshape(-1)[~torch.isfinite(tensor.detach().float().reshape(-1))][0].item()
             if bad else "finite here, non-finite on another rank")
    guard = next((c for c in trainer.callbacks if isinstance(c, StopOnNonFiniteLoss)), None)
    videos = guard.videos if guard is not None else []
    raise NonFiniteLossError(
        f"non-finite {what} ({value}) in stage {getattr(module, 'stage_id', '?')} at epoch {trainer.current_epoch}, "
        f"global step {trainer.global_step} (videos {videos} of the training list): stopped before this step's "
        f"update, so the weights stay finite; {resume}"
    )


class StopOnNonFiniteLoss(pl.Callback):
    """Checks the loss before every backward pass (automatic and manual optimisation alike)."""

    def __init__(self) -> None:
        self.videos: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        index = batch.get("index") if isinstance(batch, dict) else None
        self.videos = [] if index is None else [int(i) for i in index.reshape(-1)[:8]]

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        check_finite(trainer, pl_module, "training loss", loss)


class ReportSkippedVideos(pl.Callback):
    """With ``data.on_bad_sample=skip``: logs ``data/skipped_videos`` (videos that failed to load, all splits) after
    every epoch and lists them in ``<run dir>/skipped_videos.txt`` (``skipped_videos.rank<r>.txt`` on the other DDP
    ranks, each of which loads its own share of the videos)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.reported = 0

    def _report(self, trainer, pl_module, log_metric: bool) -> None:
        bad_records = getattr(trainer.datamodule, "bad_records", None)
        if bad_records is None:
            return
        skipped = bad_records()
        count = sum(len(records) for records in skipped.values())
        if log_metric and count:
            pl_module.log("data/skipped_videos", float(count), rank_zero_only=True)
        if count == self.reported:
            return
        self.reported = count
        name = "skipped_videos.txt" if trainer.global_rank == 0 else f"skipped_videos.rank{trainer.global_rank}.txt"
        lines = [f"{split}\t{ds_record.path}\tline {ds_record.line}" for split, records in skipped.items()
                 for ds_record in records]
        (self.output_dir / name).write_text("split\tpath\tlist line\n" + "\n".join(lines) + "\n")
        log.warning("%d videos failed to load and were skipped so far (data.on_bad_sample=skip): see %s", count,
                    self.output_dir / name)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, log_metric=True)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, log_metric=not trainer.sanity_checking)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, log_metric=True)
