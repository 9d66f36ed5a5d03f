"""Stage III, fine-tuning (paper Sec. 3.2): minimise Eq. (5) with the learned policy's patches.

The same stage also gives the fixed-policy baselines of Table 5 (random / centre / Gaussian patches) and the
glance-only baseline (no patches, zero local features) the same fine-tuning budget from the Stage I weights, so
that they are compared fairly with the learned policy.

AdaFocus+ (Sec. 3.3; the paper does not say how Stage III treats skipping, this is our choice): pi' is frozen and
each training batch keeps the top eta of its frames' p_t^B, eta drawn from ``etas``, so that f_C learns the
zero local features it meets at inference for every eta. The p_t^B of each training epoch (all ranks) solve rho
for ``eval_eta`` (validation, checkpoints and test of this stage); ``python -m adafocus_pl.eval`` re-solves
rho for every eta on the training split with eval transforms (the paper's protocol).
"""

from __future__ import annotations

import numpy as np
import torch

from adafocus_pl.checkpoint import RHO_KEY, saved_rho
from adafocus_pl.data.datamodule import focus_inputs
from adafocus_pl.models.patch_policies import get_patch_policy, trainable_policy_names
from adafocus_pl.models.skipping import DEFAULT_RHO, check_eta, solve_rho
from adafocus_pl.stages.base import StageModule, sequence_cross_entropy


class FinetuneStage(StageModule):
    stage_id = 3
    glance_learns_through_classifier = True

    def __init__(self, net: dict, optimizer: dict, trainable: list[str] = ("local", "classifier"),
                 patch_policy: str = "learned", eval_seed: int = 0, channels_last: bool = True,
                 etas: list[float] = (0.9, 0.7, 0.5), eval_eta: float = 0.5) -> None:
        if patch_policy not in trainable_policy_names():
            raise ValueError(f"stage.module.patch_policy={patch_policy!r}: choose one of {trainable_policy_names()}")
        if not get_patch_policy(patch_policy).uses_local and "local" in trainable:
            trainable = [p for p in trainable if p != "local"]  # glance-only: f_L is never run
        super().__init__(net=net, optimizer=optimizer, trainable=list(trainable), eval_seed=eval_seed,
                         channels_last=channels_last)
        self.patch_policy = patch_policy
        self.etas = [check_eta(eta) for eta in etas]
        self.eval_eta = check_eta(eval_eta)
        self.rho = DEFAULT_RHO  # rho for validation until the first training epoch has solved it
        self._epoch_keep_probs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (video index [B], p_t^B [B, T])
        if not self.etas:
            raise ValueError("stage.module.etas must list at least one kept fraction eta")

    @property
    def accepts_init_from(self) -> tuple[int, ...]:
        # the learned policy comes from Stage II; fixed baselines start from Stage I (or II: same f_G/f_L/f_C)
        return (2,) if self.patch_policy == "learned" else (1, 2)

    @property
    def uses_local(self) -> bool:
        return get_patch_policy(self.patch_policy).uses_local

    @property
    def plus(self) -> bool:
        return self.net.capabilities.has_skip_policy and self.uses_local

    def _forward(self, frames: torch.Tensor, generator: torch.Generator | None, **skip) -> dict:
        return self.net(frames, patch_policy=self.patch_policy, generator=generator, **skip)

    def statistics_forward(self, batch: dict) -> dict:
        """The training forward (also what :class:`~adafocus_pl.stages.precise_bn.PreciseBatchNorm` runs):
        AdaFocus+ keeps the top eta of the batch's frames, eta drawn from ``etas``."""
        skip = {}
        if self.plus:
            skip = {"batch_eta": self.etas[int(torch.randint(len(self.etas), ()))]}
        return self._forward(batch["frames"], None, **skip, **focus_inputs(batch))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.statistics_forward(batch)
        loss = sequence_cross_entropy(out.logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        if self.plus:
            self._epoch_keep_probs.append((batch["index"].detach().cpu(),
                                           torch.sigmoid(out.skip_logits.detach().float()).cpu()))
            self.log("train/keep_fraction", out.keep.float().mean())
        return loss

    def _solve_rho(self) -> None:
        """rho for ``eval_eta`` from this epoch's p_t^B, gathered over all ranks (a collective)."""
        index = self.gather_rows(torch.cat([i for i, _ in self._epoch_keep_probs]))
        probs = self.gather_rows(torch.cat([p for _, p in self._epoch_keep_probs]))
        _, first = np.unique(index.cpu().numpy(), return_index=True)  # the DistributedSampler's repeats once
        self.rho = solve_rho(probs[torch.as_tensor(first, device=probs.device)], self.eval_eta)

    def on_validation_epoch_start(self) -> None:
        # Lightning validates (and saves checkpoints) before on_train_epoch_end: solve rho for it now
        if self.plus and self._epoch_keep_probs:
            self._solve_rho()

    def on_train_epoch_end(self) -> None:
        if self.plus and self._epoch_keep_probs:
            self._solve_rho()  # again: validation may have run mid-epoch, or not at all
            self._epoch_keep_probs.clear()
            self.log("train/rho", self.rho)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[RHO_KEY] = {"eta": self.eval_eta, "rho": self.rho}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        rho = saved_rho(checkpoint)
        if rho is not None:
            self.rho = rho

    @property
    def eval_patch_policy(self) -> str:
        return self.patch_policy

    def eval_forward(self, frames, offsets, focus):
        skip = {"rho": self.rho} if self.plus else {}
        if offsets is not None:  # random / Gaussian baselines: patches drawn per video (see StageModule)
            return self.net(frames, patch_policy="given", offsets=offsets, **skip, **focus)
        return self._forward(frames, None, **skip, **focus)
