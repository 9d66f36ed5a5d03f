"""A test-only callback: each rank writes a hash of the trainable parameters when fit starts and when it ends.

Given with a Hydra override (``+callbacks.check._target_=tests.ddp_callback.TrainableChecksum
+callbacks.check.out_dir=DIR``); tests/test_ddp.py compares the files of the ranks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytorch_lightning as pl


def trainable_hash(module) -> str:
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TrainableChecksum(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.start = ""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = trainable_hash(pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        count = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        (self.out_dir / f"rank{trainer.global_rank}.txt").write_text(
            f"{trainer.world_size} {count} {self.start} {trainable_hash(pl_module)}\n")
