"""Resource attacks on the code sandbox: each hits a limit, is stopped in time, and says so.

The attacks are the classic denial-of-service programs of code runners and CTF jails (fork
and spawn bombs, memory bombs in and outside the heap, CPU spins that ignore SIGXCPU, sleeps,
output floods, oversized files, full scratch folders, descriptor and thread exhaustion,
daemons that outlive their parent), as listed by nsjail's isolation features (rlimits,
cgroup pids and memory; google/nsjail README) and code-runner audits (the nsjail "Sentinel"
audit, Piston/isolate security suites). Each must be:

- enforced within its limit + 2 s (measured here, around the call) and reported as such
  (`killed_reason`, `timed_out`, `limits_hit`, or the errno the program saw);
- over without a trace: no process of any of this file's sandbox uids (or on its way to
  one, `setpriv --reuid=...`) left 2 s after the run, the host's process count and this
  process's RSS back near their baseline;
- harmless to the service: through gRPC, the health check still answers SERVING and an
  ordinary `run_code` still runs right after.

Fork and memory bombs also go through the real service (`run_code` over gRPC). Several tests
here were written as failing tests for gaps this suite found (the report pipe's budget, the
output file count, PIDS reporting, SysV memory, libgcc_s); their docstrings say what is
enforced now.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tools_support import ToolsService, invoke_request, sandboxed_service

from agentrt_kit.grpc.client import create_channel
from tool_service.adapters.sandbox import UID_BLOCKS, CodeSandbox, SandboxConfig, build_sandbox
from tool_service.domain.sandbox import Execution, Language, Limits, Program

pytestmark = pytest.mark.asyncio(loop_scope="module")

PY, JS = Language.PYTHON, Language.JAVASCRIPT
ADAPTER_UID_BASE = 330_000
SERVICE_UID_BASE = 340_000
RLIMIT_UID_BASE = 350_000
SLOTS = 16
SLACK = 2.0  # seconds a limit may take beyond itself to be enforced
_REUID = re.compile(r"--reuid=(\d+)")


# --------------------------------------------------------------------------- the host's view


def _ours(uid: int) -> bool:
    """One of this file's sandbox uids (base + the process's uid block x slots + slot)."""
    span = UID_BLOCKS * SLOTS
    return any(
        base <= uid < base + span for base in (ADAPTER_UID_BASE, SERVICE_UID_BASE, RLIMIT_UID_BASE)
    )


def sandbox_processes() -> list[str]:
    """Processes running as one of this file's sandbox uids, or about to (setpriv)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        uids = next(
            (map(int, line.split()[1:]) for line in status.splitlines() if line.startswith("Uid:")),
            iter(()),
        )
        if any(_ours(uid) for uid in uids) or any(_ours(int(m)) for m in _REUID.findall(cmdline)):
            found.append(f"{entry}: {cmdline[:160]}")
    return found


def pid_count() -> int:
    return sum(entry.isdigit() for entry in os.listdir("/proc"))


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Baseline:
    pids: int
    rss_kb: int

    @classmethod
    def now(cls) -> Baseline:
        return cls(pid_count(), rss_kb())


async def assert_service_still_serves(service: ToolsService) -> None:
    """The health check says SERVING and an ordinary program still runs."""
    channel = create_channel(f"127.0.0.1:{service.port}", service_token=None)
    service.channels.append(channel)
    health = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reply = await call_run_code(service, language="python", code="print(6 * 7)")
    assert not reply.HasField("error"), reply.error
    assert reply.data["stdout"] == "42\n"


