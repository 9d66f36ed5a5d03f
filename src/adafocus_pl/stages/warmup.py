"""Stage I, warm-up (paper Sec. 3.2, Eq. 5): f_G, f_L and f_C learn from uniformly random patches."""

from __future__ import annotations

import torch

from adafocus_pl.data.datamodule import focus_inputs
from adafocus_pl.stages.base import StageModule, sequence_cross_entropy


class WarmupStage(StageModule):
    """Trains ``trainable`` (paper: glance, local, classifier; release: local, classifier with f_G frozen)."""

    stage_id = 1
    accepts_init_from = (0,)
    glance_learns_through_classifier = True

    def __init__(self, net: dict, optimizer: dict, trainable: list[str] = ("glance", "local", "classifier"),
                 eval_seed: int = 0, channels_last: bool = True) -> None:
        net = {**net, "skip_policy": False}  # AdaFocus+'s pi' is born in Stage II (Sec. 3.3)
        super().__init__(net=net, optimizer=optimizer, trainable=list(trainable), eval_seed=eval_seed,
                         channels_last=channels_last)

    def statistics_forward(self, batch: dict) -> dict:
        """The training forward (also what :class:`~adafocus_pl.stages.precise_bn.PreciseBatchNorm` runs)."""
        return self.net(batch["frames"], patch_policy="random", **focus_inputs(batch))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.statistics_forward(batch)
        loss = sequence_cross_entropy(out.logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    eval_patch_policy = "random"

    def eval_forward(self, frames, offsets, focus):
        if offsets is None:  # the TSM / TSM+ baselines have no patches
            return self.net(frames, **focus)
        return self.net(frames, patch_policy="given", offsets=offsets, **focus)
