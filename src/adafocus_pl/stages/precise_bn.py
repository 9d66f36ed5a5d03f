"""Precise BatchNorm statistics: before each validation, the BatchNorm layers of the parts a stage trains get
their running mean and variance recomputed, with the weights as they are, as the plain average over
``num_batches`` training batches (the "precise BN" of SlowFast and pycls; Wu & Johnson 2021, "Rethinking
'Batch' in BatchNorm").

Why: a running average (momentum 0.1) follows the last ~10 batches, and on data where a batch's statistics swing
with what its patches happen to contain it ends up far from the population's; the validation, the checkpoint and
every later stage (which run these layers in eval mode) then see a different network than training did. Measured
on the synthetic benchmark in docs/performance.md. The weights are not touched; only the BatchNorm buffers.

A stage provides ``statistics_forward(batch)``: its training forward without the loss. Under DDP every rank
averages its own batches, then the ranks' statistics are averaged.
"""

from __future__ import annotations

import itertools

import pytorch_lightning as pl
import torch
from torch import nn


def trained_batchnorms(module: pl.LightningModule) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of the network parts this stage trains."""
    return [m for part in module.trainable for m in module.net.parts()[part].modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class PreciseBatchNorm(pl.Callback):
    def __init__(self, num_batches: int = 20) -> None:
        if num_batches < 0:
            raise ValueError(f"callbacks.precise_bn.num_batches={num_batches}: use a count >= 1, or 0 to turn it off")
        self.num_batches = int(num_batches)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.num_batches or not hasattr(pl_module, "statistics_forward"):
            return
        layers = trained_batchnorms(pl_module)
        if not layers:
            return
        recompute_statistics(pl_module, layers, trainer.datamodule.train_dataloader(), self.num_batches)
        if trainer.world_size > 1:
            for layer in layers:
                layer.running_mean.copy_(trainer.strategy.reduce(layer.running_mean, reduce_op="mean"))
                layer.running_var.copy_(trainer.strategy.reduce(layer.running_var, reduce_op="mean"))


@torch.no_grad()
def recompute_statistics(pl_module: pl.LightningModule, layers: list, loader, num_batches: int) -> None:
    """Average the batch statistics of ``layers`` over ``num_batches`` batches of ``loader`` (the module's modes
    and the layers' momenta are restored)."""
    modes = {m: m.training for m in pl_module.modules()}
    momenta = [layer.momentum for layer in layers]
    pl_module.train()  # the stage's own train(): its frozen parts stay in eval mode
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
    try:
        for batch in itertools.islice(loader, num_batches):
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            pl_module.statistics_forward(pl_module.trainer.datamodule.on_after_batch_transfer(batch, 0))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
