"""Train one stage: ``python -m adafocus_pl.train stage=stage1 model.patch_size=128 ...``.

A thin Hydra entry point around :func:`adafocus_pl.stages.runner.run_stage`, which does the work.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from adafocus_pl.utils.config import config_dir, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from adafocus_pl.stages.runner import run_stage

    metrics = run_stage(cfg)
    return metrics.get(cfg.monitor) if metrics else None


if __name__ == "__main__":
    main()
