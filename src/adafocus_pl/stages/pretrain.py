"""Stage 0, as the authors' release has it (its ``train_stage=0``; the paper has no such stage): f_G and f_L are
each trained on whole frames, TSN-style, before Stage I.

Each trained backbone gets its own linear head on its pooled features (``e_G-bar`` / ``e_L-bar``); a clip's
prediction is the average of its frames' logits (TSN's consensus) and the loss is the sum of the backbones'
cross-entropies, so the two never share a gradient. The heads belong to this stage only: Stage I takes the
backbones from this stage's checkpoint (``init_from``) and drops the heads, as the release does.

``segments`` frames of each loaded clip are used (one from each of ``segments`` equal parts of it: a random one in
training, the middle one in evaluation), so Stage 0 can see fewer frames than the clip has; ``None`` uses them all.
Stage 0 never looks at a patch, so its result does not depend on the patch size or the candidate grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adafocus_pl.data.sampling import SegmentSampler
from adafocus_pl.models.build import architecture_of
from adafocus_pl.models.contract import NetOutput
from adafocus_pl.stages.base import StageModule

BACKBONES = ("glance", "local")


class PretrainStage(StageModule):
    """Trains ``trainable`` (release: both f_G and f_L) on whole frames, each through its own linear head."""

    stage_id = 0
    accepts_init_from = ()
    eval_patch_policy = "none"  # whole frames: no patch is cut

    def __init__(self, net: dict, optimizer: dict, trainable: list[str] = BACKBONES, segments: int | None = None,
                 eval_seed: int = 0, channels_last: bool = True) -> None:
        unknown = [part for part in trainable if part not in BACKBONES]
        if unknown or not trainable:
            raise ValueError(f"stage 0 trains backbones only: stage.module.trainable must list some of "
                             f"{list(BACKBONES)}, got {list(trainable)}")
        if architecture_of(net) != "adafocus":
            raise ValueError("stage 0 is defined for model.architecture=adafocus (the release's ActivityNet code); "
                             "AdaFocus-TSM's backbones see whole clips: start its Stage I from pretrained weights")
        if segments is not None and int(segments) < 1:
            raise ValueError(f"stage.module.segments={segments}: give the frames per clip Stage 0 uses (>= 1), or null")
        net = {**net, "skip_policy": False}
        super().__init__(net=net, optimizer=optimizer, trainable=list(trainable), eval_seed=eval_seed,
                         channels_last=channels_last)
        self.segments = None if segments is None else int(segments)
        parts = self.net.parts()
        self.heads = nn.ModuleDict({part: nn.Linear(parts[part].num_features, self.net.num_classes)
                                    for part in self.trainable})

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().parameter_groups()
        for part, head in self.heads.items():
            groups[part] = groups[part] + list(head.parameters())
        return groups

    def chosen_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, S, 3, H, W]``: ``segments`` frames of each clip ``[B, T, 3, H, W]`` (TSN sampling over its T)."""
        steps = frames.shape[1]
        if self.segments is None or self.segments >= steps:
            return frames
        sampler = SegmentSampler(self.segments, "train" if self.training else "val")
        index = torch.tensor([sampler(steps) for _ in range(frames.shape[0])], device=frames.device)
        return frames[torch.arange(frames.shape[0], device=frames.device)[:, None], index]

    def part_logits(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each trained backbone's clip logits ``[B, K]``: its head on every frame, averaged over the frames."""
        chosen = self.chosen_frames(frames)
        inputs = {"glance": self.net.glance_inputs(chosen),  # f_G's own input size (glance_size), as in Stage I
                  "local": chosen.flatten(0, 1)}
        parts = self.net.parts()
        return {part: head(parts[part](inputs[part])).unflatten(0, chosen.shape[:2]).mean(1)
                for part, head in self.heads.items()}

    def statistics_forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """The training forward (also what :class:`~adafocus_pl.stages.precise_bn.PreciseBatchNorm` runs)."""
        return self.part_logits(batch["frames"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.statistics_forward(batch)
        losses = {part: F.cross_entropy(value.float(), batch["label"]) for part, value in logits.items()}
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True)
        for part, value in losses.items():
            self.log(f"train/loss_{part}", value)
        return loss

    def eval_forward(self, frames, offsets, focus):
        """The two streams' average as the clip prediction (``[B, 1, K]``), each stream's own beside it."""
        logits = self.part_logits(frames)
        return NetOutput(torch.stack(list(logits.values())).mean(0)[:, None], part_logits=logits)
