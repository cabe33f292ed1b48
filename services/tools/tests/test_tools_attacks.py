"""Attack suite for the tools service, over real gRPC: path traversal, symlink races, SSRF.

Payloads are assembled from public references:

- OWASP, "Path Traversal" (https://owasp.org/www-community/attacks/Path_Traversal) and the
  OWASP Web Security Testing Guide, "Testing Directory Traversal File Include" (WSTG-ATHZ-01).
- OWASP Cheat Sheet Series, "Server-Side Request Forgery Prevention"
  (https://cheatsheetseries.owasp.org/cheatsheets/Server_Side_Request_Forgery_Prevention_Cheat_Sheet.html)
  and the OWASP Web Security Testing Guide, "Testing for Server-Side Request Forgery".
- PayloadsAllTheThings (https://github.com/swisskyrepo/PayloadsAllTheThings):
  "Directory Traversal/README.md" (`../`, `..\\`, `%2e%2e%2f`, `%252e%252e%252f`,
  `%c0%ae%c0%ae%c0%af`, `%uff0e%uff0e%u2215`, `..././`, NUL-byte extension tricks) and
  "Server Side Request Forgery/README.md" (localhost encodings: decimal, octal, hex, short
  forms, `[::]`, IPv4-in-IPv6 embedding, enclosed alphanumerics, `file:`/`gopher:`/`dict:`/
  `ldap:`/`jar:`/`netdoc:` schemes, Orange Tsai's parser-confusion URLs, cloud metadata
  endpoints, DNS rebinding).

The oracles are observations, never the service's own word:

- Sentinel files live outside the workspace (a sibling of the workspace root, a directory
  beside it, another agent's workspace, the system temp dir). Their unique content must never
  appear in anything a call returns, and a fingerprint of everything outside the workspace
  (paths, kinds, link targets, content hashes, inodes, mtimes) must not change.
- A call either is refused (PERMISSION_DENIED / INVALID_ARGUMENT) or ends as a tool result
  whose location is checked on disk to be inside the workspace, reached without a link.
- For SSRF, a dual-stack listener on every local address counts TCP connections: a refused
  target must never see one. DNS rebinding uses a resolver test double and two local
  servers (see `test_dns_rebinding_*`).

The tests run as root in a shared tree, so write tools (create_file, delete_file) never aim
at real system files: payloads naming `/etc/passwd`, `/proc/...` or a link to `/` are sent to
the write tools with the system root replaced by a decoy root under the test's tmp dir (same
shape, same depth of trickery); the read tools get the real system paths. Every place a write
payload could land if it escaped is therefore inside the fingerprinted tmp dir.

Not covered: hard links (no tool can make one, and a planted one is a file the agent was
given, not a path escape) and invalid UTF-8 / lone surrogates in paths (protobuf strings must
be valid UTF-8: such a request cannot be sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import ipaddress
import os
import socket
import stat
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from tools_support import Canary, LocalHttp, ToolsService, invoke_request

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt_kit.errors import PermissionDenied
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import struct_to_dict
from agentrt_kit.urls import NetworkPolicy
from tool_service.adapters.fetcher import FetchPolicy, HttpFetcher
from tool_service.config import Settings

CALL_TIMEOUT = 20.0  # a call that takes longer is a hang
FILE_TOOLS = ("read_lines", "grep_file", "list_files", "create_file", "delete_file")
WRITE_TOOLS = frozenset({"create_file", "delete_file"})
ALL = frozenset(FILE_TOOLS)
REFUSED_CODES = {"PERMISSION_DENIED", "INVALID_ARGUMENT"}
CONFINED_TOOL_ERRORS = {
    "NOT_FOUND",
    "IS_A_DIRECTORY",
    "NOT_A_FILE",
    "ALREADY_EXISTS",
    "BINARY_FILE",
    "TOO_LARGE",
}
LEDGER_PREFIX = "tools.sqlite3"
PASSWD_HEAD = (
    Path("/etc/passwd").read_text().splitlines()[0] if Path("/etc/passwd").exists() else ""
)


# --------------------------------------------------------------------------- calling


@dataclass
class Outcome:
    """How one call ended, and everything it returned (for leak checks)."""

    tool: str
    payload: str
    status: str  # "OK" (a response) or the gRPC status code name
    reason: str  # ErrorInfo reason, or the tool error code ("" on success)
    text: str
    response: pb.InvokeToolResponse | None = None

    def describe(self) -> str:
        return f"{self.tool}({self.payload!r}) -> {self.status}/{self.reason}: {self.text[:300]!r}"


async def call(stub: Any, request: pb.InvokeToolRequest, payload: str = "") -> Outcome:
    try:
        response = await stub.InvokeTool(request, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as e:
        err = error_from_rpc(e)
        text = " | ".join(
            [e.details() or "", repr(dict(err.metadata))]
            + [f"{v.field}: {v.description}" for v in err.violations]
        )
        return Outcome(request.tool_name, payload, e.code().name, err.reason, text)
    text = text_format.MessageToString(response, as_utf8=True)
    return Outcome(request.tool_name, payload, "OK", response.error.code, text, response)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[ToolsService]:
    service = await ToolsService(settings).start()
    try:
        yield service
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


# --------------------------------------------------------------------------- the scene


def fingerprint(base: Path, skip: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under `base` except `skip` and the ledger: kind, link target, hash, inode."""
    seen: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n != skip]
        for name in [*dirnames, *filenames]:
            path = here / name
            if path == skip or name.startswith(LEDGER_PREFIX):
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entry: tuple[Any, ...] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entry = ("dir", info.st_ino)
            elif stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entry = ("file", digest, info.st_ino, info.st_mtime_ns)
            else:
                entry = ("other", info.st_mode)
            seen[str(path.relative_to(base))] = entry
    return seen


