"""Stage III, fine-tuning (paper Sec. 3.2): minimise Eq. (5) with the learned policy's patches.

The same stage also gives the fixed-policy baselines of Table 5 (random / centre / Gaussian patches) and the
glance-only baseline (no patches, zero local features) the same fine-tuning budget from the Stage I weights, so
that they are compared fairly with the learned policy.
"""

from __future__ import annotations

import torch

from adafocus_pl.stages.base import StageModule, sequence_cross_entropy

PATCH_POLICIES = ("learned", "random", "centre", "gaussian", "none")


class FinetuneStage(StageModule):
    stage_id = 3

    def __init__(self, net: dict, optimizer: dict, trainable: list[str] = ("local", "classifier"),
                 patch_policy: str = "learned", eval_seed: int = 0, channels_last: bool = True) -> None:
        if patch_policy not in PATCH_POLICIES:
            raise ValueError(f"stage.module.patch_policy={patch_policy!r}: choose one of {PATCH_POLICIES}")
        if patch_policy == "none" and "local" in trainable:
            trainable = [p for p in trainable if p != "local"]  # glance-only: f_L is never run
        super().__init__(net=net, optimizer=optimizer, trainable=list(trainable), eval_seed=eval_seed,
                         channels_last=channels_last)
        self.patch_policy = patch_policy

    @property
    def accepts_init_from(self) -> tuple[int, ...]:
        # the learned policy comes from Stage II; fixed baselines start from Stage I (or II: same f_G/f_L/f_C)
        return (2,) if self.patch_policy == "learned" else (1, 2)

    def _forward(self, frames: torch.Tensor, generator: torch.Generator | None) -> dict:
        if self.patch_policy == "none":
            maps = self.net.glance_maps(frames)
            glance = maps.mean(dim=(-2, -1))
            local = glance.new_zeros(*glance.shape[:2], self.net.local.num_features)
            return {"logits": self.net.classify(glance, local), "offsets": None}
        return self.net(frames, patch_policy=self.patch_policy, generator=generator)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = sequence_cross_entropy(self._forward(batch["frames"], None)["logits"], batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def eval_forward(self, frames, generator):
        return self._forward(frames, generator)
