"""Adapter: workspaces on the local filesystem, confined with file descriptors.

Containment never relies on string checks. Every path is opened relative to the
workspace's directory descriptor either with `openat2(2)` and
`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (Linux 5.6+, one
system call, the kernel refuses any escape or link), or, where that call is not
available, by walking one name at a time with `openat(2)` and `O_NOFOLLOW`. A
path component is never looked up twice, so a link swapped in between a check
and a use finds nothing to exploit: the open that would follow it fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from tool_service.application.ports import Entry
from tool_service.domain.paths import PathRefused, workspace_parts
from tool_service.domain.tools import ToolFailure

SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
CONFINED = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = CONFINED) -> int:
    """Open `path` beneath `dir_fd` with the given resolve restrictions (openat2(2))."""
    how = _OpenHow(flags, mode, resolve)
    fd = _libc.syscall(
        SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def openat2_available() -> bool:
    """Whether the kernel (and any seccomp filter) lets this process call openat2."""
    try:
        fd = os.open(".", DIR_FLAGS)
        try:
            os.close(openat2(fd, ".", DIR_FLAGS))
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def _refusal(e: OSError, shown: str) -> Exception:
    """The error to raise for a failed open of `shown`."""
    if e.errno == errno.ELOOP:
        return PathRefused(f"{shown} goes through a symbolic link")
    if e.errno == errno.EXDEV:
        return PathRefused(f"{shown} leads outside the workspace")
    if e.errno == errno.ENOENT:
        return ToolFailure("NOT_FOUND", f"{shown} does not exist")
    if e.errno == errno.ENOTDIR:
        return ToolFailure("NOT_FOUND", f"{shown}: a parent is not a directory")
    if e.errno == errno.EACCES:
        return ToolFailure("ACCESS_DENIED", f"{shown} is not accessible")
    if e.errno == errno.ENAMETOOLONG:
        return PathRefused(f"{shown} is too long")
    return ToolFailure("IO_ERROR", f"{shown}: {e.strerror}")


def _is_link(dir_fd: int, name: str) -> bool:
    """Whether `name` in `dir_fd` is a symbolic link (for error messages only)."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class ConfinedWorkspace:
    """One workspace, held open as a directory descriptor."""

    def __init__(self, fd: int, use_openat2: bool) -> None:
        self._fd = fd
        self._openat2 = use_openat2

    # -------------------------------------------------------------- descriptors

    def _open_in(self, dir_fd: int, name: str, flags: int, mode: int = 0) -> int:
        """Open one name in `dir_fd` without following a link."""
        return os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)

    def _dir(self, parts: Sequence[str], shown: str, create: bool = False) -> int:
        """A new descriptor for directory `parts` (created, with `create`)."""
        if not parts:
            return os.dup(self._fd)
        if self._openat2 and not create:
            try:
                return openat2(self._fd, "/".join(parts), DIR_FLAGS)
            except OSError as e:
                raise _refusal(e, shown) from None
        fd = os.dup(self._fd)
        part = ""
        try:
            for part in parts:
                try:
                    child = self._open_in(fd, part, DIR_FLAGS)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                    child = self._open_in(fd, part, DIR_FLAGS)
                os.close(fd)
                fd = child
        except OSError as e:
            error = _refusal(e, shown)
            if e.errno == errno.ENOTDIR and _is_link(fd, part):
                # O_NOFOLLOW | O_DIRECTORY reports a link as "not a directory".
                error = PathRefused(f"{shown} goes through a symbolic link")
            os.close(fd)
            raise error from None
        return fd

    def _open_file(self, parts: Sequence[str], shown: str) -> int:
        if self._openat2:
            try:
                return openat2(self._fd, "/".join(parts), READ_FLAGS)
            except OSError as e:
                raise _refusal(e, shown) from None
        parent = self._dir(parts[:-1], shown)
        try:
            return self._open_in(parent, parts[-1], READ_FLAGS)
        except OSError as e:
            raise _refusal(e, shown) from None
        finally:
            os.close(parent)

    # ---------------------------------------------------------------- the port

    def read_bytes(self, parts: Sequence[str], max_bytes: int) -> bytes:
        """The file's content; refuses links, non-regular files and files over `max_bytes`."""
        shown = "/".join(parts)
        fd = self._open_file(parts, shown)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ToolFailure("IS_A_DIRECTORY", f"{shown} is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise ToolFailure("NOT_A_FILE", f"{shown} is not a regular file")
            if info.st_size > max_bytes:
                raise ToolFailure(
                    "TOO_LARGE", f"{shown} is {info.st_size} bytes; at most {max_bytes} are read"
                )
            chunks, total = [], 0
            while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise ToolFailure("TOO_LARGE", f"{shown} grew past {max_bytes} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write_bytes(self, parts: Sequence[str], data: bytes, overwrite: bool) -> None:
        """Create the file (or atomically replace it, with `overwrite`); never follows a link."""
        shown = "/".join(parts)
        parent = self._dir(parts[:-1], shown, create=True)
        name = parts[-1]
        try:
            if not overwrite:
                try:
                    fd = self._open_in(
                        parent, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                    )
                except FileExistsError:
                    raise ToolFailure(
                        "ALREADY_EXISTS", f"{shown} exists; pass overwrite=true to replace it"
                    ) from None
                self._write_all(fd, data)
                return
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                    raise ToolFailure("IS_A_DIRECTORY", f"{shown} is a directory")
            temporary = f".{name[:200]}.{uuid.uuid4().hex}.tmp"
            fd = self._open_in(
                parent, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            try:
                self._write_all(fd, data)
                # rename replaces a link at `name` itself; it never writes through one.
                os.replace(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=parent)
                raise
        except OSError as e:
            raise _refusal(e, shown) from None
        finally:
            os.close(parent)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, parts: Sequence[str]) -> None:
        """Remove a regular file (links and directories are refused)."""
        shown = "/".join(parts)
        parent = self._dir(parts[:-1], shown)
        try:
            try:
                info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except OSError as e:
                raise _refusal(e, shown) from None
            if stat.S_ISDIR(info.st_mode):
                raise ToolFailure(
                    "IS_A_DIRECTORY", f"{shown} is a directory; only files are deleted"
                )
            if stat.S_ISLNK(info.st_mode):
                raise PathRefused(f"{shown} is a symbolic link")
            try:
                os.unlink(parts[-1], dir_fd=parent)  # unlink never follows a link
            except OSError as e:
                raise _refusal(e, shown) from None
        finally:
            os.close(parent)

    def list(self, parts: Sequence[str], limit: int) -> list[Entry]:
        """Entries of the directory, sorted by name (links listed, never followed)."""
        shown = "/".join(parts) or "."
        fd = self._dir(parts, shown)
        try:
            entries: list[Entry] = []
            with os.scandir(fd) as it:
                for item in it:
                    try:
                        info = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while we listed
                    if stat.S_ISLNK(info.st_mode):
                        kind = "symlink"
                    elif stat.S_ISDIR(info.st_mode):
                        kind = "directory"
                    elif stat.S_ISREG(info.st_mode):
                        kind = "file"
                    else:
                        kind = "other"
                    entries.append(Entry(item.name, kind, info.st_size if kind == "file" else 0))
            entries.sort(key=lambda e: e.name)
            return entries[:limit]
        finally:
            os.close(fd)

    def exists(self, parts: Sequence[str]) -> bool:
        """Whether something exists at `parts` (a link counts; it is not followed)."""
        shown = "/".join(parts)
        try:
            parent = self._dir(parts[:-1], shown)
        except ToolFailure:
            return False
        try:
            os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(parent)
        return True


class ConfinedWorkspaces:
    """Workspaces under one root directory, created on first use (mode 0700)."""

    def __init__(self, root: Path, *, use_openat2: bool | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root.resolve()
        self.use_openat2 = openat2_available() if use_openat2 is None else use_openat2
        self._root_fd = os.open(self.root, DIR_FLAGS)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[ConfinedWorkspace]:
        """The workspace called `name` (validated segments, each opened without following links)."""
        segments = workspace_parts(name)  # before taking a descriptor that a refusal would leak
        fd = os.dup(self._root_fd)
        try:
            for segment in segments:
                try:
                    child = os.open(segment, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(segment, 0o700, dir_fd=fd)
                    child = os.open(segment, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as e:
            os.close(fd)
            raise PathRefused(f"workspace {name!r} cannot be opened: {e.strerror}") from None
        try:
            yield ConfinedWorkspace(fd, self.use_openat2)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the root descriptor."""
        os.close(self._root_fd)
