"""What every training stage shares: the network, freezing, ``init_from``, metrics and optimisers.

Each stage (``pretrain``, ``warmup``, ``policy``, ``finetune``) is its own LightningModule over one network built
from the ``model`` config (:class:`~adafocus_pl.models.contract.VideoNet`); the stages never import each other.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from adafocus_pl.checkpoint import load_init_weights
from adafocus_pl.data.datamodule import focus_inputs
from adafocus_pl.evaluation.metrics import mean_average_precision, patch_box_overlap, top1_accuracy
from adafocus_pl.models.build import build_network
from adafocus_pl.models.contract import PARTS, NetOutput
from adafocus_pl.models.patch_policies import get_patch_policy

# val/test metrics come from records gathered over all ranks (the same on every rank): no sync_dist needed
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test)/")
# ... and every video is evaluated once (the DistributedSampler's repeats are dropped): no need for devices=1
warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders\. During `trainer\.(validate|test)\(\)`")


def plain(value: Any) -> Any:
    """Config objects as plain Python containers (checkpoints stay loadable with ``weights_only``)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def gather_rows(x: torch.Tensor, all_gather: Callable[[torch.Tensor], torch.Tensor], world_size: int) -> torch.Tensor:
    """``x [N, ...]`` of every rank concatenated in rank order; ``N`` may differ between ranks.

    ``all_gather`` (e.g. ``LightningModule.all_gather``: ``[world, ...]`` from equal shapes) gathers the sizes
    first, then each rank's rows padded to the largest size; the padding is dropped after the gather.
    """
    if world_size == 1:
        return x
    sizes = all_gather(torch.tensor([x.shape[0]], device=x.device)).reshape(-1).tolist()
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    gathered = all_gather(padded)  # [world, max(sizes), ...]
    return torch.cat([gathered[rank, :size] for rank, size in enumerate(sizes)])