async def assert_recovered(service: ToolsService, baseline: Baseline) -> None:
    """Nothing of the run is left, the host is back near its baseline, the service serves."""
    deadline = time.monotonic() + SLACK
    while (left := sandbox_processes()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert left == [], f"processes left {SLACK} s after the run: {left}"
    assert pid_count() <= baseline.pids + 25
    assert rss_kb() <= baseline.rss_kb + 150 * 1024
    await assert_service_still_serves(service)


async def call_run_code(service: ToolsService, **arguments: Any) -> Any:
    return await service.stub().InvokeTool(
        invoke_request("run_code", agent_id="agent-limits", key=uuid.uuid4().hex, **arguments),
        timeout=60,
    )


# --------------------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory, nats_server: Any
) -> AsyncIterator[ToolsService]:
    """The real tools service (one for the module), its sandbox under this file's uids."""
    root = tmp_path_factory.mktemp("limits-service")
    async with sandboxed_service(root, nats_server.url, SERVICE_UID_BASE) as running:
        yield running


async def _built(config: SandboxConfig) -> CodeSandbox:
    built = await asyncio.to_thread(build_sandbox, config)
    built.forget_loop()
    assert built.status.available, built.status.reason
    return built


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[CodeSandbox]:
    built = await _built(SandboxConfig(uid_base=ADAPTER_UID_BASE))
    try:
        yield built
    finally:
        built.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rlimit_sandbox() -> AsyncIterator[CodeSandbox]:
    """The sandbox as it runs where no control group can be made (the usual Kubernetes pod)."""
    built = await _built(SandboxConfig(uid_base=RLIMIT_UID_BASE, cgroups="off"))
    assert "memory:rlimit" in built.status.enforcement
    try:
        yield built
    finally:
        built.close()


def cgroup_pids(sandbox: CodeSandbox) -> bool:
    return any(e.startswith("pids:cgroup") for e in sandbox.status.enforcement)


async def timed(sandbox: CodeSandbox, program: Program) -> tuple[Execution, float]:
    started = time.monotonic()
    execution = await asyncio.wait_for(
        sandbox.run(program), timeout=program.limits.timeout_seconds + 3 * SLACK
    )
    return execution, time.monotonic() - started


# --------------------------------------------------------------------------- the attacks


@dataclass(frozen=True)
class Exhaustion:
    """A resource attack, the limits it runs under, and how it must end."""

    id: str
    language: Language
    code: str
    limits: Limits
    bound: float  # seconds: the limit that must stop it, plus SLACK
    check: Callable[[Execution], None]
    # The bound is CPU time (wall time depends on what else the host runs; the wall
    # timeout is the fallback then).
    cpu_bound: bool = False


def killed(reason: str, *, timed_out: bool = False) -> Callable[[Execution], None]:
    def check(execution: Execution) -> None:
        assert execution.killed_reason == reason, (
            execution.killed_reason,
            execution.exit_code,
            execution.stderr[-600:],
        )
        assert execution.timed_out is timed_out

    return check


def program_saw(pattern: str) -> Callable[[Execution], None]:
    """The program ran into the limit itself (an errno) and ended on its own."""

    def check(execution: Execution) -> None:
        assert not execution.killed_reason, (execution.killed_reason, execution.stderr[-600:])
        assert re.search(pattern, execution.stdout.decode()), (
            execution.stdout[-600:],
            execution.stderr[-600:],
        )

    return check


def output_cut(stream: str) -> Callable[[Execution], None]:
    def check(execution: Execution) -> None:
        killed("OUTPUT")(execution)
        assert getattr(execution, f"{stream}_truncated")
        assert len(getattr(execution, stream)) <= 16 * 1024

    return check


def fewer_than(limit: int, pattern: str) -> Callable[[Execution], None]:
    """The program counted how far it got before the errno; no further than `limit`."""

    def check(execution: Execution) -> None:
        program_saw(pattern)(execution)
        count = int(re.search(r"count=(\d+)", execution.stdout.decode())[1])  # type: ignore[index]
        assert 0 < count <= limit, count

    return check


FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""

MEMORY_BOMB = """
chunks = []
while True:
    chunks.append(bytearray(b"x") * (8 << 20))
"""

