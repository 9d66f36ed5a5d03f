"""The decoded-video cache returns exactly what decoding returns, and is written once, atomically."""

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


def test_a_missing_video_has_no_cache_entry_and_fails_as_without_a_cache(tmp_path):
    (tmp_path / "l.txt").write_text("missing.mp4 0\n")
    cache = DecodeCache(tmp_path / "cache")
    assert cache.lookup("missing.mp4", tmp_path / "missing.mp4") is None
    ds = ClipDataset(VideoFileStorage(VideoList.read(tmp_path, "l.txt", "video", num_classes=1), cache=cache),
                     SegmentSampler(4, "val"))
    with pytest.raises(FileNotFoundError, match=r"video file \S*missing\.mp4 .* does not exist: check data\.root"):
        ds[0]
