"""Adapter: the code sandbox: every program in a fresh bubblewrap sandbox.

A program runs as

    sh (joins the slot's cgroups) → setpriv (the slot's own uid, when the service is
    root) → prlimit (rlimits) → bwrap (namespaces, mounts, seccomp) → interpreter

with new user, pid, network (nothing but its own loopback), mount, IPC, UTS and
cgroup namespaces; `--new-session`, `--die-with-parent`, no capabilities,
`no_new_privs`, further user namespaces disabled, and the seccomp allowlist
(`tool_service.adapters.seccomp`). The filesystem is a read-only root holding only
the runtime (interpreter, standard library, the libraries they load), the harness
and the program under /sandbox, the caller's input files under /workspace, a proc
of its own, a minimal /dev, and size-bounded tmpfs folders: /tmp, the home folder
and /output. The environment is cleared. Every limit is hard: wall time (the
service kills the sandbox), CPU time, address space or data size, processes, open
files, file size (rlimits, always), memory and processes again in a cgroup where
the host allows (`tool_service.adapters.cgroups`), and output (the service kills a
program that writes more than allowed).

Concurrency is bounded by slots: each has its own uid (when the service is root,
so RLIMIT_NPROC counts that sandbox's processes only) and its own cgroups. When no
sandbox can be built the status says why and nothing runs, unless the loudly named
development setting allows unsandboxed runs (rlimits only, NO isolation).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from tool_service.adapters.cgroups import Counters, Slots, open_slots
from tool_service.adapters.runtimes import RuntimeImage, discover
from tool_service.adapters.seccomp import SeccompUnsupported, seccomp_program
from tool_service.domain.sandbox import (
    AgentEvent,
    Execution,
    Finished,
    Killed,
    Language,
    Limits,
    OutputFile,
    Program,
    Progress,
    SandboxStatus,
    SourceFile,
    ToolCall,
)
from tool_service.errors import SandboxUnavailable

log = logging.getLogger(__name__)

HARNESS = Path(__file__).resolve().parent.parent / "sandbox_harness"
SANDBOX_UID = 1000
HOME = "/home/sandbox"
MAX_AGENT_LINE = 1024 * 1024  # an agent's progress line or tool call
MAX_OUTPUT_FILES = 100  # as many as the harness reports
UID_BLOCKS = 256  # tools processes (as root) on one host, each with its own slot uids
MAX_TOOL_CALLS = 1000
# Memory errors as each runtime reports them, when no cgroup says so.
_OUT_OF_MEMORY = re.compile(
    rb"MemoryError|JavaScript heap out of memory|Fatal process out of memory|"
    rb"Cannot allocate memory|std::bad_alloc|out of memory|Array buffer allocation failed",
    re.IGNORECASE,
)
_V8_ALLOCATION_FAILED = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGTRAP, signal.SIGBUS})
_SAFE_PART = re.compile(r"^[A-Za-z0-9._ -]{1,255}$")


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How sandboxes are built (from the tools service's settings)."""

    bwrap: str = "bwrap"
    python: str = "/usr/bin/python3"
    node: str = "node"
    max_concurrent: int = 16
    # Slot n runs as uid `uid_base + block * max_concurrent + n` (only when the service runs
    # as root); the block is this process's own among those on the host (`_UidBlock`).
    uid_base: int = 200_000
    cgroups: str = "auto"  # auto | v2 | v1 | off
    # DEVELOPMENT ONLY: run code without any isolation when no sandbox can be built.
    unsafe_unsandboxed: bool = False
    defaults: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class _Files:
    """What one sandbox sees besides the runtime: harness, code and input files."""

    harness: str  # harness file name under HARNESS
    code: bytes
    inputs: tuple[SourceFile, ...] = ()


