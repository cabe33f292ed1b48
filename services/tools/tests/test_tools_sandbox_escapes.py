"""Escape suite for the code sandbox: real programs try to get out, and the host checks they did not.

Every attack is a program run in the sandbox (Python; JavaScript where the runtime differs)
that tries a technique taken from public sandbox and container escape material:

- bubblewrap: CVE-2017-5226, TIOCSTI input injection without `--new-session`
  (https://github.com/containers/bubblewrap/issues/142); its masked variant CVE-2019-10063
  (`TIOCSTI | 1 << 32`) and `TIOCLINUX` (https://github.com/containers/bubblewrap/pull/150,
  jwilk/ttyjack, hartwork/antijack).
- runc: CVE-2019-5736, overwriting the runtime through `/proc/self/exe` (AWS, "Anatomy of
  CVE-2019-5736", https://aws.amazon.com/blogs/compute/anatomy-of-cve-2019-5736-a-runc-container-escape/);
  CVE-2024-21626 "Leaky Vessels", a descriptor leaked into the container that points at the
  host (https://github.com/opencontainers/runc/security/advisories/GHSA-xr7r-f8xq-vfvv).
- containerd CVE-2020-15257: a host service on an abstract unix socket, reachable from any
  process sharing the network namespace (GHSA-36xw-fx78-c5r4, k3s-io/k3s#2618).
- Docker's "shocker" (`open_by_handle_at`), `/proc/sys/kernel/core_pattern`, the cgroup v1
  `release_agent` (CVE-2022-0492), ptrace injection, kernel modules: the breakout classes of
  Datadog's container-escape detection rule (def-000-f39) and the syscalls amicontained
  (genuinetools/amicontained) reports as blocked in a default container.
- nsjail's isolation list (namespaces, read-only root, rlimits, cgroup pids and memory;
  google/nsjail README) and the classes of a code-runner audit (syscall leaks, filesystem
  escape, network, process isolation, privilege escalation; nsjail "Sentinel" audit script),
  plus Jessica McKellar's "Building and breaking a Python sandbox" (PyCon 2014) for
  `subprocess` / `os.system` / `ctypes`.

The oracles are the host's, never the program's word alone: secrets planted on the host
(a file under the test's tmp dir, another agent's workspace file, a variable in this
process's environment, the first lines of /etc/passwd and /etc/shadow) must never appear in
anything a run returns; a dual-stack TCP listener, a UDP socket and an abstract unix socket
in this process count what reaches them and must count nothing; host files the sandbox binds
are fingerprinted before and after; processes running as the sandboxes' own host uids must
survive `kill(-1)`. What the program reports (errno names) says how each attempt failed, so a
regression shows the technique that worked.

Resource attacks are in test_tools_sandbox_limits.py. The forged-report tests below were
written failing, for gaps this suite found (file count, reported memory); they pass now.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import platform
import socket
import stat
import struct
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tools_support import Canary, ToolsService, invoke_request, sandboxed_service

from agentrt_kit.grpc.client import create_channel
from agentrt_kit.grpc.structs import struct_to_dict
from tool_service.adapters import syscalls
from tool_service.adapters.sandbox import CodeSandbox, SandboxConfig, build_sandbox
from tool_service.domain.sandbox import Execution, Language, Limits, Program, SourceFile

pytestmark = pytest.mark.asyncio(loop_scope="module")

PY, JS = Language.PYTHON, Language.JAVASCRIPT
# Host uids of this file's sandboxes (slot n runs as base + n), apart from other test files'.
ADAPTER_UID_BASE = 310_000
SERVICE_UID_BASE = 320_000
SLOTS = 16
FAST = Limits(timeout_seconds=10)
HARNESS_MAX_FILES = 100  # run.py / run.js report at most this many output files

ENOENT = frozenset({"ENOENT"})
EPERM = frozenset({"EPERM"})
READ_ONLY = frozenset({"EROFS", "EACCES", "EPERM"})
UNREACHABLE = frozenset(
    {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL", "EAFNOSUPPORT", "TIMEOUT"}
)
ROOT_ALLOWED = frozenset(
    {"usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "sandbox", "output", "home"}
    | {"tmp", "dev", "proc", "workspace"}
)
DEV_ALLOWED = frozenset(
    {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd"}
    | {"stdin", "stdout", "stderr", "core"}
)
SANDBOX_ENV = frozenset(
    {"PATH", "HOME", "USER", "LANG", "LC_CTYPE", "TMPDIR", "PWD", "AGENTRT_OUTPUT"}
    | {"AGENTRT_CODE", "AGENTRT_REPORT_FD"}
)
ZERO_CAPS = "0000000000000000"
HOST_BINARIES = (
    *("/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/env", "/usr/bin/id", "/usr/bin/bwrap"),
    *("/usr/bin/setpriv", "/usr/bin/prlimit", "/usr/bin/sudo", "/bin/su", "/usr/bin/node"),
    *("/usr/bin/perl", "/sbin/ip", "/usr/sbin/nsenter"),
)


# --------------------------------------------------------------------------- the host's side


def host_addresses() -> list[str]:
    """This host's own addresses, loopback included (IPv6 link-local left out: scoped)."""
    found = ["127.0.0.1", "::1"]
    for _, name in socket.if_nameindex():
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
        ):
            packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            found.append(socket.inet_ntoa(packed[20:24]))  # SIOCGIFADDR
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            address = ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))
            if not address.is_link_local:
                found.append(str(address))
    return list(dict.fromkeys(found))


def host_unix_sockets() -> list[str]:
    """Unix socket files on the host where services keep them (NATS, PostgreSQL, D-Bus...)."""
    found: list[str] = []
    for top in ("/run", "/var/run", "/tmp", "/dev/shm"):
        for root, dirs, files in os.walk(top):
            if root.count("/") > 4:
                dirs.clear()
            for name in files:
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        found.append(path)
    return sorted(set(found))[:40]


def first_line(path: str) -> str:
    try:
        return Path(path).read_text().splitlines()[0]
    except (OSError, IndexError):
        return ""


def fingerprint(paths: list[str]) -> dict[str, tuple[int, ...]]:
    """What a write would change: size, times, mode, owner of each host file."""
    prints: dict[str, tuple[int, ...]] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            prints[path] = (
                info.st_size,
                info.st_mtime_ns,
                info.st_ctime_ns,
                info.st_mode,
                info.st_uid,
                info.st_nlink,
            )
    return prints


def syscall_numbers() -> dict[str, int]:
    table = syscalls.AARCH64 if platform.machine() == "aarch64" else syscalls.X86_64
    return dict(table)


@dataclass
class Scene:
    """Secrets and listeners planted on the host; what a run must never see or reach."""

    token: str
    secret_file: Path
    secret_env: tuple[str, str]
    other_file: Path
    workspace_root: Path
    database: Path
    canary: Canary
    udp: socket.socket
    abstract: socket.socket
    abstract_name: str
    addresses: list[str]
    unix_sockets: list[str]
    markers: list[str] = field(default_factory=list)

    def params(self, sandbox: CodeSandbox, language: Language) -> dict[str, Any]:
        image = sandbox.images[language]
        return {
            "token": self.token,
            "secret_file": str(self.secret_file),
            "secret_env_name": self.secret_env[0],
            "other_file": str(self.other_file),
            "workspace_root": str(self.workspace_root),
            "database": str(self.database),
            "test_pid": os.getpid(),
            "canary_port": self.canary.port,
            "udp_port": self.udp.getsockname()[1],
            "addresses": self.addresses,
            "abstract": self.abstract_name,
            "unix_sockets": self.unix_sockets,
            "nr": syscall_numbers(),
            "binds": list(image.binds),
            "interpreter": image.interpreter,
        }

    def assert_no_leak(self, *texts: str | bytes) -> None:
        for text in texts:
            blob = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
            for marker in self.markers:
                assert marker not in blob, f"host secret {marker!r} leaked into: {blob[:600]!r}"

    def reached(self) -> list[str]:
        """Every connection or datagram that reached a listener of the scene."""
        seen = [f"tcp from {peer}" for peer, _ in self.canary.connections]
        with contextlib.suppress(BlockingIOError):
            while True:
                _, peer = self.udp.recvfrom(65536)
                seen.append(f"udp from {peer}")
        with contextlib.suppress(BlockingIOError):
            while True:
                conn, _ = self.abstract.accept()
                conn.close()
                seen.append("abstract unix connection")
        return seen


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory, nats_server: Any
) -> AsyncIterator[ToolsService]:
    """The real tools service (one for the module), its sandbox under this file's uids."""
    root = tmp_path_factory.mktemp("escape-service")
    async with sandboxed_service(root, nats_server.url, SERVICE_UID_BASE) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[CodeSandbox]:
    built = await asyncio.to_thread(build_sandbox, SandboxConfig(uid_base=ADAPTER_UID_BASE))
    built.forget_loop()
    assert built.status.available, built.status.reason
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, service: ToolsService) -> Iterator[Scene]:
    token = uuid.uuid4().hex
    secrets = tmp_path_factory.mktemp("host-secrets")
    secret_file = secrets / "secret.txt"
    secret_file.write_text(f"host-file-secret-{token}")
    workspace_root = Path(service.settings.workspace_root)
    other = workspace_root / "agent-2" / "private.txt"
    other.parent.mkdir(parents=True)
    other.write_text(f"other-workspace-secret-{token}")
    database = Path(service.settings.database_url.get_secret_value().removeprefix("sqlite:///"))
    env_name, env_value = "AGENTRT_ESCAPE_TEST_SECRET", f"service-env-secret-{token}"
    os.environ[env_name] = env_value
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", 0))
    udp.setblocking(False)
    abstract_name = f"agentrt-test-{token[:12]}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + abstract_name)
    abstract.listen(8)
    abstract.setblocking(False)
    canary = Canary()
    planted = Scene(
        token=token,
        secret_file=secret_file,
        secret_env=(env_name, env_value),
        other_file=other,
        workspace_root=workspace_root,
        database=database,
        canary=canary,
        udp=udp,
        abstract=abstract,
        abstract_name=abstract_name,
        addresses=host_addresses(),
        unix_sockets=host_unix_sockets(),
    )
    planted.markers = [
        f"host-file-secret-{token}",
        env_value,
        f"other-workspace-secret-{token}",
        *(line for line in (first_line("/etc/passwd"), first_line("/etc/shadow")) if line),
    ]
    try:
        yield planted
    finally:
        os.environ.pop(env_name, None)
        canary.close()
        udp.close()
        abstract.close()


