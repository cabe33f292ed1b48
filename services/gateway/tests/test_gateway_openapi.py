"""schemathesis against the gateway's own OpenAPI document (`GET /openapi.json`).

The whole system — registry, tools service, executor (offline model) and the gateway —
runs in a thread with its own event loop, because schemathesis calls the API
synchronously. Every operation of the document is called with generated input, valid
and invalid, authenticated with the runtime token; each answer must be no 5xx and
match the document: status, content type, body schema and headers. Invalid input must
be refused, an undocumented method must be a 405, and a request without a token a 401.
The document itself must be valid OpenAPI 3.1, with a stable `operationId` and a
declared tag on every operation.

Generated ids rarely name anything, so every other case is pointed at an agent (or
template) that exists: success answers are checked too, not only 404s.

Run alone: `.venv/bin/pytest -q services/gateway/tests/test_gateway_openapi.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import schemathesis
from executor_support import System
from gateway_support import TOKEN, running_gateway
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis import Case

from agent_gateway.adapters.access import Access, Gate
from agent_gateway.adapters.http_api import Services, create_app
from agent_gateway.domain.auth import Authenticator
from agent_gateway.domain.limits import RateLimiter

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # the document's run id pattern
MAX_EXAMPLES = 12  # fuzzed cases per operation; the coverage phase adds its boundary cases
SEED = 20_260_101
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
    "allow_header_conformance",
]


# Agent names: what `format: printable` says (str.isprintable, not blank), as no pattern can.
schemathesis.openapi.format(
    "printable",
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=100).filter(
        lambda s: s.isprintable() and bool(s.strip())
    ),
)


def config() -> schemathesis.Config:
    """Deterministic, bounded, authenticated; the checks named above and no others."""
    checks: dict[str, Any] = {"enabled": False}
    checks.update({name: {"enabled": True} for name in CHECKS})
    # Valid input may still be refused by what a schema cannot say: an unknown template or
    # llm_config_id (400), a stale If-Match (412). 422 — the gateway's own input check
    # refusing what the document allows — is not expected.
    checks["positive_data_acceptance"]["expected-statuses"] = [
        "2xx",
        "400",
        "401",
        "403",
        "404",
        "409",
        "412",
        "429",
    ]
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "request-timeout": 20,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                "no-shrink": True,
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": checks,
            "operations": [
                # `/v1/agents/compose` is also `/v1/agents/{agent_id}` for an agent whose id is
                # "compose": its `Allow` rightly names GET, PUT and DELETE too.
                {
                    "include-path": "/v1/agents/compose",
                    "checks": {"allow_header_conformance": {"enabled": False}},
                }
            ],
            "auth": {"openapi": {"RuntimeToken": {"api_key": TOKEN}}},
        }
    )


@dataclass
class Running:
    """The system served from a thread of its own, and agents that exist in it."""

    base_url: str
    reader: str  # an active agent only read and chatted with
    writer: str  # an agent updated and set to any status
    run: str  # a finished run of the reader
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def aim(self, case: Case) -> None:
        """Point every other case at things that exist, keeping it as valid or invalid as it
        was made: ids are replaced only where the generated one was valid, and the body only
        of cases generated valid."""
        headers = case.headers or {}
        if "Idempotency-Key" in headers and not _negative(case):
            # A key names one request: reused with another body it is rightly refused (422).
            headers["Idempotency-Key"] = uuid.uuid4().hex
        if next(self._turn) % 2:
            return
        path = case.path_parameters or {}
        if _valid_id(path.get("agent_id")):
            method = case.method.upper()
            if method == "DELETE":
                path["agent_id"] = self.new_agent()
            elif method in ("PUT", "PATCH"):
                path["agent_id"] = self.writer
            else:
                path["agent_id"] = self.reader
        if _valid_id(path.get("template_id")):
            path["template_id"] = "simple-test"
        if _valid_id(path.get("run_id")) and RUN_ID.fullmatch(path["run_id"]):
            path["run_id"] = self.run
        body = case.body
        if not isinstance(body, dict) or _negative(case):
            return
        if case.path.startswith("/v1/chat/"):
            body["model"] = self.reader
            return
        if case.path == "/v1/runs":
            body["agent_id"] = self.reader
            return
        # What the registry and executor check beyond the document: the template, its
        # config, the model provider and toolsets named, the id's form.
        if "template_id" in body or case.path in ("/v1/agents", "/v1/agents/compose"):
            body["template_id"] = "simple-test"  # required by the registry and executor
        for key in ("id", "template_config", "llm_config_id", "toolsets", "configuration"):
            if key in body:
                body[key] = None

    def new_agent(self) -> str:
        """A new agent, created through the gateway."""
        reply = httpx.post(
            f"{self.base_url}/v1/agents",
            json={"name": f"doomed {uuid.uuid4().hex}", "template_id": "simple-test"},
            headers={"X-Runtime-Token": TOKEN},
            timeout=20,
        )
        assert reply.status_code == 201, reply.text
        return str(reply.json()["agent_id"])


def _negative(case: Case) -> bool:
    return case.meta is None or case.meta.generation.mode.is_negative


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


@pytest.fixture(scope="module")
def running(nats_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Registry, tools, executor and gateway (rate limits off) in a thread's event loop."""
    tmp = tmp_path_factory.mktemp("openapi")
    started: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        stop = asyncio.Event()
        system = System(
            tmp=Path(tmp),
            nats_url=nats_server.url,
            prefix=f"t{uuid.uuid4().hex[:10]}",
            database_url=f"sqlite:///{tmp / 'executor.sqlite3'}",
            sessions_url=f"sqlite:///{tmp / 'sessions.sqlite3'}",
        )
        try:
            await system.start()
            assert system.registry is not None
            async with running_gateway(
                nats_url=nats_server.url,
                nats_prefix=system.prefix,
                registry_target=f"127.0.0.1:{system.registry.port}",
                executor_target=f"127.0.0.1:{system.executors[0].port}",
                rate_limit_per_second=0,
                address_rate_limit_per_second=0,
            ) as client:
                reader = await system.create_agent(name="reader", template_id="simple-test")
                writer = await system.create_agent(name="writer", template_id="simple-test")
                chat = await client.post(
                    "/v1/chat/completions",
                    json={"model": reader.id, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"X-Runtime-Token": TOKEN},
                )
                assert chat.status_code == 200, chat.text
                started["running"] = Running(
                    base_url=str(client.base_url).rstrip("/"),
                    reader=reader.id,
                    writer=writer.id,
                    run=chat.json()["metadata"]["run_id"],
                    loop=asyncio.get_running_loop(),
                    stop=stop,
                )
                ready.set()
                await stop.wait()
        except BaseException as e:
            started["error"] = e
            raise
        finally:
            ready.set()
            await system.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="openapi-system")
    thread.start()
    ready.wait(60)
    if "running" not in started:
        thread.join(10)
        raise RuntimeError("the system did not start") from started.get("error")
    running = started["running"]
    try:
        yield running
    finally:
        running.loop.call_soon_threadsafe(running.stop.set)
        thread.join(30)


