"""fetch_url over real gRPC against local HTTP servers started by the tests.

The service runs with `fetch_allowed_networks=["127.0.0.1/32"]` (the test-only way to let it
reach a local server; loopback is refused by default) and small timeouts and caps. Servers
are `http.server.ThreadingHTTPServer`s in threads, speaking HTTP/1.1; every request they get
is recorded, so "nothing was fetched" is observed, not assumed. A dual-stack canary listener
counts connections to addresses that must never be contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tools_support import Canary, LocalHttp, ToolsService, invoke_request

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt_kit.grpc.status import error_from_rpc
from agentrt_kit.grpc.structs import struct_to_dict
from tool_service.adapters.workspace_fs import openat2_available
from tool_service.config import Settings

LOCAL = ["127.0.0.1/32"]
CAP = 64 * 1024


@pytest.fixture
def confinement() -> str:
    """fetch_url does not depend on how paths are confined: one mode is enough here."""
    return "openat2" if openat2_available() else "walk"


# --------------------------------------------------------------------------- servers


@pytest.fixture
def http() -> Iterator[LocalHttp]:
    with LocalHttp() as server:
        yield server


@contextlib.asynccontextmanager
async def running(make_settings: Callable[..., Settings], **overrides: Any) -> AsyncIterator[Any]:
    """A tools service that may reach 127.0.0.1 (and what `overrides` say), and its stub."""
    values: dict[str, Any] = {"fetch_allowed_networks": LOCAL, **overrides}
    service = await ToolsService(make_settings(**values)).start()
    try:
        yield service.stub()
    finally:
        with contextlib.suppress(Exception):
            await service.stop()


async def fetch(stub: Any, url: str, **arguments: Any) -> pb.InvokeToolResponse:
    return await stub.InvokeTool(invoke_request("fetch_url", url=url, **arguments), timeout=20)


async def refused(stub: Any, url: str, **arguments: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fetch(stub, url, **arguments)
    return info.value


def downloads(workspace_root: Path) -> Path:
    return workspace_root / "agent-1" / "downloads"


def outside(tmp_path: Path) -> list[str]:
    """Every path under the test's tmp dir but outside the workspace (the ledger aside)."""
    ws = tmp_path / "workspaces" / "agent-1"
    return sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if not p.is_relative_to(ws) and not p.name.startswith("tools.sqlite3")
    )


# --------------------------------------------------------------------------- content

PAGE = b"""<!doctype html>
<html><head><title>Quarterly report</title><style>body { color: red }</style></head>
<body><h1>Quarterly report</h1>
<p>Revenue grew by <b>12%</b> in Q3.</p>
<ul><li>alpha widgets</li><li>beta gadgets</li></ul>
<script>var leaked = "script-text-should-not-appear";</script>
<a href="/next">next page</a>
</body></html>"""


async def test_html_becomes_readable_text_saved_under_downloads(
    make_settings: Callable[..., Settings], http: LocalHttp, workspace_root: Path
) -> None:
    http.routes["/report.html"] = lambda h: h.reply(200, PAGE, "text/html; charset=utf-8")
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url("/report.html"))
        assert not reply.HasField("error"), reply.error
        text = reply.content
        assert "# Quarterly report" in text
        assert "Revenue grew by **12%** in Q3." in text
        assert "alpha widgets" in text
        assert "beta gadgets" in text
        assert f"[next page]({http.url('/next')})" in text  # links made absolute
        assert "<p>" not in text
        assert "<b>" not in text
        data = struct_to_dict(reply.data)
        assert data["status"] == 200
        assert data["content_type"] == "text/html"
        saved = data["saved_to"]
        assert saved.startswith("downloads/report-")
        assert saved.endswith(".md")
        assert [a.location for a in reply.artifacts] == [saved]
        on_disk = (workspace_root / "agent-1" / saved).read_text()
        assert on_disk.startswith(text.rstrip("\n")[:40])
        # The saved path is what the file tools work on.
        read = await stub.InvokeTool(invoke_request("read_lines", filename=saved))
        assert not read.HasField("error"), read.error
        assert "Revenue grew by **12%** in Q3." in read.content.splitlines()
        grep = await stub.InvokeTool(
            invoke_request("grep_file", filename=saved, pattern="gadgets|widgets")
        )
        assert [line.split(":", 1)[1] for line in grep.content.splitlines()] == [
            "* alpha widgets",
            "* beta gadgets",
        ]
    assert http.paths() == ["/report.html"]