# --------------------------------------------------------------------------- programs

PY_PRELUDE = r"""
import ctypes, errno, json, os, socket, stat, struct, sys
P = json.loads(@PARAMS@)
OUT, DATA = {}, {}
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def attempt(name, fn):
    try:
        value = fn()
    except socket.gaierror:
        OUT[name] = "gaierror"
        return None
    except TimeoutError:
        OUT[name] = "TIMEOUT"
        return None
    except OSError as e:
        OUT[name] = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
        return None
    except Exception as e:
        OUT[name] = type(e).__name__
        return None
    OUT[name] = "OK"
    if value is not None:
        DATA[name] = value if isinstance(value, (int, float, bool, list, dict)) else str(value)[:8000]
    return value

def raw(name, *args):
    conv = [a if isinstance(a, (bytes, ctypes.Array)) else ctypes.c_long(a) for a in args]
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(P["nr"][name]), *conv)
    if result < 0:
        raise OSError(ctypes.get_errno(), name)
    return result

def write(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        return os.write(fd, data.encode() if isinstance(data, str) else data)
    finally:
        os.close(fd)

def report_fd():
    for name in os.listdir("/proc/self/fd"):
        try:
            if int(name) > 2 and os.readlink("/proc/self/fd/" + name).startswith("pipe:"):
                return int(name)
        except (OSError, ValueError):
            pass
    raise OSError(errno.EBADF, "no report descriptor")

def done():
    sys.stdout.flush()
    print("RESULT " + json.dumps({"out": OUT, "data": DATA}), flush=True)
"""

JS_PRELUDE = r"""
const fs = require('fs');
const P = @PARAMS@;
const OUT = {}, DATA = {};
function outcome(name, e) { OUT[name] = (e && (e.code || e.name)) || String(e); }
function attempt(name, fn) {
  try { const v = fn(); OUT[name] = 'OK'; if (v !== undefined) DATA[name] = v; }
  catch (e) { outcome(name, e); }
}
async function attemptAsync(name, fn) {
  try { const v = await fn(); OUT[name] = 'OK'; if (v !== undefined) DATA[name] = v; }
  catch (e) { outcome(name, e); }
}
function done() { console.log('RESULT ' + JSON.stringify({out: OUT, data: DATA})); }
"""

Expect = frozenset[str] | Callable[[str, Any], bool]


@dataclass(frozen=True)
class Attack:
    """A program and what each of its attempts must end as."""

    id: str
    language: Language
    body: str
    expect: Mapping[str, Expect]
    files: tuple[SourceFile, ...] = ()


def source(attack_language: Language, body: str, params: Mapping[str, Any]) -> str:
    if attack_language is PY:
        return PY_PRELUDE.replace("@PARAMS@", repr(json.dumps(params))) + body + "\ndone()\n"
    return (
        JS_PRELUDE.replace("@PARAMS@", json.dumps(params))
        + "(async () => {\n"
        + body
        + "\ndone();\n})();\n"
    )


def parse(execution: Execution) -> tuple[dict[str, str], dict[str, Any]]:
    for line in execution.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line.removeprefix("RESULT "))
            return result["out"], result["data"]
    raise AssertionError(
        f"no result (exit {execution.exit_code}, killed {execution.killed_reason!r}): "
        f"{execution.stdout[-800:]!r} {execution.stderr[-1500:]!r}"
    )


def every(names: str, outcome: Expect) -> dict[str, Expect]:
    """The same expected outcome for each attempt in the space-separated `names`."""
    return dict.fromkeys(names.split(), outcome)


def data_ok(check: Callable[[Any], bool]) -> Callable[[str, Any], bool]:
    return lambda outcome, data: outcome == "OK" and check(data)


def failed(outcome: str, _: Any) -> bool:
    return outcome != "OK"


def env_names(blob: str) -> set[str]:
    return {item.split("=", 1)[0] for item in blob.split("\0") if item}


def mount_points_allowed(sandbox: CodeSandbox, language: Language, files: int) -> Expect:
    image = sandbox.images[language]
    allowed = {*image.binds, *image.masks, "/", "/proc", "/dev", "/tmp", "/home/sandbox"}
    allowed |= {"/output", f"/sandbox/{'run.py' if language is PY else 'run.js'}"}
    allowed |= {f"/sandbox/main{image.suffix}"}

    def check(points: list[str]) -> bool:
        extra = [
            p
            for p in points
            if p not in allowed and not p.startswith("/dev/") and not p.startswith("/workspace/")
        ]
        assert not extra, f"unexpected mounts in the sandbox: {extra}"
        return sum(p.startswith("/workspace/") for p in points) == files

    return data_ok(check)


async def run(sandbox: CodeSandbox, program: Program) -> Execution:
    return await asyncio.wait_for(sandbox.run(program), timeout=program.limits.timeout_seconds + 10)


# --------------------------------------------------------------------------- the attacks