class _Run:
    """One program in one sandbox: spawned, watched, ended, cleaned up."""

    def __init__(
        self,
        sandbox: CodeSandbox,
        slot: int,
        image: RuntimeImage,
        files: _Files,
        limits: Limits,
        *,
        stdin: bytes = b"",
        interactive: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.sandbox, self.slot, self.image, self.files, self.limits = (
            sandbox,
            slot,
            image,
            files,
            limits,
        )
        self.stdin, self.interactive, self.env = stdin, interactive, dict(env or {})
        self.reports: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._truncated = {"stdout": False, "stderr": False}
        self._written = 0
        self._killed = ""
        self._timed_out = False
        self._commands: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._started = 0.0
        self._before = Counters()
        self._first_output: float | None = None
        self.files_out: list[OutputFile] = []
        self._raw_reports: list[bytes] = []
        self._pipes: list[_Pipe] = []
        self._max_rss_kb = 0
        self.files_dropped = 0

    # ------------------------------------------------------------------ spawn

    def _spawn(self) -> list[int]:
        """Start the process; the descriptors the child got, to close here."""
        limits = self.limits
        slots = self.sandbox.slots
        # The cgroup also holds the tmpfs pages (/tmp, home, /dev/shm, /output): the program's
        # memory limit plus what its folders may hold.
        folders_mb = 3 * limits.scratch_mb + limits.output_dir_mb
        self._before = slots.prepare(
            self.slot, (limits.memory_mb + folders_mb) * 1024 * 1024, limits.pids
        )
        child_fds: list[int] = []
        report_r, report_w = os.pipe()
        child_fds.append(report_w)
        env = {"AGENTRT_REPORT_FD": str(report_w), **self.env}
        if self.interactive:
            command_r, command_w = os.pipe()
            child_fds.append(command_r)
            env["AGENTRT_COMMAND_FD"] = str(command_r)
            self._commands = os.fdopen(command_w, "wb", buffering=0)
        stdin_fd = _memfd("stdin", self.stdin)
        try:
            if self.sandbox.isolated:
                argv, fds = self._bwrap(env)
            else:
                argv, fds = self._unsandboxed(env)
            child_fds.extend(fds)
            self._process = subprocess.Popen(  # noqa: S603 - argv built from validated parts
                argv,
                stdin=stdin_fd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=child_fds,
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin"},
            )
        except BaseException:
            for fd in child_fds:
                os.close(fd)
            os.close(report_r)
            raise
        finally:
            os.close(stdin_fd)
        self._started = time.monotonic()
        self._report_r = report_r
        return child_fds

    def _prefix(self) -> list[str]:
        """Sh (cgroups) → setpriv (uid) → prlimit: what runs before bwrap."""
        sandbox = self.sandbox
        argv: list[str] = []
        procs = sandbox.slots.procs_files(self.slot)
        if procs:
            script = "".join(f"echo $$ > {shlex.quote(p)} && " for p in procs) + 'exec "$@"'
            argv += ["/bin/sh", "-c", script, "sh"]
        if sandbox.root:
            uid = str(sandbox.uid(self.slot))
            argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        return argv + self._rlimits()

    def _rlimits(self) -> list[str]:
        """Prlimit with the program's rlimits."""
        limits, sandbox = self.limits, self.sandbox
        memory = limits.memory_mb * 1024 * 1024
        # V8 reserves address space it never touches: for Node.js bound the data, not the space.
        address_space = memory if self.image.python else memory + 8 * 1024 * 1024 * 1024
        cpu = limits.cpu_limit
        return [
            "prlimit",
            f"--as={address_space}",
            f"--data={memory}",
            f"--cpu={cpu}:{cpu + 1}",
            f"--nproc={sandbox.nproc(limits.pids)}",
            f"--nofile={limits.open_files}",
            f"--fsize={limits.file_size_mb * 1024 * 1024}",
            "--core=0",
            "--",
        ]

    def _command(self, code_path: str) -> list[str]:
        image = self.image
        harness = f"{self._harness_dir()}/{self.files.harness}"
        if image.python:
            return image.command(harness)
        options = [f"--max-old-space-size={max(16, self.limits.memory_mb * 3 // 4)}"]
        if self.files.harness == image.harness("run"):
            return [image.interpreter, *image.options, *options, "--require", harness, code_path]
        return [image.interpreter, *image.options, *options, harness]

    def _harness_dir(self) -> str:
        return "/sandbox" if self.sandbox.isolated else str(HARNESS)

    def _bwrap(self, env: Mapping[str, str]) -> tuple[list[str], list[int]]:
        limits, image = self.limits, self.image
        fds: list[int] = []

        def data(name: str, content: bytes) -> str:
            fd = _memfd(name, content)
            fds.append(fd)
            return str(fd)

        code_path = f"/sandbox/main{image.suffix}"
        scratch = str(limits.scratch_mb * 1024 * 1024)
        argv = [
            *self._prefix(),
            self.sandbox.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--assert-userns-disabled",
            "--die-with-parent",
            "--new-session",
            # The program is the namespace's init: bwrap reaps it, so its CPU time and
            # peak memory reach our wait4 (with bwrap's own init in between they don't).
            "--as-pid-1",
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox",
            "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "HOME", HOME,
            "--setenv", "USER", "sandbox",
            "--setenv", "LANG", "C.UTF-8",
            "--setenv", "TMPDIR", "/tmp",  # noqa: S108 - the sandbox's own
            "--setenv", "AGENTRT_OUTPUT", "/output",
            "--setenv", "AGENTRT_CODE", code_path,
        ]  # fmt: skip
        for key, value in env.items():
            argv += ["--setenv", key, value]
        for path in image.binds:
            argv += ["--ro-bind", path, path]
        for path in image.masks:
            argv += ["--tmpfs", path]
        argv += [
            "--proc", "/proc",
            # A minimal /dev (null, zero, urandom, ...), read-only but for a bounded /dev/shm.
            "--dev", "/dev",
            "--size", scratch, "--tmpfs", "/dev/shm",  # noqa: S108 - the sandbox's own
            "--remount-ro", "/dev",
            "--size", scratch, "--tmpfs", "/tmp",  # noqa: S108 - the sandbox's own
            "--size", scratch, "--tmpfs", HOME,
            "--size", str(limits.output_dir_mb * 1024 * 1024), "--tmpfs", "/output",
            "--ro-bind-data", data("harness", self.sandbox.harness(self.files.harness)),
            f"/sandbox/{self.files.harness}",
            "--ro-bind-data", data("code", self.files.code), code_path,
        ]  # fmt: skip
        for source in self.files.inputs:
            argv += ["--ro-bind-data", data("input", source.data), f"/workspace/{source.path}"]
        argv += [
            "--chdir", HOME,
            "--seccomp", data("seccomp", self.sandbox.seccomp),
            "--remount-ro", "/",
            "--",
            *self._command(code_path),
        ]  # fmt: skip
        return argv, fds

    def _unsandboxed(self, env: Mapping[str, str]) -> tuple[list[str], list[int]]:
        """DEVELOPMENT ONLY: the same program with rlimits and a temporary folder, no isolation."""
        self._scratch = tempfile.TemporaryDirectory(prefix="agentrt-unsandboxed-")
        root = Path(self._scratch.name)
        for name in ("home", "output", "workspace"):
            (root / name).mkdir()
        code_path = str(root / f"main{self.image.suffix}")
        Path(code_path).write_bytes(self.files.code)
        for source in self.files.inputs:
            target = root / "workspace" / source.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.data)
        variables = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(root / "home"),
            "TMPDIR": str(root / "home"),
            "LANG": "C.UTF-8",
            "AGENTRT_OUTPUT": str(root / "output"),
            "AGENTRT_CODE": code_path,
            **env,
        }
        argv = [
            "env",
            "-i",
            f"--chdir={root / 'home'}",
            *[f"{k}={v}" for k, v in variables.items()],
            *self._rlimits(),
            *self._command(code_path),
        ]
        return argv, []

    # ------------------------------------------------------------------- watch

    async def start(self) -> None:
        """Spawn the sandbox and start reading its pipes."""
        child_fds = self._spawn()
        for fd in child_fds:
            os.close(fd)
        process = self._process
        assert process is not None
        assert process.stdout is not None
        assert process.stderr is not None
        self._tasks = [
            asyncio.create_task(self._read_stream(process.stdout, "stdout")),
            asyncio.create_task(self._read_stream(process.stderr, "stderr")),
            asyncio.create_task(self._read_reports()),
        ]
        self._exit = asyncio.ensure_future(_wait_exit(process))
        self._deadline = asyncio.get_running_loop().call_later(
            self.limits.timeout_seconds, self._time_out
        )

    def _time_out(self) -> None:
        if self._exit.done():
            return
        self._timed_out = True
        self.kill(Killed.TIMEOUT)

    def kill(self, reason: str) -> None:
        """End the sandbox now (first reason wins)."""
        self._killed = self._killed or reason
        process = self._process
        if process is None or process.returncode is not None:
            return
        # The sandbox's processes first, so bwrap reaps them and reports what they used;
        # bwrap itself (and anything left in the slot's cgroup) a moment later.
        for child in _children(process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        asyncio.get_running_loop().call_later(0.5, self._kill_group)

    def _kill_group(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            self.sandbox.slots.kill(self.slot)

    def _pipe(self, pipe: IO[bytes], limit: int = 2**16) -> asyncio.StreamReader:
        """A reader of one of the program's pipes, closed at the latest when `wait` ends."""
        reading = _Pipe(pipe, limit)
        self._pipes.append(reading)
        return reading.reader

    def _count(self, size: int) -> None:
        self._written += size
        if self._first_output is None:
            self._first_output = time.monotonic()
        if self._written > self.limits.output_bytes:
            self.kill(Killed.OUTPUT)

    async def _read_stream(self, pipe: IO[bytes], name: str) -> None:
        reader = self._pipe(pipe)
        kept = self._stdout if name == "stdout" else self._stderr
        pending = b""
        while chunk := await reader.read(65536):
            self._count(len(chunk))
            room = self.limits.captured_bytes - len(kept)
            if room > 0:
                kept += chunk[:room]
            if len(chunk) > max(room, 0):
                self._truncated[name] = True
            if self.interactive and name == "stdout":
                pending += chunk
                *whole, pending = pending.split(b"\n")
                for line in whole:
                    self.lines.put_nowait(line[:4096].decode("utf-8", "replace"))
                pending = pending[-65536:]
        if self.interactive and name == "stdout":
            if pending:
                self.lines.put_nowait(pending[:4096].decode("utf-8", "replace"))
            self.lines.put_nowait(None)

    def _report_budget(self) -> int:
        """Bytes the report descriptor may carry: the output folder in base64, and a margin."""
        if self.interactive:
            return self.limits.output_bytes
        return self.limits.output_dir_mb * 1024 * 1024 * 4 // 3 + MAX_OUTPUT_FILES * 1024 + 65536

    async def _read_reports(self) -> None:
        """Read the report descriptor, bounded: lines over the budget kill the program (OUTPUT).

        Agent messages are small and handled as they come; output files are kept as raw
        lines and decoded after the end, off the event loop (`_decode_files`).
        """
        budget = self._report_budget()
        limit = MAX_AGENT_LINE if self.interactive else budget
        reader = self._pipe(os.fdopen(self._report_r, "rb", buffering=0), limit)
        received = 0
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):  # a line over the limit
                    self.kill(Killed.OUTPUT)
                    break
                if not line:
                    break
                received += len(line)
                if received > budget:
                    self.kill(Killed.OUTPUT)
                    break
                if not self.interactive:
                    self._raw_reports.append(line)
                    continue
                self._count(len(line))
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    self._accept(message)
        finally:
            self.reports.put_nowait(None)

    def _accept(self, message: dict[str, Any]) -> None:
        """An agent's report line, queued for the caller (its usage figure kept here)."""
        if message.get("type") == "usage":
            self._claimed_rss_kb(message.get("max_rss_kb"))
        else:
            self.reports.put_nowait(message)

    def _claimed_rss_kb(self, value: object) -> None:
        """The program's own peak memory, as it claims it at exit (no more than its limit)."""
        if isinstance(value, int) and value >= 0:
            ceiling = (self.limits.memory_mb + 64) * 1024
            self._max_rss_kb = max(self._max_rss_kb, min(value, ceiling))

    def _decode_files(self) -> None:
        """The output files reported (on a worker thread: JSON and base64 of megabytes).

        Everything here was written by the sandbox, so nothing is trusted: names are
        checked part by part, at most MAX_OUTPUT_FILES files and the output folder's size
        in all are kept, the rest counted as dropped.
        """
        total = 0
        for line in self._raw_reports:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "usage":
                self._claimed_rss_kb(message.get("max_rss_kb"))
            elif kind == "dropped":
                self.files_dropped += 1
            elif kind == "file":
                content = _file_content(message)
                if content is None or len(self.files_out) >= MAX_OUTPUT_FILES:
                    self.files_dropped += 1
                    continue
                total += len(content[1])
                if total > self.limits.output_dir_mb * 1024 * 1024:
                    self.files_dropped += 1
                    continue
                self.files_out.append(OutputFile(*content))
        self._raw_reports.clear()

    async def send(self, message: Mapping[str, Any]) -> None:
        """Write one line to the program's command descriptor (agent code)."""
        commands = self._commands
        if commands is None:
            return
        line = json.dumps(message).encode() + b"\n"
        # The program may be gone or not reading: its end says why.
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, commands.write, line),
                timeout=max(0.1, self.limits.timeout_seconds),
            )

    async def wait(self) -> Execution:
        """Wait for the end (killed at the deadline); the execution, every process gone."""
        try:
            status, usage = await self._exit
        finally:
            self._deadline.cancel()
        if self._commands is not None:
            with contextlib.suppress(OSError):
                self._commands.close()
        # The pipes close when the last process holding them ends; a grandchild that
        # escaped the kill would hold them open, so their readers get a short grace.
        self.sandbox.slots.kill(self.slot)
        _, pending = await asyncio.wait(self._tasks, timeout=2.0)
        for task in pending:
            task.cancel()
        for pipe in self._pipes:
            pipe.close()
        after = self.sandbox.slots.counters(self.slot)
        if self._raw_reports:
            await asyncio.get_running_loop().run_in_executor(None, self._decode_files)
        # Peak memory: the slot's cgroup says it where there is one (what the program claims
        # on its report descriptor is its own word: kept only where nothing else knows).
        peak = self.sandbox.slots.peak_memory_kb(self.slot)
        if peak:
            self._max_rss_kb = peak
        if self._scratch is not None:
            self._scratch.cleanup()
        return self._execution(status, usage, after)

    def _execution(self, status: int, usage: Any, after: Counters) -> Execution:
        if os.WIFSIGNALED(status):
            signo = os.WTERMSIG(status)
            exit_code = 128 + signo
        else:
            exit_code = os.WEXITSTATUS(status)
            signo = exit_code - 128 if exit_code > 128 else 0
        cpu_ms = round((usage.ru_utime + usage.ru_stime) * 1000) if usage else 0
        limits = self.limits
        reason = self._killed
        if not reason and after.oom_kills > self._before.oom_kills:
            reason = Killed.MEMORY
        if not reason and (
            signo == signal.SIGXCPU
            or (signo == signal.SIGKILL and cpu_ms >= limits.cpu_limit * 1000 - 50)
        ):
            reason = Killed.CPU_TIME
        if not reason and signo == signal.SIGXFSZ:
            reason = Killed.FILE_SIZE
        if not reason and exit_code != 0 and _OUT_OF_MEMORY.search(bytes(self._stderr[-8192:])):
            reason = Killed.MEMORY
        if not reason and signo in _V8_ALLOCATION_FAILED and not self.image.python:
            # Under RLIMIT_DATA, V8 dies by a signal when an allocation fails, with a message
            # (std::bad_alloc) or, as often, none at all.
            reason = Killed.MEMORY
        hit = ("PIDS",) if after.pids_refused > self._before.pids_refused else ()
        if reason == Killed.TIMEOUT:
            exit_code = 128 + signal.SIGKILL
        return Execution(
            exit_code=exit_code,
            stdout=bytes(self._stdout),
            stderr=bytes(self._stderr),
            stdout_truncated=self._truncated["stdout"],
            stderr_truncated=self._truncated["stderr"],
            timed_out=self._timed_out,
            killed_reason=str(reason),
            duration_ms=round((time.monotonic() - self._started) * 1000),
            cpu_ms=cpu_ms,
            max_rss_kb=self._max_rss_kb,
            limits_hit=hit,
            files=tuple(self.files_out),
            files_dropped=self.files_dropped,
        )

    @property
    def first_output_ms(self) -> float | None:
        """Milliseconds from spawn to the first byte of output (benchmarks)."""
        if self._first_output is None:
            return None
        return (self._first_output - self._started) * 1000


