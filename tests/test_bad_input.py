"""Bad input fails before training with a message that names the key, file or list line and the fix.

One table, one row per bad input: each row copies a small, valid frame-folder + video dataset, breaks one thing,
runs ``run_stage`` (which checks config, data and checkpoints before it builds a trainer) and matches the message.
Then ``data.on_bad_sample``: ``error`` names the file at load time, ``skip`` replaces, logs once and counts; and a
DataLoader worker that dies in native code is reported with the video it was reading.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from pathlib import Path

import av
import pytest
import torch
from helpers_video import write_frame_folder, write_video

from adafocus_pl.data.datamodule import DataLoaderWorkerError, VideoDataModule
from adafocus_pl.stages.runner import run_stage
from adafocus_pl.utils.config import compose

FRAME = 32


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    """frames/: 4 folders of 8 JPEG frames (3 classes); videos/: 3 H.264 videos; list and classes files."""
    root = tmp_path_factory.mktemp("good")
    for k in range(4):
        write_frame_folder(root / "frames" / f"v{k}", 8, FRAME, FRAME)
    for k in range(3):
        write_video(root / "videos" / f"a{k}.mp4", 12, FRAME, FRAME)
    (root / "train.txt").write_text("# path,frames,label\nv0,8,0\nv1,8,1\nv2,8,2\n")
    (root / "val.txt").write_text("v3,8,1\n")
    (root / "videos.txt").write_text("a0.mp4 0\na1.mp4 1\na2.mp4 2\n")
    (root / "classes.txt").write_text("jump\nrun\nswim\n")
    return root


def frame_overrides(root: Path, log_dir: Path) -> list[str]:
    return [
        "data.kind=frames", f"data.root={root}/frames", f"data.train_list={root}/train.txt",
        f"data.val_list={root}/val.txt", f"data.test_list={root}/val.txt", f"data.classes_file={root}/classes.txt",
        "data.list_format=comma", "data.num_classes=3", "data.num_segments=4", "data.synthetic=null", "data.boxes=null",
        "data.cache_dir=null", f"data.eval_resize={FRAME}", f"data.eval_crop={FRAME}", "data.batch_size=2",
        "data.num_workers=0", "model.patch_size=16", "model.policy_hidden=16", "model.classifier_hidden=16",
        f"paths.log_dir={log_dir}", "paths.output_dir=${paths.run_dir}", "trainer=cpu", "logger=csv",
        "callbacks.progress_bar=null", "debug=limit", "schedule.stage0.epochs=0",
    ]


def video_overrides(root: Path) -> list[str]:
    return ["data.kind=video", f"data.root={root}/videos", f"data.train_list={root}/videos.txt",
            f"data.val_list={root}/videos.txt", f"data.test_list={root}/videos.txt", "data.list_format=video"]


def stage_checkpoint(path: Path, stage: int, root: Path, *overrides: str) -> Path:
    """A checkpoint as Lightning writes it for a stage (module hyper-parameters, state dict, adafocus_stage)."""
    from hydra.utils import instantiate

    cfg = compose("train", frame_overrides(root, path.parent / "logs") + [f"stage=stage{stage}", *overrides])
    module = instantiate(cfg.stage.module, _recursive_=False, _convert_="all")
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


# --- how each row breaks the good data: f(root) -> extra overrides -------------------------------------------------
def edit(name: str, text: str):
    def apply(root: Path) -> list[str]:
        (root / name).write_text(text)
        return []
    return apply


def overrides(*items: str):
    return lambda root: list(items)


def remove_last_frame(root: Path) -> list[str]:
    (root / "frames" / "v1" / "image_00008.jpg").unlink()
    return []


def list_ghost_folder(root: Path) -> list[str]:
    (root / "train.txt").write_text("v0,8,0\nghost,8,1\n")
    return []


def remove_video(root: Path) -> list[str]:
    (root / "videos" / "a1.mp4").unlink()
    return video_overrides(root)


def videos_with(name: str, make):
    def apply(root: Path) -> list[str]:
        make(root / "videos" / name)
        (root / "videos.txt").write_text(f"a0.mp4 0\n{name} 1\n")
        return [*video_overrides(root), "data.check_files=decode"]
    return apply


def truncate(path: Path) -> None:
    data = (path.parent / "a0.mp4").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty_container(path: Path, codec: str = "libx264") -> None:
    """A container with a video stream header and no frame at all."""
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=25)
    stream.width = stream.height = FRAME
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
    container.close()


def no_video_stream(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(torch.zeros(1, 1024).numpy(), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())


def checkpoint_row(kind: str, stage: int, *ckpt_overrides: str, run: tuple[str, ...] = ()):
    def apply(root: Path) -> list[str]:
        path = stage_checkpoint(root / f"{kind}_stage{stage}.ckpt", stage, root, *ckpt_overrides)
        return [f"{kind}={path}", *run]
    return apply


def truncated_checkpoint(root: Path) -> list[str]:
    path = stage_checkpoint(root / "cut.ckpt", 1, root)
    path.write_bytes(path.read_bytes()[:2000])
    return [f"ckpt_path={path}"]


def boxes_without(root: Path) -> list[str]:
    (root / "boxes.json").write_text('{"v0": [[0, 0, 4, 4]]}')
    return [f"data.boxes={{train:'{root}/boxes.json'}}"]


ROWS = [
    # (id, break, expected message: a regex searched in str(error))
    ("missing data root", overrides("data.root=/nonexistent/frames"),
     r"data root /nonexistent/frames does not exist: set data.root"),
    ("missing list file", overrides("data.val_list=nope.txt"),
     r"data.val_list: list file \S*nope.txt does not exist"),
    ("too few fields", edit("train.txt", "v0,8,0\nv1,8\n"),
     r"train.txt:2: malformed 'comma' list line 'v1,8' \(2 comma-separated fields, need at least 3\)"),
    ("frame count not a number", edit("train.txt", "v0,eight,0\n"),
     r"train.txt:1: malformed 'comma' list line 'v0,eight,0' \(invalid literal for int\(\) .*expected 'path,num_frames"),
    ("negative label", edit("train.txt", "v0,8,-1\n"), r"train.txt:1: .*\(negative value -1\)"),
    ("label outside the classes", edit("train.txt", "v0,8,0\nv1,8,3\n"),
     r"train.txt:2: label\(s\) \[3\] outside \[0, 3\) in line 'v1,8,3'; fix num_classes"),
    ("classes file disagrees with num_classes", edit("classes.txt", "jump\nrun\n"),
     r"classes file \S*classes.txt \(data.classes_file\) lists 2 classes but data.num_classes=3: set "
     r"data.num_classes=2"),
    ("empty split", edit("val.txt", "# nothing yet\n\n"),
     r"data.val_list: list file \S*val.txt has no usable videos \(0 dropped"),
    ("only too-short videos", edit("val.txt", "v3,2,1\n"),
     r"has no usable videos \(1 dropped for having fewer than 3 frames\): add videos to it, or lower data.min_frames"),
    ("frame folder missing", list_ghost_folder,
     r"frame folder \S*frames/ghost \(list line 2 of \S*train.txt\) does not exist"),
    ("missing frames", remove_last_frame,
     r"v1 \(list line 3 of \S*train.txt\) lacks frames: the list says 8 but image_00008.jpg is missing"),
    ("wrong frame template", overrides("data.frame_template='img_{:05d}.png'"),
     r"has no frame img_00001.png: check data.frame_template='img_\{:05d\}.png'"),
    ("missing video file", remove_video, r"video file \S*videos/a1.mp4 \(list line 2 of \S*videos.txt\) does not exist"),
    ("empty video file", videos_with("zero_bytes.mp4", lambda p: p.write_bytes(b"")),
     r"video file \S*zero_bytes.mp4 \(list line 2 of \S*videos.txt\) is empty \(0 bytes\)"),
    ("unreadable video", videos_with("garbage.mp4", lambda p: p.write_bytes(os.urandom(4000))),
     r"cannot decode video \S*garbage.mp4 \(list line 2 of \S*videos.txt\): .*invalid data"),
    ("truncated video", videos_with("cut.mp4", truncate), r"cannot decode video \S*cut.mp4 \(list line 2"),
    ("zero-frame video", videos_with("empty.mkv", empty_container),
     r"cannot decode video \S*empty.mkv .*the file ends before its first video frame"),
    ("no video stream", videos_with("audio.mp4", no_video_stream), r"audio.mp4 .*has no video stream"),
    ("patch as large as the frame", overrides(f"model.patch_size={FRAME}"),
     rf"model.patch_size={FRAME} must be positive and smaller than the frame \(data.eval_crop={FRAME}\)"),
    ("patch size zero", overrides("model.patch_size=0"), r"model.patch_size=0 must be positive"),
    ("empty grid", overrides("model.grid_size=0"), r"model.grid_size=0 leaves no patch candidates"),
    ("T < 1", overrides("data.num_segments=0"), r"data.num_segments=0: T, the frames per video, must be >= 1"),
    ("batch size zero", overrides("data.batch_size=0"), r"data.batch_size=0: must be >= 1"),
    ("unknown on_bad_sample", overrides("data.on_bad_sample=ignore"),
     r"data.on_bad_sample='ignore': use one of error, skip"),
    ("boxes file without a video", boxes_without, r"boxes file \S*boxes.json has no boxes for 2 videos"),
    ("resume from another stage", checkpoint_row("ckpt_path", 2),
     r"ckpt_path=\S*ckpt_path_stage2.ckpt is a stage 2 checkpoint but this run is stage 1: resume it with "
     r"stage=stage2, or start stage 1 from its weights with init_from="),
    ("resume with another class count", checkpoint_row("ckpt_path", 1, "data.num_classes=5"),
     r"was trained with model.num_classes=5 but this run has model.num_classes=3: set model.num_classes=5"),
    ("resume an AdaFocus+ run without plus", checkpoint_row("ckpt_path", 2, "plus=on", run=("stage=stage2",)),
     r"is an AdaFocus\+ checkpoint: resume it with plus=on"),
    ("truncated checkpoint", truncated_checkpoint,
     r"ckpt_path=\S*cut.ckpt cannot be read \(.*\); the file is truncated or not a checkpoint"),
    ("resume checkpoint missing", overrides("ckpt_path=/nonexistent/last.ckpt"),
     r"ckpt_path=/nonexistent/last.ckpt does not exist"),
    ("init_from another patch size", checkpoint_row("init_from", 1, "model.patch_size=24", run=("stage=stage2",)),
     r"init_from=\S*init_from_stage1.ckpt was trained with model.patch_size=24 but this run has "
     r"model.patch_size=16: set model.patch_size=24"),
    ("init_from the wrong stage", checkpoint_row("init_from", 2, run=("stage=stage2",)),
     r"init_from=\S* is a stage 2 checkpoint, but stage 2 starts from stage 1"),
]


@pytest.mark.parametrize("name, breaks, expected", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_stops_before_training_with_a_message_naming_the_fix(good_data, tmp_path, name, breaks,
                                                                       expected):
    root = tmp_path / "data"
    shutil.copytree(good_data, root)
    extra = breaks(root)
    cfg = compose("train", frame_overrides(root, tmp_path / "logs") + extra)
    with pytest.raises(Exception) as failed:
        run_stage(cfg)
    assert re.search(expected, str(failed.value), re.S), f"{name}: {failed.value}"
    run_dir = Path(cfg.paths.output_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()  # nothing ran


def test_the_table_has_twenty_distinct_bad_inputs():
    assert len({row[0] for row in ROWS}) == len(ROWS) >= 20
    assert len({row[2] for row in ROWS}) == len(ROWS)


def test_the_good_data_passes_every_check_and_trains(good_data, tmp_path):
    cfg = compose("train", frame_overrides(good_data, tmp_path / "logs") + ["data.check_files=decode"])
    metrics = run_stage(cfg)
    assert "test/top1" in metrics
    video_cfg = compose("train", frame_overrides(good_data, tmp_path / "logs") + video_overrides(good_data)
                        + ["data.check_files=decode", "data.classes_file=null", "train=false"])
    datamodule = VideoDataModule.from_flat(**{k: v for k, v in video_cfg.data.items() if k != "_target_"})
    assert datamodule.validate() == []


def test_preflight_lists_every_problem_at_once(good_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(good_data, root)
    remove_last_frame(root)
    shutil.rmtree(root / "frames" / "v2")
    cfg = compose("train", frame_overrides(root, tmp_path / "logs"))
    with pytest.raises(ValueError) as failed:
        run_stage(cfg)
    message = str(failed.value)
    assert message.startswith("3 problem(s) found before training (nothing was run):")
    assert "lacks frames" in message and "frames/v2 (list line 4" in message
    assert "train: 2 of 3 videos of" in message and "data.on_bad_sample=skip" in message


# --- problems met while loading a sample: data.on_bad_sample ------------------------------------------------------
def corrupt_frame(root: Path, video: str = "v1", frames: tuple[int, ...] = (3,)) -> None:
    for frame in frames:
        (root / "frames" / video / f"image_{frame:05d}.jpg").write_bytes(b"\xff\xd8 not a jpeg")


def datamodule(root: Path, **kwargs) -> VideoDataModule:
    return VideoDataModule.from_flat(kind="frames", root=root / "frames", train_list=str(root / "train.txt"),
                                     val_list=str(root / "val.txt"), num_classes=3, num_segments=8, batch_size=2,
                                     num_workers=0, eval_resize=FRAME, eval_crop=FRAME, train_size=FRAME, **kwargs)


def test_on_bad_sample_error_names_the_file_even_from_a_worker(good_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(good_data, root)
    corrupt_frame(root)
    dm = datamodule(root)
    assert dm.validate() == []  # the file is there: only decoding finds the problem
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=r"cannot decode frame \S*v1/image_00003.jpg.*re-extract") as failed:
        dm.datasets["train"][1]
    assert any("data.on_bad_sample=skip" in note for note in failed.value.__notes__)
    dm.loading = dataclasses.replace(dm.loading, num_workers=1)
    loader = dm._loader("train", shuffle=False)
    with pytest.raises(RuntimeError, match=r"(?s)DataLoader worker process 0.*cannot decode frame \S*v1/image_00003"):
        list(loader)


def test_on_bad_sample_skip_replaces_logs_once_and_counts(good_data, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(good_data, root)
    corrupt_frame(root)
    dm = datamodule(root, on_bad_sample="skip")
    dm.setup("fit")
    dataset = dm.datasets["train"]
    with caplog.at_level(logging.WARNING, logger="adafocus_pl.data.datasets"):
        samples = [dataset[i] for i in range(3)] + [dataset[1]]
    assert [int(s["index"]) for s in samples] == [0, 2, 2, 2]  # video 1 is replaced by the next loadable one
    warnings = [r.getMessage() for r in caplog.records if "skipping a video" in r.getMessage()]
    assert len(warnings) == 1 and "v1/image_00003.jpg" in warnings[0] and "1 skipped so far" in warnings[0]
    assert [r.path for r in dataset.bad_records()] == ["v1"] and list(dm.bad_records()) == ["train"]
    dm.loading = dataclasses.replace(dm.loading, num_workers=1)  # a worker's skips are seen by the main process (shared memory)
    dm.datasets.clear()
    dm.setup("fit")
    batches = list(dm._loader("train", shuffle=False))
    assert sum(len(b["index"]) for b in batches) == 3
    assert [r.path for r in dm.datasets["train"].bad_records()] == ["v1"]


def test_a_run_with_skip_trains_and_lists_the_skipped_videos(good_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(good_data, root)
    corrupt_frame(root, frames=tuple(range(1, 9)))  # whatever frames training samples
    shutil.rmtree(root / "frames" / "v2")  # found before training: a warning with skip, not an error
    cfg = compose("train", frame_overrides(root, tmp_path / "logs") + ["data.on_bad_sample=skip"])
    metrics = run_stage(cfg)
    assert metrics["data/skipped_videos"] == 2
    listed = (Path(cfg.paths.output_dir) / "skipped_videos.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in listed[1:]) == ["v1", "v2"]


# --- a DataLoader worker that dies in native code -------------------------------------------------------------------
def test_a_crashed_worker_surfaces_the_video_it_was_reading(good_data, tmp_path, capfd):
    cfg = compose("train", frame_overrides(good_data, tmp_path / "logs") + [
        "data.num_workers=1", "trainer.max_epochs=2",
        "+callbacks.crash._target_=tests.kill_callback.CrashWorkerOn", "+callbacks.crash.video=v1"])
    with pytest.raises(DataLoaderWorkerError) as died:
        run_stage(cfg)
    message = str(died.value)
    assert re.search(r"a DataLoader worker died while reading \S*frames/v1 \(list line 3 of \S*train.txt\): "
                     r"DataLoader worker \(pid(\(s\))? \d+\) (exited unexpectedly|is killed by signal: Segmentation fault)",
                     message), message
    assert "data.num_workers=0" in message and "out-of-memory" in message
    assert "Fatal Python error: Segmentation fault" in capfd.readouterr().err  # the worker's stack (faulthandler)


def _raised_in(filename: str, error: BaseException) -> BaseException:
    """``error`` as raised by code in ``filename`` (its traceback names that file)."""
    try:
        exec(compile("raise error", filename, "exec"), {"error": error})
    except BaseException as raised:  # noqa: BLE001 - the point is to catch exactly what was raised
        return raised
    raise AssertionError("not raised")


def test_a_worker_dying_while_it_hands_over_a_batch_is_explained_too(good_data):
    """A worker killed while the main process takes a batch from it can surface as a broken connection inside the
    shared-memory hand-over, before PyTorch notices the dead worker: it is explained like PyTorch's own message."""
    dm = datamodule(good_data)
    dm.loading = dataclasses.replace(dm.loading, num_workers=1)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))  # one worker reads a batch, then exits with its loader
    dataset = dm.datasets["train"]
    assert len(dataset.worker_pids()) == 1
    handover = _raised_in(os.path.join("x", "multiprocessing", "resource_sharer.py"),
                          ConnectionResetError(104, "Connection reset by peer"))
    explained = dm.explain_worker_failure(handover)
    assert isinstance(explained, DataLoaderWorkerError)
    assert re.search(rf"DataLoader worker \(pid\(s\) {dataset.worker_pids()[0]}\) exited unexpectedly", str(explained))
    # the same error from anywhere else (e.g. a logger's socket) is not a dead worker
    assert dm.explain_worker_failure(_raised_in("elsewhere.py", ConnectionResetError(104, "reset"))) is None


def test_other_errors_are_not_mistaken_for_a_dead_worker(good_data):
    dm = datamodule(good_data)
    assert dm.explain_worker_failure(RuntimeError("CUDA out of memory")) is None
    assert dm.explain_worker_failure(ValueError("DataLoader worker (pid 1) exited unexpectedly")) is None
    explained = dm.explain_worker_failure(RuntimeError("DataLoader worker (pid(s) 12) exited unexpectedly"))
    assert "between videos" in str(explained)
