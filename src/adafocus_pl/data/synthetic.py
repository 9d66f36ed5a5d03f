"""Synthetic AdaFocus benchmark: moving textured glyphs whose class is only readable at full resolution.

Each video shows one *target* glyph (bright border) and a few *distractor* glyphs (dark border) moving over
a static cluttered background. A glyph's interior is a grid of cells, each either a fine 1-px checkerboard or
flat mid-grey; the target's on/off pattern is its class code. A 4x downsample averages every checkerboard to
the flat grey, so at glance resolution all classes look like the same ring and only a full-resolution patch
on the target reads the class.

The ``motion`` task (``task="motion"``, for AdaFocus-TSM, paper Sec. 4.2) keeps the glyphs but makes the class the
direction in which a bar of checkerboard cells moves through the target's interior (one cell per frame, wrapping
around): up, down, left or right. Any single frame shows only a row or a column (the axis, not the sign), so the
class needs temporal modelling; the glyphs drift slowly, as the regions of interest in Something-Something do.

Output layout (see ``docs/interfaces.md``)::

    meta.json  classes.txt  {train,val,test}.txt  boxes_{train,val,test}.json
    videos/{train,val,test}/NNNNNN.mp4        (lossless H.264, RGB with equal channels)

Run ``python -m adafocus_pl.data.synthetic --help`` for the options; every default lives in `SyntheticSpec`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange
from tqdm import tqdm

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_CODE_SEED = 2021  # fixed: the class codes are part of the benchmark's definition, not of the data seed
_VIDEO_NAME = re.compile(r"^videos/(train|val|test)/\d{6}\.mp4$")
TASKS = ("code", "motion")
CODE_SCHEMES = ("hamming", "quadrant")
# the motion task's classes: the bar's step (d_row, d_col) per frame
MOTIONS = {"bar_up": (-1, 0), "bar_down": (1, 0), "bar_left": (0, -1), "bar_right": (0, 1)}


def _f(default, help_text: str):
    """A dataclass field with a help text for the CLI."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that defines the benchmark; the single source of truth for the defaults."""

    frame_size: int = _f(96, "frame height = width in pixels")
    num_frames: int = _f(16, "frames per video")
    num_classes: int = _f(10, "number of classes (codes)")
    glyph_size: int = _f(20, "glyph side in pixels, border included")
    border: int = _f(2, "glyph border width in pixels")
    cell_size: int = _f(4, "side of one code cell in pixels")
    min_hamming: int = _f(8, "minimum pairwise Hamming distance between class codes ('hamming' codes)")
    code_scheme: str = _f("quadrant", "how the class codes are chosen: 'quadrant' (each quadrant of the code grid "
                                      "shows one of three patterns and the codes are words of a parity code over "
                                      "them: no quarter of the glyph names a class) or 'hamming' (balanced codes at "
                                      "min_hamming, the benchmark before 2026-12: any half of the glyph names the "
                                      "class, so random patches pool partial views)")
    num_distractors: int = _f(3, "dark-bordered distractor glyphs per video")
    speed_min: float = _f(2.0, "minimum glyph speed in px/frame")
    speed_max: float = _f(5.0, "maximum glyph speed in px/frame")
    jitter: float = _f(0.3, "std of the per-frame velocity jitter in px/frame")
    background_mean: float = _f(110.0, "mean grey level of the background")
    clutter_amp: float = _f(35.0, "amplitude of the smooth low-frequency clutter (grey levels)")
    noise_std: float = _f(6.0, "std of the static white noise in the background")
    frame_noise_std: float = _f(0.0, "std of per-frame white noise over the whole frame (costly on disk)")
    grey: int = _f(128, "flat cell grey level (and checkerboard mean)")
    texture_amp: int = _f(64, "checkerboard amplitude around the grey level")
    target_border: int = _f(240, "grey level of the target's border")
    distractor_border: int = _f(24, "grey level of the distractors' border")
    num_train: int = _f(3000, "training videos")
    num_val: int = _f(500, "validation videos")
    num_test: int = _f(500, "test videos")
    fps: int = _f(8, "frame rate written into the videos")
    seed: int = _f(0, "data seed (codes do not depend on it)")
    task: str = _f("code", "what the class is: 'code' (the target's texture code) or 'motion' (the direction a bar "
                           "of texture moves in the target: up/down/left/right, needs temporal modelling)")

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.code_scheme not in CODE_SCHEMES:
            raise ValueError(f"code_scheme must be one of {CODE_SCHEMES}, got {self.code_scheme!r}")
        if self.task == "motion" and not 2 <= self.num_classes <= len(MOTIONS):
            raise ValueError(f"the motion task has {len(MOTIONS)} directions: num_classes must be 2..{len(MOTIONS)}")
        interior = self.glyph_size - 2 * self.border
        if interior <= 0 or interior % self.cell_size:
            raise ValueError("glyph_size - 2*border must be a positive multiple of cell_size")
        if self.glyph_size > self.frame_size:
            raise ValueError("glyph_size must not exceed frame_size")
        if self.code_scheme == "quadrant" and (interior // self.cell_size) % 2:
            raise ValueError("code_scheme='quadrant' needs an even number of code cells per glyph side")
        if not 0 < self.speed_min <= self.speed_max:
            raise ValueError("need 0 < speed_min <= speed_max")
        if min(self.num_frames, self.num_classes, self.fps) < 1 or self.seed < 0:
            raise ValueError("num_frames, num_classes, fps must be >= 1 and seed >= 0")

    @property
    def grid(self) -> int:
        """Code cells per glyph side."""
        return (self.glyph_size - 2 * self.border) // self.cell_size

    def split_sizes(self) -> dict[str, int]:
        """Number of videos per split."""
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}