_READS = [
    Attack(
        "read-etc-shadow",
        PY,
        "attempt('shadow', lambda: open('/etc/shadow', 'rb').read())\n"
        "attempt('gshadow', lambda: open('/etc/gshadow', 'rb').read())",
        {"shadow": ENOENT, "gshadow": ENOENT},
    ),
    Attack(
        "read-etc-passwd",
        PY,
        "import pwd\n"
        "attempt('passwd', lambda: open('/etc/passwd').read())\n"
        "attempt('getpwuid', lambda: pwd.getpwuid(0).pw_name)",
        {"passwd": ENOENT, "getpwuid": frozenset({"KeyError"})},
    ),
    Attack(
        "read-root-home",
        PY,
        "attempt('list', lambda: os.listdir('/root'))\n"
        "attempt('history', lambda: open('/root/.bash_history').read())\n"
        "attempt('ssh', lambda: open('/root/.ssh/id_rsa').read())",
        {"list": ENOENT, "history": ENOENT, "ssh": ENOENT},
    ),
    Attack(
        # In the sandbox's pid namespace, pid 1 is the program itself: the host's init (and
        # its environment) is not there to read.
        "read-pid-1-environ",
        PY,
        "attempt('environ', lambda: open('/proc/1/environ').read())\n"
        "attempt('cmdline', lambda: open('/proc/1/cmdline').read())",
        {
            "environ": data_ok(lambda blob: env_names(blob) <= SANDBOX_ENV),
            "cmdline": data_ok(lambda blob: "/sandbox/" in blob),
        },
    ),
    Attack(
        "read-test-process-environ",
        PY,
        "pid = P['test_pid']\n"
        "attempt('environ', lambda: open(f'/proc/{pid}/environ').read())\n"
        "attempt('cmdline', lambda: open(f'/proc/{pid}/cmdline').read())\n"
        "attempt('signal', lambda: os.kill(pid, 0))",
        {"environ": ENOENT, "cmdline": ENOENT, "signal": frozenset({"ESRCH"})},
    ),
    Attack(
        "read-self-environ",
        PY,
        "attempt('proc', lambda: open('/proc/self/environ').read())\n"
        "attempt('os', lambda: sorted(os.environ))\n"
        "attempt('secret', lambda: os.environ[P['secret_env_name']])",
        {
            "proc": data_ok(lambda blob: env_names(blob) <= SANDBOX_ENV),
            "os": data_ok(lambda names: set(names) <= SANDBOX_ENV),
            "secret": frozenset({"KeyError"}),
        },
    ),
    Attack(
        "read-host-secret-file",
        PY,
        "attempt('file', lambda: open(P['secret_file']).read())\n"
        "attempt('dir', lambda: os.listdir(os.path.dirname(P['secret_file'])))",
        {"file": ENOENT, "dir": ENOENT},
    ),
    Attack(
        "read-other-workspaces",
        PY,
        "attempt('root', lambda: os.listdir(P['workspace_root']))\n"
        "attempt('other', lambda: open(P['other_file']).read())",
        {"root": ENOENT, "other": ENOENT},
    ),
    Attack(
        "read-service-database",
        PY,
        "attempt('db', lambda: open(P['database'], 'rb').read(100))\n"
        "attempt('dir', lambda: os.listdir(os.path.dirname(P['database'])))",
        {"db": ENOENT, "dir": ENOENT},
    ),
    Attack(
        "read-sys",
        PY,
        "attempt('sys', lambda: os.listdir('/sys'))\n"
        "attempt('cgroup', lambda: os.listdir('/sys/fs/cgroup'))\n"
        "attempt('release_agent', lambda: open('/sys/fs/cgroup/memory/release_agent').read())",
        {"sys": ENOENT, "cgroup": ENOENT, "release_agent": ENOENT},
    ),
    Attack(
        "list-dev",
        PY,
        "attempt('dev', lambda: sorted(os.listdir('/dev')))\n"
        "for name in ('mem', 'kmem', 'port', 'vda', 'sda', 'nvme0n1', 'kvm', 'fuse', 'net/tun',"
        " 'vsock', 'vhost-vsock', 'loop0', 'dri/card0'):\n"
        "    attempt(name, lambda: open('/dev/' + name, 'rb').read(1))",
        {
            "dev": data_ok(lambda names: set(names) <= DEV_ALLOWED and "null" in names),
            **every(
                "mem kmem port vda sda nvme0n1 kvm fuse net/tun vsock vhost-vsock loop0 dri/card0",
                ENOENT,
            ),
        },
    ),
    Attack(
        "list-root",
        PY,
        "attempt('root', lambda: sorted(os.listdir('/')))\n"
        "attempt('usr', lambda: sorted(os.listdir('/usr')))\n"
        "attempt('usr-bin', lambda: sorted(os.listdir('/usr/bin')))",
        {
            "root": data_ok(
                lambda names: set(names) <= ROOT_ALLOWED and {"proc", "tmp", "usr"} <= set(names)
            ),
            "usr": data_ok(lambda names: set(names) <= {"bin", "lib", "lib64", "lib32", "share"}),
            "usr-bin": data_ok(lambda names: all(n.startswith("python3") for n in names)),
        },
    ),
    Attack(
        "proc-root-links",
        PY,
        "attempt('pid1-root', lambda: open('/proc/1/root/etc/passwd').read())\n"
        "attempt('self-root', lambda: open('/proc/self/root/../../etc/shadow').read())\n"
        "attempt('cwd-up', lambda: open('/proc/self/cwd/../../../../etc/passwd').read())\n"
        "attempt('root-list', lambda: sorted(os.listdir('/proc/1/root')))",
        {
            "pid1-root": ENOENT,
            "self-root": ENOENT,
            "cwd-up": ENOENT,
            "root-list": data_ok(lambda names: set(names) <= ROOT_ALLOWED),
        },
    ),
    Attack(
        "kernel-interfaces",
        PY,
        "attempt('kcore', lambda: open('/proc/kcore', 'rb').read(16))\n"
        "attempt('kmsg', lambda: open('/proc/kmsg', 'rb').read(16))\n"
        "attempt('core_pattern', lambda: write('/proc/sys/kernel/core_pattern', '|/tmp/x'))\n"
        "attempt('modprobe', lambda: write('/proc/sys/kernel/modprobe', '/tmp/x'))\n"
        "attempt('sysrq', lambda: write('/proc/sysrq-trigger', 'h'))\n"
        "attempt('uevent_helper', lambda: write('/sys/kernel/uevent_helper', '/tmp/x'))",
        {
            "kcore": frozenset({"EACCES", "EPERM", "ENOENT"}),
            "kmsg": frozenset({"EACCES", "EPERM"}),
            "core_pattern": READ_ONLY,
            "modprobe": READ_ONLY | ENOENT,
            "sysrq": READ_ONLY | ENOENT,
            "uevent_helper": ENOENT,
        },
    ),
    Attack(
        # CVE-2024-21626: no descriptor of the service (a directory, a socket, the database)
        # reaches the program; only its stdio pipes, its stdin memfd and the report pipe.
        "leaked-descriptors",
        PY,
        "def fds():\n"
        "    found = []\n"
        "    for name in os.listdir('/proc/self/fd'):\n"
        "        try:\n"
        "            target = os.readlink('/proc/self/fd/' + name)\n"
        "            mode = os.fstat(int(name)).st_mode\n"
        "        except OSError:\n"
        "            continue\n"
        "        found.append([int(name), target, stat.S_ISDIR(mode)])\n"
        "    return found\n"
        "attempt('fds', fds)\n"
        "attempt('dirfd-escape', lambda: os.listdir('/proc/self/fd/3/..'))",
        {
            "fds": data_ok(
                lambda fds: (
                    len(fds) <= 4
                    and all(
                        not is_dir and target.startswith(("pipe:", "/memfd:agentrt-"))
                        for _, target, is_dir in fds
                    )
                )
            ),
            "dirfd-escape": frozenset({"ENOENT", "ENOTDIR", "EBADF"}),
        },
    ),
    Attack(
        "js-reads",
        JS,
        "attempt('passwd', () => fs.readFileSync('/etc/passwd', 'utf8'));\n"
        "attempt('root', () => fs.readdirSync('/').sort());\n"
        "attempt('env', () => Object.keys(process.env).sort());\n"
        "attempt('proc-environ', () => fs.readFileSync('/proc/self/environ', 'latin1'));\n"
        "attempt('secret', () => fs.readFileSync(P.secret_file, 'utf8'));\n"
        "attempt('workspaces', () => fs.readdirSync(P.workspace_root));\n"
        "attempt('test-process', () => fs.readFileSync(`/proc/${P.test_pid}/environ`, 'latin1'));",
        {
            "passwd": ENOENT,
            "root": data_ok(lambda names: set(names) <= ROOT_ALLOWED),
            "env": data_ok(lambda names: set(names) <= SANDBOX_ENV),
            "proc-environ": data_ok(lambda blob: env_names(blob) <= SANDBOX_ENV),
            "secret": ENOENT,
            "workspaces": ENOENT,
            "test-process": ENOENT,
        },
    ),
]

