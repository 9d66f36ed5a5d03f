"""W&B house-keeping that keeps multirun jobs and crashed runs apart (ecosystem pitfalls #2, #6)."""

from __future__ import annotations

import sys


def finish_wandb() -> None:
    """Close the active W&B run, if W&B was used at all (never imports wandb otherwise)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