def document() -> dict[str, Any]:
    """The gateway's OpenAPI document, from the app `main.serve` builds (nothing started).

    schemathesis parametrizes tests when the module is collected, before any fixture runs;
    `test_the_gateway_serves_the_document_tested` checks the served one is this one.
    """
    gate = Gate(Authenticator(None, []), RateLimiter(0, 1), RateLimiter(0, 1))
    unused = cast(Any, None)
    services = Services(unused, unused, unused, unused, unused, unused)
    app = create_app(Access(gate), services, version=version("agentrt-gateway"))
    return app.openapi()


DOCUMENT = document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=config())


# Clients generate method names from these: changing one breaks them.
OPERATION_IDS = {
    ("POST", "/v1/chat/completions"): "createChatCompletion",
    ("POST", "/v1/agents/compose"): "composeAgent",
    ("GET", "/v1/agents"): "listAgents",
    ("POST", "/v1/agents"): "createAgent",
    ("GET", "/v1/agents/{agent_id}"): "getAgent",
    ("PUT", "/v1/agents/{agent_id}"): "updateAgent",
    ("DELETE", "/v1/agents/{agent_id}"): "deleteAgent",
    ("GET", "/v1/agents/{agent_id}/history"): "getAgentHistory",
    ("PATCH", "/v1/agents/{agent_id}/status"): "setAgentStatus",
    ("GET", "/v1/models"): "listModels",
    ("GET", "/v1/models/{model}"): "getModel",
    ("GET", "/v1/runs"): "listRuns",
    ("POST", "/v1/runs"): "createRun",
    ("GET", "/v1/runs/{run_id}"): "getRun",
    ("GET", "/v1/runs/{run_id}/wait"): "waitRun",
    ("GET", "/v1/runs/{run_id}/events"): "streamRunEvents",
    ("POST", "/v1/runs/{run_id}/cancel"): "cancelRun",
    ("GET", "/v1/health"): "getHealth",
    ("GET", "/v1/queues"): "listQueues",
    ("GET", "/v1/schema"): "getSchema",
    ("GET", "/v1/whoami"): "whoami",
    ("GET", "/v1/templates"): "listTemplates",
    ("GET", "/v1/templates/{template_id}"): "getTemplate",
    ("GET", "/"): "root",
    ("GET", "/ping"): "ping",
    ("GET", "/metrics"): "metrics",
    ("GET", "/healthz"): "healthz",
    ("GET", "/readyz"): "readyz",
}


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in OpenAPIV31SpecValidator(DOCUMENT).iter_errors()
    ]
    assert DOCUMENT["openapi"].startswith("3.1.")
    assert errors == []