_WRITES = [
    Attack(
        "write-root-and-sandbox",
        PY,
        "attempt('new-file', lambda: open('/evil', 'w'))\n"
        "attempt('mkdir-etc', lambda: os.mkdir('/etc'))\n"
        "attempt('code', lambda: open('/sandbox/main.py', 'w'))\n"
        "attempt('harness', lambda: open('/sandbox/run.py', 'a'))\n"
        "attempt('sandbox-new', lambda: open('/sandbox/evil.py', 'w'))\n"
        "attempt('unlink-harness', lambda: os.unlink('/sandbox/run.py'))\n"
        "attempt('workspace', lambda: os.mkdir('/workspace'))\n"
        "attempt('dev', lambda: open('/dev/evil', 'w'))\n"
        "attempt('dev-null-swap', lambda: os.rename('/dev/null', '/dev/shm/null'))",
        {
            "dev": READ_ONLY,
            "dev-null-swap": READ_ONLY | frozenset({"EXDEV", "EBUSY"}),
            "new-file": READ_ONLY,
            "mkdir-etc": READ_ONLY,
            "code": READ_ONLY,
            "harness": READ_ONLY,
            "sandbox-new": READ_ONLY,
            "unlink-harness": READ_ONLY | frozenset({"EBUSY"}),
            "workspace": READ_ONLY,
        },
    ),
    Attack(
        "write-input-files",
        PY,
        "attempt('truncate', lambda: open('/workspace/data/in.txt', 'w'))\n"
        "attempt('append', lambda: open('/workspace/data/in.txt', 'a'))\n"
        "attempt('unlink', lambda: os.unlink('/workspace/data/in.txt'))\n"
        "attempt('new', lambda: open('/workspace/data/new.txt', 'w'))\n"
        "attempt('read', lambda: open('/workspace/data/in.txt').read())",
        {
            "truncate": READ_ONLY,
            "append": READ_ONLY,
            "unlink": READ_ONLY | frozenset({"EBUSY"}),
            "new": READ_ONLY,
            "read": data_ok(lambda text: text == "input"),
        },
        files=(SourceFile("data/in.txt", b"input"),),
    ),
    Attack(
        # CVE-2019-5736: the runtime's own binary through /proc/self/exe.
        "write-interpreter-via-proc-self-exe",
        PY,
        "attempt('exe', lambda: open('/proc/self/exe', 'r+b'))\n"
        "attempt('exe-append', lambda: open('/proc/self/exe', 'ab'))\n"
        "attempt('chmod', lambda: os.chmod(P['interpreter'], 0o4777))\n"
        "attempt('utime', lambda: os.utime(P['interpreter'], (0, 0)))\n"
        "attempt('truncate', lambda: os.truncate(P['interpreter'], 0))",
        {
            "exe": READ_ONLY | frozenset({"ETXTBSY"}),
            "exe-append": READ_ONLY | frozenset({"ETXTBSY"}),
            "chmod": READ_ONLY,
            "utime": READ_ONLY,
            "truncate": READ_ONLY | frozenset({"ETXTBSY"}),
        },
    ),
    Attack(
        "symlinks-to-host-files",
        PY,
        "os.symlink('/etc/passwd', '/tmp/passwd')\n"
        "os.symlink(P['interpreter'], '/tmp/python')\n"
        "os.symlink('/', '/output/root')\n"
        "os.symlink(P['secret_file'], '/tmp/secret')\n"
        "attempt('passwd', lambda: open('/tmp/passwd', 'a'))\n"
        "attempt('python', lambda: open('/tmp/python', 'ab'))\n"
        "attempt('via-output', lambda: open('/output/root/usr/evil', 'w'))\n"
        "attempt('secret', lambda: open('/tmp/secret').read())",
        {"passwd": ENOENT, "python": READ_ONLY, "via-output": READ_ONLY, "secret": ENOENT},
    ),
    Attack(
        "hard-links-and-renames",
        PY,
        "attempt('link-python', lambda: os.link(P['interpreter'], '/tmp/python'))\n"
        "attempt('link-code', lambda: os.link('/sandbox/main.py', '/output/main.py'))\n"
        "attempt('rename-code', lambda: os.rename('/sandbox/main.py', '/tmp/main.py'))\n"
        "attempt('rename-lib', lambda: os.rename(P['binds'][-1], '/tmp/lib'))",
        {
            "link-python": frozenset({"EXDEV"}),
            "link-code": frozenset({"EXDEV"}),
            "rename-code": frozenset({"EXDEV", "EROFS", "EBUSY"}),
            "rename-lib": frozenset({"EXDEV", "EROFS", "EBUSY"}),
        },
    ),
    Attack(
        "dot-dot-from-output",
        PY,
        "attempt('up-two', lambda: open('/output/../../evil', 'w'))\n"
        "attempt('into-sandbox', lambda: open('/output/../sandbox/evil', 'w'))\n"
        "attempt('etc', lambda: open('/output/../../../../etc/passwd', 'a'))\n"
        "attempt('mkdir', lambda: os.makedirs('/output/../escape/x'))",
        {"up-two": READ_ONLY, "into-sandbox": READ_ONLY, "etc": ENOENT, "mkdir": READ_ONLY},
    ),
    Attack(
        "device-nodes",
        PY,
        "attempt('block', lambda: os.mknod('/tmp/vda', stat.S_IFBLK | 0o666, os.makedev(254, 0)))\n"
        "attempt('char-mem', lambda: os.mknod('/tmp/mem', stat.S_IFCHR | 0o666, os.makedev(1, 1)))\n"
        "attempt('fifo', lambda: os.mkfifo('/tmp/fifo'))",
        {"block": EPERM, "char-mem": EPERM, "fifo": frozenset({"OK"})},
    ),
    Attack(
        "js-writes",
        JS,
        "attempt('interpreter', () => fs.appendFileSync(process.execPath, 'x'));\n"
        "attempt('root', () => fs.writeFileSync('/evil', 'x'));\n"
        "attempt('code', () => fs.writeFileSync('/sandbox/main.js', 'x'));\n"
        "attempt('up', () => fs.writeFileSync('/output/../../evil', 'x'));\n"
        "fs.symlinkSync('/etc/passwd', '/tmp/passwd');\n"
        "attempt('symlink', () => fs.appendFileSync('/tmp/passwd', 'x'));",
        {
            "interpreter": READ_ONLY | frozenset({"ETXTBSY"}),
            "root": READ_ONLY,
            "code": READ_ONLY,
            "up": READ_ONLY,
            "symlink": ENOENT,
        },
    ),
]

_NETWORK = [
    Attack(
        "tcp-connect-loopback",
        PY,
        "def connect(host):\n"
        "    with socket.create_connection((host, P['canary_port']), timeout=2):\n"
        "        return 'connected'\n"
        "attempt('v4', lambda: connect('127.0.0.1'))\n"
        "attempt('v6', lambda: connect('::1'))\n"
        "attempt('any', lambda: connect('0.0.0.0'))",
        {"v4": UNREACHABLE, "v6": UNREACHABLE, "any": UNREACHABLE},
    ),
    Attack(
        "tcp-connect-host-addresses",
        PY,
        "for address in P['addresses']:\n"
        "    def connect(address=address):\n"
        "        with socket.create_connection((address, P['canary_port']), timeout=2):\n"
        "            return 'connected'\n"
        "    attempt('tcp ' + address, connect)\n"
        "attempt('metadata', lambda: socket.create_connection(('169.254.169.254', 80), timeout=2))",
        # Filled per scene: every host address must be unreachable.
        {"metadata": UNREACHABLE},
    ),
    Attack(
        "dns-lookup",
        PY,
        "attempt('example', lambda: socket.getaddrinfo('example.com', 443))\n"
        "attempt('metadata', lambda: socket.getaddrinfo('metadata.google.internal', 80))\n"
        "attempt('resolv', lambda: open('/etc/resolv.conf').read())\n"
        "def udp53():\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    return s.sendto(b'\\x00' * 12, ('8.8.8.8', 53))\n"
        "attempt('udp53', udp53)",
        {
            "example": frozenset({"gaierror"}),
            "metadata": frozenset({"gaierror"}),
            "resolv": ENOENT,
            "udp53": UNREACHABLE,
        },
    ),
    Attack(
        "udp-send",
        PY,
        "for address in P['addresses']:\n"
        "    family = socket.AF_INET6 if ':' in address else socket.AF_INET\n"
        "    def send(address=address, family=family):\n"
        "        with socket.socket(family, socket.SOCK_DGRAM) as s:\n"
        "            return s.sendto(b'agentrt-escape', (address, P['udp_port']))\n"
        "    attempt('udp ' + address, send)",
        # Loopback datagrams land on the sandbox's own `lo`; the host's UDP socket must see none.
        {},
    ),
    Attack(
        "netlink-route-dump",
        PY,
        "def links():\n"
        "    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n"
        "    s.bind((0, 0))\n"
        "    body = struct.pack('BBHiII', socket.AF_UNSPEC, 0, 0, 0, 0, 0)\n"
        "    s.send(struct.pack('=IHHII', 16 + len(body), 18, 0x301, 1, 0) + body)\n"
        "    names = []\n"
        "    while True:\n"
        "        data, off = s.recv(65536), 0\n"
        "        while off < len(data):\n"
        "            length, kind = struct.unpack_from('=IH', data, off)\n"
        "            if kind == 3:\n"
        "                return names\n"
        "            if kind == 2:\n"
        "                raise OSError(errno.EPROTO, 'netlink error')\n"
        "            a = off + 32\n"
        "            while a + 4 <= off + length:\n"
        "                alen, atype = struct.unpack_from('=HH', data, a)\n"
        "                if alen < 4:\n"
        "                    break\n"
        "                if atype == 3:\n"
        "                    names.append(data[a + 4:a + alen].rstrip(b'\\0').decode())\n"
        "                a += (alen + 3) & ~3\n"
        "            off += (length + 3) & ~3\n"
        "attempt('links', links)\n"
        "attempt('if_nameindex', lambda: [n for _, n in socket.if_nameindex()])\n"
        "attempt('proc-net-dev', lambda: [l.split(':')[0].strip()"
        " for l in open('/proc/net/dev').read().splitlines()[2:]])",
        {
            "links": data_ok(lambda names: names == ["lo"]),
            "if_nameindex": data_ok(lambda names: names == ["lo"]),
            "proc-net-dev": data_ok(lambda names: names == ["lo"]),
        },
    ),
    Attack(
        "proc-net-hides-host-sockets",
        PY,
        "attempt('tcp', lambda: open('/proc/net/tcp').read() + open('/proc/net/tcp6').read())\n"
        "attempt('udp', lambda: open('/proc/net/udp').read() + open('/proc/net/udp6').read())\n"
        "attempt('unix', lambda: open('/proc/net/unix').read())",
        {
            "tcp": data_ok(lambda text: len(text.splitlines()) == 2),
            "udp": data_ok(lambda text: len(text.splitlines()) == 2),
            "unix": data_ok(lambda text: "@" not in text),
        },
    ),
    Attack(
        "socket-families-refused",
        PY,
        "families = {'vsock': 40, 'packet': 17, 'alg': 38, 'bluetooth': 31, 'key': 15,"
        " 'can': 29, 'tipc': 30, 'xdp': 44, 'rds': 21, 'llc': 26, 'ax25': 3, 'appletalk': 5}\n"
        "for name, family in families.items():\n"
        "    attempt(name, lambda family=family: socket.socket(family, socket.SOCK_RAW))\n"
        "attempt('vsock-stream', lambda: socket.socket(40, socket.SOCK_STREAM))\n"
        "attempt('inet-raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1))\n"
        "attempt('inet6-raw', lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, 58))",
        {
            **every(
                "vsock packet alg bluetooth key can tipc xdp rds llc ax25 appletalk "
                "vsock-stream inet-raw inet6-raw",
                EPERM,
            )
        },
    ),
    Attack(
        # CVE-2020-15257: a host service on an abstract unix socket.
        "abstract-unix-socket",
        PY,
        "def connect():\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "    s.connect('\\0' + P['abstract'])\n"
        "    return 'connected'\n"
        "attempt('connect', connect)",
        {"connect": frozenset({"ECONNREFUSED"})},
    ),
    Attack(
        "unix-socket-files",
        PY,
        "for path in P['unix_sockets'] + ['/var/run/docker.sock', '/run/containerd/containerd.sock',"
        " '/run/dbus/system_bus_socket', '/var/run/postgresql/.s.PGSQL.5432',"
        " '/run/systemd/private']:\n"
        "    def connect(path=path):\n"
        "        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "        s.connect(path)\n"
        "        return 'connected'\n"
        "    attempt('unix ' + path, connect)\n"
        "attempt('run', lambda: os.listdir('/run'))\n"
        "attempt('var-run', lambda: os.listdir('/var/run'))",
        {"run": ENOENT, "var-run": ENOENT},
    ),
    Attack(
        "js-network",
        JS,
        "const net = require('net'), dns = require('dns').promises, dgram = require('dgram');\n"
        "function connect(host) {\n"
        "  return new Promise((resolve, reject) => {\n"
        "    const s = net.connect({host, port: P.canary_port, timeout: 2000});\n"
        "    s.on('connect', () => { s.destroy(); resolve('connected'); });\n"
        "    s.on('error', reject);\n"
        "    s.on('timeout', () => { s.destroy(); reject({code: 'TIMEOUT'}); });\n"
        "  });\n"
        "}\n"
        "for (const address of P.addresses) await attemptAsync('tcp ' + address, () => connect(address));\n"
        "await attemptAsync('dns', () => dns.lookup('example.com'));\n"
        "await attemptAsync('abstract', () => new Promise((resolve, reject) => {\n"
        "  const s = net.connect({path: '\\0' + P.abstract});\n"
        "  s.on('connect', () => { s.destroy(); resolve('connected'); });\n"
        "  s.on('error', reject);\n"
        "}));\n"
        "await attemptAsync('udp', () => new Promise((resolve, reject) => {\n"
        "  const s = dgram.createSocket('udp4');\n"
        "  s.send('agentrt-escape', P.udp_port, P.addresses[2] || '127.0.0.1', (e) => {\n"
        "    s.close(); e ? reject(e) : resolve('sent'); });\n"
        "}));",
        # Filled per scene like the Python one.
        {
            "dns": frozenset({"ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED"}),
            "abstract": frozenset({"ECONNREFUSED"}),
        },
    ),
]

