"""Tests for the synthetic benchmark generator (tiny specs; the whole file runs in a few seconds)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adafocus_pl.data import synthetic as S

TINY = S.SyntheticSpec(num_train=8, num_val=4, num_test=4)
OUR_FILES = (
    ["meta.json", "classes.txt"] + [f"{s}.txt" for s in S.SPLITS] + [f"boxes_{s}.json" for s in S.SPLITS]
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """One tiny benchmark, generated with 2 workers, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    S.generate(out, TINY, workers=2, progress=False)
    return out


def _videos(out: Path) -> dict[str, np.ndarray]:
    """Decoded frames of every listed video, keyed by list path."""
    names = [line.split()[0] for s in S.SPLITS for line in (out / f"{s}.txt").read_text().splitlines()]
    return {name: S.read_video(out / name) for name in names}


def _cell_bits(frame: np.ndarray, box, spec: S.SyntheticSpec) -> np.ndarray:
    """Read a glyph's code from a grey frame: a cell is 'on' when its local variance is high."""
    x0, y0 = int(box[0]) + spec.border, int(box[1]) + spec.border
    c, g = spec.cell_size, spec.grid
    inner = frame[y0 : y0 + g * c, x0 : x0 + g * c].astype(np.float64)
    var = inner.reshape(g, c, g, c).var(axis=(1, 3)).reshape(-1)
    return (var > spec.texture_amp**2 / 4).astype(np.uint8)


def _pool4(img: np.ndarray) -> np.ndarray:
    """4x4 mean-pool (the glance's downsample)."""
    h, w = img.shape
    return img[: h // 4 * 4, : w // 4 * 4].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))


# ------------------------------------------------------------------------------------------- codes


def test_hamming_codes_are_far_apart_and_balanced():
    codes = S.class_codes(S.SyntheticSpec(code_scheme="hamming"))
    assert codes.shape == (10, 16)
    dist = (codes[:, None] != codes[None]).sum(-1)
    assert dist[~np.eye(10, dtype=bool)].min() >= 8
    assert (codes.sum(1) == 8).all()
    assert len(set(S.class_names(S.SyntheticSpec()))) == 10


QUARTERS = {"top-left": (slice(0, 2), slice(0, 2)), "top-right": (slice(0, 2), slice(2, 4)),
            "bottom-left": (slice(2, 4), slice(0, 2)), "bottom-right": (slice(2, 4), slice(2, 4))}
HALVES = {"top": (slice(0, 2), slice(None)), "bottom": (slice(2, 4), slice(None)),
          "left": (slice(None), slice(0, 2)), "right": (slice(None), slice(2, 4))}


def _named_by(codes: np.ndarray, region) -> int:
    """How many classes the cells of ``region`` (of the 4x4 code grid) tell apart from every other class."""
    views = [tuple(code.reshape(4, 4)[region].ravel()) for code in codes]
    return sum(views.count(view) == 1 for view in views)


def test_hamming_codes_are_named_by_any_half():
    """The 'hamming' codes are redundant: any half of the glyph, and mostly a quarter, names the class."""
    codes = S.class_codes(S.SyntheticSpec(code_scheme="hamming"))
    assert all(_named_by(codes, region) == 10 for region in HALVES.values())
    assert all(_named_by(codes, region) >= 5 for region in QUARTERS.values())


def test_quadrant_codes_need_more_than_a_quarter():
    spec = S.SyntheticSpec(code_scheme="quadrant")
    codes = S.class_codes(spec)
    assert codes.shape == (10, 16) and len({tuple(c) for c in codes}) == 10
    dist = (codes[:, None] != codes[None]).sum(-1)
    assert dist[~np.eye(10, dtype=bool)].min() >= 4
    assert all(_named_by(codes, region) == 0 for region in QUARTERS.values())  # a quarter never names a class
    assert all(_named_by(codes, region) <= 2 for region in HALVES.values())
    # each quadrant shows one of three patterns, and any three quadrants fix the fourth (symbols sum to 0 mod 3)
    symbols = [tuple(s.ravel()) for s in S._quadrant_symbols(2)]
    for code in codes:
        word = [symbols.index(tuple(code.reshape(4, 4)[q].ravel())) for q in QUARTERS.values()]
        assert sum(word) % 3 == 0


def test_quadrant_scheme_renders_its_codes():
    spec = S.SyntheticSpec(code_scheme="quadrant")
    frames, boxes, label = S.render_video(spec, np.random.default_rng(3))
    np.testing.assert_array_equal(_cell_bits(frames[0, ..., 0], boxes[0], spec), S.class_codes(spec)[label])
    with pytest.raises(ValueError, match="code_scheme"):
        S.SyntheticSpec(code_scheme="parity")
    with pytest.raises(ValueError, match="even number"):
        S.SyntheticSpec(code_scheme="quadrant", glyph_size=16, cell_size=4)  # 3 cells a side


def test_impossible_codes_raise():
    with pytest.raises(ValueError):
        S.class_codes(S.SyntheticSpec(num_classes=60, min_hamming=12))


def test_invalid_spec_raises():
    with pytest.raises(ValueError):
        S.SyntheticSpec(glyph_size=21)  # interior 17 is not a multiple of the cell size


# ------------------------------------------------------------------------------------------ render


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_class_detail_sits_in_the_box(seed):
    spec = S.SyntheticSpec()
    frames, boxes, label = S.render_video(spec, np.random.default_rng(seed))
    assert frames.shape == (16, 96, 96, 3) and frames.dtype == np.uint8
    assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 0] == frames[..., 2]).all()
    assert boxes.shape == (16, 4)
    assert ((boxes[:, 2:] - boxes[:, :2]) == spec.glyph_size).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= spec.frame_size).all()
    code = S.class_codes(spec)[label]
    for t in range(spec.num_frames):
        grey = frames[t, ..., 0]
        x0, y0, x1, y1 = boxes[t]
        np.testing.assert_array_equal(_cell_bits(grey, boxes[t], spec), code)
        inside = np.zeros_like(grey, dtype=bool)
        inside[y0:y1, x0:x1] = True
        bright = grey >= spec.target_border - 20
        assert bright[inside].sum() >= 4 * (spec.glyph_size - spec.border) * spec.border  # the whole ring
        assert not bright[~inside].any()  # no bright-bordered glyph outside the box