async def test_json_is_returned_as_data(
    make_settings: Callable[..., Settings], http: LocalHttp, workspace_root: Path
) -> None:
    document = {"name": "widget", "tags": ["a", "b"], "count": 3, "nested": {"ok": True}}
    body = json.dumps(document).encode()
    http.routes["/api/item"] = lambda h: h.reply(200, body, "application/json")
    http.routes["/api/problem"] = lambda h: h.reply(
        200, b'{"title": "x"}', "application/problem+json"
    )
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url("/api/item"))
        data = struct_to_dict(reply.data)
        assert data["json"] == document
        assert json.loads(reply.content) == document
        assert data["saved_to"].endswith(".json")
        saved = workspace_root / "agent-1" / data["saved_to"]
        assert json.loads(saved.read_text()) == document
        problem = struct_to_dict((await fetch(stub, http.url("/api/problem"))).data)
        assert problem["json"] == {"title": "x"}


@pytest.mark.parametrize(
    ("path", "ctype", "body", "suffix"),
    [
        ("/table.csv", "text/csv", b"name,qty\nbolt,4\nnut,9\n", ".csv"),
        (
            "/notes.txt",
            "text/plain; charset=utf-8",
            "h\u00e9llo w\u00f6rld\nline two\n".encode(),
            ".txt",
        ),
        ("/latin.txt", "text/plain; charset=iso-8859-1", "caf\u00e9\n".encode("latin-1"), ".txt"),
    ],
    ids=["csv", "utf8-text", "latin1-text"],
)
async def test_csv_and_plain_text_come_back_as_they_are(
    make_settings: Callable[..., Settings],
    http: LocalHttp,
    workspace_root: Path,
    path: str,
    ctype: str,
    body: bytes,
    suffix: str,
) -> None:
    http.routes[path] = lambda h: h.reply(200, body, ctype)
    charset = ctype.partition("charset=")[2] or "utf-8"
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url(path))
        assert reply.content == body.decode(charset)
        saved = struct_to_dict(reply.data)["saved_to"]
        assert saved.endswith(suffix)
        read = await stub.InvokeTool(invoke_request("read_lines", filename=saved))
        assert read.content == body.decode(charset).rstrip("\n")
    assert (workspace_root / "agent-1" / saved).read_text() == body.decode(charset)


async def test_unsupported_type_is_a_tool_error_and_nothing_is_saved(
    make_settings: Callable[..., Settings], http: LocalHttp, workspace_root: Path
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    http.routes["/logo.png"] = lambda h: h.reply(200, png, "image/png")
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url("/logo.png"))
    assert reply.error.code == "UNSUPPORTED_CONTENT_TYPE"
    assert "image/png" in reply.error.message
    assert list(reply.artifacts) == []
    assert not downloads(workspace_root).exists()
    assert http.paths() == ["/logo.png"]


async def test_other_types_are_saved_as_they_came_when_the_operator_allows_it(
    make_settings: Callable[..., Settings], http: LocalHttp, workspace_root: Path
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    http.routes["/logo.png"] = lambda h: h.reply(200, png, "image/png")
    async with running(make_settings, fetch_save_other_types=True) as stub:
        reply = await fetch(stub, http.url("/logo.png"))
        refused = await fetch(stub, http.url("/logo.png"), save_to_file=False)
    assert not reply.HasField("error")
    saved = struct_to_dict(reply.data)["saved_to"]
    assert saved.startswith("downloads/")
    assert saved.endswith(".png")
    assert (workspace_root / "agent-1" / saved).read_bytes() == png
    assert reply.artifacts[0].media_type == "image/png"
    assert refused.error.code == "UNSUPPORTED_CONTENT_TYPE"  # nothing to show, nothing kept


async def test_save_to_file_false_saves_nothing(
    make_settings: Callable[..., Settings], http: LocalHttp, workspace_root: Path
) -> None:
    http.routes["/notes.txt"] = lambda h: h.reply(200, b"just text\n")
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url("/notes.txt"), save_to_file=False)
    assert reply.content == "just text\n"
    assert "saved_to" not in struct_to_dict(reply.data)
    assert list(reply.artifacts) == []
    assert not downloads(workspace_root).exists()


