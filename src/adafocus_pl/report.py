"""A local dashboard: ``python -m adafocus_pl.report DIR [--out OUT] [--metric top1|mAP]``.

Gathers every run under DIR (e.g. ``logs/synthetic``, what ``make sweep`` fills) into ``report.md`` /
``report.json`` / ``accuracy_vs_gflops.png``, AdaFocus and AdaFocus+ side by side per patch size.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m adafocus_pl.report", description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="a sweep or experiment directory, e.g. logs/synthetic")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: DIR/report)")
    parser.add_argument("--metric", choices=("top1", "mAP"), default=None,
                        help="accuracy measure (default: mAP when the runs monitor val/mAP, else top1)")
    args = parser.parse_args(argv)
    from adafocus_pl.evaluation.report import write_report

    try:
        return write_report(args.dir, args.out, args.metric)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