_PROCESSES = [
    Attack(
        "proc-shows-only-the-sandbox",
        PY,
        "attempt('pids', lambda: sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
        "attempt('init', lambda: open('/proc/1/cmdline').read().split('\\0')[0])\n"
        "attempt('kthreadd', lambda: open('/proc/2/status').read())",
        {
            "pids": data_ok(lambda pids: pids == ["1"]),
            "init": data_ok(lambda exe: "python" in exe),
            "kthreadd": ENOENT,
        },
    ),
    Attack(
        "ptrace",
        PY,
        "attempt('traceme', lambda: raw('ptrace', 0, 0, 0, 0))\n"
        "def attach_parent():\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        try:\n"
        "            raw('ptrace', 16, 1, 0, 0)\n"
        "            os._exit(0)\n"
        "        except OSError as e:\n"
        "            os._exit(e.errno)\n"
        "    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])\n"
        "    if code:\n"
        "        raise OSError(code, 'attach')\n"
        "    return 'attached'\n"
        "attempt('attach-init', attach_parent)\n"
        "attempt('vm-read', lambda: raw('process_vm_readv', 1, 0, 0, 0, 0, 0))\n"
        "attempt('mem-of-init', lambda: open('/proc/1/mem', 'rb').read(1))",
        {
            "traceme": EPERM,
            "attach-init": EPERM,
            "vm-read": EPERM,
            # Its own memory, as pid 1 is the program itself: reading offset 0 is unmapped.
            "mem-of-init": frozenset({"EIO", "EPERM", "EACCES"}),
        },
    ),
    Attack(
        "namespace-syscalls",
        PY,
        "attempt('unshare-user', lambda: raw('unshare', 0x10000000))\n"
        "attempt('unshare-mount', lambda: raw('unshare', 0x20000))\n"
        "attempt('unshare-net', lambda: raw('unshare', 0x40000000))\n"
        "ns = os.open('/proc/self/ns/net', os.O_RDONLY)\n"
        "attempt('setns', lambda: raw('setns', ns, 0))\n"
        "attempt('mount', lambda: raw('mount', b'none', b'/tmp', b'tmpfs', 0, 0))\n"
        "attempt('mount-proc', lambda: raw('mount', b'proc', b'/tmp', b'proc', 0, 0))\n"
        "attempt('umount', lambda: raw('umount2', b'/proc', 2))\n"
        "attempt('chroot', lambda: raw('chroot', b'/tmp'))\n"
        "attempt('pivot_root', lambda: raw('pivot_root', b'/tmp', b'/tmp'))\n"
        "attempt('fsopen', lambda: raw('fsopen', b'tmpfs', 0))\n"
        "attempt('open_tree', lambda: raw('open_tree', -100, b'/', 1))\n"
        "def clone_newuser():\n"
        "    child = raw('clone', 0x10000000 | 17, 0, 0, 0, 0)\n"
        "    if child == 0:\n"
        "        os._exit(0)\n"
        "    os.waitpid(child, 0)\n"
        "    return child\n"
        "attempt('clone-newuser', clone_newuser)",
        {
            **every(
                "unshare-user unshare-mount unshare-net setns mount mount-proc umount "
                "chroot pivot_root fsopen open_tree clone-newuser",
                EPERM,
            ),
        },
    ),
    Attack(
        "kernel-syscalls",
        PY,
        "handle = ctypes.create_string_buffer(struct.pack('II', 8, 1) + b'\\0' * 8)\n"
        "mount_id = ctypes.create_string_buffer(4)\n"
        "root = os.open('/', os.O_RDONLY)\n"
        "calls = {\n"
        "    'keyctl': ('keyctl', 0, -3, 1),\n"
        "    'add_key': ('add_key', b'user', b'agentrt', b'x', 1, -2),\n"
        "    'request_key': ('request_key', b'user', b'agentrt', 0, 0),\n"
        "    'bpf': ('bpf', 5, 0, 0),\n"
        "    'perf_event_open': ('perf_event_open', 0, 0, -1, -1, 0),\n"
        "    'userfaultfd': ('userfaultfd', 0),\n"
        "    'io_uring_setup': ('io_uring_setup', 1, 0),\n"
        "    'open_by_handle_at': ('open_by_handle_at', root, handle, 0),\n"
        "    'name_to_handle_at': ('name_to_handle_at', -100, b'/', handle, mount_id, 0),\n"
        "    'init_module': ('init_module', 0, 0, b''),\n"
        "    'finit_module': ('finit_module', -1, b'', 0),\n"
        "    'kexec_load': ('kexec_load', 0, 0, 0, 0),\n"
        "    'kcmp': ('kcmp', 1, 1, 0, 0, 0),\n"
        "    'syslog': ('syslog', 10, 0, 0),\n"
        "    'acct': ('acct', 0),\n"
        "    'swapon': ('swapon', b'/tmp/swap', 0),\n"
        "    'sethostname': ('sethostname', b'evil', 4),\n"
        "    'settimeofday': ('settimeofday', 0, 0),\n"
        "    'reboot': ('reboot', 0xfee1dead, 672274793, 0, 0),\n"
        "}\n"
        "for name in ('iopl', 'ioperm'):\n"
        "    if name in P['nr']:\n"
        "        calls[name] = (name, 3) if name == 'iopl' else (name, 0, 1024, 1)\n"
        "for name, call in calls.items():\n"
        "    attempt(name, lambda call=call: raw(*call))",
        # iopl/ioperm exist on x86_64 only; the check below accepts their absence.
        every(
            "keyctl add_key request_key bpf perf_event_open userfaultfd "
            "io_uring_setup open_by_handle_at name_to_handle_at init_module "
            "finit_module kexec_load kcmp syslog acct swapon sethostname "
            "settimeofday reboot",
            EPERM,
        ),
    ),
    Attack(
        "credentials",
        PY,
        "def status():\n"
        "    fields = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "    keys = ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp',"
        " 'Uid', 'Gid', 'Groups')\n"
        "    return {k: ' '.join(fields.get(k, '').split()) for k in keys}\n"
        "attempt('status', status)\n"
        "attempt('ids', lambda: [os.getuid(), os.geteuid(), os.getgid(), os.getegid()])\n"
        "attempt('setuid', lambda: os.setuid(0))\n"
        "attempt('setgid', lambda: os.setgid(0))\n"
        "attempt('setgroups', lambda: os.setgroups([0]))\n"
        "attempt('setresuid', lambda: os.setresuid(0, 0, 0))\n"
        "attempt('uid_map', lambda: write('/proc/self/uid_map', '0 0 1'))\n"
        "attempt('setgroups-file', lambda: write('/proc/self/setgroups', 'allow'))",
        {
            "status": data_ok(
                lambda s: (
                    all(s[k] == ZERO_CAPS for k in ("CapInh", "CapPrm", "CapEff"))
                    and s["CapBnd"] == ZERO_CAPS
                    and s["CapAmb"] == ZERO_CAPS
                    and s["NoNewPrivs"] == "1"
                    and s["Seccomp"] == "2"
                    and s["Uid"] == "1000 1000 1000 1000"
                    and s["Gid"] == "1000 1000 1000 1000"
                    and set(s["Groups"].split()) <= {"1000"}
                )
            ),
            "ids": data_ok(lambda ids: ids == [1000, 1000, 1000, 1000]),
            # uid and gid 0 are not mapped in the sandbox's user namespace: EINVAL.
            "setuid": EPERM | {"EINVAL"},
            "setgid": EPERM | {"EINVAL"},
            "setgroups": EPERM,
            "setresuid": EPERM | {"EINVAL"},
            "uid_map": frozenset({"EPERM", "EACCES"}),
            "setgroups-file": frozenset({"EPERM", "EACCES"}),
        },
    ),
    Attack(
        "exec-host-binaries",
        PY,
        "import subprocess\n"
        f"for path in {HOST_BINARIES!r}:\n"
        "    attempt('exec ' + path, lambda path=path: subprocess.run([path], timeout=5).returncode)\n"
        "attempt('shell', lambda: subprocess.run('id', shell=True, timeout=5).returncode)\n"
        "attempt('os-system', lambda: os.system('exit 7'))\n"
        "attempt('popen', lambda: os.popen('echo hi').read())",
        {
            **{f"exec {path}": ENOENT for path in HOST_BINARIES},
            "shell": ENOENT,
            # os.system forks /bin/sh: with no shell the child exits 127.
            "os-system": data_ok(lambda status: status == 127 << 8),
            "popen": ENOENT,
        },
    ),
    Attack(
        "ctypes-libc",
        PY,
        "attempt('cdll', lambda: ctypes.CDLL(None).getpid())\n"
        "attempt('raw-getpid', lambda: raw('getpid'))\n"
        "attempt('raw-getuid', lambda: raw('getuid'))",
        {
            "cdll": data_ok(lambda pid: pid == 1),
            "raw-getpid": data_ok(lambda pid: pid == 1),
            "raw-getuid": data_ok(lambda uid: uid == 1000),
        },
    ),
    Attack(
        # CVE-2017-5226 (TIOCSTI), CVE-2019-10063 (TIOCSTI with high bits set), TIOCLINUX.
        "terminal-injection",
        PY,
        "import fcntl, termios\n"
        "for fd in (0, 1, 2):\n"
        "    attempt(f'tiocsti-{fd}', lambda fd=fd: fcntl.ioctl(fd, termios.TIOCSTI, b'x'))\n"
        "buf = ctypes.create_string_buffer(b'x')\n"
        "attempt('tiocsti-high-bits', lambda: raw('ioctl', 1, termios.TIOCSTI | (1 << 32), buf))\n"
        "attempt('tioclinux', lambda: raw('ioctl', 1, 0x541C, ctypes.create_string_buffer(b'\\x06')))\n"
        "attempt('tty', lambda: open('/dev/tty', 'rb'))\n"
        "master = os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY)\n"
        "attempt('tiocsti-pty', lambda: fcntl.ioctl(master, termios.TIOCSTI, b'x'))\n"
        "attempt('session', lambda: os.getsid(0) == os.getpid())",
        {
            "tiocsti-0": EPERM,
            "tiocsti-1": EPERM,
            "tiocsti-2": EPERM,
            "tiocsti-high-bits": EPERM,
            "tioclinux": EPERM,
            "tty": frozenset({"ENXIO", "ENOENT"}),
            "tiocsti-pty": EPERM,
            "session": data_ok(lambda leader: leader is True),
        },
    ),
    Attack(
        "raise-limits-and-priority",
        PY,
        "import resource\n"
        "for name in ('RLIMIT_NPROC', 'RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_NOFILE', 'RLIMIT_FSIZE'):\n"
        "    which = getattr(resource, name)\n"
        "    soft, hard = resource.getrlimit(which)\n"
        "    attempt(name, lambda which=which, hard=hard: resource.setrlimit(which, (hard + 1, hard + 1)))\n"
        "attempt('nice', lambda: os.nice(-5))\n"
        "attempt('fifo', lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))\n"
        "attempt('oom_score_adj', lambda: write('/proc/self/oom_score_adj', '-1000'))",
        {
            "RLIMIT_NPROC": frozenset({"ValueError", "EPERM"}),
            "RLIMIT_AS": frozenset({"ValueError", "EPERM"}),
            "RLIMIT_CPU": frozenset({"ValueError", "EPERM"}),
            "RLIMIT_NOFILE": frozenset({"ValueError", "EPERM"}),
            "RLIMIT_FSIZE": frozenset({"ValueError", "EPERM"}),
            "nice": frozenset({"EPERM", "EACCES"}),
            "fifo": frozenset({"EPERM"}),
            "oom_score_adj": frozenset({"EACCES", "EPERM"}),
        },
    ),
    Attack(
        "js-processes",
        JS,
        "const cp = require('child_process');\n"
        "attempt('execSync', () => cp.execSync('id').toString());\n"
        "attempt('spawnSync-sh', () => { const r = cp.spawnSync('/bin/sh', ['-c', 'id']);"
        " if (r.error) throw r.error; return r.status; });\n"
        "attempt('setuid', () => process.setuid(0));\n"
        "attempt('pids', () => fs.readdirSync('/proc').filter(p => /^\\d+$/.test(p)));\n"
        "attempt('test-process', () => process.kill(P.test_pid, 0));",
        {
            "execSync": ENOENT,
            "spawnSync-sh": ENOENT,
            "setuid": EPERM | {"EINVAL"},
            "pids": data_ok(lambda pids: pids == ["1"]),
            "test-process": frozenset({"ESRCH"}),
        },
    ),
]

