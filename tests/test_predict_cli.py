"""``python -m adafocus_pl.predict``: which arguments are videos, output names that never replace another video's
outputs, every readable video predicted when others fail (exit code 1), and user errors in one line (exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_video import write_video

from adafocus_pl.predict import UserError, main, parse_args


@pytest.fixture
def predict(plus_chain, tiny_synthetic, tmp_path):
    """``predict(*args)`` -> ``main`` with the Stage I checkpoint of the chain, writing to ``tmp_path/out``."""
    dirs, _ = plus_chain
    ckpt = dirs["stage1"] / "checkpoints" / "last.ckpt"

    def _predict(*args: str, ckpt_path: Path | str = ckpt):
        # the overrides first: whatever follows a "--" in args is a video
        return main([f"ckpt_path={ckpt_path}", f"predict.out_dir={tmp_path / 'out'}", f"data.root={tiny_synthetic}",
                     *args])

    return _predict


def record(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


# ------------------------------------------------------------------------------------------------ arguments
def test_existing_files_and_everything_after_double_dash_are_videos_other_equals_are_overrides(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("watch?v=abc.mp4").write_bytes(b"")
    args = parse_args(["watch?v=abc.mp4", "ckpt_path=x.ckpt", "predict.top_k=2", "missing.mp4", "--traceback",
                       "--", "k=v.mp4", "--help"])
    assert args.videos == ["watch?v=abc.mp4", "missing.mp4", "k=v.mp4", "--help"]
    assert args.overrides == ["ckpt_path=x.ckpt", "predict.top_k=2"]
    assert args.traceback and not args.help
    with pytest.raises(UserError, match="unknown option --trace .*after --"):
        parse_args(["clip.mp4", "--trace"])


def test_names_with_equals_and_videos_after_double_dash_are_predicted(predict, tmp_path, capsys):
    out = tmp_path / "out"
    clip = write_video(tmp_path / "watch?v=abc.mp4", 12)
    after = write_video(tmp_path / "k=v.mp4", 12)
    # `nope=1.mp4` would be a valid override ("could not override 'nope'", exit code 2); after -- it is a video
    with pytest.raises(SystemExit) as exit_info:
        predict(str(clip), "--", str(after), "nope=1.mp4")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "cannot predict nope=1.mp4: video file nope=1.mp4 does not exist" in err
    assert record(out, "watch?v=abc.mp4")["path"] == str(clip.resolve())
    assert record(out, "k=v.mp4")["path"] == str(after.resolve())
    assert (out / "watch?v=abc.mp4.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ output names
def test_outputs_never_replace_another_videos_and_a_video_replaces_its_own(predict, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    videos = [write_video(Path("clip.mp4"), 12), write_video(Path("clip.webm"), 12, codec="libvpx-vp9"),
              write_video(Path("a/clip.mp4"), 12), write_video(Path("b/clip.mp4"), 12),
              write_video(Path("other.mp4"), 12)]
    out.mkdir()
    (out / "other.mp4.png").write_bytes(b"an image of unknown origin")
    results = predict(*map(str, videos))
    names = ["clip.mp4", "clip.webm", "clip.mp4-2", "clip.mp4-3", "other.mp4-2"]
    assert [r["figure"] for r in results] == [str(out / f"{name}.png") for name in names]
    for video, name in zip(videos, names):
        assert record(out, name)["video"] == str(video)
        assert record(out, name)["path"] == str((tmp_path / video).resolve())
    assert (out / "other.mp4.png").read_bytes() == b"an image of unknown origin"
    before = {name: (out / f"{name}.json").read_text() for name in names}

    # a later call: b/clip.mp4 (named by another relative path) replaces its own outputs, c/clip.mp4 gets a new name
    (out / "clip.mp4-3.json").write_text(before["clip.mp4-3"].replace('"probability"', '"p"'))  # marks the old one
    monkeypatch.chdir(tmp_path / "a")
    again = predict("../b/clip.mp4", str(write_video(tmp_path / "c" / "clip.mp4", 12)))
    assert [r["figure"] for r in again] == [str(out / "clip.mp4-3.png"), str(out / "clip.mp4-4.png")]
    assert record(out, "clip.mp4-3")["top_k"][0]["probability"] >= 0  # replaced
    assert record(out, "clip.mp4-4")["path"] == str((tmp_path / "c" / "clip.mp4").resolve())
    for name in ("clip.mp4", "clip.webm", "clip.mp4-2", "other.mp4-2"):
        assert (out / f"{name}.json").read_text() == before[name], name  # not replaced


# ------------------------------------------------------------------------------------------------ bad videos
def test_each_unreadable_video_is_reported_and_the_others_are_predicted(predict, tmp_path, capsys):
    out = tmp_path / "out"
    good = write_video(tmp_path / "good.mp4", 12)
    short = write_video(tmp_path / "short.mp4", 2)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        predict(str(tmp_path / "missing.mp4"), str(folder), str(notes), str(short), str(good))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 5, captured.err  # one per failed video, and the summary
    assert "missing.mp4" in lines[0] and "does not exist" in lines[0]
    assert "folder" in lines[1] and "is a directory" in lines[1]
    assert lines[2].startswith(f"error: cannot predict {notes}: ")  # the reason is the dataset's
    assert lines[3].startswith(f"error: cannot predict {short}: ") and "data.min_frames" in lines[3]
    assert lines[4].startswith("predicted 1 of 5 videos") and "short.mp4" in lines[4]
    assert "Traceback" not in captured.err
    assert (out / "good.mp4.json").is_file() and not (out / "short.mp4.json").exists()
    # what training refuses is refused here; a lower data.min_frames lets it through
    assert len(predict(str(short), "++data.min_frames=2")) == 1


def test_a_broken_video_between_two_good_ones_through_the_command(plus_chain, tiny_synthetic, tmp_path):
    dirs, _ = plus_chain
    first, last = write_video(tmp_path / "first.mp4", 12), write_video(tmp_path / "last.webm", 12,
                                                                       codec="libvpx-vp9")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(first.read_bytes()[:300])  # a truncated download
    out = tmp_path / "out"
    # -W default: DeprecationWarnings too would show
    proc = subprocess.run([sys.executable, "-W", "default", "-m", "adafocus_pl.predict", str(first), str(broken),
                           str(last), f"ckpt_path={dirs['stage3_plus'] / 'checkpoints' / 'last.ckpt'}",
                           f"predict.out_dir={out}", f"data.root={tiny_synthetic}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert (out / "first.mp4.png").stat().st_size > 1000 and (out / "last.webm.png").stat().st_size > 1000
    assert record(out, "first.mp4")["top_k"] and record(out, "last.webm")["top_k"]
    assert not list(out.glob("broken*"))
    assert proc.stdout.count("| 1 |") == 2
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2, proc.stderr
    assert errors[0].startswith(f"error: cannot predict {broken}: ")
    assert errors[1].startswith("predicted 2 of 3 videos") and errors[1].endswith(f"failed: {broken}")
    for noise in ("Traceback", "FutureWarning", "DeprecationWarning"):
        assert noise not in proc.stderr, noise


# ------------------------------------------------------------------------------------------------ user errors
@pytest.mark.parametrize("case", ["missing checkpoint", "not a checkpoint", "class count", "override syntax",
                                  "unknown key", "bad value", "no video"])
def test_user_errors_are_one_line_and_exit_code_2(predict, tmp_path, capsys, case):
    video = str(write_video(tmp_path / "clip.mp4", 12))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00" * 64)
    args, kwargs, expected = {
        "missing checkpoint": ([video], {"ckpt_path": tmp_path / "nope.ckpt"}, "nope.ckpt"),
        "not a checkpoint": ([video], {"ckpt_path": junk}, "junk.ckpt"),
        "class count": ([video, "data.num_classes=7"], {}, "has 10 classes but data=synthetic has 7"),
        "override syntax": ([video, "predict.top_k=[1,"], {}, "cannot parse the override 'predict.top_k=[1,'"),
        "unknown key": ([video, "predict.nope=1"], {}, "Could not override 'predict.nope'"),
        "bad value": ([video, "predict.backend=fast"], {}, "predict.backend=fast: use one of eager"),
        "no video": ([], {}, "no video given"),
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        predict(*args, **kwargs)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and expected in lines[0], err
    assert len(lines) == (2 if case == "no video" else 1), err  # a usage error adds the usage line
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "clip.mp4.json").exists()


def test_traceback_option_shows_the_traceback(predict, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict("--traceback", str(write_video(tmp_path / "clip.mp4", 12)), ckpt_path=tmp_path / "nope.ckpt")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and ("FileNotFoundError" in err or "MissingCheckpointError" in err)
    assert err.strip().splitlines()[-1].startswith("error: ")
