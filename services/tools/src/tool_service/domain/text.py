"""Domain: turning file bytes into lines, and telling text from binary."""

from __future__ import annotations

SNIFF_BYTES = 8192


def is_binary(data: bytes) -> bool:
    """True for data that is not UTF-8 text (a NUL byte, or undecodable bytes, near the start)."""
    head = data[:SNIFF_BYTES]
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut by the sniff window is still text.
        return not (e.start >= len(head) - 3 and e.reason == "unexpected end of data")
    return False


def decode_text(data: bytes) -> str:
    """Text of a file that `is_binary` accepted (invalid bytes past the sniff window replaced)."""
    return data.decode("utf-8", errors="replace")


def slice_lines(
    text: str, start: int, end: int | None, max_lines: int
) -> tuple[list[str], int, bool]:
    """Lines `start`..`end` (1-based, inclusive), at most `max_lines` of them.

    Returns:
        (lines, total line count, whether the slice was cut at `max_lines`).
    """
    lines = text.splitlines()
    total = len(lines)
    last = total if end is None else min(end, total)
    selected = lines[start - 1 : last] if start <= last else []
    truncated = len(selected) > max_lines
    return selected[:max_lines], total, truncated