ATTACKS = _READS + _WRITES + _NETWORK + _PROCESSES


def expectations(attack: Attack, scene: Scene) -> dict[str, Expect]:
    """The attack's table, with the attempts that depend on the host filled in."""
    expect = dict(attack.expect)
    if attack.id == "tcp-connect-host-addresses":
        expect |= {f"tcp {address}": UNREACHABLE for address in scene.addresses}
    elif attack.id == "udp-send":
        # Loopback datagrams reach the sandbox's own `lo`; every other address is unreachable.
        expect |= {
            f"udp {a}": (
                frozenset({"OK"}) | UNREACHABLE
                if ipaddress.ip_address(a).is_loopback
                else UNREACHABLE
            )
            for a in scene.addresses
        }
    elif attack.id == "js-network":
        expect |= {f"tcp {address}": UNREACHABLE for address in scene.addresses}
        expect["udp"] = frozenset({"OK"}) | UNREACHABLE
    elif attack.id == "unix-socket-files":
        paths = [
            *scene.unix_sockets,
            "/var/run/docker.sock",
            "/run/containerd/containerd.sock",
            "/run/dbus/system_bus_socket",
            "/var/run/postgresql/.s.PGSQL.5432",
            "/run/systemd/private",
        ]
        expect |= {f"unix {path}": ENOENT for path in paths}
    elif attack.id == "kernel-syscalls" and platform.machine() == "x86_64":
        expect |= {"iopl": EPERM, "ioperm": EPERM}
    return expect


def check_outcomes(
    attack: Attack, expect: Mapping[str, Expect], out: dict[str, str], data: dict[str, Any]
) -> None:
    assert set(out) == set(expect), f"attempts run {sorted(out)} != expected {sorted(expect)}"
    wrong = []
    for name, allowed in expect.items():
        outcome = out[name]
        ok = (
            outcome in allowed
            if isinstance(allowed, frozenset)
            else allowed(outcome, data.get(name))
        )
        if not ok:
            wrong.append(
                f"{name}: {outcome} {json.dumps(data.get(name))[:300] if name in data else ''}"
            )
    assert not wrong, f"{attack.id}: attempts that did not fail as they must:\n" + "\n".join(wrong)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
