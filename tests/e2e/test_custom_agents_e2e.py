"""The `custom` template end to end: agents' own code, through the gateway, in the sandbox.

Every service runs as a process (registry, tools, executor, gateway) and is driven with
real clients (httpx, the official `openai` package). The agents' code runs in the tools
service's bubblewrap sandbox: Python and JavaScript agents, a tool call from agent code
(whose file lands in the agent's workspace), progress in the run's events, a timeout
and a memory kill, and an agent refused at create for a dependency no sandbox offers.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from agentrt_testkit.processes import ServiceProcess

pytestmark = pytest.mark.e2e

TOKEN = "rt-" + secrets.token_urlsafe(24)
RT = {"X-Runtime-Token": TOKEN}

PYTHON_AGENT = """
import json

def main(messages, agent):
    question = messages[-1]["content"]
    print("thinking about", question)
    agent.progress("saving the question")
    saved = agent.call_tool("create_file", {"filename": "questions.txt", "content": question})
    if saved["error"]:
        return "could not save: " + saved["error"]["code"]
    back = agent.call_tool("read_lines", {"filename": "questions.txt"})
    return f"{agent.name} saved: {back['content']}"
"""

JAVASCRIPT_AGENT = """
const os = require('os');

async function main(messages, agent) {
  agent.progress('counting');
  const listed = await agent.callTool('list_files', {path: '.'});
  const words = messages[messages.length - 1].content.split(/\\s+/).length;
  return {content: `${words} words; tools said: ${listed.error ? listed.error.code : 'ok'}`};
}
"""


@pytest.fixture(scope="module")
def gateway(backend: Any) -> ServiceProcess:
    process = backend.gateway(TOKEN, [], rate_limit_per_second="1000", rate_limit_burst="5000")
    backend.start(process)
    # The registry validates a custom agent against the catalogue, including the sandbox
    # runtimes the executor publishes from the tools service: wait until both are there.
    deadline = time.monotonic() + 30
    while True:
        schema = httpx.get(f"{process.url}/v1/schema", headers=RT).json()
        templates = {t["id"] for t in schema.get("supportedAgentTemplates", [])}
        if ("custom" in templates and schema["capabilities"].get("codeExecution")) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    assert "custom" in templates, schema
    assert schema["capabilities"]["codeExecution"] is True, schema["capabilities"]
    assert schema["capabilities"]["codeExecutionIsolation"] == "bubblewrap"
    return process


@pytest.fixture
def http(gateway: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def custom_agent(
    http: httpx.Client,
    language: str,
    code: str,
    *,
    toolsets: list[str] | None = None,
    timeout: int = 20,
    memory: int = 256,
    dependencies: list[str] | None = None,
) -> httpx.Response:
    return http.post(
        "/v1/agents",
        headers=RT,
        json={
            "name": f"code-{uuid.uuid4().hex[:10]}",
            "template_id": "custom",
            "toolsets": toolsets or [],
            "template_config": {
                "codeSource": {
                    "type": "inline",
                    "content": code,
                    "entryPoint": "main",
                    "dependencies": dependencies or [],
                },
                "runtime": {"language": language, "timeout": timeout, "memoryLimit": memory},
            },
        },
    )


def created(reply: httpx.Response) -> str:
    assert reply.status_code == 201, reply.text
    return str(reply.json()["agent_id"])


def run_events(http: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    events = []
    with http.stream("GET", f"/v1/runs/{run_id}/events", headers=RT) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events


def test_a_python_agent_calls_its_tools_and_streams_progress(
    http: httpx.Client, backend: Any
) -> None:
    agent_id = created(
        custom_agent(http, "python", PYTHON_AGENT, toolsets=["create_file", "read_lines"])
    )
    reply = http.post(
        "/v1/chat/completions",
        headers=RT,
        json={"model": agent_id, "messages": [{"role": "user", "content": "why is the sky"}]},
    )
    assert reply.status_code == 200, reply.text
    name = http.get(f"/v1/agents/{agent_id}", headers=RT).json()["name"]
    assert reply.json()["choices"][0]["message"]["content"] == f"{name} saved: why is the sky"
    assert (backend.tmp / "workspaces" / agent_id / "questions.txt").read_text() == "why is the sky"
    run_id = reply.headers["x-run-id"]
    events = run_events(http, run_id)
    kinds = [e.get("type") or e.get("event") for e in events]
    progress = [e for e in events if "working" in json.dumps(e)]
    assert any("thinking about why is the sky" in json.dumps(e) for e in progress), events
    assert any("saving the question" in json.dumps(e) for e in progress), events
    assert sum("tool_call_started" in json.dumps(e) for e in events) == 2, kinds
    run = http.get(f"/v1/runs/{run_id}", headers=RT).json()
    assert run["status"] == "succeeded"
    assert run["tool_calls"] == 2


def test_a_javascript_agent_answers_the_openai_client_streamed_and_not(
    http: httpx.Client, gateway: ServiceProcess
) -> None:
    agent_id = created(custom_agent(http, "javascript", JAVASCRIPT_AGENT, toolsets=["list_files"]))
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", default_headers=RT)
    answer = client.chat.completions.create(
        model=agent_id, messages=[{"role": "user", "content": "one two three"}]
    )
    assert answer.choices[0].message.content == "3 words; tools said: ok"
    streamed = client.chat.completions.create(
        model=agent_id, messages=[{"role": "user", "content": "four words right here"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == "4 words; tools said: ok"


def test_a_turn_over_its_timeout_fails_the_run_with_timeout(http: httpx.Client) -> None:
    code = "import time\n\ndef main(messages, agent):\n    time.sleep(60)\n"
    agent_id = created(custom_agent(http, "python", code, timeout=2))
    started = time.monotonic()
    reply = http.post(
        "/v1/chat/completions",
        headers=RT,
        json={"model": agent_id, "messages": [{"role": "user", "content": "wait"}]},
    )
    assert time.monotonic() - started < 2 + 10
    assert reply.status_code == 408, reply.text
    assert reply.json()["details"]["reason"] == "TIMEOUT"
    run = http.get(f"/v1/runs/{reply.headers['x-run-id']}", headers=RT).json()
    assert run["status"] in ("failed", "timed_out")
    assert run["error"]["code"] == "TIMEOUT"


def test_code_over_its_memory_limit_fails_the_run_with_limit_exceeded(http: httpx.Client) -> None:
    code = (
        "async function main(messages, agent) {\n"
        "  const hold = [];\n"
        "  for (;;) hold.push(Buffer.alloc(16 * 1024 * 1024, 1));\n"
        "}\n"
    )
    agent_id = created(custom_agent(http, "javascript", code, memory=128))
    reply = http.post(
        "/v1/chat/completions",
        headers=RT,
        json={"model": agent_id, "messages": [{"role": "user", "content": "grow"}]},
    )
    assert reply.status_code >= 400, reply.text
    assert reply.json()["details"]["reason"] == "LIMIT_EXCEEDED", reply.text
    run = http.get(f"/v1/runs/{reply.headers['x-run-id']}", headers=RT).json()
    assert run["error"]["code"] == "LIMIT_EXCEEDED"
    assert "memory" in run["error"]["message"].lower()


def test_create_refuses_code_that_does_not_parse_or_needs_what_no_sandbox_has(
    http: httpx.Client,
) -> None:
    broken = custom_agent(http, "python", "def main(messages, agent)\n    return 1\n")
    assert broken.status_code == 400, broken.text
    assert "codeSource.content" in broken.text
    numpy = custom_agent(http, "python", PYTHON_AGENT, dependencies=["json", "numpy"])
    assert numpy.status_code == 400, numpy.text
    assert "codeSource.dependencies[1]" in numpy.text
    assert "numpy" in numpy.text
    no_entry = custom_agent(http, "javascript", "function helper() {}\n")
    assert no_entry.status_code == 400, no_entry.text
    assert "codeSource.entryPoint" in no_entry.text
