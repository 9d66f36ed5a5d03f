"""The decoded-video cache returns exactly what decoding returns, and is written once, atomically."""

import torch

from adafocus_pl.data.datasets import VideoFileDataset
from adafocus_pl.data.transforms import ClipEvalTransform


def test_cached_clips_equal_decoded_clips(tiny_synthetic, tmp_path):
    common = dict(root=tiny_synthetic, list_file="val.txt", num_segments=8, mode="val",
                  transform=ClipEvalTransform(96, 96), num_classes=10)
    decoded = VideoFileDataset(**common)
    cached = VideoFileDataset(cache_dir=tmp_path / "cache", **common)
    for i in range(len(decoded)):
        first, again = cached[i], cached[i]  # the first call writes the .npy, the second reads it
        assert torch.equal(first["frames"], decoded[i]["frames"])
        assert torch.equal(again["frames"], decoded[i]["frames"])
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == len(decoded)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
