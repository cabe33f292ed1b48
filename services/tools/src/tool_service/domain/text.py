"""Domain: turning file bytes into lines, and telling text from binary."""

from __future__ import annotations

from collections.abc import Callable

SNIFF_BYTES = 8192


def is_binary(data: bytes) -> bool:
    """True for data that is not UTF-8 text (a NUL byte, or undecodable bytes, near the start)."""
    head = data[:SNIFF_BYTES]
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut by the sniff window is still text (but data that
        # really ends mid-character is not: the window cut nothing there).
        cut = len(data) > len(head) and e.start >= len(head) - 3
        return not (cut and e.reason == "unexpected end of data")
    return False


def decode_text(data: bytes) -> str:
    """Text of a file that `is_binary` accepted (invalid bytes past the sniff window replaced)."""
    return data.decode("utf-8", errors="replace")


def lines_of(text: str) -> list[str]:
    r"""The lines of `text`, as both line tools number them.

    Lines end at "\n" or "\r\n"; a final line ending closes the last line rather
    than opening an empty one.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def slice_lines(
    text: str, start: int, end: int | None, max_lines: int
) -> tuple[list[str], int, bool]:
    """Lines `start`..`end` (1-based, inclusive), at most `max_lines` of them.

    Returns:
        (lines, total line count, whether the slice was cut at `max_lines`).
    """
    lines = lines_of(text)
    total = len(lines)
    last = total if end is None else min(end, total)
    selected = lines[start - 1 : last] if start <= last else []
    truncated = len(selected) > max_lines
    return selected[:max_lines], total, truncated


def matching_lines(
    data: bytes, find: Callable[[bytes, int], int | None], limit: int
) -> tuple[list[tuple[int, str]], bool]:
    """(line number, line) of each line holding a match, at most `limit`; and whether cut.

    `find(data, pos)` gives the byte offset of the next match at or after `pos`. Matches
    must not span lines (compile the pattern so it never matches a newline): then one
    search from each matching line's end finds the next matching line, instead of one
    search per line. Works on the UTF-8 bytes: a regex engine handed a str converts the
    whole text on every call.
    """
    data = data.replace(b"\r\n", b"\n")
    out: list[tuple[int, str]] = []
    pos, number, counted_to, size = 0, 1, 0, len(data)
    while pos <= size:
        start = find(data, pos)
        if start is None or (start >= size and (not data or data.endswith(b"\n"))):
            break
        number += data.count(b"\n", counted_to, start)
        counted_to = start
        line_start = data.rfind(b"\n", 0, start) + 1
        line_end = data.find(b"\n", start)
        if line_end == -1:
            line_end = size
        if len(out) == limit:
            return out, True
        out.append((number, data[line_start:line_end].decode("utf-8", errors="replace")))
        pos = line_end + 1
    return out, False
