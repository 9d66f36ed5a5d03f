"""Stage III, fine-tuning (paper Sec. 3.2): minimise Eq. (5) with the learned policy's patches.

The same stage also gives the fixed-policy baselines of Table 5 (random / centre / Gaussian patches) and the
glance-only baseline (no patches, zero local features) the same fine-tuning budget from the Stage I weights, so
that they are compared fairly with the learned policy.

AdaFocus+ (Sec. 3.3; the paper does not say how Stage III treats skipping, this is our choice): pi' is frozen and
each training batch keeps the top eta of its frames' p_t^B, eta drawn from ``keep_ratios``, so that f_C learns the
zero local features it meets at inference for every eta. The p_t^B of each training epoch (all ranks) solve rho
for ``eval_keep_ratio`` (validation, checkpoints and test of this stage); ``python -m adafocus_pl.eval`` re-solves
rho for every eta on the training split with eval transforms (the paper's protocol).
"""

from __future__ import annotations

import numpy as np
import torch

from adafocus_pl.data.datamodule import focus_inputs
from adafocus_pl.models.skipping import check_keep_ratio, solve_keep_threshold
from adafocus_pl.stages.base import StageModule, reachable_parts, sequence_cross_entropy

PATCH_POLICIES = ("learned", "random", "centre", "gaussian", "none")


class FinetuneStage(StageModule):
    stage_id = 3

    def __init__(self, net: dict, optimizer: dict, trainable: list[str] = ("local", "classifier"),
                 patch_policy: str = "learned", eval_seed: int = 0, channels_last: bool = True,
                 keep_ratios: list[float] = (0.9, 0.7, 0.5), eval_keep_ratio: float = 0.5) -> None:
        if patch_policy not in PATCH_POLICIES:
            raise ValueError(f"stage.module.patch_policy={patch_policy!r}: choose one of {PATCH_POLICIES}")
        if patch_policy == "none" and "local" in trainable:
            trainable = [p for p in trainable if p != "local"]  # glance-only: f_L is never run
        trainable = reachable_parts(net, trainable)
        super().__init__(net=net, optimizer=optimizer, trainable=list(trainable), eval_seed=eval_seed,
                         channels_last=channels_last)
        self.patch_policy = patch_policy
        self.keep_ratios = [check_keep_ratio(r) for r in keep_ratios]
        self.eval_keep_ratio = check_keep_ratio(eval_keep_ratio)
        self.keep_threshold = 0.5  # rho for validation until the first training epoch has solved it
        self._epoch_keep_probs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (video index [B], p_t^B [B, T])
        if not self.keep_ratios:
            raise ValueError("stage.module.keep_ratios must list at least one kept fraction eta")

    @property
    def accepts_init_from(self) -> tuple[int, ...]:
        # the learned policy comes from Stage II; fixed baselines start from Stage I (or II: same f_G/f_L/f_C)
        return (2,) if self.patch_policy == "learned" else (1, 2)

    @property
    def uses_local(self) -> bool:
        return self.patch_policy != "none"

    @property
    def plus(self) -> bool:
        return self.net.has_skip_policy and self.patch_policy != "none"

    def _forward(self, frames: torch.Tensor, generator: torch.Generator | None, **skip) -> dict:
        return self.net(frames, patch_policy=self.patch_policy, generator=generator, **skip)

    def statistics_forward(self, batch: dict) -> dict:
        """The training forward (also what :class:`~adafocus_pl.stages.precise_bn.PreciseBatchNorm` runs):
        AdaFocus+ keeps the top eta of the batch's frames, eta drawn from ``keep_ratios``."""
        skip = {}
        if self.plus:
            skip = {"batch_keep_ratio": self.keep_ratios[int(torch.randint(len(self.keep_ratios), ()))]}
        return self._forward(batch["frames"], None, **skip, **focus_inputs(batch))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.statistics_forward(batch)
        loss = sequence_cross_entropy(out["logits"], batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        if self.plus:
            self._epoch_keep_probs.append((batch["index"].detach().cpu(),
                                           torch.sigmoid(out["skip_logits"].detach().float()).cpu()))
            self.log("train/keep_fraction", out["keep"].float().mean())
        return loss

    def _solve_keep_threshold(self) -> None:
        """rho for ``eval_keep_ratio`` from this epoch's p_t^B, gathered over all ranks (a collective)."""
        index = self.gather_rows(torch.cat([i for i, _ in self._epoch_keep_probs]))
        probs = self.gather_rows(torch.cat([p for _, p in self._epoch_keep_probs]))
        _, first = np.unique(index.cpu().numpy(), return_index=True)  # the DistributedSampler's repeats once
        self.keep_threshold = solve_keep_threshold(probs[torch.as_tensor(first, device=probs.device)],
                                                   self.eval_keep_ratio)

    def on_validation_epoch_start(self) -> None:
        # Lightning validates (and saves checkpoints) before on_train_epoch_end: solve rho for it now
        if self.plus and self._epoch_keep_probs:
            self._solve_keep_threshold()

    def on_train_epoch_end(self) -> None:
        if self.plus and self._epoch_keep_probs:
            self._solve_keep_threshold()  # again: validation may have run mid-epoch, or not at all
            self._epoch_keep_probs.clear()
            self.log("train/keep_threshold", self.keep_threshold)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["adafocus_keep_threshold"] = {"keep_ratio": self.eval_keep_ratio, "threshold": self.keep_threshold}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("adafocus_keep_threshold")
        if saved:
            self.keep_threshold = saved["threshold"]

    @property
    def eval_patch_policy(self) -> str:
        return self.patch_policy

    def eval_forward(self, frames, offsets, focus):
        skip = {"keep_threshold": self.keep_threshold} if self.plus else {}
        if offsets is not None:  # random / Gaussian baselines: patches drawn per video (see StageModule)
            return self.net(frames, patch_policy="given", offsets=offsets, **skip, **focus)
        return self._forward(frames, None, **skip, **focus)