def test_box_moves_smoothly():
    spec = S.SyntheticSpec()
    steps = []
    for seed in range(20):
        _, boxes, _ = S.render_video(spec, np.random.default_rng(seed))
        steps.append(np.diff(boxes[:, :2], axis=0))
    steps = np.concatenate(steps)
    assert np.abs(steps).max() <= spec.speed_max + 1  # + rounding to integer pixels
    norms = np.hypot(steps[:, 0], steps[:, 1])
    assert norms.max() <= spec.speed_max + np.sqrt(2)
    assert np.median(norms) >= spec.speed_min - 1  # it does move


def test_labels_follow_rng_and_argument():
    spec = S.SyntheticSpec()
    labels = {S.render_video(spec, np.random.default_rng(s))[2] for s in range(30)}
    assert len(labels) > 3
    assert S.render_video(spec, np.random.default_rng(0), label=7)[2] == 7


def test_downsampled_glyphs_look_alike():
    """At glance resolution two classes (nearly) coincide; at full resolution they differ by the texture."""
    spec = S.SyntheticSpec()
    codes = S.class_codes(spec)
    for offset in range(4):  # every alignment with the 4x4 pooling grid
        canvas = []
        for label in (0, 1):
            img = np.full((32, 32), 100.0)
            img[offset : offset + 20, offset : offset + 20] = S.render_glyph(
                spec, codes[label], spec.target_border
            )
            canvas.append(img)
        full = np.abs(canvas[0] - canvas[1])
        low = np.abs(_pool4(canvas[0]) - _pool4(canvas[1]))
        assert full.max() == spec.texture_amp
        if offset % 2 == 0:
            assert low.max() == 0  # whole checkerboard rows/columns in every window
        else:
            assert low.max() <= full.max() / 6 and low.mean() < 0.2 * full.mean()  # only cell-edge residue


def test_splits_have_balanced_labels():
    spec = S.SyntheticSpec(num_train=30)
    counts = np.bincount(S.split_labels(spec, "train"), minlength=10)
    assert (counts == 3).all()


# -------------------------------------------------------------------------------------- generation


def test_layout_and_contents(tiny_dir):
    meta = S.read_meta(tiny_dir)
    assert meta["spec"]["num_train"] == 8 and meta["num_classes"] == 10
    assert meta["frame_size"] == [96, 96] and meta["num_frames"] == 16
    assert (tiny_dir / "classes.txt").read_text().splitlines() == meta["classes"]
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        lines = (tiny_dir / f"{split}.txt").read_text().splitlines()
        assert lines[0] == f"videos/{split}/000000.mp4 {S.split_labels(TINY, split)[0]}"
        assert len(lines) == n
        boxes = json.loads((tiny_dir / f"boxes_{split}.json").read_text())
        assert list(boxes) == [line.split()[0][: -len(".mp4")] for line in lines]
        assert all(len(b) == 16 and len(b[0]) == 4 for b in boxes.values())


