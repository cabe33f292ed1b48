"""Unit tier: the pure rules of the tools domain (paths, text, results).

The URL and address policy fetch_url applies is the kit's: `libs/kit/tests/test_kit_urls.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tool_service.domain.paths import (
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_PATH_CHARS,
    PathRefused,
    path_parts,
    workspace_parts,
)
from tool_service.domain.text import (
    SNIFF_BYTES,
    decode_text,
    is_binary,
    lines_of,
    matching_lines,
    slice_lines,
)
from tool_service.domain.tools import Artifact, ToolFailure, ToolResult

# ------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("notes.txt", ["notes.txt"]),
        ("notes/today.txt", ["notes", "today.txt"]),
        ("./notes//today.txt/", ["notes", "today.txt"]),
        ("a/./b", ["a", "b"]),
        ("...", ["..."]),
        ("..hidden", ["..hidden"]),
        ("répertoire/naïve.md", ["répertoire", "naïve.md"]),
        ("a\uff0fb", ["a\uff0fb"]),  # a fullwidth solidus inside a name is just a character of it
    ],
)
def test_path_parts_splits_plain_relative_paths(path: str, parts: list[str]) -> None:
    assert path_parts(path) == parts


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (123, "must be a string"),
        ("a\x00b", "NUL"),
        ("a\nb", "control or format"),
        ("a\x7fb", "control or format"),
        ("a\u200bb", "control or format"),  # zero-width space
        ("evil\u202etxt.exe", "control or format"),  # right-to-left override
        ("a\\b", "backslash"),
        ("..\\etc\\passwd", "backslash"),
        ("/etc/passwd", "relative"),
        ("~/secrets", "relative"),
        ("~root", "relative"),
        ("..", "climb out"),
        ("../etc/passwd", "climb out"),
        ("a/../../b", "climb out"),
        ("a/b/..", "climb out"),
        ("\uff0e\uff0e/etc/passwd", "climb out"),  # fullwidth full stops fold to '..'
        ("a/\uff0e\uff0e/b", "climb out"),
        ("\u2025/x", "climb out"),  # TWO DOT LEADER folds to '..'
        ("\uff0fetc/passwd", "climb out"),  # fullwidth solidus folds to '/'
        ("\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fetc", "climb out"),
        ("a\uff0f\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fb", "climb out"),
        ("", "names no file"),
        (".", "names no file"),
        ("./", "names no file"),
        ("x" * (MAX_PATH_CHARS + 1), "longer than"),
        ("/".join(["d"] * (MAX_DEPTH + 1)), "deeper"),
        ("n" * (MAX_NAME_BYTES + 1), "name longer"),
        ("é" * (MAX_NAME_BYTES // 2 + 1), "name longer"),  # bytes, not characters
    ],
)
def test_path_parts_refuses_with_the_reason(path: object, reason: str) -> None:
    with pytest.raises(PathRefused, match=reason):
        path_parts(path)  # type: ignore[arg-type]


def test_path_parts_accepts_the_limits_exactly() -> None:
    assert len(path_parts("/".join(["d"] * MAX_DEPTH))) == MAX_DEPTH
    assert path_parts("n" * MAX_NAME_BYTES) == ["n" * MAX_NAME_BYTES]


@pytest.mark.parametrize("path", ["", ".", "./", ".//."])
def test_path_parts_allows_the_workspace_itself_only_when_asked(path: str) -> None:
    assert path_parts(path, allow_root=True) == []
    with pytest.raises(PathRefused):
        path_parts(path)


def test_allow_root_still_refuses_climbing_out() -> None:
    with pytest.raises(PathRefused, match="climb out"):
        path_parts("..", allow_root=True)
    with pytest.raises(PathRefused, match="relative"):
        path_parts("/", allow_root=True)


@pytest.mark.parametrize(
    ("name", "segments"),
    [
        ("agent-1", ["agent-1"]),
        ("agent-1/task-9", ["agent-1", "task-9"]),
        ("A.b_c:d-e", ["A.b_c:d-e"]),
        ("x" * 128, ["x" * 128]),
    ],
)
def test_workspace_parts_accepts_one_or_two_plain_segments(name: str, segments: list[str]) -> None:
    assert workspace_parts(name) == segments


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/..",
        "../a",
        "a/b/c",
        "/a",
        "a/",
        "a//b",
        "-a",
        ".hidden",
        "_a",
        "a b",
        "a\\b",
        "x" * 129,
        "\uff41gent",  # fullwidth letters are not ASCII letters
        "agent\n",
    ],
)
def test_workspace_parts_refuses_anything_else(name: str) -> None:
    with pytest.raises(PathRefused):
        workspace_parts(name)


# ------------------------------------------------------------------- text


def test_text_is_not_binary() -> None:
    assert not is_binary(b"")
    assert not is_binary(b"hello\nworld\n")
    assert not is_binary("naïve café — ☃\n".encode())


def test_nul_or_invalid_utf8_is_binary() -> None:
    assert is_binary(b"abc\x00def")
    assert is_binary(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert is_binary(b"caf\xe9")  # Latin-1, not UTF-8, ending mid-"character"
    assert is_binary(b"caf\xe9s")
    assert is_binary(b"\xff\xfeh\x00i\x00")


def test_a_character_cut_by_the_sniff_window_is_still_text() -> None:
    for char in ("é", "€", "😀"):  # 2, 3 and 4 bytes
        encoded = char.encode()
        for cut in range(1, len(encoded)):
            data = b"a" * (SNIFF_BYTES - cut) + encoded + b"tail"
            assert not is_binary(data), (char, cut)
            assert decode_text(data).endswith(char + "tail")


def test_invalid_bytes_near_the_sniff_window_edge_are_still_binary() -> None:
    assert is_binary(b"a" * (SNIFF_BYTES - 1) + b"\xff" + b"text")
    assert is_binary(b"a" * (SNIFF_BYTES - 2) + b"\xe2\x28" + b"text")  # bad continuation


def test_data_that_really_ends_mid_character_is_binary() -> None:
    assert is_binary(b"a" * (SNIFF_BYTES - 1) + b"\xe2")  # exactly the window: nothing cut
    assert is_binary(b"short \xe2\x82")


def test_only_the_start_of_the_data_is_sniffed() -> None:
    data = b"a" * SNIFF_BYTES + b"\x00\xff"
    assert not is_binary(data)
    assert decode_text(data).endswith("\x00\ufffd")


def test_slice_lines_returns_an_inclusive_one_based_range() -> None:
    text = "one\ntwo\nthree\nfour\n"
    assert slice_lines(text, 1, None, 100) == (["one", "two", "three", "four"], 4, False)
    assert slice_lines(text, 2, 3, 100) == (["two", "three"], 4, False)
    assert slice_lines(text, 4, 4, 100) == (["four"], 4, False)


def test_slice_lines_clamps_to_the_text() -> None:
    text = "one\ntwo\n"
    assert slice_lines(text, 2, 99, 100) == (["two"], 2, False)
    assert slice_lines(text, 3, None, 100) == ([], 2, False)
    assert slice_lines(text, 50, 60, 100) == ([], 2, False)
    assert slice_lines("", 1, None, 100) == ([], 0, False)


def test_slice_lines_cuts_at_max_lines_and_says_so() -> None:
    text = "\n".join(str(n) for n in range(1, 11))
    assert slice_lines(text, 1, None, 3) == (["1", "2", "3"], 10, True)
    assert slice_lines(text, 8, None, 3) == (["8", "9", "10"], 10, False)
    assert slice_lines(text, 5, 7, 3) == (["5", "6", "7"], 10, False)


def test_slice_lines_counts_windows_line_endings_as_one() -> None:
    assert slice_lines("a\r\nb\r\n", 1, None, 10) == (["a", "b"], 2, False)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("", []),
        ("a", ["a"]),
        ("a\nb", ["a", "b"]),
        ("a\nb\n", ["a", "b"]),
        ("a\r\nb\r\n", ["a", "b"]),
        ("\n", [""]),
        ("a\n\n", ["a", ""]),
        ("\nz", ["", "z"]),
    ],
)
def test_lines_end_at_newlines_and_a_final_newline_closes_the_last(
    text: str, lines: list[str]
) -> None:
    assert lines_of(text) == lines


def finder(pattern: str) -> Callable[[bytes, int], int | None]:
    regex = re.compile(pattern.encode(), re.MULTILINE)

    def find(data: bytes, pos: int) -> int | None:
        match = regex.search(data, pos)
        return match.start() if match else None

    return find


def test_matching_lines_numbers_each_matching_line_once() -> None:
    data = b"one\ntwo\nthree\ntttt\n"
    assert matching_lines(data, finder("t"), 10) == (
        [(2, "two"), (3, "three"), (4, "tttt")],
        False,
    )
    assert matching_lines(data, finder("^o"), 10) == ([(1, "one")], False)
    assert matching_lines(data, finder("zzz"), 10) == ([], False)


def test_matching_lines_stops_at_the_limit_only_when_more_match() -> None:
    data = b"t1\nt2\nx\nt3\n"
    assert matching_lines(data, finder("t"), 2) == ([(1, "t1"), (2, "t2")], True)
    assert matching_lines(data, finder("t"), 3) == ([(1, "t1"), (2, "t2"), (4, "t3")], False)


@pytest.mark.parametrize(
    ("data", "pattern", "expected"),
    [
        (b"", "", []),
        (b"a\nb", "", [(1, "a"), (2, "b")]),
        (b"a\nb\n", "", [(1, "a"), (2, "b")]),
        (b"a\nb\n", "$", [(1, "a"), (2, "b")]),
        (b"\n\n", "^", [(1, ""), (2, "")]),
        (b"a\r\nb\r\n", "b$", [(2, "b")]),
        (b"caf\xc3\xa9\nno\xff\n", "no", [(2, "no\ufffd")]),
    ],
)
def test_matching_lines_agrees_with_the_line_numbers_read_lines_uses(
    data: bytes, pattern: str, expected: list[tuple[int, str]]
) -> None:
    assert matching_lines(data, finder(pattern), 100) == (expected, False)
    lines = lines_of(decode_text(data))
    assert all(lines[n - 1] == line for n, line in expected)


# ------------------------------------------------------------------ tools


def test_tool_result_survives_its_document_form() -> None:
    result = ToolResult(
        content="wrote 3 bytes",
        data={"filename": "a.txt", "nested": {"list": [1, 2.5, None, True]}},
        artifacts=(
            Artifact("file", "a.txt", "text/plain", 3),
            Artifact("file", "downloads/b.md"),
        ),
        bytes=3,
    )
    doc = json.loads(json.dumps(result.to_document()))
    assert ToolResult.from_document(doc) == result
    assert not ToolResult.from_document(doc).failed


def test_a_failed_result_survives_its_document_form() -> None:
    result = ToolResult(error_code="NOT_FOUND", error_message="a.txt does not exist")
    back = ToolResult.from_document(result.to_document())
    assert back == result
    assert back.failed


def test_documents_written_before_byte_counts_still_load() -> None:
    doc = ToolResult(content="x").to_document()
    del doc["bytes"]
    assert ToolResult.from_document(doc).bytes == 0


def test_tool_failure_becomes_a_failed_result() -> None:
    failure = ToolFailure("TOO_LARGE", "a.bin is 9 bytes; at most 4 are read", bytes_used=9)
    assert str(failure) == "a.bin is 9 bytes; at most 4 are read"
    result = failure.result()
    assert result.failed
    assert (result.error_code, result.error_message, result.bytes) == (
        "TOO_LARGE",
        "a.bin is 9 bytes; at most 4 are read",
        9,
    )
    assert result.content == ""
    assert result.artifacts == ()