class StageModule(pl.LightningModule):
    """Base class; subclasses set ``stage_id``, ``accepts_init_from`` and implement the steps."""

    stage_id: int = 0
    accepts_init_from: tuple[int, ...] = ()
    # Stages I and III: f_G's only path to the loss is f_C's input (pi is frozen, its argmax not differentiable)
    glance_learns_through_classifier: bool = False

    def __init__(self, net: dict, optimizer: dict, trainable: list[str], eval_seed: int = 0,
                 channels_last: bool = True) -> None:
        super().__init__()
        net, optimizer = plain(net), plain(optimizer)
        unknown = sorted(set(trainable) - set(PARTS))
        if unknown:
            raise ValueError(f"stage.module.trainable has unknown parts {unknown}; choose from {list(PARTS)}")
        self.save_hyperparameters()
        self.net = build_network(net)
        parts = self.net.parts()
        # parts this network does not have are dropped (AdaFocus has no pi'; the TSM baseline no f_G and no pi), and
        # f_G when no gradient can reach it: without glance reuse (Table 4) it stays frozen (DDP with
        # find_unused_parameters=false would otherwise fail on its parameters)
        unreachable = {"glance"} if (self.glance_learns_through_classifier
                                     and not self.net.capabilities.uses_glance_features) else set()
        self.trainable = [part for part in trainable if part in parts and part not in unreachable]
        if channels_last:  # NHWC convolutions: ~1.5-2x faster on CPUs and tensor cores
            self.net.to(memory_format=torch.channels_last)
        self.frozen = [part for part in parts if part not in self.trainable]
        # freeze here, before Lightning wraps the module in DDP: DDP registers only parameters that need a gradient
        for part in self.frozen:
            parts[part].requires_grad_(False)
        self._frozen_to_eval()
        self.eval_seed = eval_seed  # the run's seed (stage configs pass ${seed}): eval draws and each epoch's reseed
        self.best_top1 = 0.0
        self._eval_outputs: list[dict[str, torch.Tensor]] = []

    # ----------------------------------------------------------------- modes and freezing
    def train(self, mode: bool = True):  # noqa: D102 - frozen parts stay in eval mode (BN statistics, dropout)
        super().train(mode)
        self._frozen_to_eval()
        return self

    def _frozen_to_eval(self) -> None:
        parts = self.net.parts()
        for part in self.frozen:
            parts[part].eval()

    uses_local = True  # False for the glance-only baseline (f_L never runs)

    def on_fit_start(self) -> None:
        # every run logs what one video costs (T frames; f_L on every frame, pi' counted for AdaFocus+)
        frames = getattr(self.trainer.datamodule, "num_segments", None)
        if frames and self.loggers and self.trainer.is_global_zero:
            from adafocus_pl.evaluation.flops import net_gflops_per_video

            gflops = net_gflops_per_video(self.net, frames, use_local=self.uses_local)
            for logger in self.loggers:
                logger.log_metrics({"model/gflops_per_video": gflops}, step=0)

    def on_train_epoch_start(self) -> None:
        # Every epoch's randomness (shuffling, worker seeds, random patches, PPO samples) is a function of
        # (seed, epoch) alone: a run resumed from an epoch's checkpoint retraces the uninterrupted run exactly.
        # Runs before the train DataLoader's iterator (and so its sampler and worker seeds) is created.
        self._start_training(self.eval_seed + self.current_epoch)

    def on_train_start(self) -> None:
        # A run resumed from a mid-epoch checkpoint (callbacks.step_checkpoint) gets no on_train_epoch_start:
        # the loader continues where it was saved; the model's random draws get a seed of (seed, epoch, step).
        if self.trainer.fit_loop.epoch_loop.batch_progress.current.completed > 0:
            self._start_training((self.eval_seed + self.current_epoch) * 1_000_003 + self.global_step)

    def _start_training(self, seed: int) -> None:
        # Lightning restores the module modes it captured around validation rather than calling train(), so
        # enforce eval mode on the frozen parts here too (their BN statistics must not move).
        self._frozen_to_eval()
        seed %= 2**32
        pl.seed_everything(seed, workers=True, verbose=False)
        if self.global_rank > 0:
            # DDP: each rank its own random patches, PPO samples and dropout (one stream on every rank would
            # correlate them across the global batch); rank 0 keeps a 1-process run's stream. The distributed
            # sampler shuffles with its own (seed, epoch) generator, the same on every rank.
            rank_seed = (seed + 1_000_003 * self.global_rank) % 2**32
            random.seed(rank_seed)
            np.random.seed(rank_seed)
            torch.manual_seed(rank_seed)

    # ----------------------------------------------------------------- init_from (weights only)
    def load_init_weights(self, path: str | Path) -> None:
        """Load the network weights of another stage's checkpoint, after checking that it fits this run."""
        load_init_weights(self.net, self.hparams.net, path, self.stage_id, self.accepts_init_from, self.trainable)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["adafocus_stage"] = self.stage_id
        checkpoint["adafocus_best_top1"] = self.best_top1

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_top1 = checkpoint.get("adafocus_best_top1", 0.0)

    # ----------------------------------------------------------------- evaluation
    eval_patch_policy = "learned"  # the patch policy of this stage's val/test ("random" for Stage I, ...)

    def eval_forward(self, frames: torch.Tensor, offsets: torch.Tensor | None, focus: dict) -> NetOutput:
        """The network's output for val/test (per-step logits ``[B, T, K]``, patch ``offsets`` or None, ...).
        ``offsets``: the patches of a random fixed policy, drawn per video by :meth:`eval_offsets`; ``focus``:
        :func:`focus_inputs` of the batch."""
        raise NotImplementedError

    def eval_offsets(self, frames: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        """Random / Gaussian evaluation patches drawn from a generator seeded by (seed, video index): the same
        patches for a video whatever the batch or the DDP rank it lands in, so eval metrics are reproducible and
        equal on 1 or N processes."""
        caps = self.net.capabilities
        if not get_patch_policy(self.eval_patch_policy).is_fixed or not caps.crops_patches:
            return None
        steps = 1 if caps.per_clip else frames.shape[1]
        return torch.cat([
            self.net.draw_offsets(self.eval_patch_policy, 1, steps, frames.device,
                                  torch.Generator().manual_seed(self.eval_seed * 1_000_003 + int(i)))
            for i in index.tolist()])

    def _eval_step(self, batch: dict) -> None:
        frames = batch["frames"]
        out = self.eval_forward(frames, self.eval_offsets(frames, batch["index"]), focus_inputs(batch))
        logits = out.logits
        record = {
            "scores": F.softmax(logits[:, -1].float(), dim=1),  # offline prediction = the last step (Sec. 3.4)
            "labels": batch["label"],
            "targets": batch["target"],
            "loss": F.cross_entropy(logits[:, -1].float(), batch["label"], reduction="none"),
            "index": batch["index"],
        }
        boxes = batch.get("focus_boxes", batch.get("boxes"))  # the patches are cut from the focus frames
        if out.offsets is not None and boxes is not None:
            hit, coverage = patch_box_overlap(out.offsets, self.net.patch_size, boxes)
            record["hit"], record["coverage"] = hit.mean(1), coverage.mean(1)
        if out.keep is not None:  # AdaFocus+: the share of frames that ran f_L
            record["keep"] = out.keep.float().mean(1)
        for part, value in out.part_logits.items():  # per-part predictions beside the clip's (Stage 0's heads)
            record["scores_" + part] = F.softmax(value.float(), dim=-1)
        self._eval_outputs.append(record)

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, ...]`` of every rank, in rank order (see :func:`gather_rows`); a collective under DDP."""
        if self.trainer.world_size == 1:
            return x
        return gather_rows(x.to(self.device), self.all_gather, self.trainer.world_size)  # NCCL: device tensors only

    def _eval_epoch_end(self, split: str) -> dict[str, float]:
        if not self._eval_outputs:
            return {}
        merged = {k: torch.cat([o[k] for o in self._eval_outputs]) for k in self._eval_outputs[0]}
        self._eval_outputs.clear()
        # metrics over the whole split, not per rank: every rank gathers all records
        merged = {k: self.gather_rows(v) for k, v in merged.items()}
        # the DistributedSampler pads the split to a multiple of the world size with repeated videos: keep each
        # video once, in dataset order, so that N processes compute exactly what one process computes
        _, first = np.unique(merged["index"].cpu().numpy(), return_index=True)
        keep = torch.as_tensor(first, device=merged["index"].device)
        merged = {k: v[keep] for k, v in merged.items()}
        metrics = {
            f"{split}/loss": merged["loss"].mean().item(),
            f"{split}/top1": top1_accuracy(merged["scores"], merged["labels"]),
            f"{split}/mAP": mean_average_precision(merged["scores"].cpu(), merged["targets"].cpu()),
        }
        if "hit" in merged:
            metrics[f"{split}/hit_rate"] = merged["hit"].mean().item()
            metrics[f"{split}/coverage"] = merged["coverage"].mean().item()
        if "keep" in merged:
            metrics[f"{split}/keep_fraction"] = merged["keep"].mean().item()
        for key, scores in merged.items():
            if key.startswith("scores_"):
                metrics[f"{split}/top1_{key[len('scores_'):]}"] = top1_accuracy(scores, merged["labels"])
        if split == "val" and not self.trainer.sanity_checking:
            self.best_top1 = max(self.best_top1, metrics["val/top1"])
            metrics["val/top1_best"] = self.best_top1
        self.log_dict(metrics, sync_dist=False, prog_bar=split == "val")
        frames = getattr(self.trainer.datamodule, "num_segments", None)
        if frames:  # what a video of this split cost: AdaFocus+ counts only the frames that ran f_L (and pi')
            from adafocus_pl.evaluation.flops import net_gflops_per_video

            cost = {f"{split}/gflops_per_video": net_gflops_per_video(
                self.net, frames, use_local=self.uses_local, keep_fraction=metrics.get(f"{split}/keep_fraction", 1.0))}
            self.log_dict(cost, sync_dist=False)
            metrics.update(cost)
        return metrics

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ----------------------------------------------------------------- optimisation
    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The parameters each trainable part optimises (one optimiser group per part)."""
        parts = self.net.parts()
        return {part: [p for p in parts[part].parameters() if p.requires_grad] for part in self.trainable}

    def configure_optimizers(self):
        """One parameter group per trainable part, lr = ``lr * lr_scale[part]``; cosine per epoch by default."""
        cfg = dict(self.hparams.optimizer)
        scales = cfg.get("lr_scale") or {}
        groups = [{"params": params, "lr": cfg["lr"] * scales.get(part, 1.0), "name": part}
                  for part, params in self.parameter_groups().items()]
        name = cfg.get("name", "sgd").lower()
        if name == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                                  weight_decay=cfg.get("weight_decay", 1e-4))
        elif name in ("adam", "adamw"):
            cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
            opt = cls(groups, lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.999))),
                      weight_decay=cfg.get("weight_decay", 0.0))
        else:
            raise ValueError(f"stage.module.optimizer.name={name!r}: choose sgd, adam or adamw")
        if cfg.get("scheduler", "cosine") in (None, "none", "constant"):
            return opt
        epochs = max(1, self.trainer.max_epochs or 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def sequence_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. (5): cross-entropy of the prediction after every step, averaged over the T steps."""
    b, t, k = logits.shape
    return F.cross_entropy(logits.reshape(b * t, k).float(), labels.repeat_interleave(t))
