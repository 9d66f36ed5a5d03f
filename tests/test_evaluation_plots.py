"""Paper figures (Fig. 5, 6, 7) as PNGs: files are written, boxes / skip markers / legends are where they belong,
normalised frames are shown un-normalised, and bad input fails with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adafocus_pl.evaluation.plots import (
    BOX_COLOR,
    _accuracy_vs_gflops_figure,
    _legend_labels,
    _online_curve_figure,
    plot_accuracy_vs_gflops,
    plot_online_curve,
    plot_patches,
    to_display,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # as in adafocus_pl.data.transforms (not imported: keeps the test fast)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOLID = (70, 110, 160)  # a frame colour far from BOX_COLOR


def _solid_frames(n: int = 2, t: int = 3, h: int = 64, w: int = 64) -> torch.Tensor:
    frames = torch.empty(n, t, 3, h, w, dtype=torch.uint8)
    for c, v in enumerate(SOLID):
        frames[:, :, c] = v
    return frames


def _offsets(n: int = 2, t: int = 3) -> torch.Tensor:
    return torch.tensor([[[8 * j, 4 * i + 10] for j in range(t)] for i in range(n)], dtype=torch.long)


def _read_rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _count_colour(img: np.ndarray, rgb, tol: int = 0) -> int:
    return int((np.abs(img.astype(int) - np.asarray(rgb)).max(axis=-1) <= tol).sum())


# ------------------------------------------------------------------------------------------------ Fig. 7
def test_plot_patches_draws_boxes_on_kept_frames_only(tmp_path):
    frames, offsets = _solid_frames(), _offsets()
    out = plot_patches(frames, offsets, 24, tmp_path / "sub" / "patches.png",
                       titles=["label: 3, predicted: 3", "label: 1, predicted: 0"])
    assert out == tmp_path / "sub" / "patches.png" and out.is_file()
    img = _read_rgb(out)
    assert img.shape[0] > 100 and img.shape[1] > 200
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 3  # not a blank canvas
    assert _count_colour(img, SOLID) > 6 * 40 * 40  # the six frames are shown
    assert _count_colour(img, BOX_COLOR) > 6 * 4 * 20  # six boxes with >= 4 sides of ~20+ px

    skipped = plot_patches(frames.numpy(), offsets.numpy(), 24, tmp_path / "skipped.png",
                           keep=np.zeros((2, 3), dtype=bool))
    img_skipped = _read_rgb(skipped)
    assert _count_colour(img_skipped, BOX_COLOR) == 0
    dimmed = tuple(round(v * 0.35) for v in SOLID)
    assert _count_colour(img_skipped, dimmed, tol=2) > 6 * 30 * 30  # skipped frames are dimmed
    assert _count_colour(img_skipped, SOLID) == 0

    keep = torch.tensor([[True, False, True], [False, False, False]])
    some = plot_patches(frames, offsets, 24, tmp_path / "some.png", keep=keep)
    n_some = _count_colour(_read_rgb(some), BOX_COLOR)
    assert 0 < n_some < _count_colour(img, BOX_COLOR)


def test_plot_patches_rejects_mismatched_shapes(tmp_path):
    frames = _solid_frames(2, 3)
    with pytest.raises(ValueError) as err:
        plot_patches(frames, torch.zeros(2, 4, 2), 24, tmp_path / "x.png")
    assert "[2, 3, 3, 64, 64]" in str(err.value) and "[2, 4, 2]" in str(err.value)
    with pytest.raises(ValueError, match=r"keep.*\[2, 3\]"):
        plot_patches(frames, _offsets(), 24, tmp_path / "x.png", keep=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[N, T, 3, H, W\]"):
        plot_patches(frames[0], _offsets()[0], 24, tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        plot_patches(frames, _offsets(), 24, tmp_path / "x.png", titles=["only one"])
    assert not (tmp_path / "x.png").exists()


def test_to_display_unnormalises_and_clips():
    grey = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    np.testing.assert_allclose(to_display(grey), np.full((8, 8, 3), 128 / 255))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalised = (grey.float() / 255 - mean) / std  # the data pipeline's normalize
    shown = to_display(normalised, IMAGENET_MEAN, IMAGENET_STD)
    assert shown.shape == (8, 8, 3)
    np.testing.assert_allclose(shown, 128 / 255, atol=1e-5)
    raw = to_display(normalised)  # without mean/std: taken as [0, 1] and clipped, so NOT grey
    assert raw.min() >= 0.0 and raw.max() <= 1.0 and abs(raw.mean() - 128 / 255) > 0.2
    clipped = to_display(np.full((3, 2, 2), 5.0, dtype=np.float32), [0.5] * 3, [0.5] * 3)
    assert (clipped == 1.0).all()
    with pytest.raises(ValueError, match="mean"):
        to_display(normalised, mean=IMAGENET_MEAN)


def test_plot_patches_normalised_frames_render_mid_grey(tmp_path):
    grey = torch.full((2, 3, 3, 48, 64), 128, dtype=torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalised = (grey.float() / 255 - mean) / std
    img = _read_rgb(plot_patches(normalised, torch.zeros(2, 3, 2), 16, tmp_path / "grey.png",
                                 mean=IMAGENET_MEAN, std=IMAGENET_STD))
    # Most of each panel (everything but the box) is mid-grey; un-normalising nothing would make it ~black.
    assert _count_colour(img, (128, 128, 128), tol=1) > 6 * 30 * 40
    assert _count_colour(img, BOX_COLOR) > 0


def test_plot_patches_sixteen_frames_has_reasonable_size(tmp_path):
    img = _read_rgb(plot_patches(_solid_frames(1, 16, 32, 32), torch.zeros(1, 16, 2), 8, tmp_path / "t16.png"))
    assert 1500 < img.shape[1] <= 2600 and img.shape[0] < 400


# ------------------------------------------------------------------------------------------------ Fig. 5
POINTS = [
    {"family": "AdaFocus", "gflops": 26.6, "value": 71.0, "label": "P=128"},
    {"family": "AdaFocus", "gflops": 20.1, "value": 68.5, "label": "P=96"},
    {"family": "AdaFocus", "gflops": 35.2, "value": 73.1, "label": "P=160"},
    {"family": "AdaFocus+", "gflops": 10.0, "value": 69.9, "label": "η=0.5"},
    {"family": "AdaFocus+", "gflops": 15.0, "value": 71.4, "label": "η=0.7"},
    {"family": "random patches", "gflops": 26.6, "value": 66.0},
    {"family": "glance only", "gflops": 7.2, "value": 55.0},
]


def test_plot_accuracy_vs_gflops_writes_png_with_a_legend_per_family(tmp_path):
    out = plot_accuracy_vs_gflops(POINTS, tmp_path / "a" / "fig5.png", metric="mAP (%)", title="ActivityNet")
    img = _read_rgb(out)
    assert img.shape[0] > 200 and img.shape[1] > 200 and len(np.unique(img.reshape(-1, 3), axis=0)) > 10

    fig = _accuracy_vs_gflops_figure(POINTS, metric="mAP (%)")
    assert _legend_labels(fig) == ["AdaFocus", "AdaFocus+", "random patches", "glance only"]
    ax = fig.axes[0]
    assert ax.get_ylabel() == "mAP (%)"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["AdaFocus"].get_xdata()) == [20.1, 26.6, 35.2]  # joined in order of GFLOPs
    assert lines["AdaFocus+"].get_marker() == "*"
    assert lines["glance only"].get_linestyle() == "None"  # a single point: no line
    markers = [line.get_marker() for line in lines.values()]
    assert len(set(markers)) == len(markers)
    assert {t.get_text() for t in ax.texts} == {"P=96", "P=128", "P=160", "η=0.5", "η=0.7"}


def test_early_exit_families_are_dashed_curves_in_their_source_familys_colour():
    points = POINTS + [{"family": "AdaFocus early exit", "gflops": g, "value": v, "label": f"{b}%"}
                       for g, v, b in ((8.0, 60.0, 30), (16.0, 69.0, 60))]
    points.append({"family": "AdaFocus+ (eta=0.5) early exit", "gflops": 5.0, "value": 61.0})
    lines = {line.get_label(): line for line in _accuracy_vs_gflops_figure(points).axes[0].get_lines()}
    exit_line = lines["AdaFocus early exit"]
    assert exit_line.get_linestyle() == "--" and exit_line.get_color() == lines["AdaFocus"].get_color()
    assert exit_line.get_marker() == "o" and exit_line.get_markerfacecolor() == "none"
    assert lines["AdaFocus"].get_linestyle() == "-"
    assert lines["AdaFocus+ (eta=0.5) early exit"].get_color() not in {lines[n].get_color() for n in lines
                                                                       if n != "AdaFocus+ (eta=0.5) early exit"}


def test_plot_accuracy_vs_gflops_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_accuracy_vs_gflops([], tmp_path / "e.png")
    with pytest.raises(ValueError, match="gflops"):
        plot_accuracy_vs_gflops([{"family": "AdaFocus", "value": 70.0}], tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()


# ------------------------------------------------------------------------------------------------ Fig. 6
CURVES = {
    "AdaFocus": [(2.9 * t, 40 + 4 * t) for t in range(1, 9)],
    "ResNet-50-Average": [(4.1 * t, 35 + 4 * t) for t in range(8, 0, -1)],  # any order: sorted by GFLOPs
}


def test_plot_online_curve_writes_png_with_legend(tmp_path):
    out = plot_online_curve(CURVES, tmp_path / "b" / "fig6.png", title="online")
    img = _read_rgb(out)
    assert img.shape[0] > 200 and len(np.unique(img.reshape(-1, 3), axis=0)) > 10

    fig = _online_curve_figure(CURVES)
    assert _legend_labels(fig) == ["AdaFocus", "ResNet-50-Average"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "GFLOPs (t frames)" and ax.get_ylabel() == "top-1 (%)"
    baseline = next(line for line in ax.get_lines() if line.get_label() == "ResNet-50-Average")
    assert np.all(np.diff(baseline.get_xdata()) > 0) and baseline.get_marker() not in (None, "None", "")


def test_plot_online_curve_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_online_curve({}, tmp_path / "e.png")
    with pytest.raises(ValueError, match="'AdaFocus'"):
        plot_online_curve({"AdaFocus": []}, tmp_path / "e.png")
    with pytest.raises(ValueError, match="pair"):
        plot_online_curve({"AdaFocus": [(1.0, 2.0, 3.0)]}, tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()
