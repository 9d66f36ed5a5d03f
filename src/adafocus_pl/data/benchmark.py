"""Data-loading benchmark: clips/s of the clip dataset on encoded videos (rows ``VideoFileDataset``) and on frame
folders (rows ``FrameFolderDataset``) through a DataLoader.

    python -m adafocus_pl.data.benchmark --videos-root ROOT --video-list L --frames-root FROOT --frames-list FL
        [--num-segments 8] [--workers 0 1 2] [--limit N] [--json OUT.json]
    python -m adafocus_pl.data.benchmark --synthetic data/synthetic     # (make bench) the synthetic val split

``--synthetic DIR`` renders the synthetic benchmark into DIR when it is missing, extracts its validation videos
into frame folders once (``DIR/.frames_val``, with ``extract_frames``) and benchmarks the two.

Reference rows: raw PyAV on the same files (open + decode every frame, then also ``to_ndarray("rgb24")``; one
process, one decoder thread, no dataset logic). Each number is the best of ``--repeats`` full passes, worker
start-up included. frames/s counts decoded frames for the raw rows and the T returned frames for the datasets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from adafocus_pl.data.datasets import ClipDataset
from adafocus_pl.data.listfile import VideoList
from adafocus_pl.data.sampling import SegmentSampler
from adafocus_pl.data.storage import FrameFolderStorage, VideoFileStorage
from adafocus_pl.data.transforms import ClipEvalTransform


def time_loader(dataset, workers: int, batch_size: int, repeats: int) -> float:
    """Best wall time of a full DataLoader pass over ``dataset``."""
    best = float("inf")
    for _ in range(repeats):
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
        start = time.perf_counter()
        for _batch in loader:
            pass
        best = min(best, time.perf_counter() - start)
    return best


def time_raw_pyav(paths: list[Path], repeats: int, rgb: bool) -> tuple[float, int]:
    """Best wall time to open and decode every frame of ``paths`` (``rgb``: plus ``to_ndarray("rgb24")``)."""
    import av

    best, frames = float("inf"), 0
    for _ in range(repeats):
        start, frames = time.perf_counter(), 0
        for path in paths:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1
                for frame in container.decode(stream):
                    if rgb:
                        frame.to_ndarray(format="rgb24")
                    frames += 1
        best = min(best, time.perf_counter() - start)
    return best, frames


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m adafocus_pl.data.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", type=Path, default=None, metavar="DIR",
                        help="benchmark the synthetic benchmark's val split in DIR (sets the four paths below)")
    parser.add_argument("--videos-root", type=Path)
    parser.add_argument("--video-list", help="list of the encoded videos (relative to the root)")
    parser.add_argument("--video-list-format", default="video", choices=("video", "comma", "space"))
    parser.add_argument("--frames-root", type=Path)
    parser.add_argument("--frames-list", help="list of the frame folders (relative to the root)")
    parser.add_argument("--frames-list-format", default="comma", choices=("comma", "space", "video"))
    parser.add_argument("--frame-template", default="image_{:05d}.jpg")
    parser.add_argument("--num-segments", type=int, default=8)
    parser.add_argument("--mode", default="val", choices=("train", "val"), help="sampling mode")
    parser.add_argument("--size", type=int, default=None, help="eval resize + crop to this size (default: none)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="use the first N videos of each list")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def use_synthetic(args: argparse.Namespace) -> None:
    """Point ``args`` at the synthetic val videos in ``args.synthetic`` and frame folders extracted from them."""
    from adafocus_pl.data import extract_frames, synthetic

    root = args.synthetic
    if not (root / "val.txt").is_file():
        synthetic.generate(root)
    frames = root / ".frames_val"
    if not (frames / "list.txt").is_file():
        extract_frames.main([str(root), str(frames), "--labels", str(root / "val.txt")])
    args.videos_root, args.video_list, args.video_list_format = root, "val.txt", "video"
    args.frames_root, args.frames_list, args.frames_list_format = frames, "list.txt", "comma"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.synthetic is not None:
        use_synthetic(args)
    missing = [f"--{name.replace('_', '-')}" for name in ("videos_root", "video_list", "frames_root", "frames_list")
               if getattr(args, name) is None]
    if missing:
        parser.error(f"give {', '.join(missing)} (or --synthetic DIR)")
    torch.set_num_threads(1)  # one core per loader process, as in a worker
    transform = ClipEvalTransform(args.size, args.size) if args.size else None
    sampler = SegmentSampler(args.num_segments, args.mode)
    videos = VideoFileStorage(VideoList.read(args.videos_root, args.video_list, args.video_list_format),
                              decoder_threads=1)
    frames = FrameFolderStorage(VideoList.read(args.frames_root, args.frames_list, args.frames_list_format),
                                frame_template=args.frame_template)
    video_ds, frames_ds = ClipDataset(videos, sampler, transform), ClipDataset(frames, sampler, transform)
    limit = args.limit or max(len(video_ds), len(frames_ds))
    datasets = {
        "VideoFileDataset": Subset(video_ds, range(min(limit, len(video_ds)))),
        "FrameFolderDataset": Subset(frames_ds, range(min(limit, len(frames_ds)))),
    }
    rows = []
    paths = [videos.video_path(r) for r in video_ds.records[:limit]]
    for rgb, name in ((False, "raw PyAV decode"), (True, "raw PyAV decode + to_ndarray")):
        seconds, num_frames = time_raw_pyav(paths, args.repeats, rgb)
        rows.append({"loader": name, "workers": 0, "clips": len(paths), "seconds": seconds,
                     "clips_per_s": len(paths) / seconds, "frames_per_s": num_frames / seconds})
    for name, dataset in datasets.items():
        for workers in args.workers:
            seconds = time_loader(dataset, workers, args.batch_size, args.repeats)
            rows.append({"loader": name, "workers": workers, "clips": len(dataset), "seconds": seconds,
                         "clips_per_s": len(dataset) / seconds,
                         "frames_per_s": len(dataset) * args.num_segments / seconds})

    print(f"T={args.num_segments}, mode={args.mode}, batch={args.batch_size}, best of {args.repeats} passes")
    print(f"{'loader':<30} {'workers':>7} {'clips':>6} {'seconds':>8} {'clips/s':>9} {'frames/s':>9}")
    for row in rows:
        print(f"{row['loader']:<30} {row['workers']:>7} {row['clips']:>6} {row['seconds']:>8.2f} "
              f"{row['clips_per_s']:>9.1f} {row['frames_per_s']:>9.0f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