async def test_a_hostile_url_path_still_saves_inside_downloads(
    make_settings: Callable[..., Settings], http: LocalHttp, tmp_path: Path, workspace_root: Path
) -> None:
    raw = "/..%2F..%2F..%2Fescape.txt"
    http.routes[raw] = lambda h: h.reply(200, b"payload\n")
    before = outside(tmp_path)
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url(raw))
    saved = struct_to_dict(reply.data)["saved_to"]
    folder, _, name = saved.partition("/")
    assert folder == "downloads"
    assert "/" not in name
    assert (downloads(workspace_root) / name).read_text() == "payload\n"
    assert outside(tmp_path) == before


# --------------------------------------------------------------------------- redirects


def redirect_chain(http: LocalHttp, length: int) -> None:
    codes = [301, 302, 303, 307, 308]
    for n in range(length + 1):
        if n == 0:
            http.routes["/hop/0"] = lambda h: h.reply(200, b"arrived\n")
        else:
            http.routes[f"/hop/{n}"] = lambda h, n=n: h.reply(
                codes[n % len(codes)], b"", Location=f"/hop/{n - 1}"
            )


async def test_redirects_are_followed_up_to_five_and_a_sixth_is_refused(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    redirect_chain(http, 6)
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url("/hop/5"))
        assert reply.content == "arrived\n"
        assert struct_to_dict(reply.data)["url"] == http.url("/hop/0")
        assert http.paths() == [f"/hop/{n}" for n in range(5, -1, -1)]
        http.hits.clear()
        reply = await fetch(stub, http.url("/hop/6"))
        assert reply.error.code == "TOO_MANY_REDIRECTS"
        assert http.paths() == [f"/hop/{n}" for n in range(6, 0, -1)]  # /hop/0 never asked