def test_lossless_round_trip(tiny_dir):
    """Decoded files equal a fresh render, and the boxes file holds the rendered boxes."""
    boxes = json.loads((tiny_dir / "boxes_val.json").read_text())
    for i, line in enumerate((tiny_dir / "val.txt").read_text().splitlines()):
        name, label = line.split()
        frames, ref_boxes, _ = S.render_video(TINY, S._video_rng(TINY, "val", i), int(label))
        decoded = S.read_video(tiny_dir / name)
        assert decoded.shape == frames.shape
        assert np.abs(decoded.astype(int) - frames.astype(int)).max() <= 1
        assert boxes[name[:-4]] == ref_boxes.tolist()
        np.testing.assert_array_equal(
            _cell_bits(decoded[5, ..., 0], ref_boxes[5], TINY), S.class_codes(TINY)[int(label)]
        )


def test_deterministic_across_runs_and_workers(tiny_dir, tmp_path):
    again = tmp_path / "again"
    S.generate(again, TINY, workers=1, progress=False)
    for name in OUR_FILES:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    ref, new = _videos(tiny_dir), _videos(again)
    assert ref.keys() == new.keys()
    for key in ref:
        np.testing.assert_array_equal(ref[key], new[key])


def test_different_seed_differs(tiny_dir, tmp_path):
    other = tmp_path / "other"
    S.generate(other, S.SyntheticSpec(num_train=8, num_val=4, num_test=4, seed=1), workers=2, progress=False)
    assert (other / "boxes_train.json").read_bytes() != (tiny_dir / "boxes_train.json").read_bytes()
    a = S.read_video(tiny_dir / "videos/train/000000.mp4")
    b = S.read_video(other / "videos/train/000000.mp4")
    assert not np.array_equal(a, b)


def test_skip_force_and_foreign_files(tmp_path, capsys):
    out = tmp_path / "bench"
    small = S.SyntheticSpec(num_train=4, num_val=2, num_test=2)
    S.generate(out, small, workers=1, progress=False)
    (out / "notes.md").write_text("mine")
    (out / "videos" / "train" / "keep.mp4").write_bytes(b"user file")
    video = out / "videos" / "train" / "000003.mp4"
    video.write_bytes(b"corrupted")  # a skip must not touch it; --force must rewrite it

    assert S.generate(out, small, workers=1, progress=False)["skipped"] is True
    assert "skipped" in capsys.readouterr().out
    assert video.read_bytes() == b"corrupted"

    summary = S.generate(out, small, workers=1, force=True, progress=False)
    assert summary["skipped"] is False and summary["seconds"] > 0
    assert video.read_bytes() != b"corrupted" and S.read_video(video).shape == (16, 96, 96, 3)

    smaller = S.SyntheticSpec(num_train=2, num_val=2, num_test=2)  # a new spec regenerates without --force
    assert S.generate(out, smaller, workers=1, progress=False)["skipped"] is False
    assert not video.exists()  # our stale video is gone
    assert (out / "notes.md").read_text() == "mine"
    assert (out / "videos" / "train" / "keep.mp4").read_bytes() == b"user file"
    assert S.read_meta(out)["spec"]["num_train"] == 2


def test_main_maps_flags_onto_spec(tmp_path):
    out = tmp_path / "cli"
    args = [
        "--out",
        str(out),
        "--num-train",
        "2",
        "--num-val",
        "1",
        "--num-test",
        "1",
        "--seed",
        "5",
        "--speed-max",
        "4.5",
        "--workers",
        "1",
    ]
    summary = S.main(args)
    assert summary["videos"] == {"train": 2, "val": 1, "test": 1}
    spec = S.read_meta(out)["spec"]
    assert spec["seed"] == 5 and spec["speed_max"] == 4.5 and spec["frame_size"] == 96
    assert S.main(args)["skipped"] is True


def test_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "adafocus_pl.data.synthetic", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--num-train" in result.stdout and "--force" in result.stdout
    assert result.stderr == ""


def test_generate_accepts_field_overrides(tmp_path):
    summary = S.generate(
        tmp_path / "ov", workers=1, progress=False, num_train=3, num_val=1, num_test=1, seed=2
    )
    assert summary["videos"] == {"train": 3, "val": 1, "test": 1}
    assert S.read_meta(tmp_path / "ov")["spec"]["seed"] == 2
    with pytest.raises(TypeError):
        S.generate(tmp_path / "bad", workers=1, progress=False, no_such_field=1)


def test_data_from_before_code_schemes_is_not_taken_for_the_quadrant_default(tiny_dir, tmp_path):
    """A meta.json written before ``code_scheme`` existed describes hamming codes: it must not pass for today's
    quadrant default (the data would be silently stale), and must still pass for an explicit hamming spec."""
    meta = json.loads((tiny_dir / "meta.json").read_text())
    assert meta["spec"]["code_scheme"] == "quadrant" and S._is_current(tiny_dir, TINY)
    old = tmp_path / "old"
    old.mkdir()
    del meta["spec"]["code_scheme"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert not S._is_current(old, TINY)
    assert S._is_current(old, S.SyntheticSpec(num_train=8, num_val=4, num_test=4, code_scheme="hamming"))
