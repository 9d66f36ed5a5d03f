"""A test-only callback: each rank writes a checksum of the trainable parameters when fit ends."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class TrainableChecksum(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        params = [p.detach().double().flatten() for p in pl_module.parameters() if p.requires_grad]
        flat = torch.cat(params)
        (self.out_dir / f"rank{trainer.global_rank}.txt").write_text(
            f"{trainer.world_size} {flat.sum().item():.12e} {flat.abs().sum().item():.12e}\n")