EXHAUSTIONS = [
    Exhaustion(
        "fork-bomb-py",
        PY,
        FORK_BOMB,
        Limits(timeout_seconds=3),
        3 + SLACK,
        killed("TIMEOUT", timed_out=True),
    ),
    Exhaustion(
        "fork-until-refused-py",
        PY,
        "import os, time, errno\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('count=%d' % n, errno.errorcode[e.errno], flush=True)\n",
        Limits(timeout_seconds=10, pids=32),
        SLACK,
        fewer_than(31, r"EAGAIN"),
    ),
    Exhaustion(
        "spawn-bomb-js",
        JS,
        "const cp = require('child_process');\n"
        "setInterval(() => {\n"
        "  try {\n"
        "    const c = cp.spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'],"
        " {stdio: 'ignore'});\n"
        "    c.on('error', () => {});\n"
        "  } catch (e) {}\n"
        "}, 5);\n",
        Limits(timeout_seconds=3),
        3 + SLACK,
        killed("TIMEOUT", timed_out=True),
    ),
    Exhaustion(
        "threads-bomb-py",
        PY,
        "import os, threading\n"
        "threading.stack_size(256 * 1024)\n"
        "stop, n = threading.Event(), 0\n"
        "try:\n"
        "    while True:\n"
        "        threading.Thread(target=stop.wait, daemon=True).start()\n"
        "        n += 1\n"
        "except RuntimeError as e:\n"
        "    print('count=%d' % n, e, flush=True)\n"
        # Exit at once: ending hundreds of waiting daemon threads at exit is not what this
        # attack measures.
        "os._exit(0)\n",
        Limits(timeout_seconds=10, pids=32),
        SLACK,
        fewer_than(31, r"can't start new thread"),
    ),
    Exhaustion(
        "memory-bomb-py",
        PY,
        MEMORY_BOMB,
        Limits(timeout_seconds=10, memory_mb=64),
        SLACK,
        killed("MEMORY"),
    ),
    Exhaustion(
        "memory-bomb-js-heap",
        JS,
        "const a = [];\nwhile (true) a.push(new Array(1e6).fill(1.5));\n",
        Limits(timeout_seconds=10, memory_mb=64),
        SLACK,
        killed("MEMORY"),
    ),
    Exhaustion(
        "cpu-spin-py",
        PY,
        "while True:\n    pass\n",
        Limits(timeout_seconds=10, cpu_seconds=1),
        1 + SLACK,
        killed("CPU_TIME"),
        cpu_bound=True,
    ),
    Exhaustion(
        "cpu-spin-js",
        JS,
        "for (;;) {}\n",
        Limits(timeout_seconds=10, cpu_seconds=1),
        1 + SLACK,
        killed("CPU_TIME"),
        cpu_bound=True,
    ),
    Exhaustion(
        # With SIGXCPU ignored (as it is anyway for the namespace's pid 1, which the program
        # is), the hard limit one second after the soft one kills.
        "cpu-spin-ignoring-signals-py",
        PY,
        "import signal\n"
        "for s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "while True:\n    pass\n",
        Limits(timeout_seconds=10, cpu_seconds=1),
        1 + SLACK,
        killed("CPU_TIME"),
        cpu_bound=True,
    ),
    Exhaustion(
        "sleep-py",
        PY,
        "import time\ntime.sleep(60)\n",
        Limits(timeout_seconds=1),
        1 + SLACK,
        killed("TIMEOUT", timed_out=True),
    ),
    Exhaustion(
        "sleep-js",
        JS,
        "setTimeout(() => {}, 60000);\n",
        Limits(timeout_seconds=1),
        1 + SLACK,
        killed("TIMEOUT", timed_out=True),
    ),
    Exhaustion(
        "sleep-with-stdio-closed-py",
        PY,
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "for fd in (0, 1, 2):\n    os.close(fd)\n"
        "time.sleep(60)\n",
        Limits(timeout_seconds=1),
        1 + SLACK,
        killed("TIMEOUT", timed_out=True),
    ),
    Exhaustion(
        # The parent returns at once; a setsid'd grandchild holding every pipe must die with it.
        "daemon-outliving-its-parent-py",
        PY,
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('count=1 parent done', flush=True)\n",
        Limits(timeout_seconds=10),
        SLACK,
        fewer_than(1, r"parent done"),
    ),
    Exhaustion(
        "output-flood-stdout-py",
        PY,
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        Limits(timeout_seconds=10, output_bytes=256 * 1024, captured_bytes=16 * 1024),
        SLACK,
        output_cut("stdout"),
    ),
    # Node.js would queue what a full pipe cannot take (in memory, out of the output limit's
    # sight) if the harness did not make its stdio writes block.
    Exhaustion(
        "output-flood-stderr-js",
        JS,
        "for (;;) process.stderr.write('y'.repeat(65536));\n",
        Limits(timeout_seconds=10, output_bytes=256 * 1024, captured_bytes=16 * 1024),
        SLACK,
        output_cut("stderr"),
    ),
    Exhaustion(
        "file-size-py",
        PY,
        "import errno, os\n"
        "try:\n"
        "    with open('/tmp/big', 'wb') as f:\n"
        "        for _ in range(8):\n"
        "            f.write(b'x' * (1 << 20))\n"
        "            f.flush()\n"
        "except OSError as e:\n"
        "    print('count=%d' % os.path.getsize('/tmp/big'), errno.errorcode[e.errno], flush=True)\n",
        Limits(timeout_seconds=10, file_size_mb=2),
        SLACK,
        fewer_than(2 << 20, r"EFBIG"),
    ),
    Exhaustion(
        "file-size-js",
        JS,
        "const fs = require('fs');\n"
        "const fd = fs.openSync('/tmp/big', 'w');\n"
        "try { for (let i = 0; i < 8; i++) fs.writeSync(fd, Buffer.alloc(1 << 20, 120)); }\n"
        "catch (e) { console.log(`count=${fs.statSync('/tmp/big').size}`, e.code); }\n",
        Limits(timeout_seconds=10, file_size_mb=2),
        SLACK,
        fewer_than(2 << 20, r"EFBIG"),
    ),
    Exhaustion(
        "fill-scratch-folders-py",
        PY,
        "import errno, json\n"
        "totals = {}\n"
        "for folder in ('/tmp', '/home/sandbox', '/dev/shm', '/output'):\n"
        "    mb = 0\n"
        "    try:\n"
        "        for i in range(64):\n"
        "            with open(f'{folder}/fill{i}', 'wb') as f:\n"
        "                for _ in range(2):\n"
        "                    f.write(b'z' * (1 << 20))\n"
        "                    f.flush()\n"
        "                    mb += 1\n"
        "    except OSError as e:\n"
        "        totals[folder] = [mb, errno.errorcode[e.errno]]\n"
        "print('count=%d' % max(t[0] for t in totals.values()), json.dumps(totals), flush=True)\n"
        "import os, shutil\n"
        "for name in os.listdir('/output'):\n"
        "    os.unlink('/output/' + name)\n",
        Limits(timeout_seconds=10, scratch_mb=8, output_dir_mb=4, file_size_mb=4),
        SLACK,
        fewer_than(
            8,
            r'"/tmp": \[\d, "ENOSPC"\].*"/home/sandbox": \[\d, "ENOSPC"\].*'
            r'"/dev/shm": \[\d, "ENOSPC"\].*"/output": \[\d, "ENOSPC"\]',
        ),
    ),
    Exhaustion(
        "open-files-py",
        PY,
        "import errno\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(open('/dev/null'))\n"
        "except OSError as e:\n"
        "    print('count=%d' % len(held), errno.errorcode[e.errno], flush=True)\n",
        Limits(timeout_seconds=10, open_files=64),
        SLACK,
        fewer_than(64, r"EMFILE"),
    ),
    Exhaustion(
        "open-files-js",
        JS,
        "const fs = require('fs');\n"
        "const held = [];\n"
        "try { for (;;) held.push(fs.openSync('/dev/null', 'r')); }\n"
        "catch (e) { console.log(`count=${held.length}`, e.code); }\n",
        Limits(timeout_seconds=10, open_files=64),
        SLACK,
        fewer_than(64, r"EMFILE"),
    ),
]