def test_every_operation_has_its_stable_operation_id() -> None:
    found = {key: operation.get("operationId") for key, operation in _operations().items()}
    assert found == OPERATION_IDS


def test_every_operation_is_tagged_with_a_declared_tag() -> None:
    declared = [tag["name"] for tag in DOCUMENT.get("tags", [])]
    untagged = [key for key, operation in _operations().items() if not operation.get("tags")]
    used = {tag for operation in _operations().values() for tag in operation.get("tags", [])}
    assert untagged == []
    assert used <= set(declared)
    assert len(declared) == len(set(declared))


def test_openai_routes_document_openai_error_bodies() -> None:
    def error_schemas(path: str) -> set[str]:
        return {
            response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            for operation in DOCUMENT["paths"][path].values()
            for status, response in operation["responses"].items()
            if int(status) >= 400 and "application/json" in response.get("content", {})
        }

    for path in ("/v1/chat/completions", "/v1/models", "/v1/models/{model}"):
        assert error_schemas(path) == {"OpenAIErrorBody"}, path
    for path in ("/v1/agents", "/v1/agents/compose", "/v1/templates", "/v1/whoami"):
        assert error_schemas(path) == {"ErrorBody"}, path


def test_an_openai_refusal_matches_openai_error_body(running: Running) -> None:
    reply = httpx.get(
        f"{running.base_url}/v1/models/no-such-agent",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert reply.status_code == 404
    body = reply.json()
    assert body["error"]["code"] == "model_not_found"
    assert set(body) == set(DOCUMENT["components"]["schemas"]["OpenAIErrorBody"]["required"])


def test_docs_serve_swagger_ui_for_the_document_without_a_token(running: Running) -> None:
    reply = httpx.get(f"{running.base_url}/docs", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in reply.text
    assert "/openapi.json" in reply.text


def test_the_gateway_serves_the_document_tested(running: Running) -> None:
    served = httpx.get(f"{running.base_url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == DOCUMENT


@schema.parametrize()
def test_the_gateway_answers_as_its_openapi_document_says(case: Case, running: Running) -> None:
    running.aim(case)
    case.call_and_validate(base_url=running.base_url)