async def test_attack_fails_and_leaves_the_host_untouched(
    sandbox: CodeSandbox, scene: Scene, attack: Attack
) -> None:
    bound = [p for p in sandbox.images[attack.language].binds if os.path.isfile(p)]
    before = fingerprint(bound)
    params = scene.params(sandbox, attack.language)
    execution = await run(
        sandbox,
        Program(
            attack.language,
            source(attack.language, attack.body, params),
            files=attack.files,
            limits=FAST,
        ),
    )
    out, data = parse(execution)
    check_outcomes(attack, expectations(attack, scene), out, data)
    scene.assert_no_leak(execution.stdout, execution.stderr)
    assert scene.reached() == []
    assert fingerprint(bound) == before
    assert not execution.killed_reason, execution.stderr[-500:]


async def test_mount_table_holds_only_the_runtime_and_the_sandboxs_own_folders(
    sandbox: CodeSandbox,
) -> None:
    for language, files in ((PY, ()), (JS, (SourceFile("in/a.txt", b"a"),))):
        code = (
            "print('RESULT ' + __import__('json').dumps({'out': {'m': 'OK'}, 'data': {'m': "
            "[l.split()[4] for l in open('/proc/self/mountinfo')]}}))"
            if language is PY
            else "console.log('RESULT ' + JSON.stringify({out: {m: 'OK'}, data: {m: "
            "require('fs').readFileSync('/proc/self/mountinfo', 'utf8').trim().split('\\n')"
            ".map(l => l.split(' ')[4])}}))"
        )
        execution = await run(sandbox, Program(language, code, files=files, limits=FAST))
        out, data = parse(execution)
        assert mount_points_allowed(sandbox, language, len(files))(out["m"], data["m"])


async def test_writes_to_every_bound_path_fail_and_change_nothing_on_the_host(
    sandbox: CodeSandbox, scene: Scene
) -> None:
    for language in (PY, JS):
        binds = list(sandbox.images[language].binds)
        probe = f"agentrt-probe-{scene.token}"
        before = fingerprint(binds)
        if language is PY:
            body = (
                "for path in P['binds']:\n"
                "    if os.path.isdir(path):\n"
                "        attempt(path, lambda path=path: open(os.path.join(path, P['probe']), 'w'))\n"
                "    else:\n"
                "        attempt(path, lambda path=path: open(path, 'ab'))"
            )
        else:
            body = (
                "const path = require('path');\n"
                "for (const p of P.binds) {\n"
                "  attempt(p, () => fs.statSync(p).isDirectory()"
                " ? fs.writeFileSync(path.join(p, P.probe), 'x') : fs.appendFileSync(p, 'x'));\n"
                "}"
            )
        params = scene.params(sandbox, language) | {"probe": probe}
        execution = await run(
            sandbox, Program(language, source(language, body, params), limits=FAST)
        )
        out, _ = parse(execution)
        assert set(out) == set(binds)
        assert {p: o for p, o in out.items() if o not in READ_ONLY | {"ETXTBSY"}} == {}
        assert fingerprint(binds) == before
        assert not [p for p in binds if os.path.exists(os.path.join(p, probe))]


async def test_kill_minus_one_and_host_pids_reach_nothing_outside(
    sandbox: CodeSandbox, scene: Scene
) -> None:
    """Sleepers run on the host as every slot's own uid: a sandbox that could see them could
    signal them. `kill(-1)` from inside, and kill() of their host pids, must leave them alive."""
    sleepers = [
        subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "60"]
        )
        for uid in (sandbox.uid(slot) for slot in range(SLOTS))
    ]
    try:
        body = (
            "import signal, time\n"
            "for pid in P['sleepers']:\n"
            "    attempt(f'kill {pid}', lambda pid=pid: os.kill(pid, signal.SIGKILL))\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    try:\n"
            "        os.kill(-1, signal.SIGKILL)\n"
            "        code = 0\n"
            "    except OSError as e:\n"
            "        code = e.errno\n"
            "    try:\n"
            "        os.kill(1, signal.SIGKILL)\n"
            "    except OSError:\n"
            "        pass\n"
            "    time.sleep(0.2)\n"
            "    os._exit(code)\n"
            "code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])\n"
            "OUT['kill-minus-one'] = errno.errorcode.get(code, 'OK') if code else 'OK'\n"
            "attempt('init-survived', lambda: os.getpid())"
        )
        pids = [s.pid for s in sleepers]
        params = scene.params(sandbox, PY) | {"sleepers": pids}
        # As many at once as there are slots, so every slot's uid makes the attempt.
        executions = await asyncio.gather(
            *(
                run(sandbox, Program(PY, source(PY, body, params), limits=FAST))
                for _ in range(SLOTS)
            )
        )
        for execution in executions:
            out, data = parse(execution)
            assert {out[f"kill {pid}"] for pid in pids} == {"ESRCH"}
            assert out["kill-minus-one"] in {"OK", "ESRCH"}
            assert (out["init-survived"], data["init-survived"]) == ("OK", 1)
        time.sleep(0.2)
        assert [s.pid for s in sleepers if s.poll() is not None] == []
        assert scene.canary._thread.is_alive()
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


# --------------------------------------------------------------------------- the report pipe

FIND_REPORT_FD = (
    "fd = report_fd()\n"
    "def line(path, data=b'x'):\n"
    "    return json.dumps({'type': 'file', 'path': path,"
    " 'data': __import__('base64').b64encode(data).decode()}) + '\\n'\n"
)


def is_safe_relative(path: str) -> bool:
    parts = path.split("/")
    return (
        bool(path)
        and not path.startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
        and "\0" not in path
        and "\\" not in path
    )


FORGED_PATHS = [
    "../../escape-@T",
    "../escape-@T",
    "/tmp/escape-@T",
    "/etc/escape-@T",
    "//tmp/escape-@T",
    "a/../../../escape-@T",
    "sub/../../escape-@T",
    "..",
    ".",
    "",
    "..\\escape-@T",
    "\u2025/escape-@T",
    "x\u0000/../../escape-@T",
    "a/./b",
    "a//b",
    "line\nbreak",
    "%2e%2e/escape-@T",
]
LEGIT_PATHS = ["kept.txt", "...", "sub/kept.txt", "%2e%2e/escape-@T"]


async def test_forged_report_lines_never_name_a_file_outside_the_output_folder(
    sandbox: CodeSandbox, scene: Scene
) -> None:
    paths = [p.replace("@T", scene.token) for p in FORGED_PATHS + LEGIT_PATHS[:3]]
    body = (
        FIND_REPORT_FD + "os.write(fd, ''.join(line(p) for p in P['paths']).encode())\n"
        "os.write(fd, (json.dumps({'type': 'file', 'path': ['x'], 'data': 'eA=='}) + '\\n').encode())\n"
        "os.write(fd, (json.dumps({'type': 'file', 'path': 'bad-b64', 'data': '***'}) + '\\n').encode())\n"
        "os.write(fd, b'not json\\n[1, 2]\\n')\n"
        "OUT['sent'] = 'OK'"
    )
    params = scene.params(sandbox, PY) | {"paths": paths}
    execution = await run(sandbox, Program(PY, source(PY, body, params), limits=FAST))
    parse(execution)
    kept = [f.path for f in execution.files]
    assert all(is_safe_relative(p) for p in kept), kept
    expected = {p.replace("@T", scene.token) for p in LEGIT_PATHS}
    assert set(kept) <= expected, kept
    assert {"kept.txt", "...", "sub/kept.txt"} <= set(kept)


async def test_links_in_the_output_folder_are_not_followed(
    sandbox: CodeSandbox, scene: Scene
) -> None:
    body = (
        "os.symlink('/etc/passwd', '/output/passwd')\n"
        "os.symlink(P['interpreter'], '/output/python')\n"
        "os.symlink('/', '/output/root')\n"
        "os.symlink('/sandbox', '/output/sandbox')\n"
        "os.mkfifo('/output/fifo')\n"
        "open('/output/real.txt', 'w').write('real')\n"
        "OUT['planted'] = 'OK'"
    )
    execution = await run(
        sandbox, Program(PY, source(PY, body, scene.params(sandbox, PY)), limits=FAST)
    )
    parse(execution)
    assert [(f.path, f.data) for f in execution.files] == [("real.txt", b"real")]


