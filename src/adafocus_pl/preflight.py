"""Checks a stage run makes before it trains, so that bad input fails in seconds with every problem listed, not at
epoch 37 with a stack trace. Each message names the config key, file or list line and says how to fix it.

1. :func:`config_problems`: settings that would build a broken network or sampler (P, grid, T, batch size);
2. :meth:`VideoDataModule.validate`: list files, classes file, empty splits and every listed video's files (for
   the synthetic benchmark: :func:`generated_data_problems`, the generator must own its directory);
3. :func:`checkpoint_problems`: the checkpoint a run resumes from (``ckpt_path``) must be readable and of this
   stage, patch size, class count, ... (``init_from`` is checked the same way when its weights are loaded).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from adafocus_pl.checkpoint import resume_problems


class PreflightError(ValueError):
    """Problems found before training; nothing was trained or written."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  {i}. {p}" for i, p in enumerate(self.problems, start=1))
        super().__init__(f"{len(self.problems)} problem(s) found before training (nothing was run):\n{lines}")


def config_problems(cfg: DictConfig) -> list[str]:
    """Settings that cannot work, named by their config key (checked before anything is built)."""
    problems = []
    frames = OmegaConf.select(cfg, "data.num_segments")
    if frames is None or int(frames) < 1:
        problems.append(f"data.num_segments={frames}: T, the frames per video, must be >= 1 (the paper uses 16 on "
                        f"ActivityNet/FCVID/Mini-Kinetics, 8 or 12 on Something-Something)")
    focus = OmegaConf.select(cfg, "data.num_focus_segments")
    if focus is not None and int(focus) < 1:
        problems.append(f"data.num_focus_segments={focus}: must be >= 1, or null to focus on the glance frames")
    batch = OmegaConf.select(cfg, "data.batch_size")
    if batch is None or int(batch) < 1:
        problems.append(f"data.batch_size={batch}: must be >= 1 (videos per device)")
    classes = OmegaConf.select(cfg, "data.num_classes")
    if classes is None or int(classes) < 1:
        problems.append(f"data.num_classes={classes}: must be >= 1")
    model = cfg.get("model") or {}
    frame = model.get("frame_size", OmegaConf.select(cfg, "data.eval_crop"))
    patch = model.get("patch_size")
    full_frame = model.get("location_policy") == "full"  # the TSM baselines: f_L sees the whole frame
    if patch is not None and frame is not None and not full_frame and not 0 < int(patch) < int(frame):
        problems.append(f"model.patch_size={patch} must be positive and smaller than the frame (data.eval_crop="
                        f"{frame}): the paper's P is 96-176 for 224 frames; pick e.g. model.patch_size="
                        f"{max(1, int(frame) * 4 // 7)}")
    grid = model.get("grid_size")
    if grid is not None and not full_frame and int(grid) < 1:
        problems.append(f"model.grid_size={grid} leaves no patch candidates (the grid has grid_size^2 of them): "
                        f"use model.grid_size=7 (paper)")
    return problems


def generated_data_problems(root) -> list[str]:
    """The synthetic benchmark's generator may write into ``root`` (it refuses a directory it does not own)."""
    from adafocus_pl.data.synthetic import ownership_problem  # lazy: only generated data needs it

    problem = ownership_problem(root)
    return [f"data.root: {problem}"] if problem else []


def checkpoint_problems(ckpt_path: str | None, module) -> list[str]:
    """The checkpoint a run resumes from (``ckpt_path`` resolved to a file, or None) must fit this stage module."""
    if not ckpt_path:
        return []
    return resume_problems(ckpt_path, module.stage_id, module.hparams.net)


def raise_if(problems: list[str]) -> None:
    if problems:
        raise PreflightError(problems)
