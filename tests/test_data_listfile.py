"""The list-file formats of the authors' release."""

from __future__ import annotations

import pytest

from adafocus_pl.data.listfile import VideoRecord, parse_list_file, video_key


def write(tmp_path, text: str, name: str = "list.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_comma_multilabel_comments_blank_lines_and_short_videos(tmp_path):
    path = write(tmp_path, "# ActivityNet-style\nv_a,120,3\n\nv_b,45,1,7,9\nv_short,2,0\nv_c , 3 , 5\n")
    records, dropped = parse_list_file(path, "comma")
    assert dropped == 1
    assert records == [
        VideoRecord("v_a", 120, (3,), 2),
        VideoRecord("v_b", 45, (1, 7, 9), 4),
        VideoRecord("v_c", 3, (5,), 6),
    ]
    assert records[1].label == 1


def test_space_format_path_with_spaces(tmp_path):
    path = write(tmp_path, "some class/my clip 01 37 5\nplain 10 2\n")
    records, dropped = parse_list_file(path, "space")
    assert dropped == 0
    assert [(r.path, r.num_frames, r.labels) for r in records] == [("some class/my clip 01", 37, (5,)), ("plain", 10, (2,))]


def test_video_format_multilabel_spaces_and_key(tmp_path):
    path = write(tmp_path, "videos/train/000001 copy.mp4 3,7\nvideos/val/x.webm 0\n")
    records, dropped = parse_list_file(path, "video", min_frames=100)
    assert dropped == 0  # no frame count in this format: nothing can be dropped
    assert records[0].path == "videos/train/000001 copy.mp4"
    assert records[0].num_frames is None and records[0].labels == (3, 7)
    assert records[0].key == "videos/train/000001 copy"
    assert records[1].key == "videos/val/x"


def test_key_keeps_dots_of_frame_folders():
    assert video_key("videos/train/000123") == "videos/train/000123"
    assert video_key("clips/a.b.c") == "clips/a.b.c"
    assert video_key("clips/a.MP4") == "clips/a"


def test_min_frames_is_configurable(tmp_path):
    path = write(tmp_path, "a,3,0\nb,10,1\n")
    assert parse_list_file(path, "comma", min_frames=3)[1] == 0
    records, dropped = parse_list_file(path, "comma", min_frames=5)
    assert dropped == 1 and [r.path for r in records] == ["b"]


@pytest.mark.parametrize(
    ("fmt", "bad_line"),
    [
        ("comma", "v_a,12"),
        ("comma", "v_a,twelve,3"),
        ("comma", "v_a,12,3,"),
        ("comma", "v_a,12,-1"),
        ("space", "onlytwo 12"),
        ("space", "path 12 x"),
        ("space", "path 1.5 3"),
        ("video", "lonely.mp4"),
        ("video", "a.mp4 3;4"),
    ],
)
def test_malformed_line_names_file_line_and_expectation(tmp_path, fmt, bad_line):
    good = {"comma": "ok,10,1", "space": "ok 10 1", "video": "ok.mp4 1"}[fmt]
    path = write(tmp_path, f"{good}\n# comment\n{bad_line}\n")
    with pytest.raises(ValueError) as info:
        parse_list_file(path, fmt)
    message = str(info.value)
    assert f"{path}:3" in message
    assert bad_line in message
    assert "expected" in message


def test_label_out_of_range(tmp_path):
    path = write(tmp_path, "a,10,1\nb,10,0,10\n")
    assert len(parse_list_file(path, "comma", num_classes=11)[0]) == 2
    with pytest.raises(ValueError, match=rf"{path}:2.*\[0, 10\)"):
        parse_list_file(path, "comma", num_classes=10)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        parse_list_file(tmp_path / "nope.txt", "comma")
    with pytest.raises(ValueError, match="unknown list format"):
        parse_list_file(write(tmp_path, "a,1,1\n"), "tabs")
