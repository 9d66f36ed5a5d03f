"""Frame-folder and encoded-video datasets, the datamodule, frame extraction and the data benchmark.

Every frame carries its index in its grey level (tests/helpers_video.py), so the frames a sample returns can be
checked against the indices the sampler drew.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers_video import CountingContainer, level_to_index, write_frame_folder, write_video

from adafocus_pl.data.datamodule import VideoDataModule
from adafocus_pl.data.datasets import Boxes, ClipDataset
from adafocus_pl.data.listfile import VideoList
from adafocus_pl.data.sampling import SegmentSampler
from adafocus_pl.data.storage import FrameFolderStorage, VideoFileStorage
from adafocus_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ClipEvalTransform, ClipTrainTransform


def frame_indices(frames: torch.Tensor) -> list[int]:
    return [level_to_index(frame.float().mean()) for frame in frames]


def frame_dataset(root, list_file, list_format, sampler, transform=None, num_classes=None, **storage) -> ClipDataset:
    """Frame folders of ``list_file`` read through the dataset's pieces (list, storage, sampler, transform)."""
    videos = VideoList.read(root, list_file, list_format, num_classes=num_classes)
    return ClipDataset(FrameFolderStorage(videos, **storage), sampler, transform)


def video_dataset(root, list_file, sampler, transform=None, num_classes=None, boxes_file=None,
                  **storage) -> ClipDataset:
    """Encoded videos of a ``video``-format ``list_file``, as :func:`frame_dataset`."""
    videos = VideoList.read(root, list_file, "video", num_classes=num_classes)
    boxes = Boxes(root / boxes_file, videos) if boxes_file else None
    return ClipDataset(VideoFileStorage(videos, **storage), sampler, transform, boxes)


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory):
    """Frame folders (one with a space in its name, one too short) and a comma list with a multi-label row."""
    root = tmp_path_factory.mktemp("frames")
    write_frame_folder(root / "cls a" / "vid 1", 20)
    write_frame_folder(root / "vid2", 6)
    write_frame_folder(root / "tiny", 2)
    (root / "list.txt").write_text("cls a/vid 1,20,2\nvid2,6,0,3\ntiny,2,1\n")
    (root / "list_space.txt").write_text("cls a/vid 1 20 2\nvid2 6 0\n")
    (root / "video_list.txt").write_text("cls a/vid 1 2\nvid2 0\n")
    return root


