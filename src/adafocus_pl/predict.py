"""Predict the action in video files: ``python -m adafocus_pl.predict VIDEO_PATH [VIDEO_PATH...] ckpt_path=PATH
[overrides...]``.

Prints the top-k classes of each video and writes ``<stem>.png`` (the sampled frames with the chosen patch drawn
on each, AdaFocus+'s skipped frames marked) and ``<stem>.json`` to ``predict.out_dir`` (default: ``<checkpoint's
run dir>/predict``). The training run's overrides are read from the run directory, so a checkpoint that stayed in
its run directory needs nothing else; otherwise give the data overrides it was trained with. Keys:
``conf/predict.yaml``; the work is done in :mod:`adafocus_pl.inference.predict`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from adafocus_pl.utils.config import compose

USAGE = "usage: python -m adafocus_pl.predict VIDEO_PATH [VIDEO_PATH...] ckpt_path=PATH [overrides...]\n\n" + __doc__


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        print("Keys (conf/predict.yaml):\n" + OmegaConf.to_yaml(compose("predict", ["ckpt_path=PATH"]).predict))
        return []
    videos = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    ckpt_arg = next((o.split("=", 1)[1] for o in overrides if o.startswith("ckpt_path=")), None)
    if not videos or not ckpt_arg:
        raise SystemExit(USAGE.splitlines()[0] + " (see --help)")

    from adafocus_pl.evaluation.evaluate import load_checkpoint
    from adafocus_pl.inference.predict import Predictor, format_prediction, run_dir_of, saved_overrides
    from adafocus_pl.utils.device import resolve_device

    ckpt_path = Path(ckpt_arg)
    ckpt = load_checkpoint(ckpt_path)
    cfg = compose("predict", saved_overrides(ckpt_path) + overrides)
    if ckpt.net.num_classes != cfg.data.num_classes:
        raise SystemExit(f"{ckpt_path} has {ckpt.net.num_classes} classes but data={cfg.data.name} has "
                         f"{cfg.data.num_classes}: pass the data overrides the checkpoint was trained with")
    options = cfg.predict
    predictor = Predictor(ckpt, cfg.data, top_k=options.top_k, backend=options.backend,
                          device=resolve_device(options.device, "predict.device"),
                          keep_threshold=options.keep_threshold,
                          seed=options.seed)
    out_dir = Path(options.out_dir) if options.out_dir else run_dir_of(ckpt_path) / "predict"
    results = []
    for video in videos:
        prediction = predictor(video, out_dir)
        print(format_prediction(prediction))
        results.append(prediction.as_dict())
    return results


if __name__ == "__main__":
    main()
