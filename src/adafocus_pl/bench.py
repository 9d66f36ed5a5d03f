"""Speed benchmark: ``python -m adafocus_pl.bench [options] [train overrides...]`` (``make bench``).

Latency (one video) and throughput (a batch of videos) of AdaFocus at each ``--patch-sizes``, AdaFocus+ at
``--eta`` and the full-frame baselines with the same backbones, on the fast inference path, with their
speed-ups over the full-frame f_G + f_L baseline next to the FLOPs ratios. The network comes from the train config,
by default the paper's full-size one (``data=activitynet model=adafocus``: 16 frames of 224x224, MobileNetV2 +
ResNet-50, 200 classes); overrides after the options change it, e.g. ``data=synthetic model=adafocus_tiny
--patch-sizes 24,48`` for a seconds-long run. Random weights; nothing is read or downloaded.
``--exit-budget 0.6`` adds sample-wise early exit at P = model.patch_size, with the exits of that GFLOPs budget
imposed (random weights give meaningless confidences), timed against the whole-clip path.

``--checkpoint PATH --exit-budget B`` times a trained checkpoint instead: the whole-clip fast path against the
early-exit one with the thresholds ``python -m adafocus_pl.eval`` solved for budget B, over the test split in
batches of ``--batch`` videos (overrides after the options change the data, on top of the run's own).
The measuring lives in :mod:`adafocus_pl.inference.benchmark`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from adafocus_pl.utils.config import PAPER_NETWORK, compose

DEFAULT_OVERRIDES = list(PAPER_NETWORK)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 96,128,160, got {text!r}") from err


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adafocus_pl.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=None, help="frames per video T (default: data.num_segments)")
    p.add_argument("--batch", type=int, default=4, help="videos per batch for the throughput figure (default 4)")
    p.add_argument("--patch-sizes", type=_ints, default=[96, 128, 160], help="AdaFocus patch sizes (96,128,160)")
    p.add_argument("--eta", type=float, default=0.5,
                   help="AdaFocus+ kept fraction eta at P = model.patch_size (default 0.5; 0 leaves AdaFocus+ out)")
    p.add_argument("--repeats", type=int, default=5, help="measured repeats per contender (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up repeats, not measured")
    p.add_argument("--backend", default="eager", choices=("eager", "compile", "script"),
                   help="how the backbones run (adafocus_pl.inference.fast); the same for every contender")
    p.add_argument("--glance-chunk", type=int, default=0,
                   help="frames per f_G call, for every contender (default 0: all of a batch's frames in one call)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", help="keep BatchNorm separate")
    p.add_argument("--no-fuse-activations", dest="fuse_activations", action="store_false",
                   help="keep ReLU/ReLU6 apart from the convolutions (adafocus_pl.inference.fusion; eager backend)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                   help="leave glibc malloc as it is (adafocus_pl.utils.allocator: large blocks page-fault again "
                        "on every call)")
    p.add_argument("--exit-budget", type=float, default=0.0,
                   help="early exit at this fraction of AdaFocus's GFLOPs per video (e.g. 0.6; default 0: none)")
    p.add_argument("--checkpoint", default=None,
                   help="time this trained checkpoint on its data with eval's early-exit thresholds for "
                        "--exit-budget (instead of the random-weight contenders)")
    p.add_argument("--split", default="test", help="the split --checkpoint is timed on (default test)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--json", default="logs/bench/bench.json", help="where to write the results ('' for nowhere)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="train config overrides (default: data=activitynet model=adafocus)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from adafocus_pl.inference.benchmark import BenchSettings, run_benchmark

    args = parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    for name in ("frames", "batch", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name} must be at least 1, got {value}")
    if args.glance_chunk < 0:
        raise SystemExit(f"--glance-chunk must be 0 (one call) or more, got {args.glance_chunk}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be 0 or more, got {args.warmup}")
    if not 0.0 <= args.exit_budget <= 1.0:
        raise SystemExit(f"--exit-budget is a fraction of AdaFocus's GFLOPs in (0, 1] (0: no early exit), got "
                         f"{args.exit_budget}")
    if args.checkpoint and not args.exit_budget:
        raise SystemExit("--checkpoint times early exit: give --exit-budget too, one of the budgets eval solved "
                         "(eval.exit_budgets)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from adafocus_pl.utils.allocator import keep_freed_memory

        keep_freed_memory()
    if args.checkpoint:
        from adafocus_pl.inference.benchmark import run_checkpoint_exit_benchmark

        return run_checkpoint_exit_benchmark(args.checkpoint, args.exit_budget, args.batch, args.repeats,
                                             args.warmup, args.overrides, split=args.split, backend=args.backend,
                                             json_path=args.json or None)
    cfg = compose("train", DEFAULT_OVERRIDES + list(args.overrides))
    settings = BenchSettings(
        frames=args.frames or int(cfg.data.num_segments), batch_size=args.batch, frame_size=int(cfg.data.eval_crop),
        patch_sizes=list(args.patch_sizes), eta=args.eta or None, repeats=args.repeats,
        warmup=args.warmup, backend=args.backend, channels_last=args.channels_last, fold_bn=args.fold_bn,
        device=args.device, seed=args.seed, fuse_activations=args.fuse_activations,
        glance_chunk=args.glance_chunk or None,
        keep_freed_memory=args.keep_freed_memory, exit_budget=args.exit_budget or None)
    return run_benchmark(cfg.model, settings, json_path=args.json or None)


if __name__ == "__main__":
    main()
