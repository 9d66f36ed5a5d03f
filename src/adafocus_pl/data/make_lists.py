"""Write the list files of a folder of your own videos, one sub-folder per class:

    python -m adafocus_pl.data.make_lists ROOT [--val 0.2] [--test 0.2] [--seed 0] [--force]

``ROOT/<class>/.../<video>.mp4`` (any of mp4/webm/avi/mkv/mov/m4v) → ``ROOT/train.txt``, ``val.txt``, ``test.txt``
(``path label`` rows, paths relative to ROOT: the ``video`` list format of ``data=videos``) and ``ROOT/classes.txt``
(class ``k`` on line ``k + 1``, the sorted folder names). Each class is split on its own, in a seeded random order,
so every split holds every class that has enough videos. With ``--test 0`` the test list repeats the validation
videos. Existing list files are never replaced unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
OUTPUTS = ("train.txt", "val.txt", "test.txt", "classes.txt")


def find_class_videos(root: Path) -> dict[str, list[str]]:
    """{class folder name: sorted video paths relative to ``root``}; videos directly in ``root`` are an error."""
    videos = sorted(p.relative_to(root) for p in root.rglob("*")
                    if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
    loose = [v for v in videos if len(v.parts) == 1]
    if loose:
        raise SystemExit(f"error: {root / loose[0]} lies directly in {root}: put each video in a folder named after "
                         f"its class ({root}/<class>/<video>), or write the list files yourself (README, 'Train on "
                         f"your own videos')")
    classes: dict[str, list[str]] = {}
    for video in videos:
        classes.setdefault(video.parts[0], []).append(video.as_posix())
    return dict(sorted(classes.items()))


def split_videos(videos: list[str], val: float, test: float, rng: random.Random) -> dict[str, list[str]]:
    """One class's videos → {"train", "val", "test"}; at least one training video, then val, then test."""
    order = list(videos)
    rng.shuffle(order)
    n_val = min(round(len(order) * val), max(0, len(order) - 1)) if val > 0 else 0
    n_test = min(round(len(order) * test), max(0, len(order) - 1 - n_val)) if test > 0 else 0
    if val > 0 and n_val == 0 and len(order) > 1:
        n_val = 1
    return {"val": sorted(order[:n_val]), "test": sorted(order[n_val:n_val + n_test]),
            "train": sorted(order[n_val + n_test:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adafocus_pl.data.make_lists",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder with one sub-folder of videos per class")
    parser.add_argument("--val", type=float, default=0.2, help="fraction of each class for validation")
    parser.add_argument("--test", type=float, default=0.0, help="fraction of each class for testing (0: the test "
                                                                 "list repeats the validation videos)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--force", action="store_true", help="replace existing list files")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"error: {args.root} is not a folder")
    if not (0 <= args.val < 1 and 0 <= args.test < 1 and args.val + args.test < 1):
        raise SystemExit(f"error: --val {args.val} and --test {args.test} must be fractions in [0, 1) with a sum "
                         f"below 1 (the rest is for training)")
    existing = [name for name in OUTPUTS if (args.root / name).exists()]
    if existing and not args.force:
        raise SystemExit(f"error: {args.root} already has {', '.join(existing)}: not replaced (--force replaces "
                         f"them)")
    classes = find_class_videos(args.root)
    if not classes:
        raise SystemExit(f"error: no {'/'.join(EXTENSIONS)} files under {args.root}")
    rng = random.Random(args.seed)
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, videos in enumerate(classes.values()):
        for split, chosen in split_videos(videos, args.val, args.test, rng).items():
            rows[split] += [f"{path} {label}" for path in chosen]
    if args.test == 0:
        rows["test"] = list(rows["val"])
    for split, lines in rows.items():
        (args.root / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    (args.root / "classes.txt").write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    print(f"{len(classes)} classes, {sum(map(len, classes.values()))} videos: "
          + ", ".join(f"{split}.txt {len(lines)}" for split, lines in rows.items())
          + f", classes.txt in {args.root}; train with data=videos data.root={args.root} "
            f"data.num_classes={len(classes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