# ----------------------------------------------------------------------------------------------- codes


@functools.lru_cache(maxsize=8)
def _codes_cached(num_bits: int, num_classes: int, min_hamming: int) -> tuple[tuple[int, ...], ...]:
    """Greedy search over balanced words (half the bits on) in a fixed random order."""
    weight = num_bits // 2
    words = np.array([w for w in range(1 << num_bits) if w.bit_count() == weight], dtype=np.int64)
    np.random.default_rng(_CODE_SEED).shuffle(words)
    bits = (words[:, None] >> np.arange(num_bits)) & 1
    chosen: list[int] = []
    for i in range(len(words)):
        if all(np.sum(bits[i] != bits[j]) >= min_hamming for j in chosen):
            chosen.append(i)
            if len(chosen) == num_classes:
                return tuple(tuple(int(b) for b in bits[j]) for j in chosen)
    raise ValueError(f"no {num_classes} codes of {num_bits} bits with Hamming distance >= {min_hamming}")


def _quadrant_symbols(side: int) -> np.ndarray:
    """The three patterns a quadrant of ``side`` x ``side`` cells can show, uint8 ``[3, side, side]``: its top
    rows, its bottom rows, a checkerboard of cells (pairwise at least ``side**2 // 2`` cells apart)."""
    rows = np.arange(side)[:, None] < (side + 1) // 2
    top = np.repeat(rows, side, axis=1)
    checker = (np.add.outer(np.arange(side), np.arange(side)) % 2 == 0)
    return np.stack([top, ~top, checker]).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _quadrant_words(num_classes: int) -> tuple[tuple[int, ...], ...]:
    """``num_classes`` words (TL, TR, BL, BR) of the ternary parity code (symbols sum to 0 mod 3: any three
    quadrants fix the fourth, any two leave three words), chosen greedily so that as many of each word's halves
    (top, bottom, left, right quadrant pairs) as possible are shared with another chosen word."""
    words = [w for w in itertools.product(range(3), repeat=4) if sum(w) % 3 == 0]
    if num_classes > len(words):
        raise ValueError(f"code_scheme='quadrant' has {len(words)} codes; num_classes={num_classes} is too many")
    halves = ((0, 1), (2, 3), (0, 2), (1, 3))

    def shared(chosen: list[tuple[int, ...]]) -> int:
        return sum(any(v != w and all(v[i] == w[i] for i in h) for v in chosen) for w in chosen for h in halves)

    chosen: list[tuple[int, ...]] = []
    while len(chosen) < num_classes:
        chosen.append(max((w for w in words if w not in chosen), key=lambda w: shared(chosen + [w])))
    return tuple(chosen)


