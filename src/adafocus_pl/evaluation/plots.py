"""Figures of the paper (Wang et al., ICCV 2021), drawn with matplotlib and saved as PNG files.

Pure functions: no Lightning, Hydra or W&B. Figures are built with ``matplotlib.figure.Figure`` rendered by
the Agg canvas and never go through ``pyplot``, so nothing opens a window and the global backend (e.g. a
notebook's inline one) is left alone. Every ``plot_*`` function writes ``path`` (creating its parent folders),
releases the figure and returns ``path`` as a :class:`~pathlib.Path`.

* :func:`plot_patches` – the selected patches on the sampled frames (paper Fig. 7);
* :func:`plot_accuracy_vs_gflops` – accuracy v.s. GFLOPs per video, offline recognition (paper Fig. 5);
* :func:`plot_online_curve` – accuracy after ``t`` frames v.s. the cost of ``t`` frames (paper Fig. 6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# Colour of the patch boxes: pure green like the paper's Fig. 7 ("the green boxes indicate the locations of
# the image patches selected by AdaFocus"). Drawn without anti-aliasing, so these exact RGB values appear in
# the PNG wherever a box is drawn (and nowhere else unless the frames themselves contain them).
BOX_COLOR: tuple[int, int, int] = (0, 255, 0)
BOX_LINEWIDTH = 2.0
# How much a frame skipped by AdaFocus+ (``keep`` False) is dimmed: shown as ``DIM_SKIPPED * frame``.
DIM_SKIPPED = 0.35
SKIPPED_TEXT = "skipped"

# Styles of the paper's families (Fig. 5: AdaFocus as black dots, AdaFocus+ as black stars); any other
# family gets the next colour / marker of the cycles below, in order of first appearance.
_KNOWN_STYLES: dict[str, dict[str, Any]] = {
    "AdaFocus": {"color": "black", "marker": "o", "markersize": 7},
    "AdaFocus+": {"color": "black", "marker": "*", "markersize": 13},
}
_COLOR_CYCLE = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                "tab:cyan", "tab:gray", "tab:green")
_MARKER_CYCLE = ("s", "^", "D", "v", "P", "X", "<", ">", "h", "p")


# --------------------------------------------------------------------------------------------- helpers
def _to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like → numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_stats(name: str, value: Sequence[float] | None) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,):
        raise ValueError(f"{name} must hold 3 values (one per RGB channel), got {list(arr)}")
    return arr


def to_display(frame: Any, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> np.ndarray:
    """One frame ``[3, H, W]`` (torch or numpy) → float ``[H, W, 3]`` in ``[0, 1]`` for ``imshow``.

    * uint8 frames are raw pixels: divided by 255 (``mean``/``std`` do not apply to them);
    * float frames are taken to be in ``[0, 1]``, or, when ``mean`` and ``std`` are given, normalised as
      ``(x / 255 - mean) / std`` (the data pipeline's ``normalize``): they are un-normalised as
      ``x * std + mean``.

    The result is clipped to ``[0, 1]``.
    """
    arr = _to_numpy(frame)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"a frame must have shape [3, H, W], got {list(arr.shape)}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (to un-normalise frames) or neither")
    mean_a, std_a = _check_stats("mean", mean), _check_stats("std", std)
    if arr.dtype == np.uint8:
        img = arr.astype(np.float64) / 255.0
    else:
        img = arr.astype(np.float64)
        if mean_a is not None:
            img = img * std_a[:, None, None] + mean_a[:, None, None]
    return np.clip(np.nan_to_num(img.transpose(1, 2, 0)), 0.0, 1.0)


def _prepare_path(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` with Agg to a PNG at ``path`` and release it (it was never registered with pyplot)."""
    path = _prepare_path(path)
    FigureCanvasAgg(fig)  # attach an Agg canvas explicitly, whatever the global backend is
    fig.savefig(path, format="png")
    fig.clear()
    return path


def _legend_labels(fig: Figure) -> list[str]:
    """Texts of the legend of ``fig``'s first axes ([] when there is none); used by the tests."""
    legend = fig.axes[0].get_legend() if fig.axes else None
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def _finish_axes(ax, xlabel: str, ylabel: str, title: str | None) -> None:
    """Axis labels, optional title, dotted grid and legend shared by the curve plots (Figs. 5 and 6)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, linestyle=":", alpha=0.7)
    ax.legend(loc="best", fontsize=9)


EARLY_EXIT_SUFFIX = " early exit"  # a family of early-exit rows: "<the family it stops early> early exit"


def _family_styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A distinct colour/marker per name (paper styles for AdaFocus / AdaFocus+), in the given order. An early-exit
    family ("AdaFocus early exit") is drawn dashed with hollow markers, in its source family's style when that has
    a known one."""
    styles: dict[str, dict[str, Any]] = {}
    k = 0
    for name in names:
        source = name.removesuffix(EARLY_EXIT_SUFFIX)
        if source in _KNOWN_STYLES:
            styles[name] = dict(_KNOWN_STYLES[source])
        else:
            styles[name] = {"color": _COLOR_CYCLE[k % len(_COLOR_CYCLE)],
                            "marker": _MARKER_CYCLE[k % len(_MARKER_CYCLE)], "markersize": 7}
            k += 1
        if name.endswith(EARLY_EXIT_SUFFIX):
            styles[name].update(linestyle="--", markerfacecolor="none")
    return styles


# --------------------------------------------------------------------------------------------- Fig. 7
def _patches_figure(frames: Any, offsets: Any, patch_size: int, keep: Any = None,
                    titles: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> Figure:
    frames_a = _to_numpy(frames)
    offsets_a = _to_numpy(offsets)
    if frames_a.ndim != 5 or frames_a.shape[2] != 3:
        raise ValueError(f"frames must have shape [N, T, 3, H, W], got {list(frames_a.shape)}")
    n, t, _, h, w = frames_a.shape
    if n == 0 or t == 0:
        raise ValueError(f"frames must hold at least one video and one frame, got {list(frames_a.shape)}")
    if offsets_a.shape != (n, t, 2):
        raise ValueError(f"offsets must have shape [N, T, 2] = {[n, t, 2]} to match frames of shape "
                         f"{list(frames_a.shape)}, got offsets of shape {list(offsets_a.shape)}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    keep_a = None
    if keep is not None:
        keep_a = _to_numpy(keep).astype(bool)
        if keep_a.shape != (n, t):
            raise ValueError(f"keep must have shape [N, T] = {[n, t]} to match frames of shape "
                             f"{list(frames_a.shape)}, got keep of shape {list(keep_a.shape)}")
    if titles is not None:
        titles = list(titles)
        if len(titles) != n:
            raise ValueError(f"titles must hold one string per video ({n}), got {len(titles)}")

    # Panel size: ~1.6 in for few frames, shrinking so that T = 16 stays ~24 in wide; keep the aspect ratio.
    panel_w = min(1.6, 24.0 / t)
    panel_h = panel_w * h / w
    fig = Figure(figsize=(panel_w * t + (0.6 if titles else 0.2), panel_h * n + 0.4), dpi=100,
                 layout="constrained")
    axes = np.asarray(fig.subplots(n, t, squeeze=False))
    box_rgb = tuple(c / 255.0 for c in BOX_COLOR)
    for i in range(n):
        for j in range(t):
            ax = axes[i, j]
            img = to_display(frames_a[i, j], mean, std)
            kept = True if keep_a is None else bool(keep_a[i, j])
            if not kept:  # AdaFocus+ skipped this frame: dimmed, labelled, no patch
                img = img * DIM_SKIPPED
            ax.imshow(img, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if kept:
                y0, x0 = (float(v) for v in offsets_a[i, j])
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), patch_size, patch_size, fill=False,
                                       edgecolor=box_rgb, linewidth=BOX_LINEWIDTH, antialiased=False))
            else:
                ax.text(0.5, 0.5, SKIPPED_TEXT, transform=ax.transAxes, ha="center", va="center",
                        fontsize=8, color="white",
                        bbox={"boxstyle": "round", "facecolor": "0.25", "edgecolor": "0.6",
                              "linestyle": "--"})
                for spine in ax.spines.values():
                    spine.set_edgecolor("0.6")
                    spine.set_linestyle("--")
            if i == 0:
                ax.set_title(f"t={j + 1}", fontsize=9)
            if j == 0 and titles is not None:
                ax.set_ylabel(str(titles[i]), fontsize=8)
    return fig


def plot_patches(frames: Any, offsets: Any, patch_size: int, path: str | Path, keep: Any = None,
                 titles: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> Path:
    """Paper Fig. 7: the patch chosen on each sampled frame.

    Rows are videos, columns the ``T`` sampled frames (headers ``t=1..T``). ``frames``: ``[N, T, 3, H, W]``
    (torch or numpy), uint8 0-255 or float (``[0, 1]``, or normalised when ``mean``/``std`` are given; see
    :func:`to_display`). ``offsets``: ``[N, T, 2]`` top-left ``(y, x)`` of each ``patch_size`` x
    ``patch_size`` patch, in pixels, drawn as a :data:`BOX_COLOR` box. ``keep``: optional ``[N, T]`` bool of
    AdaFocus+; a skipped frame (False) is dimmed, labelled "skipped", framed by a dashed grey border and gets
    no box. ``titles``: optional one string per row (e.g. ``"label: 3, predicted: 3"``).
    """
    fig = _patches_figure(frames, offsets, patch_size, keep=keep, titles=titles, mean=mean, std=std)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- Fig. 5
_POINT_KEYS = ("family", "gflops", "value")


def _accuracy_vs_gflops_figure(points: Sequence[Mapping[str, Any]], metric: str = "top-1 (%)",
                               title: str | None = None) -> Figure:
    points = list(points)
    if not points:
        raise ValueError("points is empty: nothing to plot (give dicts with keys family, gflops, value)")
    families: dict[str, list[tuple[float, float, str | None]]] = {}
    for k, p in enumerate(points):
        missing = [key for key in _POINT_KEYS if key not in p]
        if missing:
            raise ValueError(f"point {k} ({dict(p)!r}) lacks key(s) {missing}; each point needs {list(_POINT_KEYS)}")
        x, y = float(p["gflops"]), float(p["value"])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"point {k} has a non-finite gflops/value: {dict(p)!r}")
        label = p.get("label")
        families.setdefault(str(p["family"]), []).append((x, y, None if label is None else str(label)))

    styles = _family_styles(list(families))
    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name, pts in families.items():
        pts = sorted(pts, key=lambda q: q[0])
        xs, ys = [q[0] for q in pts], [q[1] for q in pts]
        style = dict(styles[name])
        line = style.pop("linestyle", "-")
        ax.plot(xs, ys, linestyle=line if len(pts) > 1 else "none", linewidth=1.5, label=name, **style)
        for x, y, label in pts:
            if label:
                ax.annotate(label, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8,
                            color=style["color"])
    _finish_axes(ax, "GFLOPs / video", metric, title)
    return fig


def plot_accuracy_vs_gflops(points: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "top-1 (%)",
                            title: str | None = None) -> Path:
    """Paper Fig. 5: offline accuracy v.s. computational cost.

    ``points``: dicts with ``family`` (e.g. "AdaFocus", "AdaFocus+", "random patches", "glance only"),
    ``gflops`` (x, per video), ``value`` (y, in the unit of ``metric``) and an optional ``label`` written
    next to the point (e.g. "P=128", "η=0.5"). Points of a family with more than one point are joined by a
    line in order of GFLOPs; each family has its own colour and marker (AdaFocus black dots and AdaFocus+
    black stars, as in the paper), listed in the legend.
    """
    return _save(_accuracy_vs_gflops_figure(points, metric=metric, title=title), path)


# --------------------------------------------------------------------------------------------- Fig. 6
def _online_curve_figure(curves: Mapping[str, Sequence[tuple[float, float]]], metric: str = "top-1 (%)",
                         title: str | None = None) -> Figure:
    if not curves:
        raise ValueError("curves is empty: nothing to plot (map a name to a list of (gflops, value) pairs)")
    parsed: dict[str, list[tuple[float, float]]] = {}
    for name, pairs in curves.items():
        pairs = list(pairs)
        if not pairs:
            raise ValueError(f"curve {name!r} has no (gflops, value) points")
        try:
            pairs = [tuple(float(v) for v in pair) for pair in pairs]
        except (TypeError, ValueError) as err:
            raise ValueError(f"curve {name!r}: every point must be a (gflops, value) pair of numbers") from err
        bad = [pair for pair in pairs if len(pair) != 2 or not all(math.isfinite(v) for v in pair)]
        if bad:
            raise ValueError(f"curve {name!r}: every point must be a finite (gflops, value) pair, got {bad[0]}")
        parsed[str(name)] = sorted(pairs)

    styles = _family_styles(list(parsed))
    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name, pairs in parsed.items():
        style = dict(styles[name])
        ax.plot([p[0] for p in pairs], [p[1] for p in pairs], linestyle=style.pop("linestyle", "-"), linewidth=1.5,
                label=name, **style)
    _finish_axes(ax, "GFLOPs (t frames)", metric, title)
    return fig


def plot_online_curve(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path,
                      metric: str = "top-1 (%)", title: str | None = None) -> Path:
    """Paper Fig. 6: online recognition, the metric after the first ``t`` of ``T`` frames v.s. the GFLOPs
    of processing those ``t`` frames. ``curves`` maps a method name to its ``(gflops, value)`` pairs; one
    line with markers per method (sorted by GFLOPs), with a legend."""
    return _save(_online_curve_figure(curves, metric=metric, title=title), path)
