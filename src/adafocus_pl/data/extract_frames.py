"""Extract JPEG frames from a tree of videos and write an official list file (the authors' release reads pre-extracted JPEG frames).

    python -m adafocus_pl.data.extract_frames SRC_DIR OUT_DIR [--height 360] [--fps F] [--labels LIST]
        [--format comma|space] [--list list.txt] [--template image_{:05d}.jpg] [--quality 95] [--workers N]

Writes ``OUT_DIR/<video path relative to SRC_DIR, without extension>/<template>`` (1-based, upright: a display
rotation is applied) and ``OUT_DIR/list.txt`` (``--list`` names it otherwise)
(``path,num_frames,label[,label...]`` or ``path num_frames label``). Labels come from ``--labels`` (a ``video``
list ``path label[,label...]``, paths relative to SRC_DIR) or else from each video's parent folder name
(class-per-folder layout; classes sorted by name, written to ``OUT_DIR/classes.txt``).
Resumable: a finished video leaves ``.extracted.json`` in its folder and is skipped next time; nothing is deleted.
The release extracted at height 360 and the native frame rate (``--height 360``, no ``--fps``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from multiprocessing import Pool
from pathlib import Path

log = logging.getLogger(__name__)

SEARCH_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
MARKER = ".extracted.json"


def find_videos(src_dir: Path) -> list[Path]:
    """Video files under ``src_dir`` (recursive), as sorted paths relative to it."""
    return sorted(
        p.relative_to(src_dir) for p in src_dir.rglob("*") if p.is_file() and p.suffix.lower() in SEARCH_EXTENSIONS
    )


def _output_size(width: int, height: int, target_height: int | None) -> tuple[int, int]:
    if not target_height:
        return width, height
    return max(1, round(width * target_height / height)), int(target_height)


def _resampled(frames, fps: float | None, native_rate):
    """Yield frames at ``fps``: for each output time k / fps, the latest source frame at or before it."""
    if not fps:
        yield from frames
        return
    step, eps = 1.0 / fps, 1e-6
    next_time, previous, previous_time, count = 0.0, None, 0.0, 0
    for frame in frames:
        time = frame.time if frame.time is not None else count / float(native_rate or fps)
        count += 1
        if previous is None:
            next_time = time  # the output clock starts at the first frame
        while previous is not None and next_time < time - eps:
            yield previous
            next_time += step
        previous, previous_time = frame, time
    while previous is not None and next_time <= previous_time + eps:
        yield previous
        next_time += step


def extract_video(
    src: Path, out_dir: Path, template: str, height: int | None, fps: float | None, quality: int
) -> int:
    """Decode ``src`` into ``out_dir``; return the number of frames written (skip if already done)."""
    import av
    from av.video.reformatter import VideoReformatter
    from PIL import Image

    from adafocus_pl.data.storage import quarter_turns

    # counter-clockwise quarter turns -> PIL's transpose
    transposes = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}

    marker = out_dir / MARKER
    if marker.is_file():
        return int(json.loads(marker.read_text())["num_frames"])
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = 1  # parallelism comes from --workers
        reformatter = VideoReformatter()  # one swscale context for the whole video (per-frame ones are slow)
        for frame in _resampled(container.decode(stream), fps, stream.average_rate):
            # frames are written upright, as a player shows them (a phone's display rotation applied)
            turns = quarter_turns(frame)
            coded_w, coded_h = frame.width, frame.height
            shown_w, shown_h = (coded_h, coded_w) if turns % 2 else (coded_w, coded_h)
            out_w, out_h = _output_size(shown_w, shown_h, height)
            scaled_w, scaled_h = (out_h, out_w) if turns % 2 else (out_w, out_h)
            rgb = reformatter.reformat(frame, width=scaled_w, height=scaled_h, format="rgb24", interpolation="AREA")
            image = rgb.to_image()
            if turns:
                image = image.transpose(transposes[turns])
            count += 1
            image.save(out_dir / template.format(count), quality=quality)
    if count == 0:
        raise RuntimeError("no decodable video frames")
    marker.write_text(json.dumps({"num_frames": count, "height": height, "fps": fps, "template": template}))
    return count


def _extract_one(rel: Path, src_dir: Path, out_dir: Path, **kwargs) -> tuple[Path, int | None, str | None]:
    try:
        return rel, extract_video(src_dir / rel, out_dir / rel.with_suffix(""), **kwargs), None
    except Exception as err:  # report and continue with the other videos
        return rel, None, f"{type(err).__name__}: {err}"


def read_labels(list_file: Path) -> dict[str, tuple[int, ...]]:
    """``video``-format list → {path relative to SRC_DIR: labels}."""
    from adafocus_pl.data.listfile import parse_list_file

    records, _ = parse_list_file(list_file, "video", min_frames=0)
    return {Path(r.path).as_posix(): r.labels for r in records}


def folder_labels(videos: list[Path]) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Class-per-folder layout: label = index of the parent folder's name among the sorted names."""
    orphans = [v for v in videos if v.parent == Path(".")]
    if orphans:
        raise SystemExit(
            f"{orphans[0]} lies directly in SRC_DIR: use a class-per-folder layout (SRC_DIR/<class>/<video>) "
            f"or give --labels LIST_FILE"
        )
    classes = sorted({v.parent.name for v in videos})
    index = {name: i for i, name in enumerate(classes)}
    return {v.as_posix(): (index[v.parent.name],) for v in videos}, classes