def quadrant_code(spec: SyntheticSpec, word) -> np.ndarray:
    """The cell code (uint8 ``[grid*grid]``, row-major) that shows quadrant symbols ``word`` (TL, TR, BL, BR)."""
    half = spec.grid // 2
    symbols = _quadrant_symbols(half)
    grid = np.block([[symbols[word[0]], symbols[word[1]]], [symbols[word[2]], symbols[word[3]]]])
    return grid.reshape(-1).astype(np.uint8)


def class_codes(spec: SyntheticSpec) -> np.ndarray:
    """The class codes, uint8 ``[num_classes, grid*grid]`` (row-major cells), pairwise distance checked."""
    if spec.code_scheme == "quadrant":
        codes = np.stack([quadrant_code(spec, w) for w in _quadrant_words(spec.num_classes)])
        min_distance = 2 * ((spec.grid // 2) ** 2 // 2)  # two quadrants apart, each by half its cells at least
    else:
        codes = np.array(_codes_cached(spec.grid**2, spec.num_classes, spec.min_hamming), dtype=np.uint8)
        min_distance = spec.min_hamming
    dist = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    off_diag = dist[~np.eye(len(codes), dtype=bool)]
    assert off_diag.size == 0 or off_diag.min() >= min_distance
    return codes


def distractor_code(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """A distractor's random code, drawn like the class codes are built (random cells, or random quadrant
    symbols)."""
    if spec.code_scheme == "quadrant":
        return quadrant_code(spec, tuple(int(v) for v in rng.integers(0, 3, size=4)))
    return rng.integers(0, 2, size=spec.grid**2)


def class_names(spec: SyntheticSpec) -> list[str]:
    """One readable name per class: index and the code as hex (motion task: the direction)."""
    if spec.task == "motion":
        return list(MOTIONS)[: spec.num_classes]
    width = (spec.grid**2 + 3) // 4
    names = []
    for i, code in enumerate(class_codes(spec)):
        value = int("".join(str(b) for b in code[::-1]), 2)
        names.append(f"glyph{i:02d}_{value:0{width}x}")
    return names


# ---------------------------------------------------------------------------------------------- render


def render_glyph(spec: SyntheticSpec, code: np.ndarray, border_value: float, phase: int = 0) -> np.ndarray:
    """One glyph, float32 ``[G, G]``: a border and a grid of checkerboard (bit 1) or flat (bit 0) cells."""
    g, b, c = spec.glyph_size, spec.border, spec.cell_size
    glyph = np.full((g, g), float(border_value), dtype=np.float32)
    n = g - 2 * b
    yy, xx = np.mgrid[0:n, 0:n]
    checker = np.where((yy + xx + phase) % 2 == 0, spec.texture_amp, -spec.texture_amp)
    on = np.kron(np.asarray(code, dtype=np.float32).reshape(spec.grid, spec.grid), np.ones((c, c)))
    glyph[b : g - b, b : g - b] = spec.grey + on * checker
    return glyph


def render_motion_glyphs(spec: SyntheticSpec, direction: int, border_value: float, rng: np.random.Generator
                         ) -> np.ndarray:
    """Motion task: ``[F, G, G]`` glyphs whose textured bar (a row or a column of cells) steps one cell per frame
    in ``MOTIONS``' ``direction``, wrapping around, from a random start and with a random checkerboard phase."""
    d_row, d_col = list(MOTIONS.values())[direction]
    start, phase, n = int(rng.integers(spec.grid)), int(rng.integers(2)), spec.grid
    glyphs = []
    for t in range(spec.num_frames):
        position = (start + t * (d_row + d_col)) % n
        code = np.zeros((n, n), dtype=np.uint8)
        if d_row:
            code[position] = 1
        else:
            code[:, position] = 1
        glyphs.append(render_glyph(spec, code.reshape(-1), border_value, phase))
    return np.stack(glyphs)


def render_background(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Static background, float32 ``[H, W]``: a sum of low-frequency plane waves plus white noise."""
    n = spec.frame_size
    coords = np.arange(n) / n
    clutter = np.zeros((n, n))
    for _ in range(6):  # cos(u + v) = cos u cos v - sin u sin v keeps each wave separable
        fx, fy = rng.uniform(-3.0, 3.0, size=2)
        amp, phase = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)
        u, v = 2 * np.pi * fx * coords + phase, 2 * np.pi * fy * coords
        clutter += amp * (np.outer(np.cos(v), np.cos(u)) - np.outer(np.sin(v), np.sin(u)))
    clutter = 2 * (clutter - clutter.min()) / max(float(np.ptp(clutter)), 1e-6) - 1
    noise = rng.normal(0.0, spec.noise_std, size=(n, n))
    return (spec.background_mean + spec.clutter_amp * clutter + noise).astype(np.float32)


def render_track(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Integer top-left corners ``[F, 2]`` (x, y) of a glyph that moves smoothly and bounces off the walls.

    Each frame the velocity gets Gaussian jitter and is rescaled to a speed in [speed_min, speed_max].
    """
    limit = float(spec.frame_size - spec.glyph_size)
    pos = [float(p) for p in rng.uniform(0, limit, size=2)]
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(spec.speed_min, spec.speed_max)
    vel = [speed * math.cos(angle), speed * math.sin(angle)]
    jitter = rng.normal(0.0, spec.jitter, size=(spec.num_frames - 1, 2)).tolist()
    track = [list(pos)]
    for dvx, dvy in jitter:
        vx, vy = vel[0] + dvx, vel[1] + dvy
        norm = max(math.hypot(vx, vy), 1e-6)
        scale = min(max(norm, spec.speed_min), spec.speed_max) / norm
        vel = [vx * scale, vy * scale]
        for axis in range(2):  # reflect off the walls (a reflection never lengthens the step)
            p = pos[axis] + vel[axis]
            if p < 0 or p > limit:
                p, vel[axis] = (-p if p < 0 else 2 * limit - p), -vel[axis]
            pos[axis] = min(max(p, 0.0), limit)
        track.append(list(pos))
    return np.rint(np.array(track)).astype(np.int64)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Round and clip to uint8."""
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_video(
    spec: SyntheticSpec, rng: np.random.Generator, label: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Render one video: frames uint8 ``[F, H, W, 3]``, target boxes int64 ``[F, 4]`` (x0, y0, x1, y1), label."""
    if label is None:
        label = int(rng.integers(spec.num_classes))
    background = _to_uint8(render_background(spec, rng))
    motion = spec.task == "motion"

    def glyphs(code_or_direction, border_value: float) -> np.ndarray:  # [F, G, G] uint8
        if motion:
            return _to_uint8(render_motion_glyphs(spec, code_or_direction, border_value, rng))
        glyph = render_glyph(spec, code_or_direction, border_value, int(rng.integers(2)))
        return np.repeat(_to_uint8(glyph)[None], spec.num_frames, axis=0)

    sprites = []  # (glyphs [F, G, G], track); drawn in order, so the target (last) is never occluded
    for _ in range(spec.num_distractors):
        distractor = int(rng.integers(len(MOTIONS))) if motion else distractor_code(spec, rng)
        sprites.append((glyphs(distractor, spec.distractor_border), render_track(spec, rng)))
    sprites.append((glyphs(label if motion else class_codes(spec)[label], spec.target_border),
                    render_track(spec, rng)))

    g = spec.glyph_size
    frames = np.repeat(background[None], spec.num_frames, axis=0)
    for t, frame in enumerate(frames):
        for sprite, track in sprites:
            x, y = track[t]
            frame[y : y + g, x : x + g] = sprite[t]
    if spec.frame_noise_std > 0:
        frames = _to_uint8(frames + rng.normal(0.0, spec.frame_noise_std, size=frames.shape))
    boxes = np.concatenate([sprites[-1][1], sprites[-1][1] + g], axis=1)
    return np.repeat(frames[..., None], 3, axis=-1), boxes, label


# ------------------------------------------------------------------------------------------------- I/O


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write grey RGB frames ``[F, H, W, 3]`` as lossless H.264 (qp 0, full-range yuv444p: exact round trip)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _, h, w, _ = frames.shape
    chroma = np.full((h, w), 128, dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}  # lossless at any preset; this one encodes fastest
        stream.codec_context.thread_count = 1
        stream.codec_context.color_range = ColorRange.JPEG
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.stack([rgb[..., 0], chroma, chroma]), format="yuv444p")
            frame.color_range = ColorRange.JPEG
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def read_video(path: str | Path) -> np.ndarray:
    """Decode a video into uint8 RGB frames ``[F, H, W, 3]``."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_meta(out_dir: str | Path) -> dict:
    """The benchmark's ``meta.json`` as a dict."""
    return json.loads((Path(out_dir) / "meta.json").read_text())


def _video_rng(spec: SyntheticSpec, split: str, index: int) -> np.random.Generator:
    """Per-video generator seeded from (seed, split, index): independent of the worker layout."""
    return np.random.default_rng(np.random.SeedSequence([spec.seed, _SPLIT_IDS[split], 0, index]))


def split_labels(spec: SyntheticSpec, split: str) -> np.ndarray:
    """Balanced labels of a split in a seeded random order."""
    n = spec.split_sizes()[split]
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _SPLIT_IDS[split], 1]))
    return rng.permutation(np.arange(n) % spec.num_classes)