def file_print(path: Path) -> tuple[Any, ...] | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())


def assert_inside(ws: Path, path: Path) -> None:
    """`path` is inside `ws` and reached without following any link."""
    lexical = os.path.normpath(os.path.abspath(path))
    real = os.path.realpath(path)
    assert real == lexical, f"{path} goes through a link (really {real})"
    assert Path(real).is_relative_to(ws), f"{real} is outside the workspace {ws}"


@dataclass
class Scene:
    """A workspace with planted links, sentinels outside it, and a decoy system root."""

    tmp_path: Path
    root: Path  # the workspace root
    tok: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        tok = self.tok
        self.tmp_path = self.tmp_path.resolve()
        self.root = self.root.resolve()
        self.ws = self.root / "agent-1"
        self.canary = f"CANARY-CONTENT-{tok}"
        self.sib = f"sibling-{tok}.txt"
        self.out = f"outside-{tok}"
        self.nb = f"neighbour-{tok}.txt"
        self.sys_tmp = Path(tempfile.gettempdir()).resolve() / f"agentrt-attack-{tok}.txt"
        self.decoy = self.tmp_path / "decoy-root"
        self.files = {
            self.tmp_path / self.sib: f"{self.canary} sibling of the workspace root\n",
            self.tmp_path / self.out / "secret.txt": f"{self.canary} outside secret\n",
            self.tmp_path / self.out / f"secret-{tok}.txt": f"{self.canary} outside named\n",
            self.root / "agent-2" / self.nb: f"{self.canary} another agent's file\n",
            self.sys_tmp: f"{self.canary} in the system temp dir\n",
            self.decoy / "etc" / "passwd": f"{self.canary} decoy passwd\n",
            self.decoy / "proc" / "self" / "environ": f"{self.canary} decoy environ\n",
        }
        out_dir = self.tmp_path / self.out
        self.links = {  # in the workspace (relative to it) -> target
            "link_dir": str(out_dir),
            "link_rel": f"../../{self.out}",
            "link_file": str(out_dir / "secret.txt"),
            "sub/link_last": str(self.tmp_path / self.sib),
            "link_up": "..",
            "link_root": "/",
            "link_magic": "/proc/self/root",
            "link_decoy_root": str(self.decoy),
            "link_dangling": str(out_dir / f"made-through-link-{tok}.txt"),
            "link_loop": "link_loop",
            "tasklink": str(out_dir),  # workspace "agent-1/tasklink"
        }

    def plant(self) -> None:
        """(Re)create sentinels and links; anything a previous payload left in their place goes."""
        for path, content in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if file_print(path) is None or path.read_text() != content:
                path.write_text(content)
        self.ws.mkdir(parents=True, exist_ok=True)
        for rel, target in self.links.items():
            link = self.ws / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            if link.is_symlink() or link.is_file():
                link.unlink()
            os.symlink(target, link)
        ws_link = self.root / "agent-link"
        if not ws_link.is_symlink():
            os.symlink(self.tmp_path / self.out, ws_link)

    def outside(self) -> dict[str, Any]:
        return {
            "tree": fingerprint(self.tmp_path, self.ws),
            "sys_tmp": file_print(self.sys_tmp),
            "passwd": file_print(Path("/etc/passwd")),
        }

    def cleanup(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sys_tmp.unlink()

    def values(self, tool: str) -> dict[str, str]:
        """Placeholders of the payload templates, for `tool` (write tools aim at the decoy)."""
        write = tool in WRITE_TOOLS
        return {
            "tok": self.tok,
            "sib": self.sib,
            "out": self.out,
            "nb": self.nb,
            "sibabs": str(self.tmp_path / self.sib),
            "sibrooted": str(self.tmp_path / self.sib).lstrip("/"),  # after climbing to /
            "sibunc": str(self.tmp_path / self.sib).lstrip("/").replace("/", "\\"),
            "tmpabs": str(self.sys_tmp),
            "tmprel": os.path.relpath(self.sys_tmp, self.ws),
            "sys": str(self.decoy) if write else "",
            "sysup": (os.path.relpath(self.decoy, self.ws) + "/") if write else "../" * 16,
            "rootlink": "link_decoy_root" if write else "link_root",
            "magiclink": "link_decoy_root" if write else "link_magic",
        }


@pytest.fixture
def scene(tmp_path: Path, workspace_root: Path) -> Iterator[Scene]:
    made = Scene(tmp_path, workspace_root)
    made.plant()
    try:
        yield made
    finally:
        made.cleanup()


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Payload:
    label: str
    template: str
    refused: frozenset[str] = ALL  # tools that must refuse it outright
    agent_id: str = "agent-1"
    workspace: str = ""


LAST_LINK = frozenset({"read_lines", "grep_file", "list_files", "delete_file"})
NO_FILE = frozenset({"read_lines", "grep_file", "create_file", "delete_file"})
NONE: frozenset[str] = frozenset()

TRAVERSAL_PAYLOADS: list[Payload] = [
    # -- plain climbing (OWASP, PayloadsAllTheThings "Exploit")
    Payload("dotdot-sibling", "../../{sib}"),
    Payload("dotdot-neighbour-workspace", "../agent-2/{nb}"),
    Payload("dotdot-outside-dir", "../../{out}/secret.txt"),
    Payload("dotdot-to-system-root", "{sysup}etc/passwd"),
    Payload("dotdot-to-system-tmp", "{tmprel}"),
    Payload("dotdot-bare", ".."),
    Payload("dotdot-slash", "../"),
    Payload("dotdot-deep", "../" * 40 + "{sibrooted}"),
    Payload("dotdot-after-name", "a/../../{sib}"),
    Payload("dotdot-hidden-in-dots", "a/./../../{sib}"),
    Payload("dotdot-back-and-forth", "a/b/../../../../{sib}"),
    Payload("dotdot-leading-dot", "./../../{sib}"),
    Payload("dotdot-many-dots", "./././././../../{sib}"),
    Payload("dotdot-trailing", "sub/.."),
    Payload("dotdot-through-link-dir", "link_dir/../link_dir/secret.txt"),
    # -- absolute and home-relative
    Payload("absolute-system", "{sys}/etc/passwd"),
    Payload("absolute-sibling", "{sibabs}"),
    Payload("absolute-system-tmp", "{tmpabs}"),
    Payload("absolute-double-slash", "/{sys}/etc/passwd"),
    Payload("absolute-proc-root", "{sys}/proc/self/root/etc/passwd"),
    Payload("absolute-proc-environ", "{sys}/proc/self/environ"),
    Payload("absolute-start-of-path", "{sys}/var/www/images/../../../etc/passwd"),
    Payload("home-root", "~root/.ssh/id_rsa"),
    Payload("home-self", "~/{sib}"),
    # -- scheme-looking and Windows-looking
    Payload("file-url", "file://{sys}/etc/passwd", NONE),
    Payload("file-url-sibling", "file://{sibabs}", NONE),
    Payload("windows-drive", "C:\\Windows\\win.ini"),
    Payload("windows-unc", "\\\\{sibunc}"),
    Payload("backslash", "..\\..\\{sib}"),
    Payload("backslash-slash", "..\\/..\\/{sib}"),
    Payload("backslash-dots", "...\\.\\{sib}"),
    # -- URL encodings (literal names here: confined, never decoded)
    Payload("urlenc-slash", "..%2f..%2f{sib}", NONE),
    Payload("urlenc-slash-upper", "..%2F..%2F{sib}", NONE),
    Payload("urlenc-all", "%2e%2e%2f%2e%2e%2f{sib}", NONE),
    Payload("urlenc-dots", "%2e%2e/%2e%2e/{sib}", NONE),
    Payload("urlenc-double", "%252e%252e%252f%252e%252e%252f{sib}", NONE),
    Payload("urlenc-backslash", "..%5c..%5c{sib}", NONE),
    Payload("urlenc-nul", "..%00/..%00/{sib}", NONE),
    Payload("urlenc-newline", "..%0a/..%0d/{sib}", NONE),
    Payload("iis-unicode", "%uff0e%uff0e%u2215%uff0e%uff0e%u2215{sib}", NONE),
    Payload("overlong-2byte", "%c0%ae%c0%ae/%c0%ae%c0%ae/{sib}", NONE),
    Payload("overlong-slash", "%c0%ae%c0%ae%c0%af{sib}", NONE),
    Payload("overlong-mixed", "..%c0%af..%c0%af{sib}", NONE),
    Payload("overlong-backslash", "..%c1%9c..%c1%9c{sib}", NONE),
    Payload("overlong-3byte", "%e0%80%ae%e0%80%ae/{sib}", NONE),
    Payload("overlong-as-latin1", "\xc0\xae\xc0\xae/\xc0\xae\xc0\xae/{sib}", NONE),
    # -- filter evasion (non-recursive stripping)
    Payload("nested-dots", "....//....//{sib}", NONE),
    Payload("nested-dot-slash", "..././..././{sib}", NONE),
    Payload("triple-dots", ".../.../{sib}", NONE),
    Payload("quad-dots", "..../{sib}", NONE),
    Payload("tomcat-semicolon", "..;/..;/{sib}", NONE),
    Payload("trailing-space", ".. /.. /{sib}", NONE),
    Payload("leading-space", " ../../{sib}"),
    Payload("leading-spaces-only", " ../ ../{sib}", NONE),
    # -- NUL and control characters
    Payload("nul-extension", "../../{sib}\x00.png"),
    Payload("nul-plain", "a.txt\x00.png"),
    Payload("nul-prefix", "\x00../../{sib}"),
    Payload("tab", "..\t/..\t/{sib}"),
    Payload("newline", "..\n/{sib}"),
    Payload("next-line-c1", "\x85../../{sib}"),
    # -- Unicode look-alikes and invisible characters
    Payload("fullwidth-dots-slash", "\uff0e\uff0e\uff0f\uff0e\uff0e\uff0f{sib}"),
    Payload("fullwidth-dots", "\uff0e\uff0e/\uff0e\uff0e/{sib}"),
    Payload("fullwidth-slash-absolute", "\uff0f{sys}/etc/passwd"),
    Payload("two-dot-leader", "\u2025/\u2025/{sib}"),
    Payload("one-dot-leaders", "\u2024\u2024/\u2024\u2024/{sib}"),
    Payload("small-full-stops", "\ufe52\ufe52/\ufe52\ufe52/{sib}"),
    Payload("division-slash", "\uff0e\uff0e\u2215\uff0e\uff0e\u2215{sib}", NONE),
    Payload("rtl-override", "\u202e../../{sib}"),
    Payload("rtl-override-name", "txt.\u202e{sib}"),
    Payload("zero-width-space", ".\u200b./.\u200b./{sib}"),
    Payload("zero-width-joiner", ".\u200d./{sib}"),
    Payload("byte-order-mark", "\ufeff../../{sib}"),
    Payload("combining-overlay", ".\u0338./{sib}", NONE),
    # -- lengths, depth, empty and dot components
    Payload("too-long", "a/" * 600 + "b"),
    Payload("long-climb", "../" * 400 + "{sibrooted}"),
    Payload("name-256-bytes", "n" * 256),
    Payload("name-multibyte-over-255", "\u00e9" * 200),
    Payload("name-255-bytes", "m" * 255, NONE),
    Payload("four-long-names", ("l" * 255 + "/") * 3 + "l" * 255, NONE),
    Payload("depth-32", "d/" * 31 + "f.txt", NONE),
    Payload("depth-40", "d/" * 39 + "f.txt"),
    Payload("dot", ".", NO_FILE),
    Payload("dot-slash", "./", NO_FILE),
    Payload("dot-dot-slash-dot", "././.", NO_FILE),
    Payload("double-slash-root", "//"),
    Payload("empty-components", "a//b/./c.txt", NONE),
    Payload("url-like-relative", "http:/localhost/../../{sib}"),
    # -- planted links (OWASP: "follows symbolic links")
    Payload("link-dir-then-file", "link_dir/secret.txt"),
    Payload("link-rel-then-file", "link_rel/secret.txt"),
    Payload("link-dir-named-file", "link_dir/secret-{tok}.txt"),
    Payload("link-dir-last", "link_dir", LAST_LINK),
    Payload("link-dir-trailing-slash", "link_dir/", LAST_LINK),
    Payload("link-file-last", "link_file", LAST_LINK),
    Payload("link-last-in-subdir", "sub/link_last", LAST_LINK),
    Payload("link-up-neighbour", "link_up/agent-2/{nb}"),
    Payload("link-up-sibling", "link_up/../{sib}"),
    Payload("link-to-root", "{rootlink}/etc/passwd"),
    Payload("link-magic-proc", "{magiclink}/etc/passwd"),
    Payload("link-dangling-last", "link_dangling", LAST_LINK),
    Payload("link-dangling-through", "link_dangling/x.txt"),
    Payload("link-loop", "link_loop/x.txt"),
    Payload("link-loop-last", "link_loop", LAST_LINK),
    # -- the workspace itself (context.agent_id / context.workspace)
    Payload("workspace-symlinked-agent", "secret.txt", agent_id="agent-link"),
    Payload("workspace-symlinked-task", "secret.txt", workspace="agent-1/tasklink"),
    Payload("workspace-dotdot", "{nb}", workspace="../agent-2"),
    Payload("workspace-dotdot-inner", "{nb}", workspace="agent-1/../agent-2"),
    Payload("workspace-absolute", "passwd", workspace="/etc"),
    Payload("workspace-dotdot-agent", "{sib}", agent_id=".."),
    Payload("workspace-three-segments", "x.txt", workspace="agent-1/a/b"),
    Payload("workspace-trailing-newline", "x.txt", agent_id="agent-1\n"),
    Payload("workspace-nul", "x.txt", agent_id="agent-1\x00"),
    Payload("workspace-fullwidth", "x.txt", agent_id="\uff41gent"),
    Payload("workspace-dot-segment", "x.txt", workspace="agent-1/."),
]


def arguments(tool: str, path: str, tok: str) -> dict[str, Any]:
    if tool == "list_files":
        return {"path": path}
    if tool == "grep_file":
        return {"filename": path, "pattern": "."}
    if tool == "create_file":
        return {"filename": path, "content": f"PWNED-{tok}\n", "overwrite": True}
    if tool == "delete_file":
        return {"filename": path, "confirm": True}
    return {"filename": path}


def check_confined(ws: Path, outcome: Outcome, tok: str) -> None:
    """A tool result (not a refusal) describes something inside the workspace."""
    response = outcome.response
    assert response is not None
    if response.HasField("error"):
        assert response.error.code in CONFINED_TOOL_ERRORS, outcome.describe()
        return
    data = struct_to_dict(response.data)
    if outcome.tool == "list_files":
        where = ws / data["path"]
        assert_inside(ws, where)
        names = [e["name"] for e in data["entries"]]
        assert names == sorted(os.listdir(where))[: len(names)], outcome.describe()
        return
    where = ws / data["filename"]
    assert_inside(ws, where)
    if outcome.tool == "delete_file":
        assert not os.path.lexists(where), outcome.describe()
        return
    assert stat.S_ISREG(os.lstat(where).st_mode), outcome.describe()
    text = where.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
    if outcome.tool == "create_file":
        assert text == f"PWNED-{tok}\n", outcome.describe()
    elif outcome.tool == "read_lines":
        assert response.content in text, outcome.describe()
    else:
        for shown in response.content.splitlines():
            _, _, line = shown.partition(":")
            assert line in text, outcome.describe()


def assert_no_leak(scene: Scene, outcome: Outcome) -> None:
    assert scene.canary not in outcome.text, f"sentinel leaked: {outcome.describe()}"
    if PASSWD_HEAD:
        assert PASSWD_HEAD not in outcome.text, f"/etc/passwd leaked: {outcome.describe()}"


# --------------------------------------------------------------------------- traversal


def test_traversal_payload_list_is_broad() -> None:
    assert len(TRAVERSAL_PAYLOADS) >= 60
    assert len({p.label for p in TRAVERSAL_PAYLOADS}) == len(TRAVERSAL_PAYLOADS)


async def test_traversal_payloads_never_escape(
    tools: ToolsService, scene: Scene, confinement: str
) -> None:
    """Every payload against every file tool: refused or confined; nothing outside changes."""
    stub = tools.stub()
    escapes: list[str] = []
    wrong: list[str] = []
    tally: Counter[str] = Counter()
    for payload in TRAVERSAL_PAYLOADS:
        for tool in FILE_TOOLS:
            scene.plant()  # every tool meets the same scene (create_file may replace a link)
            before = scene.outside()
            path = payload.template.format(**scene.values(tool))
            request = invoke_request(
                tool,
                agent_id=payload.agent_id,
                workspace=payload.workspace,
                key=f"{payload.label}-{tool}-{uuid.uuid4().hex}",
                **arguments(tool, path, scene.tok),
            )
            outcome = await call(stub, request, path)
            tally[f"{outcome.status}/{outcome.reason}"] += 1
            assert_no_leak(scene, outcome)
            if outcome.status == "OK":
                if tool in payload.refused:
                    wrong.append(f"[{payload.label}] not refused: {outcome.describe()}")
                try:
                    check_confined(scene.ws, outcome, scene.tok)
                except AssertionError as e:
                    escapes.append(f"[{payload.label}] {e}")
            elif outcome.status not in REFUSED_CODES:
                wrong.append(f"[{payload.label}] {outcome.describe()}")
            elif outcome.status == "PERMISSION_DENIED":
                assert outcome.reason == "PATH_OUTSIDE_WORKSPACE", outcome.describe()
            after = scene.outside()
            if after != before:
                trees = before["tree"], after["tree"]
                changed = sorted(
                    k
                    for k in trees[0].keys() | trees[1].keys()
                    if trees[0].get(k) != trees[1].get(k)
                )
                escapes.append(
                    f"[{payload.label}] {tool} changed outside: {changed} {after!r:.200}"
                )
    print(f"\n{confinement}: {len(TRAVERSAL_PAYLOADS)} payloads x {len(FILE_TOOLS)} tools: {tally}")
    assert escapes == [], "\n".join(escapes)
    assert wrong == [], "\n".join(wrong)


# --------------------------------------------------------------------------- the swap race

RENAME_EXCHANGE = 2


def exchange(dir_fd: int, a: bytes, b: bytes) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically (no moment without `a`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(dir_fd, a, dir_fd, b, RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


async def test_symlink_swap_race_never_escapes(
    tools: ToolsService, tmp_path: Path, workspace_root: Path, confinement: str
) -> None:
    """`dir` flips between a real directory and a link to an outside one while calls run."""
    stub = tools.stub()
    tok = uuid.uuid4().hex[:12]
    canary = f"RACE-CANARY-{tok}"
    ws = workspace_root / "agent-1"
    outside = tmp_path / "race-outside"
    outside.mkdir()
    for name in ("secret.txt", "victim.txt"):
        (outside / name).write_text(f"{canary} {name}\n")
    (ws / "dir").mkdir(parents=True)
    (ws / "dir" / "secret.txt").write_text("harmless\n")
    os.symlink(outside.resolve(), ws / "dir_alt")
    before = fingerprint(tmp_path, ws)
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        exchange(fd, b"dir", b"dir_alt")
    except OSError as e:
        pytest.skip(f"renameat2(RENAME_EXCHANGE) unavailable: {e}")
    finally:
        os.close(fd)
    flips = 1
    stop = threading.Event()

    def flipper() -> None:
        nonlocal flips
        fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
        try:
            while not stop.is_set():
                exchange(fd, b"dir", b"dir_alt")
                flips += 1
        finally:
            os.close(fd)

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()

    def request(i: int) -> pb.InvokeToolRequest:
        key = f"race-{i}-{uuid.uuid4().hex}"
        match i % 7:
            case 0:
                return invoke_request("read_lines", filename="dir/secret.txt")
            case 1:
                return invoke_request("grep_file", filename="dir/secret.txt", pattern=".")
            case 2:
                return invoke_request("list_files", path="dir")
            case 3:
                return invoke_request(
                    "create_file",
                    key=key,
                    filename="dir/secret.txt",
                    content="harmless\n",
                    overwrite=True,
                )
            case 4:
                return invoke_request(
                    "create_file", key=key, filename=f"dir/new-{i}.txt", content="x"
                )
            case 5:
                return invoke_request(
                    "delete_file", key=key, filename="dir/victim.txt", confirm=True
                )
            case _:
                return invoke_request(
                    "delete_file", key=key, filename="dir/secret.txt", confirm=True
                )

    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        i = 0
        while time.monotonic() - started < 2.0 or len(outcomes) < 400:
            batch = [call(stub, request(i + j)) for j in range(32)]
            i += 32
            outcomes.extend(await asyncio.gather(*batch))
            if time.monotonic() - started > 30:
                break
    finally:
        stop.set()
        thread.join(timeout=5)
    tally = Counter(f"{o.tool}:{o.status}/{o.reason}" for o in outcomes)
    print(f"\n{confinement}: {len(outcomes)} calls, {flips} flips: {tally}")
    for outcome in outcomes:
        assert canary not in outcome.text, f"outside file leaked: {outcome.describe()}"
        if outcome.status == "OK":
            assert outcome.reason in {"", *CONFINED_TOOL_ERRORS}, outcome.describe()
            if outcome.tool == "list_files" and not outcome.reason:
                names = {e["name"] for e in struct_to_dict(outcome.response.data)["entries"]}
                assert "victim.txt" not in names, outcome.describe()
        else:
            assert outcome.status in REFUSED_CODES, outcome.describe()
    assert len(outcomes) >= 400
    assert flips > 100
    # The race really was run: some calls found the real directory, some met the link.
    assert tally["read_lines:OK/"] > 0, tally
    assert sum(n for k, n in tally.items() if k.startswith("read_lines:PERMISSION_DENIED")) > 0
    assert fingerprint(tmp_path, ws) == before
    assert sorted(os.listdir(outside)) == ["secret.txt", "victim.txt"]


# --------------------------------------------------------------------------- SSRF


BLOCKED = "blocked"  # PERMISSION_DENIED / URL_BLOCKED
FAILED = "blocked-or-failed"  # or a FETCH_FAILED / TIMEOUT tool error (no DNS, no route)

# Teredo carries the client's IPv4 address XOR 0xffffffff: 0x80fffffe is 127.0.0.1.
SSRF_PAYLOADS: list[tuple[str, str]] = [
    # loopback, every spelling (PayloadsAllTheThings "Payloads with localhost", "Bypass ...")
    ("http://127.0.0.1:{port}/", BLOCKED),
    ("https://127.0.0.1:{port}/", BLOCKED),
    ("HTTP://127.0.0.1:{port}/admin", BLOCKED),
    ("http://127.1:{port}/", BLOCKED),
    ("http://127.0.1:{port}/", BLOCKED),
    ("http://127.127.127.127:{port}/", BLOCKED),
    ("http://127.0.0.1.:{port}/", BLOCKED),
    ("http://0177.0.0.1:{port}/", BLOCKED),
    ("http://0177.1:{port}/", BLOCKED),
    ("http://017700000001:{port}/", BLOCKED),
    ("http://2130706433:{port}/", BLOCKED),
    ("http://0x7f000001:{port}/", BLOCKED),
    ("http://0x7f.0x0.0x0.0x1:{port}/", BLOCKED),
    ("http://0x7f.1:{port}/", BLOCKED),
    ("http://[::1]:{port}/", BLOCKED),
    ("http://[0:0:0:0:0:0:0:1]:{port}/", BLOCKED),
    ("http://[0000::1]:{port}/", BLOCKED),
    ("http://[::ffff:127.0.0.1]:{port}/", BLOCKED),
    ("http://[0:0:0:0:0:ffff:7f00:1]:{port}/", BLOCKED),
    ("http://[::ffff:7f00:1]:{port}/", BLOCKED),
    ("http://[::127.0.0.1]:{port}/", BLOCKED),
    ("http://localhost:{port}/", BLOCKED),
    ("http://LOCALHOST.:{port}/", BLOCKED),
    ("http://\u2460\u2461\u2466.\u24ea.\u24ea.\u2460:{port}/", BLOCKED),  # enclosed digits
    ("http://\u2467.\u2467.\u2467.\u2467/", FAILED),  # public 8.8.8.8, which httpx cannot encode
    ("http://127.0.0.1.nip.io:{port}/", FAILED),
    ("http://localtest.me:{port}/", FAILED),
    # unspecified
    ("http://0:{port}/", BLOCKED),
    ("http://0.0.0.0:{port}/", BLOCKED),
    ("http://[::]:{port}/", BLOCKED),
    ("http://[0:0:0:0:0:0:0:0]:{port}/", BLOCKED),
    # private, shared, link-local, cloud metadata (OWASP SSRF cheat sheet, case 2)
    ("http://10.0.0.1:{port}/", BLOCKED),
    ("http://172.16.0.1/", BLOCKED),
    ("http://192.168.0.1/", BLOCKED),
    ("http://3232235521/", BLOCKED),
    ("http://100.64.0.1/", BLOCKED),
    ("http://100.100.100.200/latest/meta-data/", BLOCKED),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", BLOCKED),
    ("http://2852039166/latest/meta-data/", BLOCKED),
    ("http://0xa9fea9fe/", BLOCKED),
    ("http://[::ffff:169.254.169.254]/", BLOCKED),
    ("http://[fe80::1]:{port}/", BLOCKED),
    ("http://[fe80::1%lo]/", BLOCKED),
    ("http://[fe80::1%25lo]/", FAILED),
    ("http://[fd00:ec2::254]/latest/meta-data/", BLOCKED),
    ("http://[fd00::2]:{port}/", BLOCKED),
    ("http://metadata.google.internal/computeMetadata/v1/", BLOCKED),
    ("http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/", BLOCKED),
    ("http://metadata/computeMetadata/v1/", BLOCKED),
    ("http://instance-data/latest/", BLOCKED),
    # IPv4 embedded in IPv6
    ("http://[64:ff9b::7f00:1]:{port}/", BLOCKED),
    ("http://[64:ff9b::a9fe:a9fe]/", BLOCKED),
    ("http://[64:ff9b:1::7f00:1]:{port}/", BLOCKED),
    ("http://[2002:7f00:1::]:{port}/", BLOCKED),
    ("http://[2002:a9fe:a9fe::]/", BLOCKED),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}/", BLOCKED),
    # multicast, broadcast, reserved, documentation
    ("http://224.0.0.1/", BLOCKED),
    ("http://[ff02::1]/", BLOCKED),
    ("http://255.255.255.255/", BLOCKED),
    ("http://240.0.0.1/", BLOCKED),
    ("http://198.18.0.1/", BLOCKED),
    ("http://203.0.113.10/", BLOCKED),
    # schemes (PayloadsAllTheThings "SSRF exploitation via URL Scheme")
    ("file:///etc/passwd", BLOCKED),
    ("file://localhost/etc/passwd", BLOCKED),
    ("file://\\/\\/etc/passwd", BLOCKED),
    ("gopher://127.0.0.1:{port}/_INFO%0d%0aQUIT", BLOCKED),
    ("ftp://127.0.0.1:{port}/", BLOCKED),
    ("dict://127.0.0.1:{port}/info", BLOCKED),
    ("ldap://127.0.0.1:{port}/%0astats%0aquit", BLOCKED),
    ("sftp://127.0.0.1:{port}/", BLOCKED),
    ("tftp://127.0.0.1:{port}/x", BLOCKED),
    ("jar:http://127.0.0.1:{port}!/", BLOCKED),
    ("netdoc:///etc/passwd", BLOCKED),
    ("data:text/plain,hello", BLOCKED),
    ("//127.0.0.1:{port}/", BLOCKED),
    ("127.0.0.1:{port}", BLOCKED),
    ("0://evil.com:80;http://google.com:80/", BLOCKED),
    # userinfo and parser confusion (Orange Tsai, "A New Era of SSRF")
    ("http://evil@127.0.0.1:{port}/", BLOCKED),
    ("http://127.0.0.1:{port}@example.com/", BLOCKED),
    ("http://user:pass@example.com/", BLOCKED),
    ("http://127.0.0.1:{port}\\@example.com/", BLOCKED),
    ("http://127.1.1.1:{port}\\@@127.2.2.2:{port}/", BLOCKED),
    ("http://127.1.1.1:{port}:\\@@127.2.2.2:{port}/", BLOCKED),
    ("http://127.1.1.1:{port}#\\@127.2.2.2:{port}/", BLOCKED),
    ("http://example.com#@127.0.0.1:{port}/", FAILED),
    ("http://[::1]:{port}#@example.com/", BLOCKED),
    ("http://1.1.1.1 &@2.2.2.2# @3.3.3.3/", BLOCKED),
    ("http://127.0.0.1:{port}/\r\nHost: example.com", BLOCKED),
    ("http://127.0.0.1:{port}%2f@example.com/", BLOCKED),
]


async def test_ssrf_payloads_are_refused_without_a_packet(
    make_settings: Callable[..., Settings], canary: Canary
) -> None:
    """Default policy (no allowed networks): refused targets never see a connection."""
    assert len(SSRF_PAYLOADS) >= 40
    settings = make_settings(fetch_connect_timeout=1.0, fetch_retries=0, fetch_total_timeout=3.0)
    wrong: list[str] = []
    async with running(settings) as service:
        stub = service.stub()
        for template, expected in SSRF_PAYLOADS:
            url = template.format(port=canary.port)
            outcome = await call(stub, invoke_request("fetch_url", url=url), url)
            if outcome.status == "PERMISSION_DENIED" and outcome.reason == "URL_BLOCKED":
                continue
            if (
                expected == FAILED
                and outcome.status == "OK"
                and outcome.reason
                in (
                    "FETCH_FAILED",
                    "TIMEOUT",
                )
            ):
                continue
            wrong.append(outcome.describe())
        await asyncio.sleep(0.2)  # let the canary accept anything in flight
    assert canary.connections == [], f"refused targets were contacted: {canary.connections}"
    assert wrong == [], "\n".join(wrong)


async def test_saving_through_a_planted_downloads_link_is_refused(
    make_settings: Callable[..., Settings], tmp_path: Path, workspace_root: Path
) -> None:
    """fetch_url saves under downloads/: a link planted there must not carry the file out."""
    outside = tmp_path / "downloads-outside"
    outside.mkdir()
    ws = workspace_root / "agent-1"
    ws.mkdir()
    os.symlink(outside, ws / "downloads")
    with LocalHttp("127.0.0.1") as http:
        http.routes["/page.txt"] = lambda h: h.reply(200, b"fetched text\n", "text/plain")
        settings = make_settings(fetch_allowed_networks=["127.0.0.1/32"])
        async with running(settings) as service:
            outcome = await call(
                service.stub(), invoke_request("fetch_url", url=http.url("/page.txt"))
            )
    assert (outcome.status, outcome.reason) == ("PERMISSION_DENIED", "PATH_OUTSIDE_WORKSPACE")
    assert os.listdir(outside) == []
    assert http.paths() == ["/page.txt"]


# --------------------------------------------------------------------------- DNS rebinding


class ScriptedResolver:
    """Stands in for DNS: the n-th lookup gets the n-th answer (the last one repeats)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = [[ipaddress.ip_address(a) for a in answer] for answer in answers]
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[Any]:
        self.lookups.append((host, port))
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


@dataclass
class RebindLab:
    """An HTTP server on 127.0.0.2:P (the "public" address the policy admits) and a canary
    listener on 127.0.0.1:P (the "internal" address DNS rebinds to), on the same port."""

    http: LocalHttp
    internal: socket.socket
    hits_internal: list[Any]

    @property
    def port(self) -> int:
        return self.http.port


@pytest.fixture
def rebind_lab() -> Iterator[RebindLab]:
    for _ in range(20):
        http = LocalHttp("127.0.0.2")
        internal = socket.socket()
        try:
            internal.bind(("127.0.0.1", http.port))
        except OSError:
            internal.close()
            http.server.server_close()
            continue
        break
    else:
        pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")
    internal.listen(16)
    internal.setblocking(False)
    lab = RebindLab(http, internal, [])
    with http:
        yield lab
    with contextlib.suppress(BlockingIOError):
        while True:
            lab.hits_internal.append(internal.accept())
    internal.close()
    assert lab.hits_internal == [], "the rebound (internal) address was contacted"


def rebind_fetcher(resolver: ScriptedResolver) -> HttpFetcher:
    """The real fetcher with the real policy code; only DNS is a test double.

    127.0.0.2/32 is admitted explicitly (as an operator would admit an internal proxy)
    so it can play the public address; 127.0.0.1 stays refused like any loopback.
    """
    policy = FetchPolicy(
        network=NetworkPolicy.of(allowed_networks=["127.0.0.2/32"]),
        connect_timeout=1.0,
        read_timeout=2.0,
        total_timeout=5.0,
        retries=2,
    )
    return HttpFetcher(policy, resolver=resolver)


async def test_dns_rebinding_between_fetches_is_refused(rebind_lab: RebindLab) -> None:
    """DNS answers the admitted address first, loopback afterwards (classic rebinding)."""
    rebind_lab.http.routes["/"] = lambda h: h.reply(200, b"public page", "text/plain")
    resolver = ScriptedResolver(["127.0.0.2"], ["127.0.0.1"])
    fetcher = rebind_fetcher(resolver)
    url = f"http://rebind.test:{rebind_lab.port}/"
    fetched = await fetcher.fetch(url, {}, True)
    assert fetched.body == b"public page"
    assert len(resolver.lookups) == 1
    # The connection went to the checked address, the URL's host stayed in Host.
    assert rebind_lab.http.hits[0][1]["host"] == f"rebind.test:{rebind_lab.port}"
    with pytest.raises(PermissionDenied) as info:
        await fetcher.fetch(url, {}, True)
    assert info.value.reason == "URL_BLOCKED"
    assert "127.0.0.0/8 (Loopback" in info.value.message
    assert rebind_lab.http.paths() == ["/"]


async def test_dns_rebinding_between_retries_keeps_the_checked_address(
    rebind_lab: RebindLab,
) -> None:
    """A 503 forces a retry; the retry must reuse the checked address, not resolve again."""
    answers = iter([503, 200])
    rebind_lab.http.routes["/flaky"] = lambda h: h.reply(next(answers), b"finally", "text/plain")
    resolver = ScriptedResolver(["127.0.0.2"], ["127.0.0.1"])
    fetched = await rebind_fetcher(resolver).fetch(
        f"http://rebind.test:{rebind_lab.port}/flaky", {}, True
    )
    assert fetched.body == b"finally"
    assert len(resolver.lookups) == 1
    assert rebind_lab.http.paths() == ["/flaky", "/flaky"]


async def test_dns_rebinding_on_a_redirect_hop_is_refused(rebind_lab: RebindLab) -> None:
    """The second hop resolves again, and is judged again."""
    port = rebind_lab.port
    rebind_lab.http.routes["/hop"] = lambda h: h.reply(
        302, b"", Location=f"http://rebind.test:{port}/final"
    )
    rebind_lab.http.routes["/final"] = lambda h: h.reply(200, b"should not be read")
    resolver = ScriptedResolver(["127.0.0.2"], ["127.0.0.1"])
    with pytest.raises(PermissionDenied) as info:
        await rebind_fetcher(resolver).fetch(f"http://rebind.test:{port}/hop", {}, True)
    assert info.value.reason == "URL_BLOCKED"
    assert len(resolver.lookups) == 2
    assert rebind_lab.http.paths() == ["/hop"]


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.2", "127.0.0.1"],
        ["127.0.0.1", "127.0.0.2"],
        ["127.0.0.2", "::ffff:127.0.0.1"],
        ["127.0.0.2", "169.254.169.254"],
        [],
    ],
    ids=["public-then-private", "private-then-public", "mapped", "metadata", "empty"],
)
async def test_dns_answer_with_any_refused_address_is_refused(
    rebind_lab: RebindLab, answer: list[str]
) -> None:
    """One bad address in the answer refuses the host: no connection to any of them."""
    rebind_lab.http.routes["/"] = lambda h: h.reply(200, b"public page")
    resolver = ScriptedResolver(answer)
    with pytest.raises(PermissionDenied) as info:
        await rebind_fetcher(resolver).fetch(f"http://rebind.test:{rebind_lab.port}/", {}, True)
    assert info.value.reason == "URL_BLOCKED"
    assert rebind_lab.http.hits == []