def measured(name: str, text: str) -> str:
    """Log what a run took (`pytest -s` shows the enforcement times); the text, for messages."""
    print(f"MEASURED {name}: {text}")
    return text


@pytest.mark.parametrize("attack", EXHAUSTIONS, ids=[a.id for a in EXHAUSTIONS])
async def test_resource_attack_is_stopped_in_time_and_leaves_nothing_behind(
    sandbox: CodeSandbox, service: ToolsService, attack: Exhaustion
) -> None:
    baseline = Baseline.now()
    execution, elapsed = await timed(
        sandbox, Program(attack.language, attack.code, limits=attack.limits)
    )
    measured(
        attack.id,
        f"{elapsed:.2f}s cpu {execution.cpu_ms / 1000:.2f}s (bound {attack.bound:.1f}s)"
        f" killed={execution.killed_reason or '-'}"
        f" hit={','.join(execution.limits_hit) or '-'} exit={execution.exit_code}",
    )
    if attack.cpu_bound:
        assert execution.cpu_ms <= attack.bound * 1000, f"{attack.id} used {execution.cpu_ms} ms"
        assert elapsed <= attack.limits.timeout_seconds + SLACK
    else:
        assert elapsed <= attack.bound, f"{attack.id} took {elapsed:.2f}s, bound {attack.bound}s"
    attack.check(execution)
    await assert_recovered(service, baseline)


