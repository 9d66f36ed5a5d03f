"""What an evaluation run logs to W&B, named once: the eval run's writer (:mod:`adafocus_pl.eval`) and the dashboard
(:mod:`adafocus_pl.evaluation.dashboard`) both read these names.

Besides the tables and figures, the curves are logged as history, one step a point, so that a W&B line plot draws
them live: the online curve (paper Fig. 6: accuracy after the first t frames) per method, and AdaFocus+'s accuracy
and cost per kept fraction eta (Fig. 5).
"""

from __future__ import annotations

from typing import Any

JOB_TYPE = "eval"                           # the evaluation run's W&B job type
RESULTS_TABLE = "eval/table/results"
ONLINE_TABLE = "eval/table/online"
ONLINE_FRAMES = "eval/online/frames"        # x of the online curves
ONLINE_TOP1 = "eval/online/top1/{method}"   # one curve per method
ETA = "eval/eta"                            # x of AdaFocus+'s eta curve
ETA_METRICS = {"top1": "eval/eta/top1", "gflops_per_video": "eval/eta/gflops_per_video",
               "keep_fraction": "eval/eta/keep_fraction"}
FIGURE = "eval/{name}"                      # accuracy_vs_gflops, online, patches (Fig. 7), patches_plus
ROW_SUMMARY = "eval/{method}/{metric}"      # top1 and gflops_per_video of every results row
RESULTS_COLUMNS = ("method", "top1", "mAP", "gflops_per_video", "keep_fraction", "hit_rate", "coverage", "budget",
                   "mean_frames_read")


def online_history(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """One history step per number of frames seen, with each method's online top-1 at that point."""
    steps: dict[int, dict[str, float]] = {}
    for row in rows:
        for point in row.get("online", ()):  # early-exit rows have no online curve
            step = steps.setdefault(int(point["frames"]), {ONLINE_FRAMES: int(point["frames"])})
            step[ONLINE_TOP1.format(method=row["method"])] = point["top1"]
    return [steps[t] for t in sorted(steps)]


def eta_history(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """One history step per AdaFocus+ eta row (no early exit), in increasing eta."""
    eta_rows = sorted((r for r in rows if r.get("eta") is not None and r.get("budget") is None),
                      key=lambda r: r["eta"])
    return [{ETA: row["eta"], **{key: row[field] for field, key in ETA_METRICS.items()}} for row in eta_rows]


def row_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {ROW_SUMMARY.format(method=r["method"], metric=metric): r[metric]
            for r in rows for metric in ("top1", "gflops_per_video")}