def _file_content(message: Mapping[str, Any]) -> tuple[str, bytes] | None:
    """A reported file's checked relative path and content (None when refused)."""
    path, data = message.get("path"), message.get("data")
    parts = path.split("/") if isinstance(path, str) else []
    if (
        not parts
        or not isinstance(data, str)
        or not all(_SAFE_PART.fullmatch(p) and p not in (".", "..") for p in parts)
    ):
        return None
    try:
        return "/".join(parts), base64.b64decode(data, validate=True)
    except ValueError:
        return None


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (its threads' children lists)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(p) for p in text.split())
    return found


class _Pipe:
    """A StreamReader fed from a pipe through the loop's `add_reader`; the pipe closed once.

    Not `connect_read_pipe`: uvloop (the service's loop) hands the descriptor to libuv,
    which closes it, and then closes the file object as well: a second close(2) of a
    number another thread may have been given in between (MagicStack/uvloop#763).
    """

    def __init__(self, pipe: IO[bytes], limit: int = 2**16) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader(limit=limit)
        self.pipe = pipe
        self.fd = pipe.fileno()
        os.set_blocking(self.fd, False)
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.reader.feed_data(chunk)
        else:
            self.close()

    def close(self) -> None:
        """Stop reading and close the pipe (at its end, or when the run is over)."""
        if not self.pipe.closed:
            self.loop.remove_reader(self.fd)
            self.pipe.close()
            self.reader.feed_eof()


async def _wait_exit(process: subprocess.Popen[bytes]) -> tuple[int, Any]:
    """The process's wait status and resource usage, reaped without blocking the loop."""
    loop = asyncio.get_running_loop()
    pid = process.pid
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        _, status, usage = await loop.run_in_executor(None, os.wait4, pid, 0)
    else:
        ready: asyncio.Future[None] = loop.create_future()

        def ended() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(pidfd, ended)
        try:
            await ready
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        # Readable pidfd: the process has ended, so this does not block.
        _, status, usage = os.wait4(pid, os.WNOHANG)  # noqa: ASYNC222
    process.returncode = os.waitstatus_to_exitcode(status)
    return status, usage


def _memfd(name: str, content: bytes) -> int:
    """A descriptor of an in-memory file holding `content`, at offset 0."""
    fd = os.memfd_create(f"agentrt-{name}", os.MFD_CLOEXEC)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _UidBlock:
    """A block of host uids this process alone uses for its slots, held by a file lock.

    RLIMIT_NPROC counts per uid across the whole host: two tools services (or a test suite
    and a service) giving their slot n the same uid would share one process budget. Each
    process takes the first free block of `UID_BLOCKS`; the lock goes with the process.
    """

    def __init__(self, block: int, fd: int) -> None:
        self.block, self.fd = block, fd

    @classmethod
    def claim(cls) -> _UidBlock:
        folder = Path(tempfile.gettempdir()) / "agentrt-sandbox-uids"
        folder.mkdir(mode=0o700, exist_ok=True)
        for block in range(UID_BLOCKS):
            fd = os.open(folder / f"{block}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(block, fd)
        raise SandboxUnavailable(f"all {UID_BLOCKS} sandbox uid blocks are taken on this host")

    def release(self) -> None:
        os.close(self.fd)


class CodeSandbox:
    """Runs programs in sandboxes (the application's `Sandbox` port)."""

    def __init__(
        self,
        config: SandboxConfig,
        status: SandboxStatus,
        images: Mapping[Language, RuntimeImage],
        *,
        seccomp: bytes = b"",
        slots: Slots | None = None,
    ) -> None:
        self.config = config
        self.status = status
        self.images = dict(images)
        self.seccomp = seccomp
        self.slots = slots or Slots(config.max_concurrent)
        self.isolated = status.isolation == "bubblewrap"
        self.bwrap = shutil.which(config.bwrap) or config.bwrap
        self.root = os.geteuid() == 0
        self._free: asyncio.Queue[int] | None = None
        self._harness: dict[str, bytes] = {}
        self._uids: _UidBlock | None = None

    def uid(self, slot: int) -> int:
        """The host uid `slot` runs as (the service is root): unique on this host."""
        if self._uids is None:
            self._uids = _UidBlock.claim()
        return self.config.uid_base + self._uids.block * self.config.max_concurrent + slot

    def close(self) -> None:
        """Remove the slots' control groups; give up the uid block."""
        self.slots.close()
        if self._uids is not None:
            self._uids.release()
            self._uids = None

    def forget_loop(self) -> None:
        """Drop the slot queue (bound to the event loop that made it: the probe's)."""
        self._free = None

    def harness(self, name: str) -> bytes:
        """The harness file `name` (read once)."""
        if name not in self._harness:
            self._harness[name] = (HARNESS / name).read_bytes()
        return self._harness[name]

    def nproc(self, pids: int) -> int:
        """RLIMIT_NPROC for a program: exact with a uid per slot, else shared with the service."""
        if self.slots.version != "none":  # the cgroup refuses first, and counts it (PIDS)
            return pids + 16 if self.root else self._shared_nproc(pids + 16)
        if self.root:
            return pids
        return self._shared_nproc(pids)

    def _shared_nproc(self, pids: int) -> int:
        threads = len(os.listdir("/proc/self/task"))
        return threads + self.config.max_concurrent * pids

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[int]:
        if self._free is None:
            self._free = asyncio.Queue()
            for slot in range(self.config.max_concurrent):
                self._free.put_nowait(slot)
        slot = await self._free.get()
        try:
            yield slot
        finally:
            self._free.put_nowait(slot)

    def _image(self, language: str) -> RuntimeImage:
        if not self.status.available:
            raise SandboxUnavailable(self.status.reason)
        image = self.images.get(Language(language))
        if image is None:
            raise SandboxUnavailable(f"no {language} runtime here")
        return image

    async def run(self, program: Program) -> Execution:
        """Run `program` to its end in a fresh sandbox.

        Raises:
            SandboxUnavailable: no sandbox (or no runtime of its language) here.
        """
        execution, _ = await self.timed_run(program)
        return execution

    async def timed_run(self, program: Program) -> tuple[Execution, float | None]:
        """`run`, and the milliseconds from spawn to its first output (benchmarks)."""
        image = self._image(program.language)
        files = _Files(image.harness("run"), program.code.encode(), program.files)
        async with self._slot() as slot:
            run = _Run(self, slot, image, files, program.limits, stdin=program.stdin)
            await run.start()
            execution = await run.wait()
        return execution, run.first_output_ms

    def agent(
        self,
        language: str,
        code: str,
        entry_point: str,
        start: Mapping[str, Any],
        limits: Limits,
    ) -> AgentRun:
        """An agent's code called once (iterate its events; answer its tool calls).

        Raises:
            SandboxUnavailable: no sandbox (or no runtime of the language) here.
        """
        image = self._image(language)
        return AgentRun(
            self,
            image,
            _Files(image.harness("agent"), code.encode()),
            entry_point=entry_point,
            start=start,
            limits=limits,
        )


class AgentRun:
    """One call of an agent's code: events out, tool results in."""

    def __init__(
        self,
        sandbox: CodeSandbox,
        image: RuntimeImage,
        files: _Files,
        *,
        entry_point: str,
        start: Mapping[str, Any],
        limits: Limits,
    ) -> None:
        self._sandbox, self._image, self._files = sandbox, image, files
        self._entry, self._start, self._limits = entry_point, start, limits
        self._run: _Run | None = None
        self._calls = 0

    async def events(self) -> AsyncIterator[AgentEvent]:
        """Progress and tool calls as they come, then `Finished` (the sandbox is gone by then)."""
        async with self._sandbox._slot() as slot:
            run = _Run(
                self._sandbox,
                slot,
                self._image,
                self._files,
                self._limits,
                interactive=True,
                env={"AGENTRT_ENTRY": self._entry},
            )
            self._run = run
            await run.start()
            try:
                await run.send(self._start)
                outcome: dict[str, Any] = {}
                async for event in self._merged(run):
                    if isinstance(event, dict):
                        outcome = event
                        continue
                    yield event
                execution = await run.wait()
            except BaseException:
                run.kill("CANCELLED")
                with contextlib.suppress(Exception):
                    await asyncio.shield(run.wait())
                raise
        yield _finished(outcome, execution)

    async def _merged(self, run: _Run) -> AsyncIterator[AgentEvent | dict[str, Any]]:
        """Stdout lines and report messages, in arrival order, until both end."""
        lines = asyncio.ensure_future(run.lines.get())
        reports = asyncio.ensure_future(run.reports.get())
        open_ = {"lines", "reports"}
        try:
            while open_:
                waiting = [t for t, n in ((lines, "lines"), (reports, "reports")) if n in open_]
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if lines in done:
                    line = lines.result()
                    if line is None:
                        open_.discard("lines")
                    else:
                        yield Progress(line)
                        lines = asyncio.ensure_future(run.lines.get())
                if reports in done:
                    message = reports.result()
                    if message is None:
                        open_.discard("reports")
                        continue
                    reports = asyncio.ensure_future(run.reports.get())
                    event = self._event(message, run)
                    if event is not None:
                        yield event
        finally:
            lines.cancel()
            reports.cancel()

    def _event(self, message: Mapping[str, Any], run: _Run) -> AgentEvent | dict[str, Any] | None:
        kind = message.get("type")
        if kind == "progress":
            return Progress(str(message.get("text", ""))[:4096])
        if kind == "tool_call":
            self._calls += 1
            if self._calls > MAX_TOOL_CALLS:
                run.kill(Killed.OUTPUT)
                return None
            arguments = message.get("arguments")
            return ToolCall(
                call_id=str(message.get("id", ""))[:64],
                name=str(message.get("name", ""))[:128],
                arguments=arguments if isinstance(arguments, dict) else {},
            )
        if kind in ("result", "error"):
            return dict(message)
        return None

    async def answer(self, call_id: str, result: Mapping[str, Any]) -> None:
        """Give the code the result of its tool call `call_id`."""
        if self._run is not None:
            await self._run.send({"type": "tool_result", "id": call_id, "result": dict(result)})


def _finished(outcome: Mapping[str, Any], execution: Execution) -> Finished:
    """The end of an agent's turn, from its last report and how its sandbox ended."""
    if execution.killed_reason == Killed.TIMEOUT:
        return Finished("", execution, "TIMEOUT", "the code ran out of time")
    if execution.killed_reason:
        return Finished(
            "",
            execution,
            "LIMIT_EXCEEDED",
            f"the code was stopped: {execution.killed_reason.lower().replace('_', ' ')} limit",
        )
    if outcome.get("type") == "result" and isinstance(outcome.get("reply"), str):
        return Finished(outcome["reply"], execution)
    message = str(outcome.get("message", ""))
    if outcome.get("type") == "error" and _OUT_OF_MEMORY.search(message[-2000:].encode()):
        memory = replace(execution, killed_reason=Killed.MEMORY)
        return Finished("", memory, "LIMIT_EXCEEDED", "the code was stopped: memory limit")
    if outcome.get("type") == "error":
        code = outcome.get("code")
        return Finished(
            "",
            execution,
            code if code in ("INVALID_CODE", "CODE_ERROR") else "CODE_ERROR",
            str(outcome.get("message", ""))[:4000],
        )
    return Finished(
        "",
        execution,
        "CODE_ERROR",
        f"the code ended without a reply (exit code {execution.exit_code})",
    )


# ---------------------------------------------------------------- building one


def build_sandbox(config: SandboxConfig) -> CodeSandbox:
    """The sandbox this host allows (blocking: probes runtimes and bubblewrap).

    Never raises: a sandbox that cannot run code says why in its `status`.
    """
    images, problems = discover(config.python, config.node)
    runtimes = tuple(image.runtime for image in images.values())
    if not images:
        return CodeSandbox(
            config, SandboxStatus(False, reason="no runtime: " + "; ".join(problems)), images
        )
    reason = ""
    seccomp = b""
    bwrap = shutil.which(config.bwrap)
    if bwrap is None:
        reason = f"bubblewrap ({config.bwrap}) is not installed"
    else:
        try:
            seccomp = seccomp_program()
        except SeccompUnsupported as e:
            reason = str(e)
    slots, no_cgroups = (
        open_slots(config.max_concurrent, config.cgroups)
        if not reason
        else (
            Slots(config.max_concurrent),
            "",
        )
    )
    enforcement = _enforcement(slots, os.geteuid() == 0)
    if not reason:
        status = SandboxStatus(True, "bubblewrap", "", runtimes, enforcement)
        sandbox = CodeSandbox(config, status, images, seccomp=seccomp, slots=slots)
        reason = _probe(sandbox)
        if not reason:
            if no_cgroups:
                log.info("sandbox without cgroups", extra={"why": no_cgroups})
            return sandbox
        slots.close()
    if config.unsafe_unsandboxed:
        log.warning(
            "UNSANDBOXED code execution is ON (development setting): code runs with no isolation",
            extra={"why_no_sandbox": reason},
        )
        status = SandboxStatus(True, "unsandboxed", reason, runtimes, ("rlimits",))
        return CodeSandbox(config, status, images)
    return CodeSandbox(config, SandboxStatus(False, reason=reason, runtimes=runtimes), images)


def _enforcement(slots: Slots, root: bool) -> tuple[str, ...]:
    out = [
        "namespaces:user,pid,net,mount,ipc,uts,cgroup",
        "seccomp:allowlist",
        "rlimits:as,data,cpu,nproc,nofile,fsize,core",
        "wall-time:kill",
        "output:kill",
    ]
    if slots.version != "none":
        out += [f"memory:cgroup-{slots.version}", f"pids:cgroup-{slots.version}"]
    else:
        out += ["memory:rlimit"]
    out.append("pids:rlimit-per-sandbox-uid" if root else "pids:rlimit-shared-uid")
    return tuple(out)


def _probe(sandbox: CodeSandbox) -> str:
    """Why a trivial program does not run in the sandbox ('' when it does)."""
    language = next(iter(sandbox.images))
    program = Program(
        language,
        "print('ok')" if language is Language.PYTHON else "console.log('ok')",
        limits=Limits(timeout_seconds=20),
    )
    try:
        execution = asyncio.run(sandbox.run(program))
    except Exception as e:  # the probe reports, never raises
        return f"sandbox probe failed: {type(e).__name__}: {e}"
    finally:
        sandbox.forget_loop()
    if execution.exit_code != 0 or execution.stdout.strip() != b"ok":
        detail = execution.stderr.decode("utf-8", "replace").strip()[-300:]
        return f"sandbox probe failed (exit {execution.exit_code}): {detail}"
    return ""
