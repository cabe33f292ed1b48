"""Application: the built-in URL tools, `fetch_url` and `parse_url`.

`fetch_url` goes through the `Fetcher` port, which enforces the network policy
(schemes, resolved addresses, redirects, timeouts, byte cap). Here the response
becomes something an agent can read: HTML as readable text (Markdown), JSON
pretty-printed and as data, plain text, CSV and XML as they are. With
`save_to_file` the text lands in the workspace's `downloads/` under a name
derived from the URL, so `read_lines` and `grep_file` can work on it.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

from bs4 import BeautifulSoup, Tag
from markdownify import ATX, MarkdownConverter

from agentrt_kit.errors import FieldViolation, InvalidArgument
from tool_service.application.environment import ToolEnv, confined
from tool_service.application.ports import Fetched
from tool_service.domain.tools import Artifact, SideEffect, ToolFailure, ToolResult, ToolSpec

FORBIDDEN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
)
MAX_HEADERS = 20
MAX_HEADER_VALUE = 1_000
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")

TEXT_TYPES = {
    "text/plain": ".txt",
    "text/csv": ".csv",
    "application/csv": ".csv",
    "text/markdown": ".md",
    "text/xml": ".xml",
    "application/xml": ".xml",
}


def kind_of(content_type: str) -> str:
    """Html | json | text | other."""
    if content_type in ("text/html", "application/xhtml+xml"):
        return "html"
    if content_type == "application/json" or content_type.endswith("+json"):
        return "json"
    if content_type in TEXT_TYPES or content_type.endswith("+xml"):
        return "text"
    return "other"


def markdown_of(html: str, base_url: str) -> str:
    """HTML as Markdown: ATX headings, links made absolute against `base_url`, no images.

    The document head, scripts and styles say nothing to a reader and are dropped; a link
    whose target cannot be joined to the base is kept as the page wrote it.
    """
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(["head", "script", "style", "img"]):
        tag.decompose()
    for link in soup.find_all("a", href=True):
        if isinstance(link, Tag):
            try:
                link["href"] = urljoin(base_url, str(link["href"]))
            except ValueError:
                continue
    return str(MarkdownConverter(heading_style=ATX).convert_soup(soup))


def readable(fetched: Fetched) -> tuple[str, Any, str]:
    """(text for the agent, structured data or None, file suffix) of a response.

    Raises:
        ToolFailure: UNSUPPORTED_CONTENT_TYPE for types that are not text.
    """
    kind = kind_of(fetched.content_type)
    if kind == "other":
        raise ToolFailure(
            "UNSUPPORTED_CONTENT_TYPE",
            f"{fetched.content_type or 'unknown'} content is not text; nothing was saved",
            bytes_used=len(fetched.body),
        )
    try:
        text = fetched.body.decode(fetched.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know: read it as UTF-8
        text = fetched.body.decode("utf-8", errors="replace")
    if kind == "html":
        return markdown_of(text, fetched.url), None, ".md"
    if kind == "json":
        try:
            data = json.loads(text)
        except ValueError:
            return text, None, ".json"
        return json.dumps(data, indent=2, ensure_ascii=False), data, ".json"
    return text, None, TEXT_TYPES.get(fetched.content_type, ".xml")


def download_name(url: str, suffix: str) -> str:
    """A stable file name for `url`: its last path name (sanitised) plus a short hash."""
    parts = urlsplit(url)
    base = parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.hostname or "download"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:80] or "download"
    stem = base.rsplit(".", 1)[0] if "." in base else base
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return f"{stem}-{digest}{suffix}"


def checked_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """Request headers an agent may set.

    Raises:
        InvalidArgument: naming each bad header.
    """
    problems: list[FieldViolation] = []
    out: dict[str, str] = {}
    if len(headers) > MAX_HEADERS:
        problems.append(FieldViolation("arguments.headers", f"at most {MAX_HEADERS} headers"))
    for name, value in headers.items():
        path = f"arguments.headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            problems.append(FieldViolation(path, "is not a valid header name"))
        elif name.lower() in FORBIDDEN_HEADERS or name.lower().startswith("proxy-"):
            problems.append(FieldViolation(path, "may not be set by a tool call"))
        elif not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
            problems.append(FieldViolation(path, f"must be a string of at most {MAX_HEADER_VALUE}"))
        elif any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
            problems.append(FieldViolation(path, "must not contain control characters"))
        elif not value.isascii():  # HTTP clients send header values as ASCII only
            problems.append(FieldViolation(path, "must be ASCII text"))
        else:
            out[name] = value
    if problems:
        raise InvalidArgument("bad request headers", violations=problems)
    return out


class FetchUrl:
    """fetch_url(url, save_to_file=True, follow_redirects=True, headers={})."""

    spec = ToolSpec(
        name="fetch_url",
        description=(
            "Fetch a public http(s) URL and return it as readable text; with save_to_file "
            "the text is also saved under downloads/ in the workspace."
        ),
        arguments_schema={
            "type": "object",
            "properties": {
                "url": {"type": "string", "minLength": 1, "maxLength": 4096},
                "save_to_file": {"type": "boolean", "default": True},
                "follow_redirects": {"type": "boolean", "default": True},
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "default": {},
                },
            },
            "required": ["url"],
            "additionalProperties": False,
        },
        side_effect=SideEffect.IDEMPOTENT,
    )

    async def run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        """Fetch, convert, and save."""
        headers = checked_headers(args["headers"])
        fetched = await env.fetcher.fetch(args["url"], headers, bool(args["follow_redirects"]))
        if (
            kind_of(fetched.content_type) == "other"
            and env.limits.save_other_types
            and args["save_to_file"]
        ):
            return await self._save_as_is(fetched, env)
        text, data, suffix = readable(fetched)
        limit = env.limits.max_content_chars
        result_data: dict[str, Any] = {
            "url": fetched.url,
            "status": fetched.status,
            "content_type": fetched.content_type,
            "bytes": len(fetched.body),
            "truncated": len(text) > limit,
        }
        if data is not None:
            result_data["json"] = data
        artifacts: tuple[Artifact, ...] = ()
        if args["save_to_file"]:
            name = download_name(fetched.url, suffix)
            encoded = text.encode()
            await env.run_blocking(self._save, env, name, encoded)
            location = f"downloads/{name}"
            result_data["saved_to"] = location
            artifacts = (Artifact("file", location, fetched.content_type, len(encoded)),)
        return ToolResult(
            content=text[:limit], data=result_data, artifacts=artifacts, bytes=len(fetched.body)
        )

    async def _save_as_is(self, fetched: Fetched, env: ToolEnv) -> ToolResult:
        """Keep a response that is not text as it came (when the operator allows it)."""
        suffix = mimetypes.guess_extension(fetched.content_type or "") or ".bin"
        name = download_name(fetched.url, suffix)
        await env.run_blocking(self._save, env, name, fetched.body)
        location = f"downloads/{name}"
        size = len(fetched.body)
        return ToolResult(
            content=f"saved {size} bytes of {fetched.content_type or 'unknown content'} "
            f"to {location}",
            data={
                "url": fetched.url,
                "status": fetched.status,
                "content_type": fetched.content_type,
                "bytes": size,
                "saved_to": location,
            },
            artifacts=(Artifact("file", location, fetched.content_type, size),),
            bytes=size,
        )

    @staticmethod
    def _save(env: ToolEnv, name: str, data: bytes) -> None:
        with env.workspaces.open(env.workspace) as ws, confined("url"):
            ws.write_bytes(["downloads", name], data, overwrite=True)


class ParseUrl:
    """parse_url(url): the parts of a URL (no network access)."""

    spec = ToolSpec(
        name="parse_url",
        description="Split a URL into scheme, host, port, path, query parameters and fragment.",
        arguments_schema={
            "type": "object",
            "properties": {"url": {"type": "string", "minLength": 1, "maxLength": 4096}},
            "required": ["url"],
            "additionalProperties": False,
        },
        side_effect=SideEffect.READ_ONLY,
    )

    async def run(self, args: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        """Parse."""
        url: str = args["url"]
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise ToolFailure("INVALID_URL", f"cannot parse the URL: {e}") from None
        data = {
            "scheme": parts.scheme,
            "host": parts.hostname or "",
            "port": port,
            "path": parts.path,
            "query": parse_qs(parts.query, keep_blank_values=True),
            "fragment": parts.fragment,
            "has_credentials": parts.username is not None,
        }
        content = "\n".join(f"{k}: {v}" for k, v in data.items())
        return ToolResult(content=content, data=data)


URL_TOOLS = (FetchUrl(), ParseUrl())