@pytest.fixture(scope="module")
def videos_root(tmp_path_factory):
    """Short mp4 + webm (no frame count in the header) + a long mp4 with short GOPs (exercises seeking)."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "train" / "a clip.mp4", 20)
    write_video(root / "train" / "b.webm", 12, codec="libvpx-vp9")
    write_video(root / "long.mp4", 600, height=16, width=16, gop=12)
    (root / "list.txt").write_text("train/a clip.mp4 1\ntrain/b.webm 0,2\nlong.mp4 3\n")
    boxes = {"train/a clip": [[k, 1, k + 10, 12] for k in range(20)], "train/b": [[0, 0, 5, 5]] * 12,
             "long": [[0, 0, 1, 1]] * 600}
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


# -- frame folders ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("list_name", "list_format"), [("list.txt", "comma"), ("list_space.txt", "space")])
def test_frame_folder_val_returns_the_sampled_frames(frames_root, list_name, list_format):
    ds = frame_dataset(frames_root, list_name, list_format, SegmentSampler(8, "val"), num_classes=4)
    assert len(ds) == 2 and ds.num_dropped == (1 if list_format == "comma" else 0)
    sample = ds[0]
    assert sample["frames"].dtype == torch.uint8 and sample["frames"].shape == (8, 3, 32, 48)
    assert frame_indices(sample["frames"]) == SegmentSampler(8, "val")(20)
    assert frame_indices(ds[1]["frames"]) == [0, 1, 2, 3, 4, 5, 5, 5]  # short video: last frame repeated
    assert sample["label"].dtype == torch.int64 and int(sample["label"]) == 2
    assert int(sample["index"]) == 0


def test_frame_folder_multilabel_target(frames_root):
    sample = frame_dataset(frames_root, "list.txt", "comma", SegmentSampler(4, "val"), num_classes=5)[1]
    assert sample["target"].dtype == torch.float32
    assert sample["target"].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert int(sample["label"]) == 0  # the first label


def test_frame_folder_train_is_seeded_and_transformed(frames_root):
    ds = frame_dataset(frames_root, "list.txt", "comma", SegmentSampler(4, "train"), num_classes=4,
                       transform=ClipTrainTransform(size=24, scales=(1.0, 0.75)))
    a = ds.sample(0, torch.Generator().manual_seed(1))
    b = ds.sample(0, torch.Generator().manual_seed(1))
    assert torch.equal(a["frames"], b["frames"]) and a["frames"].shape == (4, 3, 24, 24)
    expected = SegmentSampler(4, "train")(20, torch.Generator().manual_seed(1))  # the sampler draws first
    assert frame_indices(a["frames"]) == expected


def test_frame_folder_template_and_first_index(tmp_path):
    write_frame_folder(tmp_path / "v", 5, template="{:06d}.jpg", first_index=0)
    (tmp_path / "l.txt").write_text("v 5 0\n")
    ds = frame_dataset(tmp_path, "l.txt", "space", SegmentSampler(5, "val"), num_classes=1,
                       frame_template="{:06d}.jpg", first_index=0)
    assert frame_indices(ds[0]["frames"]) == [0, 1, 2, 3, 4]


def test_frame_folder_counts_frames_for_video_lists(frames_root):
    ds = frame_dataset(frames_root, frames_root / "video_list.txt", "video", SegmentSampler(4, "val"))
    assert ds.num_frames(ds.records[0]) == 20 and ds.num_classes == 3


def test_missing_frame_names_the_file(tmp_path):
    write_frame_folder(tmp_path / "v", 4)
    (tmp_path / "l.txt").write_text("v,9,0\n")
    ds = frame_dataset(tmp_path, "l.txt", "comma", SegmentSampler(9, "val"), num_classes=1)
    with pytest.raises(FileNotFoundError, match=r"image_0000[5-9]\.jpg.*frame_template"):
        ds[0]


def test_missing_root_and_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="data root"):
        VideoList.read(tmp_path / "absent", "l.txt", "comma")
    with pytest.raises(FileNotFoundError, match="l.txt"):
        VideoList.read(tmp_path, "l.txt", "comma")


# -- encoded videos -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["val", "train"])
def test_video_dataset_returns_the_sampled_frames(videos_root, mode):
    ds = video_dataset(videos_root, "list.txt", SegmentSampler(6, mode), num_classes=4)
    for index, num_frames in enumerate([20, 12, 600]):
        for seed in range(3 if mode == "train" else 1):
            sample = ds.sample(index, torch.Generator().manual_seed(seed))
            expected = SegmentSampler(6, mode)(num_frames, torch.Generator().manual_seed(seed))
            assert frame_indices(sample["frames"]) == [i % 28 for i in expected]
    assert ds.storage._counts.tolist() == [20, 12, 600]  # container counts cached (webm: counted packets)
    assert ds[1]["target"].tolist() == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(("seek_min_gap", "max_decoded"), [(20, 4 * 12), (10_000, 600)])
def test_video_dataset_seeks_in_long_videos(videos_root, monkeypatch, seek_min_gap, max_decoded):
    ds = video_dataset(videos_root, "list.txt", SegmentSampler(4, "val"), num_classes=4, seek_min_gap=seek_min_gap)
    decoded: list = []
    open_video = ds.storage._open

    def counting_open(record):
        container, stream = open_video(record)
        return CountingContainer(container, decoded), stream

    monkeypatch.setattr(ds.storage, "_open", counting_open)
    expected = SegmentSampler(4, "val")(600)
    assert frame_indices(ds[2]["frames"]) == [i % 28 for i in expected]
    # seeking: at most one GOP (12 frames) per needed frame; sequential: stops after the last needed frame
    assert len(decoded) <= max_decoded
    if seek_min_gap == 20:
        assert len(decoded) < expected[-1] / 4
    else:
        assert len(decoded) == expected[-1] + 1


def test_iter_clip_gives_read_clips_frames_one_at_a_time_decoding_only_up_to_the_one_asked_for(videos_root,
                                                                                                  monkeypatch):
    ds = video_dataset(videos_root, "list.txt", SegmentSampler(4, "val"), num_classes=4, seek_min_gap=20)
    storage, record = ds.storage, ds.records[2]  # 600 frames, GOP 12: read with seeks
    frames, indices = storage.read_clip(record, SegmentSampler(6, "val"))
    pairs = list(storage.iter_clip(record, SegmentSampler(6, "val")))
    assert [i for i, _ in pairs] == indices and torch.equal(torch.stack([f for _, f in pairs]), frames)

    decoded: list = []
    open_video = storage._open

    def counting_open(r):
        container, stream = open_video(r)
        return CountingContainer(container, decoded), stream

    monkeypatch.setattr(storage, "_open", counting_open)
    all(storage.iter_clip(record, SegmentSampler(6, "val")))
    everything, decoded[:] = len(decoded), []
    lazily = storage.iter_clip(record, SegmentSampler(6, "val"))
    next(lazily), next(lazily)
    lazily.close()  # the consumer stops after two frames: at most a GOP decoded for each of them
    assert 2 <= len(decoded) <= 2 * 12 < everything
    with pytest.raises(ValueError, match="in increasing order"):
        next(storage.iter_clip(record, lambda n: [5, 3]))
    # a short video repeats its last frame as read_clip does
    short = list(storage.iter_clip(ds.records[1], SegmentSampler(14, "val")))
    assert [i for i, _ in short] == list(range(12)) + [11, 11]


def test_video_boxes_follow_the_sampled_frames(videos_root):
    ds = video_dataset(videos_root, "list.txt", SegmentSampler(4, "val"), num_classes=4, boxes_file="boxes.json",
                       transform=ClipEvalTransform(resize=32, crop=32))
    sample = ds[0]
    indices = SegmentSampler(4, "val")(20)
    assert sample["boxes"].dtype == torch.float32 and sample["boxes"].shape == (4, 4)
    x_scale = 32 / 48  # square resize of 32x48 frames to 32x32
    assert torch.allclose(sample["boxes"][:, 0], torch.tensor(indices, dtype=torch.float32) * x_scale)


def test_missing_boxes_key_is_reported(videos_root, tmp_path):
    (tmp_path / "partial.json").write_text(json.dumps({"train/a clip": [[0, 0, 1, 1]] * 20}))
    with pytest.raises(KeyError, match="train/b"):
        video_dataset(videos_root, "list.txt", SegmentSampler(4, "val"), boxes_file=tmp_path / "partial.json")


def test_frame_counts_found_by_a_worker_reach_the_main_process(videos_root):
    ds = video_dataset(videos_root, "list.txt", SegmentSampler(4, "val"), num_classes=4,
                       transform=ClipEvalTransform(resize=16, crop=16))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)  # a fork would copy a plain tensor
    batch = next(iter(loader))
    assert batch["frames"].shape == (3, 4, 3, 16, 16)
    assert ds.storage._counts.tolist() == [20, 12, 600]  # written by the worker into the shared cache


def test_unreadable_video_names_the_file(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(os.urandom(2000))
    (tmp_path / "l.txt").write_text("bad.mp4 0\nmissing.mp4 0\n")
    ds = video_dataset(tmp_path, "l.txt", SegmentSampler(4, "val"), num_classes=1)
    with pytest.raises(Exception, match="bad.mp4"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        ds[1]


# -- datamodule -----------------------------------------------------------------------------------------------
def test_datamodule_frames_batches_and_device_normalisation(frames_root):
    dm = VideoDataModule.from_flat(kind="frames", root=frames_root, train_list="list.txt", val_list="list.txt",
                                   test_list=str(frames_root / "list.txt"), list_format="comma", num_classes=4,
                                   num_segments=4, train_size=16, scales=(1.0, 0.875), eval_resize=20,
                                   eval_crop=16, batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (2, 4, 3, 16, 16) and batch["frames"].dtype == torch.uint8
    assert batch["label"].shape == (2,) and batch["target"].shape == (2, 4)
    val = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert val["frames"].dtype == torch.float32 and val["frames"].shape == (2, 4, 3, 16, 16)
    first = SegmentSampler(4, "val")(20)[0]
    level = 20 + 8 * first  # the grey level of that frame (helpers_video.index_level)
    expected = (level / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(val["frames"][0, 0, :, 8, 8], expected, atol=0.05)
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 2 and dm.num_classes == 4


def test_datamodule_video_kind_with_a_worker_and_lightning_hook(videos_root):
    import pytorch_lightning as pl

    dm = VideoDataModule.from_flat(kind="video", root=videos_root, train_list="list.txt",
                                   list_format="video", num_classes=4, num_segments=4, train_size=16, scales=(1.0,),
                                   flip=False, eval_resize=16, eval_crop=16, boxes={"train": "boxes.json"},
                                   batch_size=3, num_workers=1)
    # capped when DataLoader workers decode (FFmpeg's thread per core in every worker would oversubscribe the CPU)
    assert dm.loading.decoder_threads == 1
    seen = {}

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 4)

        def training_step(self, batch, batch_idx):
            seen["frames"], seen["boxes"] = batch["frames"], batch["boxes"]
            return self.layer(batch["frames"].mean((1, 3, 4))).logsumexp(-1).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.fit(Probe(), datamodule=dm)
    assert seen["frames"].dtype == torch.float32 and seen["frames"].shape == (3, 4, 3, 16, 16)
    assert seen["frames"].min() < 0  # normalised, not just scaled
    assert seen["boxes"].shape == (3, 4, 4)


def test_datamodule_rejects_unknown_kind_and_skips_unconfigured_splits(frames_root):
    with pytest.raises(ValueError, match="kind"):
        VideoDataModule.from_flat(kind="audio")
    dm = VideoDataModule.from_flat(root=frames_root, train_list="list.txt", num_classes=4, num_workers=0)
    assert dm.val_dataloader() == [] and dm.test_dataloader() == []
    assert len(dm.train_dataloader().dataset) == 2


def test_the_flat_data_config_is_sorted_into_groups_and_an_unknown_key_is_named(frames_root):
    dm = VideoDataModule.from_flat(root=frames_root, train_list="list.txt", num_classes=4, num_segments=5,
                                   batch_size=3, num_workers=0, check_files="stat", eval_crop=16)
    assert (dm.source.root, dm.sampling.num_segments, dm.loading.batch_size) == (frames_root, 5, 3)
    assert (dm.checks.check_files, dm.transforms.eval_crop) == ("stat", 16)
    with pytest.raises(TypeError, match=r"data\.num_segmnets"):
        VideoDataModule.from_flat(root=frames_root, num_segmnets=8)


# -- frame extraction and benchmark ---------------------------------------------------------------------------
def test_extract_frames_tree_reads_back_and_resumes(tmp_path):
    from adafocus_pl.data.extract_frames import main

    src, out = tmp_path / "src", tmp_path / "out"
    write_video(src / "jumping" / "j 1.mp4", 10)
    write_video(src / "swimming" / "s1.webm", 7, codec="libvpx-vp9")
    assert main([str(src), str(out), "--height", "16"]) == 0
    assert (out / "classes.txt").read_text().split() == ["jumping", "swimming"]
    assert sorted((out / "list.txt").read_text().splitlines()) == ["jumping/j 1,10,0", "swimming/s1,7,1"]
    ds = frame_dataset(out, "list.txt", "comma", SegmentSampler(5, "val"), num_classes=2)
    sample = ds[0]
    assert sample["frames"].shape == (5, 3, 16, 24)  # 32x48 resized to height 16, aspect kept
    assert frame_indices(sample["frames"]) == SegmentSampler(5, "val")(10)
    first = out / "jumping" / "j 1" / "image_00001.jpg"
    stamp = first.stat().st_mtime_ns
    assert main([str(src), str(out), "--height", "16"]) == 0
    assert first.stat().st_mtime_ns == stamp  # resumed: nothing re-extracted


def test_extract_frames_with_labels_fps_and_space_format(tmp_path):
    from adafocus_pl.data.extract_frames import main

    src, out = tmp_path / "src", tmp_path / "out"
    write_video(src / "a.mp4", 20, fps=20)
    (tmp_path / "labels.txt").write_text("a.mp4 4\n")
    assert main([str(src), str(out), "--labels", str(tmp_path / "labels.txt"), "--format", "space",
                 "--fps", "10", "--template", "{:05d}.jpg"]) == 0
    assert (out / "list.txt").read_text() == "a 10 4\n"
    ds = frame_dataset(out, "list.txt", "space", SegmentSampler(10, "val"), num_classes=5,
                       frame_template="{:05d}.jpg")
    assert frame_indices(ds[0]["frames"]) == list(range(0, 20, 2))  # every second source frame


def test_benchmark_smoke(videos_root, frames_root, tmp_path, capsys):
    from adafocus_pl.data.benchmark import main

    out = tmp_path / "bench.json"
    code = main(["--videos-root", str(videos_root), "--video-list", "list.txt", "--frames-root", str(frames_root),
                 "--frames-list", "list.txt", "--num-segments", "4", "--workers", "0", "--limit", "2",
                 "--repeats", "1", "--size", "16", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["loader"] for r in rows] == ["raw PyAV decode", "raw PyAV decode + to_ndarray", "VideoFileDataset",
                                           "FrameFolderDataset"]
    assert all(r["clips_per_s"] > 0 and r["clips"] == 2 for r in rows)
    assert "clips/s" in capsys.readouterr().out
