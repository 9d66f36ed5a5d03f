"""Run one stage from a composed config: the body behind ``python -m adafocus_pl.train``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adafocus_pl.preflight import checkpoint_problems, config_problems, generated_data_problems, raise_if
from adafocus_pl.stages.guards import ReportSkippedVideos, StopOnNonFiniteLoss
from adafocus_pl.stages.progress import ProgressFile
from adafocus_pl.utils.allocator import keep_freed_memory
from adafocus_pl.utils.instantiate import instantiate_group
from adafocus_pl.utils.wandb_run import (
    WandbRunIdInCheckpoint,
    check_wandb_mode,
    finish_wandb,
    resume_wandb_run,
)

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``auto`` → this run's ``checkpoints/last.ckpt`` when it exists; a path must exist."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist: give an existing checkpoint, `auto` or null.")
    return str(ckpt_path)


def run_stage(cfg: DictConfig) -> dict[str, float]:
    """Seed, build data/module/loggers/trainer, apply ``init_from`` (before any DDP wrap), fit, test.

    ``ckpt_path`` resumes training (weights, optimiser, epoch and the W&B run); with ``train=false`` it names the
    checkpoint to validate and test instead.

    Returns the final metrics, also written to ``<run dir>/metrics.json``.
    """
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()  # activations reuse freed memory instead of page-faulting fresh blocks at every step
    try:
        pl.seed_everything(cfg.seed, workers=True)
        raise_if(config_problems(cfg))  # before anything is built: a bad P or T fails here, by key
        # plain containers, not OmegaConf objects: checkpoints stay loadable with torch.load(weights_only=True)
        datamodule = instantiate(cfg.data, _recursive_=False, _convert_="all")
        if datamodule.synthetic is None:
            raise_if(datamodule.validate())
        else:  # generated data is checked by its generator (and may not exist yet), which must own its directory
            raise_if(generated_data_problems(datamodule.root))
        module = instantiate(cfg.stage.module, _recursive_=False, _convert_="all")

        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
        raise_if(checkpoint_problems(ckpt_path, module))
        training = cfg.get("train", True)
        if ckpt_path and training:
            log.info("resuming stage %s from %s", cfg.stage.id, ckpt_path)
            cfg = resume_wandb_run(cfg, ckpt_path)  # the resumed stage continues its W&B run
        elif ckpt_path:
            log.info("evaluating %s (train=false)", ckpt_path)
        elif cfg.get("init_from"):
            log.info("stage %s starts from the weights of %s", cfg.stage.id, cfg.init_from)
            module.load_init_weights(cfg.init_from)

        callbacks = instantiate_group(cfg.get("callbacks"), "callbacks") + [
            StopOnNonFiniteLoss(), ReportSkippedVideos(output_dir), ProgressFile(output_dir / "progress.json")]
        check_wandb_mode(cfg)
        loggers = instantiate_group(cfg.get("logger"), "logger")
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            callbacks.append(WandbRunIdInCheckpoint())
        trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        try:
            return _fit_and_test(cfg, trainer, module, datamodule, ckpt_path, training, output_dir)
        except (RuntimeError, ConnectionError, EOFError) as err:  # a DataLoader worker may have died
            explained = datamodule.explain_worker_failure(err)
            if explained is None:
                raise
            raise explained from err
    finally:
        finish_wandb()


def _fit_and_test(cfg, trainer, module, datamodule, ckpt_path, training, output_dir) -> dict[str, float]:
    """fit (or validate ``ckpt_path`` with ``train=false``), then test; write ``metrics.json``."""
    metrics: dict[str, float] = {}
    # weights_only=True: Lightning's own read of ckpt_path (the whole state, after the resume checks read it with
    # adafocus_pl.checkpoint) is weights-only as well, also where TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set
    if training:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        ckpt_path = None  # test the weights fit() ended with
    elif ckpt_path:  # train=false ckpt_path=...: validate and test that checkpoint
        for result in trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False,
                                       weights_only=True):
            metrics.update({k: float(v) for k, v in result.items()})
    if cfg.get("test", True):
        for result in trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False,
                                   weights_only=True):
            metrics.update({k: float(v) for k, v in result.items()})
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
