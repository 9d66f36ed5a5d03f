"""Sweeps over the whole stage chain: ``python -m adafocus_pl.sweep -m model.patch_size=24,32,48 plus=off,on``.

Each Hydra job is one sweep point (experiment, patch size, seed, AdaFocus or AdaFocus+) and runs its variant's steps
of the plan (:mod:`adafocus_pl.plan`) through :mod:`adafocus_pl.chain`; the job's own directory (the run directory
of ``sweep`` for its patch size and seed, one folder per variant: conf/sweep.yaml) keeps its Hydra config and log.
When the multirun ends, the report of every run under the experiment's directory is written
(``python -m adafocus_pl.report``). Any Hydra launcher works, e.g. ``hydra/launcher=submitit_slurm``. With
``hparams_search=...`` the multirun is an Optuna search and each job one of its trials (:mod:`adafocus_pl.search`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from adafocus_pl.plan import ADAFOCUS, ADAFOCUS_PLUS, final_model
from adafocus_pl.utils.config import config_dir, register_resolvers

register_resolvers()


SWEEP_KEYS = ("report", "baselines", "hparams_search", "search")


def experiment_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.log_dir) / cfg.experiment_name


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="sweep")
def main(cfg: DictConfig) -> float | None:
    from adafocus_pl.chain import run_chain

    # the sweep's own keys (conf/sweep.yaml) are not settings of the stages it runs
    overrides = [o for o in HydraConfig.get().overrides.task
                 if o.split("=")[0].lstrip("+~").split(".")[0] not in SWEEP_KEYS]
    plus = bool(cfg.plus.enabled)
    if cfg.get("search"):  # hparams_search=...: this job is one trial of an Optuna search
        from adafocus_pl.search import run_trial

        return run_trial(cfg, overrides, plus)
    # the AdaFocus point also runs the fixed-policy baselines of its patch size (the plan's baselines are
    # AdaFocus's steps; AdaFocus+ shares its Stage I)
    results = run_chain(overrides, plus=plus, baselines=bool(cfg.get("baselines", True)))
    final = final_model(ADAFOCUS_PLUS if plus else ADAFOCUS)
    final_dir = next(directory for step, directory, _ in results if step.name == final)
    metrics = json.loads((final_dir / "metrics.json").read_text()) if (final_dir / "metrics.json").is_file() else {}
    print(f"[sweep] {' '.join(overrides)}: " + ", ".join(f"{step.label} {state}" for step, _, state in results))
    return metrics.get(f"test/{str(cfg.monitor).split('/')[-1]}")


class ReportWhenDone(Callback):
    """Hydra callback: after a multirun, gather every run of the experiment into one table and plot."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("report", True):
            return
        from adafocus_pl.report import main as report_main

        report_main([str(experiment_dir(config))])


if __name__ == "__main__":
    main()