def _make_video(task: tuple[str, int, int], spec: SyntheticSpec, out_dir: Path,
                decoded_dir: Path | None = None) -> list[list[int]]:
    """Worker: render and encode one video (and store its frames in ``decoded_dir``), return its boxes."""
    split, index, label = task
    frames, boxes, _ = render_video(spec, _video_rng(spec, split, index), label)
    name = f"videos/{split}/{index:06d}.mp4"
    write_video(out_dir / name, frames, spec.fps)
    if decoded_dir is not None:  # the lossless encode decodes to exactly these frames: no need to decode it later
        from adafocus_pl.data.decode_cache import entry_path, write_entry

        write_entry(entry_path(decoded_dir, name, out_dir / name), frames)
    return boxes.tolist()


def build_meta(spec: SyntheticSpec) -> dict:
    """The contents of ``meta.json``."""
    return {
        "generator": "adafocus_pl.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "spec": dataclasses.asdict(spec),
        "num_classes": spec.num_classes,
        "classes": class_names(spec),
        "codes": [] if spec.task == "motion" else ["".join(map(str, c)) for c in class_codes(spec)],
        "frame_size": [spec.frame_size, spec.frame_size],
        "num_frames": spec.num_frames,
        "fps": spec.fps,
        "splits": spec.split_sizes(),
        "list_format": "video",
        "box_format": "x0,y0,x1,y1 (x1/y1 exclusive) in stored-frame pixels, one per frame",
        "video": {"codec": "h264", "pix_fmt": "yuv444p", "color_range": "pc", "lossless": True},
    }