async def test_follow_redirects_false_is_a_redirect_error(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    redirect_chain(http, 1)
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url("/hop/1"), follow_redirects=False)
    assert reply.error.code == "REDIRECT"
    assert "/hop/0" in reply.error.message
    assert http.paths() == ["/hop/1"]


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254:{canary}/latest/meta-data/",
        "http://10.0.0.1:{canary}/",
        "http://[::1]:{canary}/",
        "http://127.0.0.2:{canary}/",
        "http://0.0.0.0:{canary}/",
        "http://[::ffff:127.0.0.2]:{canary}/",
        "//169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/_GET%20/notes.txt",
        "http://user:pw@127.0.0.1:{port}/notes.txt",
    ],
    ids=[
        "metadata",
        "private",
        "ipv6-loopback",
        "loopback-not-allowed",
        "unspecified",
        "mapped-loopback",
        "scheme-relative-metadata",
        "file-scheme",
        "gopher-scheme",
        "userinfo",
    ],
)
async def test_a_redirect_to_a_blocked_target_is_refused_before_any_packet(
    make_settings: Callable[..., Settings], http: LocalHttp, canary: Canary, target: str
) -> None:
    location = target.format(canary=canary.port, port=http.port)
    http.routes["/jump"] = lambda h: h.reply(302, b"", Location=location)
    http.routes["/notes.txt"] = lambda h: h.reply(200, b"should not be fetched")
    async with running(make_settings) as stub:
        error = await refused(stub, http.url("/jump"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_from_rpc(error).reason == "URL_BLOCKED"
    assert http.paths() == ["/jump"]
    await asyncio.sleep(0.1)
    assert canary.connections == []


async def test_a_cross_origin_redirect_does_not_carry_credentials(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    """Like browsers, requests and curl: Authorization and Cookie stay with their origin."""
    with LocalHttp() as other:
        other.routes["/landing"] = lambda h: h.reply(200, b"landed\n")
        http.routes["/same"] = lambda h: h.reply(302, b"", Location="/landing")
        http.routes["/landing"] = lambda h: h.reply(200, b"home\n")
        http.routes["/away"] = lambda h: h.reply(302, b"", Location=other.url("/landing"))
        headers = {"Authorization": "Bearer s3cret", "Cookie": "sid=42", "X-Agent-Test": "kept"}
        async with running(make_settings) as stub:
            assert (await fetch(stub, http.url("/same"), headers=headers)).content == "home\n"
            assert (await fetch(stub, http.url("/away"), headers=headers)).content == "landed\n"
        same = dict(http.hits)["/landing"]
        assert same["authorization"] == "Bearer s3cret"
        assert same["cookie"] == "sid=42"
        ((_, away),) = other.hits
        assert away["x-agent-test"] == "kept"
        assert "authorization" not in away
        assert "cookie" not in away


# --------------------------------------------------------------------------- slow servers


async def test_a_server_silent_before_headers_times_out(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    def silent(h: Any) -> None:
        http.stop.wait(5)

    http.routes["/silent"] = silent
    async with running(
        make_settings, fetch_read_timeout=0.5, fetch_total_timeout=3.0, fetch_retries=0
    ) as stub:
        started = time.monotonic()
        reply = await fetch(stub, http.url("/silent"))
        elapsed = time.monotonic() - started
    assert reply.error.code == "TIMEOUT"
    assert 0.4 <= elapsed < 2.5, elapsed  # the read timeout, well before the total one


async def test_a_trickled_body_hits_the_total_timeout(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    def trickle(h: Any) -> None:
        h.start(200, "text/plain", Content_Length="1000")
        for _ in range(1000):
            h.wfile.write(b"x")
            h.wfile.flush()
            if http.stop.wait(0.1):
                return

    http.routes["/trickle"] = trickle
    async with running(
        make_settings, fetch_read_timeout=0.5, fetch_total_timeout=1.5, fetch_retries=0
    ) as stub:
        started = time.monotonic()
        reply = await fetch(stub, http.url("/trickle"))
        elapsed = time.monotonic() - started
    assert reply.error.code == "TIMEOUT"
    assert 1.3 <= elapsed < 4.0, elapsed


# --------------------------------------------------------------------------- sizes


def chunked(h: Any) -> None:
    h.start(200, "text/plain", Transfer_Encoding="chunked")
    for _ in range(3 * CAP // 8192):
        h.wfile.write(b"2000\r\n" + b"c" * 8192 + b"\r\n")
    h.wfile.write(b"0\r\n\r\n")


BOMB = gzip.compress(b"A" * (20 * 1024 * 1024), compresslevel=9)
SMALL_GZ = gzip.compress(b"compressed but small\n")


@pytest.mark.parametrize(
    "route",
    [
        lambda h: h.reply(200, b"d" * (3 * CAP)),
        chunked,
        lambda h: h.reply(200, BOMB, "text/plain", Content_Encoding="gzip"),
    ],
    ids=["declared-length", "chunked-no-length", "gzip-bomb"],
)
async def test_oversized_responses_are_too_large(
    make_settings: Callable[..., Settings],
    http: LocalHttp,
    workspace_root: Path,
    route: Callable[[Any], None],
) -> None:
    assert len(BOMB) < CAP  # the bomb passes any check of the length on the wire
    http.routes["/big"] = route
    http.routes["/small.gz"] = lambda h: h.reply(
        200, SMALL_GZ, "text/plain", Content_Encoding="gzip"
    )
    async with running(make_settings, fetch_max_bytes=CAP) as stub:
        reply = await fetch(stub, http.url("/big"))
        assert reply.error.code == "TOO_LARGE", reply
        assert not downloads(workspace_root).exists()
        # Compression itself works: a small compressed body arrives decoded.
        small = await fetch(stub, http.url("/small.gz"), save_to_file=False)
        assert small.content == "compressed but small\n"


# --------------------------------------------------------------------------- retries, breaker


async def test_two_503s_then_200_succeeds_after_retries(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    statuses = iter([503, 503, 200])
    http.routes["/flaky"] = lambda h: h.reply(next(statuses), b"recovered\n")
    async with running(make_settings, fetch_retries=2) as stub:
        reply = await fetch(stub, http.url("/flaky"))
    assert reply.content == "recovered\n"
    assert http.paths() == ["/flaky"] * 3


async def test_repeated_500s_open_the_circuit(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    http.routes["/boom"] = lambda h: h.reply(500, b"broken")
    http.routes["/fine"] = lambda h: h.reply(200, b"fine")
    async with running(
        make_settings, fetch_breaker_failures=3, fetch_retries=0, fetch_breaker_cooldown=60
    ) as stub:
        for _ in range(3):
            assert (await fetch(stub, http.url("/boom"))).error.code == "HTTP_ERROR"
        assert http.paths() == ["/boom"] * 3
        for path in ("/boom", "/fine"):
            reply = await fetch(stub, http.url(path))
            assert reply.error.code == "CIRCUIT_OPEN", reply
    assert http.paths() == ["/boom"] * 3  # nothing more reached the server


async def test_404s_are_not_counted_by_the_breaker(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    http.routes["/fine"] = lambda h: h.reply(200, b"fine")
    async with running(make_settings, fetch_breaker_failures=2, fetch_retries=0) as stub:
        for _ in range(5):
            reply = await fetch(stub, http.url("/missing"))
            assert reply.error.code == "HTTP_ERROR"
            assert "404" in reply.error.message
        assert (await fetch(stub, http.url("/fine"), save_to_file=False)).content == "fine"
    assert http.paths() == ["/missing"] * 5 + ["/fine"]


async def test_a_4xx_answer_to_the_half_open_trial_closes_the_circuit(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    statuses = iter([500, 404, 200, 200])
    http.routes["/flaky"] = lambda h: h.reply(next(statuses), b"body")
    async with running(
        make_settings, fetch_breaker_failures=1, fetch_retries=0, fetch_breaker_cooldown=0.2
    ) as stub:
        assert (await fetch(stub, http.url("/flaky"))).error.code == "HTTP_ERROR"  # 500: opens
        assert (await fetch(stub, http.url("/flaky"))).error.code == "CIRCUIT_OPEN"
        await asyncio.sleep(0.25)
        trial = await fetch(stub, http.url("/flaky"))  # the one trial gets a 404: host is up
        assert "404" in trial.error.message
        for _ in range(2):  # closed again at once, not after another cooldown
            assert (await fetch(stub, http.url("/flaky"), save_to_file=False)).content == "body"
    assert http.paths() == ["/flaky"] * 4


# --------------------------------------------------------------------------- headers


def echo(h: Any) -> None:
    h.reply(
        200, json.dumps({k.lower(): v for k, v in h.headers.items()}).encode(), "application/json"
    )


async def test_agent_headers_arrive(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    http.routes["/echo"] = echo
    headers = {"X-Agent-Test": "hello", "Accept-Language": "fr-CH", "Authorization": "Bearer t"}
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url("/echo"), headers=headers, save_to_file=False)
    seen = struct_to_dict(reply.data)["json"]
    assert seen["x-agent-test"] == "hello"
    assert seen["accept-language"] == "fr-CH"
    assert seen["authorization"] == "Bearer t"
    assert seen["user-agent"].startswith("agentrt-tools/")
    assert seen["host"] == f"127.0.0.1:{http.port}"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Host", "evil.example"),
        ("host", "169.254.169.254"),
        ("Connection", "keep-alive, Upgrade"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "0"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic eA=="),
        ("X-Injected", "a\r\nHost: evil.example"),
        ("Bad Name", "x"),
        ("X-Accent", "caf\u00e9"),
    ],
)
async def test_forbidden_or_malformed_headers_are_invalid_arguments(
    make_settings: Callable[..., Settings], http: LocalHttp, name: str, value: str
) -> None:
    http.routes["/echo"] = echo
    async with running(make_settings) as stub:
        error = await refused(stub, http.url("/echo"), headers={name: value, "X-Fine": "ok"})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in error_from_rpc(error).violations]
    assert fields == [f"arguments.headers.{name}"]
    assert http.hits == []


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1"])
async def test_host_header_is_the_urls_host_while_the_connection_is_pinned(
    make_settings: Callable[..., Settings], http: LocalHttp, host: str
) -> None:
    """The name is resolved and checked once; the connection goes to that address
    (127.0.0.1, where the server listens) and Host carries the URL's own spelling."""
    http.routes["/echo"] = echo
    async with running(make_settings) as stub:
        reply = await fetch(stub, http.url("/echo", host=host), save_to_file=False)
    assert struct_to_dict(reply.data)["json"]["host"] == f"{host}:{http.port}"


async def test_an_unknown_charset_does_not_break_the_tool(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    """A server names a charset Python does not know: read as UTF-8, not an internal error."""
    http.routes["/odd"] = lambda h: h.reply(200, b"plain words\n", "text/plain; charset=x-nope")
    http.routes["/b64"] = lambda h: h.reply(200, b"more words\n", "text/plain; charset=base64")
    async with running(make_settings) as stub:
        assert (await fetch(stub, http.url("/odd"))).content == "plain words\n"
        assert (await fetch(stub, http.url("/b64"))).content == "more words\n"


async def test_a_host_httpx_cannot_encode_is_a_fetch_failure(
    make_settings: Callable[..., Settings], http: LocalHttp
) -> None:
    """Enclosed digits: the system resolver folds them to 127.0.0.1 (IDNA 2003), httpx's
    IDNA 2008 encoder refuses them. A tool error, not an internal one, and no request."""
    http.routes["/notes.txt"] = lambda h: h.reply(200, b"text")
    async with running(make_settings) as stub:
        reply = await fetch(
            stub, http.url("/notes.txt", host="\u2460\u2461\u2466.\u24ea.\u24ea.\u2460")
        )
    assert reply.error.code == "FETCH_FAILED"
    assert http.hits == []
