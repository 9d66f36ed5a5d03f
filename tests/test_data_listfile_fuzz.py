"""Property-based tests (hypothesis) of the list-file parser: every well-formed row round-trips, and any text at all
either parses or fails with a ValueError that names the file and line (never another exception)."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adafocus_pl.data.listfile import LIST_FORMATS, parse_list_file

# paths as users write them: letters, digits, / _ - . and inner spaces (no commas for the comma format, no
# leading '#', which starts a comment, and no leading/trailing blanks, which the parser strips)
_PATH = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_/.\- ]{0,30}[A-Za-z0-9_]", fullmatch=True)
_LABELS = st.lists(st.integers(0, 199), min_size=1, max_size=3)


def _row(fmt: str, path: str, frames: int, labels: list[int]) -> str:
    if fmt == "comma":
        return ",".join([path, str(frames), *map(str, labels)])
    if fmt == "space":
        return f"{path} {frames} {labels[0]}"
    return f"{path} {','.join(map(str, labels))}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(LIST_FORMATS),
       rows=st.lists(st.tuples(_PATH, st.integers(0, 10_000), _LABELS), min_size=1, max_size=8))
def test_well_formed_rows_round_trip(tmp_path, fmt, rows):
    rows = [(p, f, labels if fmt != "space" else labels[:1]) for p, f, labels in rows]
    path = tmp_path / f"list_{fmt}.txt"
    path.write_text("# a comment\n\n" + "".join(_row(fmt, *r) + "\n" for r in rows), encoding="utf-8")
    records, dropped = parse_list_file(path, fmt, min_frames=3, num_classes=200)
    expected = [(p, None if fmt == "video" else f, tuple(labels), line)
                for line, (p, f, labels) in enumerate(rows, start=3) if fmt == "video" or f >= 3]
    assert [(r.path, r.num_frames, r.labels, r.line) for r in records] == expected
    assert dropped == len(rows) - len(expected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(LIST_FORMATS),
       lines=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b"
                                                                          "\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                              max_size=40), min_size=1, max_size=6),
       num_classes=st.none() | st.integers(1, 50))
def test_any_text_parses_or_names_the_file_and_line(tmp_path, fmt, lines, num_classes):
    path = tmp_path / f"fuzz_{fmt}.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    try:
        records, dropped = parse_list_file(path, fmt, min_frames=3, num_classes=num_classes)
    except ValueError as err:
        match = re.match(rf"{re.escape(str(path))}:(\d+): ", str(err))
        assert match, str(err)
        assert 1 <= int(match.group(1)) <= len(lines)
        return
    for record in records:  # what parsed is sane
        assert record.path and record.path == record.path.strip()
        assert all(label >= 0 and (num_classes is None or label < num_classes) for label in record.labels)
        assert record.num_frames is None or record.num_frames >= 3
    assert len(records) + dropped <= len(lines)