# the value a field had in effect before it existed, where that differs from its default today
_FIELDS_BEFORE_THEY_EXISTED = {"code_scheme": "hamming"}


def _is_current(out_dir: Path, spec: SyntheticSpec) -> bool:
    """True when ``meta.json`` exists and was written for this spec by this generator version."""
    try:
        meta = read_meta(out_dir)
    except (OSError, ValueError):
        return False
    if meta.get("generator_version") != GENERATOR_VERSION or not isinstance(meta.get("spec"), dict):
        return False
    # a field added since (e.g. task) is missing from older metas, which were written with its default then
    written = {**dataclasses.asdict(SyntheticSpec()), **_FIELDS_BEFORE_THEY_EXISTED, **meta["spec"]}
    return written == dataclasses.asdict(spec)


def _listed_videos(out_dir: Path) -> set[str]:
    """Our video paths named in existing list files (used to remove stale ones after regenerating)."""
    found = set()
    for split in SPLITS:
        path = out_dir / f"{split}.txt"
        if path.is_file():
            for line in path.read_text().splitlines():
                name = line.rsplit(" ", 1)[0]
                if _VIDEO_NAME.match(name):
                    found.add(name)
    return found


def _write_boxes(path: Path, boxes: dict[str, list[list[int]]]) -> None:
    """Boxes JSON with one video per line (deterministic bytes)."""
    rows = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in boxes.items()]
    path.write_text("{\n" + ",\n".join(rows) + "\n}\n")