def format_row(key: str, num_frames: int, labels: tuple[int, ...], fmt: str) -> str:
    if fmt == "comma":
        if "," in key:
            raise ValueError(f"path {key!r} contains a comma: use --format space")
        return ",".join([key, str(num_frames), *map(str, labels)])
    if len(labels) != 1:
        raise ValueError(f"{key!r} has {len(labels)} labels; the space format holds one: use --format comma")
    return f"{key} {num_frames} {labels[0]}"


def _progress(outcomes, progress):
    for outcome in outcomes:
        progress.update()
        yield outcome


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adafocus_pl.data.extract_frames",
        description="Extract JPEG frames from videos under SRC_DIR into OUT_DIR and write OUT_DIR/list.txt "
                    "(--list).",
    )
    parser.add_argument("src_dir", type=Path, help="folder searched recursively for mp4/webm/avi/mkv/mov/m4v")
    parser.add_argument("out_dir", type=Path, help="output folder (frames, list.txt, classes.txt)")
    parser.add_argument("--height", type=int, default=None, help="resize to this height, aspect kept (release: 360)")
    parser.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: native)")
    parser.add_argument("--labels", type=Path, default=None, help="'path label[,label...]' list (else: folders)")
    parser.add_argument("--format", choices=("comma", "space"), default="comma", help="list file format")
    parser.add_argument("--list", default="list.txt", help="name of the list file written in OUT_DIR (e.g. "
                                                           "train.txt with --labels train.txt)")
    parser.add_argument("--template", default="image_{:05d}.jpg", help="frame file name, 1-based index")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tqdm import tqdm

    if not args.src_dir.is_dir():
        raise SystemExit(f"SRC_DIR {args.src_dir} is not a folder")
    videos = find_videos(args.src_dir)
    if not videos:
        raise SystemExit(f"no {'/'.join(SEARCH_EXTENSIONS)} files under {args.src_dir}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.labels is not None:
        labels, classes = read_labels(args.labels), None
        unlabelled = [v for v in videos if v.as_posix() not in labels]
        if unlabelled:
            log.warning("%d videos are not in %s and are skipped (first: %s)", len(unlabelled), args.labels,
                        unlabelled[0])
        videos = [v for v in videos if v.as_posix() in labels]
    else:
        labels, classes = folder_labels(videos)
        (args.out_dir / "classes.txt").write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")

    work = partial(_extract_one, src_dir=args.src_dir, out_dir=args.out_dir, template=args.template,
                   height=args.height or None, fps=args.fps, quality=args.quality)
    results, failures = {}, []
    with tqdm(total=len(videos), unit="video", desc="extract") as progress:
        if args.workers > 1:
            with Pool(args.workers) as pool:
                outcomes = list(_progress(pool.imap_unordered(work, videos), progress))
        else:
            outcomes = list(_progress(map(work, videos), progress))
    for rel, count, error in outcomes:
        if error:
            failures.append((rel, error))
        else:
            results[rel] = count

    rows = []
    for rel in sorted(results):
        try:
            rows.append(format_row(rel.with_suffix("").as_posix(), results[rel], labels[rel.as_posix()], args.format))
        except ValueError as err:
            failures.append((rel, str(err)))
    (args.out_dir / args.list).write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    log.info("wrote %d videos to %s", len(rows), args.out_dir / args.list)
    for rel, error in failures:
        log.error("failed: %s (%s)", rel, error)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