async def test_daemon_threads_at_exit_do_not_crash_the_program(sandbox: CodeSandbox) -> None:
    """glibc's pthread_exit dlopens libgcc_s.so.1 to unwind, which ldd does not list: the
    runtime binds it beside libc. Without it, CPython ending daemon threads that wake during
    finalization aborted ("libgcc_s.so.1 must be installed for pthread_exit to work", exit
    139) in most runs of an ordinary program with worker threads."""
    code = (
        "import threading, time\n"
        "def work():\n"
        "    while True:\n"
        "        time.sleep(0.001)\n"
        "for _ in range(4):\n"
        "    threading.Thread(target=work, daemon=True).start()\n"
        "time.sleep(0.05)\n"
        "print('done')\n"
    )
    runs = await asyncio.gather(*(sandbox.run(Program(PY, code)) for _ in range(8)))
    crashed = [(r.exit_code, r.stderr[-80:]) for r in runs if r.exit_code or r.stderr]
    assert crashed == [], f"{len(crashed)} of 8 runs crashed: {crashed[0]}"


async def test_a_refused_fork_is_reported_as_pids(sandbox: CodeSandbox) -> None:
    """A refused fork is reported: where a cgroup counts processes, RLIMIT_NPROC is set above
    its `pids.max`, so the cgroup refuses first and counts it (`limits_hit` PIDS). With both
    at the same number the rlimit refused first and nothing said so."""
    attack = next(a for a in EXHAUSTIONS if a.id == "fork-until-refused-py")
    execution, _ = await timed(sandbox, Program(PY, attack.code, limits=attack.limits))
    program_saw("EAGAIN")(execution)
    assert cgroup_pids(sandbox)
    assert "PIDS" in execution.limits_hit, execution


async def test_a_javascript_buffer_bomb_is_reported_as_memory(sandbox: CodeSandbox) -> None:
    """Node's `Buffer`s live outside the V8 heap: RLIMIT_DATA stops them, with
    "RangeError: Array buffer allocation failed" or std::bad_alloc (which one depends on
    where the allocation fails), and either is reported as MEMORY."""
    code = "const a = [];\nwhile (true) a.push(Buffer.alloc(16 << 20, 1));\n"
    execution, elapsed = await timed(
        sandbox, Program(JS, code, limits=Limits(timeout_seconds=10, memory_mb=64))
    )
    assert elapsed <= SLACK
    assert execution.killed_reason == "MEMORY", (execution.exit_code, execution.killed_reason)


