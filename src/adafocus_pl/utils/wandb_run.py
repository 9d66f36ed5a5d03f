"""W&B house-keeping that keeps multirun jobs and crashed runs apart: one W&B run per stage, even across resumes.

A stage's W&B run id travels in its checkpoints (``WandbRunIdInCheckpoint``); a resumed stage reopens that run
(``resume_wandb_run``) instead of starting a second one. ``finish_wandb`` closes the run whatever happened, so
the next job of a multirun never logs into it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict

from adafocus_pl.checkpoint import read_checkpoint

CHECKPOINT_KEY = "adafocus_wandb_run_id"


def child_process_env() -> dict[str, str]:
    """This process's environment for a child that runs its own stage, without W&B's service pointer.

    After an in-process W&B run, ``WANDB_SERVICE`` names this process's wandb-core; a child inheriting it would
    log through that shared service, whose state a killed or resumed child can corrupt. Each stage process starts
    its own service instead."""
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def finish_wandb() -> None:
    """Close the active W&B run, if W&B was used at all (never imports wandb otherwise)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


class WandbRunIdInCheckpoint(pl.Callback):
    """Stores the W&B run id of the trainer's ``WandbLogger`` in every checkpoint."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                checkpoint[CHECKPOINT_KEY] = logger.version  # the run id (a property; starts the run if needed)


def resume_wandb_run(cfg: DictConfig, ckpt_path: str) -> DictConfig:
    """``cfg`` with ``logger.wandb.id`` set to the run id saved in ``ckpt_path`` (unless the user set one)."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg or wandb_cfg.get("id"):
        return cfg
    # memory-mapped and weights-only: only the small entry is read, not the weights (Lightning loads the whole
    # checkpoint once, in fit), and nothing in the file runs (the resume checks have read it the same way before)
    run_id = read_checkpoint(ckpt_path, "ckpt_path").get(CHECKPOINT_KEY)
    if run_id:
        with open_dict(cfg):
            cfg.logger.wandb.id = run_id
            cfg.logger.wandb.resume = "allow"
    return cfg


def has_wandb_key() -> bool:
    """Whether W&B has a key to log in with (``WANDB_API_KEY`` or ``wandb login``'s netrc entry); never prompts."""
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())


def check_wandb_mode(cfg: DictConfig) -> None:
    """``logger.wandb.offline=false`` is the one switch to go online: it needs a key, and it wins over a
    ``WANDB_MODE=offline`` set by the Makefile. Never lets W&B stop a run to ask for a key."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg or wandb_cfg.get("offline", True):
        return
    if not has_wandb_key():
        raise RuntimeError(
            "logger.wandb.offline=false but no W&B key was found: run `wandb login` (or export WANDB_API_KEY), "
            "or keep logging offline (the default) and upload later with `wandb sync <run dir>/wandb/offline-run-*`."
        )
    os.environ["WANDB_MODE"] = "online"