def _dir_bytes(out_dir: Path) -> int:
    """Total size of the files this generator writes."""
    files = [out_dir / "meta.json", out_dir / "classes.txt"]
    files += [out_dir / f"{s}.txt" for s in SPLITS] + [out_dir / f"boxes_{s}.json" for s in SPLITS]
    files += list((out_dir / "videos").glob("*/*.mp4"))
    return sum(f.stat().st_size for f in files if f.is_file())


OWNER_MARKER = ".adafocus-synthetic"  # written first into a directory the generator makes its own


class NotOwnedError(ValueError):
    """The generator was pointed at a directory holding files it did not write."""


def ownership_problem(out_dir: str | Path) -> str | None:
    """Why the generator must not write into ``out_dir`` (None: it may). It writes only into a missing or empty
    directory, or one it marked as its own; a benchmark from before the marker existed is recognised by its
    ``meta.json``. Anything else may be a user's own data, whose lists and files it would overwrite."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        return f"data root {out_dir} is a file, not a directory: give the synthetic benchmark a directory (data.root)"
    if (out_dir / OWNER_MARKER).is_file():
        return None
    try:
        if read_meta(out_dir).get("generator") == "adafocus_pl.data.synthetic":
            return None
    except (OSError, ValueError):
        pass
    ours = ("train.txt", "val.txt", "test.txt", "classes.txt", "videos")  # what it would overwrite: named first
    entries = sorted((p.name for p in out_dir.iterdir()), key=lambda name: (name not in ours, name))
    if not entries:
        return None
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    return (f"{out_dir} holds files the synthetic benchmark's generator did not write ({shown}), so it refuses to "
            f"write there (it would replace list files such as train.txt). To train on your own videos in that "
            f"directory use data=videos data.root={out_dir} (data=frames for frame folders; README, 'Train on your "
            f"own videos'); "
            f"to generate the benchmark, give it an empty or new directory (data.root=..., or --out for "
            f"python -m adafocus_pl.data.synthetic)")


def _first_naming_entries(decoded_dir: Path) -> list[tuple[Path, str]]:
    """Decoded frames stored under the cache's first naming (``videos/<split>/NNNNNN.npy``, keyed by the path
    alone), with the video name each one was written for."""
    found = []
    for old in decoded_dir.glob("videos/*/*.npy"):
        name = old.relative_to(decoded_dir).with_suffix(".mp4").as_posix()
        if _VIDEO_NAME.match(name):
            found.append((old, name))
    return found


def _rename_old_cache_entries(out_dir: Path, decoded_dir: Path) -> None:
    """First-naming entries get the name the cache now reads when they hold the frames of the video there now:
    written with it (not before it: an entry is written right after its video), and no keyed entry for it yet.
    Any other first-naming entry belongs to an earlier generation of the benchmark and is removed."""
    from adafocus_pl.data.decode_cache import entry_path

    for old, name in _first_naming_entries(decoded_dir):
        video = out_dir / name
        new = entry_path(decoded_dir, name, video) if video.is_file() else None
        if new is not None and not new.exists() and old.stat().st_mtime_ns >= video.stat().st_mtime_ns:
            old.rename(new)
        else:
            old.unlink(missing_ok=True)


def generate(
    out_dir: str | Path,
    spec: SyntheticSpec | None = None,
    workers: int = 2,
    force: bool = False,
    progress: bool = True,
    decoded_dir: str | Path | None = None,
    **overrides,
) -> dict:
    """Generate the benchmark into ``out_dir`` (skipped when up to date unless ``force``); return a summary.

    ``overrides`` replace fields of ``spec`` (default `SyntheticSpec()`), e.g. ``generate(root, num_train=24)``.
    Writes only into a directory it owns (:func:`ownership_problem`, else :class:`NotOwnedError`); there only our
    own files are written (and our own stale videos removed), anything else in ``out_dir`` is kept.
    ``decoded_dir``: also store every video's frames where a ``VideoFileStorage`` with ``DecodeCache(decoded_dir)``
    reads them, so training never decodes them (the data config's ``cache_dir``).
    """
    spec = dataclasses.replace(spec or SyntheticSpec(), **overrides)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    if not force and _is_current(out_dir, spec):
        if decoded_dir is not None:
            _rename_old_cache_entries(out_dir, Path(decoded_dir))
        print(f"synthetic benchmark in {out_dir} matches the spec: skipped (use --force to regenerate)")
        return {"out_dir": str(out_dir), "skipped": True, "seconds": time.perf_counter() - start}

    problem = ownership_problem(out_dir)
    if problem:
        raise NotOwnedError(problem)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / OWNER_MARKER).write_text("This directory was made by adafocus_pl.data.synthetic, which may rewrite "
                                        "the files it lists in meta.json.\n")
    previous = _listed_videos(out_dir)
    if decoded_dir is not None:  # frames of the videos about to be replaced, under the first naming
        for old, _ in _first_naming_entries(Path(decoded_dir)):
            old.unlink(missing_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # written last: a half-done directory is never "current"
    tasks = [(s, i, int(lab)) for s in SPLITS for i, lab in enumerate(split_labels(spec, s))]
    work = functools.partial(_make_video, spec=spec, out_dir=out_dir,
                             decoded_dir=None if decoded_dir is None else Path(decoded_dir))
    bar = tqdm(total=len(tasks), desc="synthetic videos", unit="video", disable=not progress)
    if workers <= 1:
        results = []
        for task in tasks:
            results.append(work(task))
            bar.update()
    else:
        with multiprocessing.Pool(workers) as pool:
            results = []
            for boxes in pool.imap(work, tasks, chunksize=16):
                results.append(boxes)
                bar.update()
    bar.close()

    written = set()
    for split in SPLITS:
        rows = [(f"videos/{s}/{i:06d}.mp4", lab, b) for (s, i, lab), b in zip(tasks, results) if s == split]
        written.update(name for name, _, _ in rows)
        (out_dir / f"{split}.txt").write_text("".join(f"{name} {lab}\n" for name, lab, _ in rows))
        _write_boxes(out_dir / f"boxes_{split}.json", {name[: -len(".mp4")]: b for name, _, b in rows})
    for stale in sorted(previous - written):
        (out_dir / stale).unlink(missing_ok=True)
    (out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in class_names(spec)))
    (out_dir / "meta.json").write_text(json.dumps(build_meta(spec), indent=2) + "\n")

    seconds = time.perf_counter() - start
    summary = {
        "out_dir": str(out_dir),
        "skipped": False,
        "videos": spec.split_sizes(),
        "seconds": seconds,
        "bytes": _dir_bytes(out_dir),
        "removed_stale": len(previous - written),
    }
    print(
        f"synthetic benchmark: {len(tasks)} videos in {out_dir} ({summary['bytes'] / 2**20:.1f} MiB), "
        f"{seconds:.1f} s"
    )
    return summary


def prepare(data_cfg) -> None:
    """What a data config's ``prepare_data`` does for generated data: (re)generate the benchmark into
    ``data_cfg.root`` from the ``data_cfg.synthetic`` overrides unless it is current, with the decoded frames where
    the ``data_cfg.cache_dir`` cache looks for them; nothing for other data. Light: no torch, no Lightning."""
    if data_cfg.get("synthetic") is None:
        return
    from adafocus_pl.data.listfile import resolve_under

    cache = data_cfg.get("cache_dir")
    decoded = resolve_under(data_cfg["root"], cache) if cache and data_cfg.get("kind", "video") == "video" else None
    generate(data_cfg["root"], decoded_dir=decoded, **dict(data_cfg["synthetic"]))


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Argument parser: one flag per `SyntheticSpec` field plus --out/--force/--workers."""
    parser = argparse.ArgumentParser(
        prog="python -m adafocus_pl.data.synthetic",
        description="Render the synthetic AdaFocus benchmark (lossless H.264 videos, lists, boxes, meta.json).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="data/synthetic", help="output directory")
    parser.add_argument("--force", action="store_true", help="regenerate even if meta.json matches the spec")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    for f in dataclasses.fields(SyntheticSpec):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag, dest=f.name, type=type(f.default), default=f.default, help=f.metadata["help"]
        )
    return parser


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point."""
    args = vars(build_parser().parse_args(argv))
    out, force, workers = args.pop("out"), args.pop("force"), args.pop("workers")
    try:
        spec = SyntheticSpec(**args)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    try:
        return generate(out, spec, workers=workers, force=force)
    except NotOwnedError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