async def test_forged_report_lines_cannot_add_more_files_than_the_harness_sends(
    sandbox: CodeSandbox, scene: Scene
) -> None:
    """The service keeps at most as many output files as the harness reports (100), whatever
    `file` lines the program forges on the report descriptor (empty files cost nothing
    against the size limit)."""
    body = (
        FIND_REPORT_FD
        + "os.write(fd, ''.join(line(f'many/f{i}', b'') for i in range(1000)).encode())\n"
        "OUT['sent'] = 'OK'"
    )
    execution = await run(
        sandbox, Program(PY, source(PY, body, scene.params(sandbox, PY)), limits=FAST)
    )
    parse(execution)
    assert len(execution.files) <= HARNESS_MAX_FILES, (
        f"{len(execution.files)} files accepted from one run"
    )


async def test_the_program_cannot_forge_its_reported_memory_use(
    sandbox: CodeSandbox, scene: Scene
) -> None:
    """`max_rss_kb` is the slot cgroup's peak where there is one, else the program's own
    figure capped at its memory limit: a forged `usage` line cannot claim a terabyte."""
    body = (
        FIND_REPORT_FD + 'os.write(fd, b\'{"type": "usage", "max_rss_kb": 1000000000}\\n\')\n'
        "OUT['sent'] = 'OK'"
    )
    execution = await run(
        sandbox, Program(PY, source(PY, body, scene.params(sandbox, PY)), limits=FAST)
    )
    parse(execution)
    assert execution.max_rss_kb < 1024 * 1024, execution.max_rss_kb


# --------------------------------------------------------------------------- through the service


async def call_run_code(service: ToolsService, agent: str, **arguments: Any) -> Any:
    stub = service.stub()
    return await stub.InvokeTool(
        invoke_request("run_code", agent_id=agent, key=uuid.uuid4().hex, **arguments),
        timeout=60,
    )


async def assert_service_still_serves(service: ToolsService) -> None:
    """The health check says SERVING and an ordinary program still runs."""
    channel = create_channel(f"127.0.0.1:{service.port}", service_token=None)
    service.channels.append(channel)
    health = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reply = await call_run_code(service, "agent-health", language="python", code="print(6 * 7)")
    assert not reply.HasField("error"), reply.error
    assert reply.data["stdout"] == "42\n"


def reply_text(reply: Any) -> str:
    return reply.content + json.dumps(struct_to_dict(reply.data))


async def test_service_run_code_never_sees_the_services_secrets(
    service: ToolsService, scene: Scene
) -> None:
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "print(open('/proc/self/environ').read())\n"
        "print(open('/proc/1/environ').read())\n"
        "for root, dirs, files in os.walk('/'):\n"
        "    if root.startswith(('/proc', '/sys', '/dev')):\n"
        "        dirs.clear()\n"
        "        continue\n"
        "    for name in files:\n"
        "        try:\n"
        "            data = open(os.path.join(root, name), 'rb').read(1 << 20)\n"
        "        except OSError:\n"
        "            continue\n"
        "        if @TOKEN@[::-1].encode() in data:\n"
        "            print('FOUND', os.path.join(root, name))\n"
        "for path in (@SECRET@, @OTHER@, @DB@):\n"
        "    try:\n"
        "        print(open(path).read())\n"
        "    except OSError as e:\n"
        "        print(path, e.strerror)\n"
    )
    for key, value in {
        "@TOKEN@": scene.token[::-1],  # the program's own source must not hold the token
        "@SECRET@": str(scene.secret_file),
        "@OTHER@": str(scene.other_file),
        "@DB@": str(scene.database),
    }.items():
        code = code.replace(key, repr(value))
    reply = await call_run_code(service, "agent-env", language="python", code=code)
    assert not reply.HasField("error"), reply.error
    text = reply_text(reply)
    scene.assert_no_leak(text)
    assert "FOUND" not in text
    assert scene.secret_env[0] not in text
    assert reply.data["stdout"].count("No such file or directory") == 3
    await assert_service_still_serves(service)


async def test_service_run_code_reaches_no_listener_on_the_host(
    service: ToolsService, scene: Scene
) -> None:
    code = (
        "import socket\n"
        f"port, udp, addresses = {scene.canary.port}, {scene.udp.getsockname()[1]}, "
        f"{scene.addresses!r}\n"
        "for address in addresses:\n"
        "    try:\n"
        "        socket.create_connection((address, port), timeout=2).close()\n"
        "        print('CONNECTED', address)\n"
        "    except OSError as e:\n"
        "        print('refused', address, e.errno)\n"
        "    try:\n"
        "        family = socket.AF_INET6 if ':' in address else socket.AF_INET\n"
        "        socket.socket(family, socket.SOCK_DGRAM).sendto(b'x', (address, udp))\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        f"    socket.socket(socket.AF_UNIX).connect('\\0{scene.abstract_name}')\n"
        "    print('CONNECTED abstract')\n"
        "except OSError as e:\n"
        "    print('refused abstract', e.errno)\n"
    )
    reply = await call_run_code(service, "agent-net", language="python", code=code)
    assert not reply.HasField("error"), reply.error
    assert "CONNECTED" not in reply.data["stdout"]
    assert reply.data["stdout"].count("refused") == len(scene.addresses) + 1
    assert scene.reached() == []
    await assert_service_still_serves(service)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


async def test_service_output_file_names_cannot_escape_the_workspace(
    service: ToolsService, scene: Scene
) -> None:
    home = Path(service.settings.workspace_root).parent
    before = tree(home)
    paths = [p.replace("@T", scene.token) for p in FORGED_PATHS + LEGIT_PATHS[:3]]
    code = (
        "import base64, json, os\n"
        "fd = int(open('/proc/self/environ').read().split('AGENTRT_REPORT_FD=')[1].split('\\0')[0])\n"
        f"for path in {paths!r}:\n"
        "    os.write(fd, (json.dumps({'type': 'file', 'path': path,"
        " 'data': base64.b64encode(b'forged').decode()}) + '\\n').encode())\n"
        "os.symlink('/etc/passwd', '/output/passwd')\n"
        "os.symlink('/', '/output/root')\n"
        "open('/output/real.txt', 'w').write('real')\n"
    )
    reply = await call_run_code(
        service, "agent-out", language="python", code=code, output_dir="out"
    )
    assert not reply.HasField("error"), reply.error
    output = Path(service.settings.workspace_root) / "agent-out" / "out"
    new = tree(home) - before
    outside = [
        p
        for p in new
        if not (home / p).is_relative_to(output)
        and not output.is_relative_to(home / p)  # the folders made on the way
        and not p.startswith("tools.sqlite3")  # the ledger
    ]
    assert outside == [], f"written outside the workspace's output folder: {outside}"
    assert all(not (home / p).is_symlink() for p in new)
    assert (output / "real.txt").read_text() == "real"
    assert not list(Path("/tmp").glob(f"*{scene.token}*"))
    assert not list(Path("/etc").glob(f"*{scene.token}*"))
    for artifact in reply.artifacts:
        assert (
            Path(service.settings.workspace_root) / "agent-out" / artifact.location
        ).is_relative_to(output)
    await assert_service_still_serves(service)


async def test_service_output_file_count_is_bounded(service: ToolsService) -> None:
    """End to end, as the adapter test above: of 300 forged empty files at most 100 (the
    harness's own limit) land in the workspace from one run_code call."""
    code = (
        "import json, os\n"
        "fd = int(open('/proc/self/environ').read().split('AGENTRT_REPORT_FD=')[1].split('\\0')[0])\n"
        "os.write(fd, ''.join(json.dumps({'type': 'file', 'path': f'd{i}/f{i}', 'data': ''})"
        " + '\\n' for i in range(300)).encode())\n"
    )
    reply = await call_run_code(
        service, "agent-many", language="python", code=code, output_dir="out"
    )
    output = Path(service.settings.workspace_root) / "agent-many" / "out"
    saved = [p for p in output.rglob("*") if p.is_file()] if output.exists() else []
    await assert_service_still_serves(service)
    assert len(saved) <= HARNESS_MAX_FILES, f"{len(saved)} files saved from one run"
    assert len(reply.artifacts) <= HARNESS_MAX_FILES


CONTROL_ATTACKS = ("read-host-secret-file", "read-other-workspaces", "tcp-connect-loopback")


async def test_the_oracles_catch_the_same_attacks_without_a_sandbox(scene: Scene) -> None:
    """Control: the same programs under the development setting (no isolation) succeed, and
    the checks above say so; a check that cannot fail would pass here too."""
    bare = await asyncio.to_thread(
        build_sandbox, SandboxConfig(bwrap="/nonexistent/bwrap", unsafe_unsandboxed=True)
    )
    bare.forget_loop()
    assert bare.status.isolation == "unsandboxed"
    by_id = {a.id: a for a in ATTACKS}
    for attack_id in CONTROL_ATTACKS:
        attack = by_id[attack_id]
        params = scene.params(bare, attack.language)
        execution = await run(
            bare,
            Program(attack.language, source(attack.language, attack.body, params), limits=FAST),
        )
        out, data = parse(execution)
        with pytest.raises(AssertionError):
            check_outcomes(attack, expectations(attack, scene), out, data)
    assert scene.reached() != []
    scene.canary.connections.clear()