OUTSIDE_THE_HEAP = {
    "dev-shm": (
        "chunk = b'x' * (1 << 20)\n"
        "n = 0\n"
        "for i in range(32):\n"
        "    with open(f'/dev/shm/f{i}', 'wb') as f:\n"
        "        for _ in range(16):\n"
        "            f.write(chunk)\n"
        "    n += 16\n"
        "    print(n, flush=True)\n"
    ),
    "memfd": (
        "import os\n"
        "chunk, fds, n = b'x' * (1 << 20), [], 0\n"
        "for i in range(32):\n"
        "    fd = os.memfd_create('x')\n"
        "    for _ in range(16):\n"
        "        os.write(fd, chunk)\n"
        "    fds.append(fd)\n"
        "    n += 16\n"
        "    print(n, flush=True)\n"
    ),
    "sysv-shm": (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.shmat.restype = ctypes.c_void_p\n"
        "libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]\n"
        "libc.shmdt.argtypes = [ctypes.c_void_p]\n"
        "n = 0\n"
        "for i in range(32):\n"
        "    sid = libc.shmget(0, 16 << 20, 0o1600)\n"
        "    addr = libc.shmat(sid, None, 0)\n"
        "    if sid < 0 or addr in (None, 2**64 - 1):\n"
        "        raise MemoryError(ctypes.get_errno())\n"
        "    ctypes.memset(addr, 1, 16 << 20)\n"
        "    libc.shmdt(addr)\n"
        "    n += 16\n"
        "    print(n, flush=True)\n"
    ),
    # Kernel memory: data queued in unix socket pairs, 24 processes x 120 pairs.
    "socket-buffers": (
        "import os, socket, time\n"
        "r, w = os.pipe()\n"
        "for k in range(24):\n"
        "    if os.fork() == 0:\n"
        "        sent, pairs = 0, []\n"
        "        try:\n"
        "            for i in range(120):\n"
        "                a, b = socket.socketpair()\n"
        "                for s in (a, b):\n"
        "                    s.setblocking(False)\n"
        "                    try:\n"
        "                        while True:\n"
        "                            sent += s.send(b'x' * 65536)\n"
        "                    except BlockingIOError:\n"
        "                        pass\n"
        "                pairs.append((a, b))\n"
        "        except OSError:\n"
        "            pass\n"
        "        os.write(w, b'%d\\n' % (sent >> 20))\n"
        "        time.sleep(5)\n"
        "        os._exit(0)\n"
        "os.close(w)\n"
        "total = 0\n"
        "with os.fdopen(r) as reports:\n"
        "    for _ in range(24):\n"
        "        line = reports.readline()\n"
        "        if not line:\n"
        "            break\n"
        "        total += int(line)\n"
        "        print(total, flush=True)\n"
    ),
}


# Socket buffers with no cgroup are the one case left open, and documented as such
# (services/tools/README.md, "rlimit-only"): kernel memory queued in sockets is bounded only
# by processes x open files there; a deployment that needs it bounded runs the tools service
# where it can delegate a memory cgroup, or under gVisor.
OUTSIDE_THE_HEAP_CASES = [
    (where, enforcement)
    for where in OUTSIDE_THE_HEAP
    for enforcement in ("cgroup", "rlimit-only")
    if (where, enforcement) != ("socket-buffers", "rlimit-only")
]


@pytest.mark.parametrize(("where", "enforcement"), OUTSIDE_THE_HEAP_CASES)
async def test_memory_outside_the_heap_is_bounded(
    sandbox: CodeSandbox,
    rlimit_sandbox: CodeSandbox,
    service: ToolsService,
    enforcement: str,
    where: str,
) -> None:
    """Memory a program hands to the kernel stays bounded. RLIMIT_AS and RLIMIT_DATA bound a
    process's own mappings only: /dev/shm is a bounded tmpfs, memfd_create and SysV shared
    memory are denied by the seccomp filter (they once kept 600 and 512 MiB with
    memory_mb=64 and no cgroup), and with a memory cgroup everything is charged to it."""
    limits = Limits(timeout_seconds=10, memory_mb=64)
    # What the memory cgroup allows, in MiB: the program and its tmpfs folders.
    budget = limits.memory_mb + 3 * limits.scratch_mb + limits.output_dir_mb
    chosen = sandbox if enforcement == "cgroup" else rlimit_sandbox
    baseline = Baseline.now()
    execution, elapsed = await timed(chosen, Program(PY, OUTSIDE_THE_HEAP[where], limits=limits))
    stored = max((int(x) for x in execution.stdout.split()), default=0)
    measured(
        f"outside-heap {where} {enforcement}",
        f"{elapsed:.2f}s stored={stored}MiB killed={execution.killed_reason or '-'}",
    )
    await assert_recovered(service, baseline)
    assert elapsed <= SLACK
    assert stored <= budget, (
        f"{stored} MiB kept in {where} with memory_mb={limits.memory_mb} ({enforcement}); "
        f"killed={execution.killed_reason!r} exit={execution.exit_code}"
    )


