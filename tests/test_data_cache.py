"""The decoded-video cache returns exactly what decoding returns, and is written once, atomically."""

import os

import pytest
import torch

from adafocus_pl.data.datasets import ClipDataset
from adafocus_pl.data.decode_cache import DecodeCache
from adafocus_pl.data.listfile import VideoList
from adafocus_pl.data.sampling import SegmentSampler
from adafocus_pl.data.storage import VideoFileStorage
from adafocus_pl.data.transforms import ClipEvalTransform


def val_clips(root, list_file, cache_dir=None) -> ClipDataset:
    """8 centre frames of each video of ``list_file``, at 96x96, decoded or (``cache_dir``) through the cache."""
    storage = VideoFileStorage(VideoList.read(root, list_file, "video", num_classes=10),
                               cache=None if cache_dir is None else DecodeCache(cache_dir))
    return ClipDataset(storage, SegmentSampler(8, "val"), ClipEvalTransform(96, 96))


def test_cached_clips_equal_decoded_clips(tiny_synthetic, tmp_path):
    decoded = val_clips(tiny_synthetic, "val.txt")
    cached = val_clips(tiny_synthetic, "val.txt", cache_dir=tmp_path / "cache")
    for i in range(len(decoded)):
        first, again = cached[i], cached[i]  # the first call writes the .npy, the second reads it
        assert torch.equal(first["frames"], decoded[i]["frames"])
        assert torch.equal(again["frames"], decoded[i]["frames"])
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == len(decoded)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_the_generator_writes_the_cache_the_dataset_reads(tmp_path):
    from adafocus_pl.data.synthetic import SyntheticSpec, generate

    generate(tmp_path / "data", SyntheticSpec(num_train=4, num_val=2, num_test=2), workers=1, progress=False,
             decoded_dir=tmp_path / "data" / ".decoded")
    decoded = val_clips(tmp_path / "data", "train.txt")  # decodes the H.264 files
    cached = val_clips(tmp_path / "data", "train.txt", cache_dir=tmp_path / "data" / ".decoded")
    assert len(list((tmp_path / "data" / ".decoded").rglob("*.npy"))) == 8  # every split, before any read
    for i in range(len(decoded)):
        assert torch.equal(cached[i]["frames"], decoded[i]["frames"])


def test_entries_of_the_first_cache_naming_are_renamed_not_decoded_again(tmp_path):
    """A benchmark generated when entries were named by the path alone (videos/train/000000.npy) keeps them:
    the generator renames them to the current keys, and the dataset reads them without decoding."""
    from adafocus_pl.data.decode_cache import _ENTRY
    from adafocus_pl.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(num_train=3, num_val=1, num_test=1)
    data, decoded = tmp_path / "data", tmp_path / "data" / ".decoded"
    generate(data, spec, workers=1, progress=False, decoded_dir=decoded)
    for entry in decoded.rglob("*.npy"):  # back to the first naming
        entry.rename(entry.parent / (_ENTRY.match(entry.name)["name"].removesuffix(".mp4") + ".npy"))
    generate(data, spec, workers=1, progress=False, decoded_dir=decoded)  # current: skipped, entries renamed
    names = sorted(p.name for p in decoded.rglob("*.npy"))
    assert len(names) == 5 and all(_ENTRY.match(n) for n in names)
    cached = val_clips(data, "train.txt", cache_dir=decoded)
    cached.storage._read_clip_decoded = None  # any decoding would fail: every clip must come from the renamed entries
    assert all(cached[i]["frames"].shape == (8, 3, 96, 96) for i in range(3))


def test_first_naming_entries_of_an_earlier_benchmark_never_stand_in_for_regenerated_videos(tmp_path):
    """Entries named by the path alone that were written for an earlier benchmark (another spec) hold other frames:
    regenerating removes them, so a later generate() call (benchmark current) cannot rename them over the fresh
    entries, and every clip read through the cache equals the decoded video."""
    from adafocus_pl.data.decode_cache import _ENTRY
    from adafocus_pl.data.synthetic import SyntheticSpec, generate

    data, decoded = tmp_path / "data", tmp_path / "data" / ".decoded"
    generate(data, SyntheticSpec(num_train=2, num_val=1, num_test=1, seed=1), workers=1, progress=False,
             decoded_dir=decoded)
    for entry in decoded.rglob("*.npy"):  # the earlier benchmark's entries, first naming
        entry.rename(entry.parent / (_ENTRY.match(entry.name)["name"].removesuffix(".mp4") + ".npy"))
    spec = SyntheticSpec(num_train=2, num_val=1, num_test=1, seed=2)
    generate(data, spec, workers=1, progress=False, decoded_dir=decoded)  # another spec: regenerated
    generate(data, spec, workers=1, progress=False, decoded_dir=decoded)  # current: skipped
    assert len(list(decoded.rglob("*.npy"))) == 4
    fresh = val_clips(data, "train.txt")  # decodes the H.264 files
    cached = val_clips(data, "train.txt", cache_dir=decoded)
    cached.storage._read_clip_decoded = None  # every clip from the cache
    for i in range(len(fresh)):
        assert torch.equal(cached[i]["frames"], fresh[i]["frames"])


def test_a_first_naming_entry_older_than_its_video_is_removed_not_renamed(tmp_path):
    from adafocus_pl.data.decode_cache import _ENTRY
    from adafocus_pl.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(num_train=1, num_val=1, num_test=1)
    data, decoded = tmp_path / "data", tmp_path / "data" / ".decoded"
    generate(data, spec, workers=1, progress=False, decoded_dir=decoded)
    entry = next(decoded.rglob("videos/train/*.npy"))
    stale = entry.parent / (_ENTRY.match(entry.name)["name"].removesuffix(".mp4") + ".npy")
    entry.unlink()
    stale.write_bytes(b"frames of another video")
    video = data / "videos" / "train" / "000000.mp4"
    os.utime(stale, ns=(video.stat().st_mtime_ns - 10**9,) * 2)  # written a second before the video
    generate(data, spec, workers=1, progress=False, decoded_dir=decoded)  # current: skipped
    assert not stale.exists() and not list(decoded.rglob("videos/train/*.npy"))


def test_a_missing_video_has_no_cache_entry_and_fails_as_without_a_cache(tmp_path):
    (tmp_path / "l.txt").write_text("missing.mp4 0\n")
    cache = DecodeCache(tmp_path / "cache")
    assert cache.lookup("missing.mp4", tmp_path / "missing.mp4") is None
    ds = ClipDataset(VideoFileStorage(VideoList.read(tmp_path, "l.txt", "video", num_classes=1), cache=cache),
                     SegmentSampler(4, "val"))
    with pytest.raises(FileNotFoundError, match=r"video file \S*missing\.mp4 .* does not exist: check data\.root"):
        ds[0]
