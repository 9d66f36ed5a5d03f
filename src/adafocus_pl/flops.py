"""GFLOPs of the network a training config describes: ``python -m adafocus_pl.flops [--etas 0.9,0.7,0.5]
[train overrides...]``, e.g. ``python -m adafocus_pl.flops data=activitynet model=adafocus model.patch_size=128``.

Prints a markdown table: GFLOPs per frame of f_G, pi, pi' (with ``plus=on``), f_L at PxP and f_C, and GFLOPs per
video (``data.num_segments`` frames of ``data.eval_crop``) for AdaFocus, AdaFocus+ at each kept fraction
(``--etas``, default ``plus.etas``; needs ``plus=on``) and the glance-only network. Random weights: nothing
is read or downloaded, no dataset is needed. The counting lives in :mod:`adafocus_pl.evaluation.flops`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from omegaconf import OmegaConf

from adafocus_pl.utils.config import compose


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--etas takes comma-separated fractions like 0.9,0.7,0.5, got {text!r}") \
            from err
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--etas fractions must lie in [0, 1], got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adafocus_pl.flops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etas", type=_fractions, default=None, metavar="ETA[,ETA...]",
                   help="AdaFocus+ kept fractions eta (default: plus.etas; needs plus=on)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the train config (conf/train.yaml)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from adafocus_pl.evaluation.flops import gflops_markdown, model_component_gflops, video_rows

    args = parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    cfg = compose("train", args.overrides)
    crop, frames = int(cfg.data.eval_crop), int(cfg.data.num_segments)
    parts = model_component_gflops(cfg.model, (crop, crop))
    has_plus = "skip_policy" in parts
    if args.etas is not None and not has_plus:
        raise SystemExit("--etas gives AdaFocus+ rows, which need the skip policy pi': add plus=on")
    keep = args.etas if args.etas is not None else (list(cfg.plus.etas) if has_plus else [])
    model = cfg.model
    glance = model.get("glance_size") or crop
    glance_h, glance_w = (glance, glance) if isinstance(glance, int) else tuple(glance)
    labels = {
        "glance": f"f_G ({model.glance_backbone} @ {glance_h}x{glance_w})",
        "policy": f"pi ({model.grid_size}x{model.grid_size} candidates)",
        "skip_policy": "pi' (AdaFocus+ skip policy)",
        "local": f"f_L ({model.local_backbone} @ {model.patch_size}x{model.patch_size})",
        "classifier": f"f_C ({model.get('classifier', 'linear')}, {cfg.data.num_classes} classes)",
    }
    if parts.get("per_clip"):  # AdaFocus-TSM: whole clips, TSM on both backbones
        focus = cfg.data.get("num_focus_segments") or frames
        labels.update(glance=f"f_G (TSM {model.glance_backbone} @ {glance_h}x{glance_w}, {frames} frames)",
                      policy=f"pi ({frames} steps, one location per video)",
                      local=f"f_L (TSM {model.local_backbone} @ {model.patch_size}x{model.patch_size}, {focus} frames)")
    title = f"GFLOPs: {cfg.data.name}, P={model.patch_size}, {crop}x{crop} frames, {frames} frames per video"
    print(gflops_markdown(parts, frames, keep, labels=labels, title=title), end="")
    return {"parts": parts, "num_frames": frames,
            "rows": [{"method": m, "keep_fraction": f, "gflops_per_video": g}
                     for m, f, g in video_rows(parts, frames, keep)],
            "model": OmegaConf.to_container(cfg.model, resolve=True)}


if __name__ == "__main__":
    main()