async def test_the_report_pipe_is_bounded_and_never_stalls_the_service(
    sandbox: CodeSandbox, service: ToolsService
) -> None:
    """The program can write to the report descriptor itself: what it carries has a byte
    budget (the output folder in base64), past which the program is killed (OUTPUT), and
    files are decoded off the event loop. Before, 40 MiB `file` lines for 4 s went through
    unbounded and froze the service's loop for most of that time."""
    code = (
        "import base64, json, os, time\n"
        "fd = int(open('/proc/self/environ').read().split('AGENTRT_REPORT_FD=')[1].split('\\0')[0])\n"
        "line = (json.dumps({'type': 'file', 'path': 'big.bin',"
        " 'data': base64.b64encode(b'z' * (40 << 20)).decode()}) + '\\n').encode()\n"
        "sent, start = 0, time.monotonic()\n"
        "while time.monotonic() - start < 4:\n"
        "    view = memoryview(line)\n"
        "    while view:\n"
        "        view = view[os.write(fd, view):]\n"
        "    sent += len(line)\n"
        "print('sent', sent >> 20, flush=True)\n"
    )
    baseline = Baseline.now()
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - started - 0.01)

    ticking = asyncio.create_task(ticker())
    limits = Limits(timeout_seconds=10, output_bytes=1 << 20)
    try:
        execution, elapsed = await timed(sandbox, Program(PY, code, limits=limits))
    finally:
        stop.set()
        await ticking
    stalled = sum(lag for lag in lags if lag > 0.1)
    note = measured(
        "report-pipe-flood",
        f"{elapsed:.2f}s killed={execution.killed_reason or '-'} "
        f"{execution.stdout.decode().strip()} MiB, loop stalled {stalled:.2f}s, "
        f"worst {max(lags):.2f}s",
    )
    await assert_recovered(service, baseline)
    assert execution.killed_reason == "OUTPUT", note
    assert max(lags) < 0.25, note


# --------------------------------------------------------------------------- through the service


@pytest.mark.parametrize(
    ("attack_id", "arguments", "error", "reason", "bound"),
    [
        ("fork-bomb", {"code": FORK_BOMB, "timeout_seconds": 3}, "TIMEOUT", "TIMEOUT", 3 + SLACK),
        (
            "memory-bomb",
            {"code": MEMORY_BOMB, "memory_mb": 64},
            "LIMIT_EXCEEDED",
            "MEMORY",
            SLACK,
        ),
    ],
    ids=["fork-bomb", "memory-bomb"],
)
async def test_service_run_code_stops_a_bomb_and_keeps_serving(
    service: ToolsService,
    attack_id: str,
    arguments: dict[str, Any],
    error: str,
    reason: str,
    bound: float,
) -> None:
    baseline = Baseline.now()
    started = time.monotonic()
    reply = await call_run_code(service, language="python", **arguments)
    elapsed = time.monotonic() - started
    measured(f"service {attack_id}", f"{elapsed:.2f}s (bound {bound:.1f}s) {reply.error.code}")
    assert reply.error.code == error, reply
    assert reply.data["killed_reason"] == reason
    assert reply.data["timed_out"] is (reason == "TIMEOUT")
    assert elapsed <= bound
    await assert_recovered(service, baseline)
