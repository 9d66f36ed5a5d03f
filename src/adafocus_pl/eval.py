"""Evaluate a stage checkpoint: ``python -m adafocus_pl.eval ckpt_path=PATH [the training run's overrides...]``.

Writes ``results.json``, ``results.md`` and the figures (accuracy vs GFLOPs, online curve, patches) to
``eval.out_dir`` (default: ``<checkpoint's run dir>/eval``) and logs them to W&B. The work is done in
:mod:`adafocus_pl.evaluation.evaluate`; the keys are in ``conf/eval.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adafocus_pl.utils.config import compose
from adafocus_pl.utils.device import resolve_device

USAGE = __doc__


def default_out_dir(ckpt_path: Path) -> Path:
    """``<run dir>/eval`` for ``<run dir>/checkpoints/x.ckpt``, else ``eval`` beside the checkpoint."""
    from adafocus_pl.inference.predict import run_dir_of

    return run_dir_of(ckpt_path) / "eval"


def log_to_wandb(cfg: DictConfig, result: dict[str, Any], paths: dict[str, Path], out_dir: Path) -> None:
    """The results table, the online and eta curves and the figures as one W&B run (job type ``eval``; the names:
    :mod:`adafocus_pl.evaluation.wandb_metrics`)."""
    if not cfg.eval.wandb or OmegaConf.select(cfg, "logger.wandb") is None:
        return
    import wandb

    from adafocus_pl.evaluation import wandb_metrics as keys
    from adafocus_pl.utils.wandb_run import finish_wandb

    settings = cfg.logger.wandb
    rows = result["rows"]
    try:
        run = wandb.init(project=settings.project, group=settings.group, job_type=keys.JOB_TYPE,
                         name=f"eval-{Path(cfg.ckpt_path).stem}-{settings.name}", dir=str(out_dir),
                         mode="offline" if settings.offline else "online", tags=list(settings.tags),
                         config={"ckpt_path": str(cfg.ckpt_path), **OmegaConf.to_container(cfg.eval, resolve=True),
                                 "plus": OmegaConf.to_container(cfg.plus, resolve=True),
                                 "model": {"patch_size": int(cfg.model.patch_size)}},
                         reinit="finish_previous")
        run.log({
            keys.RESULTS_TABLE: wandb.Table(columns=list(keys.RESULTS_COLUMNS),
                                            data=[[r.get(c) for c in keys.RESULTS_COLUMNS] for r in rows]),
            keys.ONLINE_TABLE: wandb.Table(columns=["method", "frames", "gflops", "top1", "mAP"],
                                           data=[[r["method"], p["frames"], p["gflops"], p["top1"], p["mAP"]]
                                                 for r in rows for p in r.get("online", ())]),
            **{keys.FIGURE.format(name=name): wandb.Image(str(path)) for name, path in paths.items()
               if path.suffix == ".png"},
        })
        for step in keys.online_history(rows) + keys.eta_history(rows):
            run.log(step)
        run.summary.update(keys.row_summary(rows))
    finally:
        finish_wandb()


def run(cfg: DictConfig) -> dict[str, Any]:
    from adafocus_pl.checkpoint import load_checkpoint
    from adafocus_pl.evaluation.evaluate import evaluate_checkpoint, results_markdown, write_results
    from adafocus_pl.evaluation.metrics import headline_metric
    from adafocus_pl.inference.early_exit import check_budgets
    from adafocus_pl.preflight import generated_data_problems, raise_if

    try:
        exit_budgets = check_budgets(cfg.eval.exit_budgets or [])
    except (TypeError, ValueError) as err:
        raise_if([f"eval.exit_budgets={cfg.eval.exit_budgets}: {err} (e.g. eval.exit_budgets=[0.4,0.6]; [] for "
                  f"no early-exit rows)"])
    ckpt = load_checkpoint(cfg.ckpt_path)
    if ckpt.net.num_classes != cfg.data.num_classes:
        raise_if([f"{cfg.ckpt_path} has {ckpt.net.num_classes} classes but data={cfg.data.name} has "
                  f"{cfg.data.num_classes}: pass the data overrides the checkpoint was trained with"])
    datamodule = instantiate(cfg.data, _recursive_=False, _convert_="all")
    # the same checks as before training: a user's folder is never written; every problem of the data at once
    if datamodule.synthetic is None:
        raise_if(datamodule.validate(tuple(dict.fromkeys((cfg.eval.split, cfg.eval.threshold_split)))))
    else:
        raise_if(generated_data_problems(datamodule.root))
    datamodule.prepare_data()
    out_dir = Path(cfg.eval.out_dir) if cfg.eval.out_dir else default_out_dir(Path(cfg.ckpt_path))
    metric = headline_metric(cfg.monitor)
    result = evaluate_checkpoint(ckpt, datamodule, split=cfg.eval.split, threshold_split=cfg.eval.threshold_split,
                                 fixed_policies=None if cfg.eval.fixed_policies is None else list(cfg.eval.fixed_policies), etas=list(cfg.eval.etas),
                                 device=resolve_device(cfg.eval.device, "eval.device"), seed=cfg.seed,
                                 exit_budgets=exit_budgets)
    result.update({"checkpoint": str(cfg.ckpt_path), "stage": ckpt.stage, "split": cfg.eval.split,
                   "experiment": cfg.experiment_name, "frames_per_video": cfg.data.num_segments})
    title = f"{cfg.experiment_name} P={ckpt.net.patch_size} stage {ckpt.stage}, {cfg.eval.split} split"
    paths = write_results(result, out_dir, title, metric, mean=list(cfg.data.mean), std=list(cfg.data.std),
                          patch_figure_videos=cfg.eval.patch_figure_videos)
    log_to_wandb(cfg, result, paths, out_dir)
    print(results_markdown(result["rows"], title))
    print(f"[eval] results and figures in {out_dir}")
    result["paths"] = {k: str(v) for k, v in paths.items()}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        print("Keys (conf/eval.yaml):\n" + OmegaConf.to_yaml(compose("eval", ["ckpt_path=PATH"]).eval))
        return {}
    cfg = compose("eval", args)
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise SystemExit("python -m adafocus_pl.eval needs ckpt_path=/path/to/stage.ckpt (see --help)")
    from adafocus_pl.checkpoint import CheckpointError, MissingCheckpointError
    from adafocus_pl.preflight import PreflightError

    try:
        return run(cfg)
    except (CheckpointError, MissingCheckpointError) as err:
        # a missing, unreadable, unsafe or foreign ckpt_path: the message names the file and the fix, and a
        # traceback through torch.load would only bury it
        raise SystemExit(f"error: {err}") from None
    except PreflightError as err:  # the data's problems, all listed; nothing was evaluated
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
