"""Domain: which workspace paths and workspace names are acceptable, before any I/O.

These checks refuse early and explain why; they are not what keeps a path inside
its workspace — the file-descriptor walk in the filesystem adapter is. A path is
a relative sequence of plain names: no absolute paths, no `.` or `..`, no empty
components, no NUL or other control characters, no backslashes, bounded lengths.
"""

from __future__ import annotations

import re
import unicodedata

MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255
MAX_DEPTH = 32
WORKSPACE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class PathRefused(ValueError):
    """A path or workspace name that is refused; the message says why."""


def path_parts(path: str, *, allow_root: bool = False) -> list[str]:
    """The components of a workspace-relative path.

    Args:
        path: as the agent wrote it (`notes/today.txt`).
        allow_root: accept "." / "" meaning the workspace itself (for listings).

    Raises:
        PathRefused: with the reason.
    """
    if not isinstance(path, str):
        raise PathRefused("must be a string")
    if len(path) > MAX_PATH_CHARS:
        raise PathRefused(f"is longer than {MAX_PATH_CHARS} characters")
    if "\x00" in path:
        raise PathRefused("contains a NUL character")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in path):
        raise PathRefused("contains control or format characters")
    if "\\" in path:
        raise PathRefused("contains a backslash; use '/' between names")
    if path.startswith("/") or path.startswith("~"):
        raise PathRefused("must be relative to the workspace")
    # Fullwidth and other compatibility forms of '.' and '/' fold to the ASCII ones
    # under NFKC; refuse anything that would read as a traversal once normalised.
    folded = unicodedata.normalize("NFKC", path)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    folded_parts = [p for p in folded.split("/") if p not in ("", ".")]
    if ".." in parts or ".." in folded_parts or folded.startswith("/"):
        raise PathRefused("must not climb out of the workspace ('..')")
    if not parts:
        if allow_root:
            return []
        raise PathRefused("names no file")
    if len(parts) > MAX_DEPTH:
        raise PathRefused(f"is nested deeper than {MAX_DEPTH} levels")
    for part in parts:
        if len(part.encode()) > MAX_NAME_BYTES:
            raise PathRefused(f"has a name longer than {MAX_NAME_BYTES} bytes")
    return parts


def workspace_parts(name: str) -> list[str]:
    """The directory segments of a workspace name (`agent-1` or `agent-1/task-9`).

    Raises:
        PathRefused: when the name is not one or two plain segments.
    """
    segments = name.split("/")
    if not 1 <= len(segments) <= 2 or not all(WORKSPACE_SEGMENT.fullmatch(s) for s in segments):
        raise PathRefused(
            "must be one or two segments of letters, digits, '.', '_', ':' or '-', "
            "starting alphanumeric"
        )
    if any(s in (".", "..") or s.strip(".") == "" for s in segments):
        raise PathRefused("must not be '.' or '..'")
    return segments
