"""End to end: durable runs through the gateway, and a gateway stopped while runs are in flight.

Every service is a process (registry, tools service, executor, gateways), driven with httpx
(and the official `openai` package where its retries matter): runs started in the
background, joined, their events read whole and resumed; background chat completions;
idempotency keys; owners and roles; the multitask strategies of a conversation with
server-side memory; and SIGTERM to a gateway while a completion waits on its run — the
client hears which run to join, and the run goes on.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_support import code_of, keyring

from agentrt_testkit.processes import ServiceProcess
from agentrt_testkit.sse import events_of

pytestmark = pytest.mark.e2e

TOKEN = "rt-" + uuid.uuid4().hex
KEYS, ENTRIES = keyring(
    operator=("operator", None),
    viewer=("viewer", None),
    acme=("admin", "acme"),
    globex=("admin", "globex"),
)
GENEROUS = {
    "rate_limit_per_second": "1000",
    "rate_limit_burst": "5000",
    "address_rate_limit_per_second": "1000",
    "address_rate_limit_burst": "5000",
}
GRACE = 3.0  # of the gateways stopped here: what still waits is answered after 2 s
ENDED = ("succeeded", "failed", "cancelled", "timed_out")


def key(name: str) -> dict[str, str]:
    """Headers presenting a key (`runtime`: the runtime token)."""
    if name == "runtime":
        return {"X-Runtime-Token": TOKEN}
    return {"Authorization": f"Bearer {KEYS[name]}"}


RT = key("runtime")


@pytest.fixture(scope="module")
def gateway(backend: Any) -> ServiceProcess:
    """The gateway the tests read through (never stopped by them)."""
    process = backend.gateway(TOKEN, ENTRIES, **GENEROUS)
    backend.start(process)
    # The registry validates templates against the catalogue the executor publishes.
    deadline = time.monotonic() + 15
    while True:
        probe = httpx.post(
            f"{process.url}/v1/agents",
            json={"name": "warm-up", "template_id": "simple-test"},
            headers=RT,
        )
        if probe.status_code == 201 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert probe.status_code == 201, probe.text
    return process


@pytest.fixture
def http(gateway: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


def create(http: httpx.Client, headers: dict[str, str] | None = None, **fields: Any) -> str:
    """A new simple-test agent; its id."""
    fields.setdefault("name", f"agent-{uuid.uuid4().hex[:12]}")
    fields.setdefault("template_id", "simple-test")
    reply = http.post("/v1/agents", json=fields, headers=headers or RT)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["agent_id"])


def start(http: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return http.post("/v1/runs", json=body, headers=headers or RT)


def ended(http: httpx.Client, run_id: str, headers: dict[str, str] | None = None) -> Any:
    """The run once it has ended (joined with `/wait`)."""
    deadline = time.monotonic() + 120
    while True:
        reply = http.get(f"/v1/runs/{run_id}/wait?timeout=30", headers=headers or RT)
        assert reply.status_code == 200, reply.text
        run = reply.json()
        if run["status"] in ENDED:
            return run
        assert time.monotonic() < deadline, run


def running(http: httpx.Client, run_id: str) -> Any:
    """The run once it is running."""
    deadline = time.monotonic() + 60
    while True:
        reply = http.get(f"/v1/runs/{run_id}", headers=RT)
        if reply.status_code == 200 and reply.json()["status"] == "running":
            return reply.json()
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.05)


def first_run(http: httpx.Client, agent_id: str) -> Any:
    """The agent's first run once it is running."""
    deadline = time.monotonic() + 60
    while True:
        runs = http.get(f"/v1/runs?agent_id={agent_id}", headers=RT).json()["runs"]
        if runs and runs[-1]["status"] == "running":
            return runs[-1]
        assert time.monotonic() < deadline, runs
        time.sleep(0.05)


def chunks_of(text: str) -> list[Any]:
    """The data payloads of a chat completion stream, `[DONE]` as a string."""
    found: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                found.append(payload if payload == "[DONE]" else json.loads(payload))
    return found


def chat(agent_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": agent_id, "messages": [{"role": "user", "content": text}], **extra}


# --- runs in the background ---------------------------------------------------------------


def test_a_started_run_is_joined_and_its_events_read_whole_and_resumed(
    http: httpx.Client,
) -> None:
    agent_id = create(http)
    reply = start(http, agent_id=agent_id, input="hello runs", metadata={"ticket": "T-9"})
    assert reply.status_code == 202, reply.text
    run = reply.json()
    assert reply.headers["location"] == f"/v1/runs/{run['run_id']}"
    assert (run["queued"], run["multitask_strategy"]) == (True, "reject")
    joined = http.get(f"{reply.headers['location']}/wait?timeout=60", headers=RT)
    assert joined.status_code == 200, joined.text
    done = joined.json()
    assert (done["status"], done["finish_reason"]) == ("succeeded", "stop")
    assert done["output"]["role"] == "assistant"
    assert "hello runs" in done["output"]["content"]
    assert done["metadata"] == {"ticket": "T-9"}
    assert done["rolled_back"] is False
    whole = http.get(f"/v1/runs/{run['run_id']}/events", headers=RT)
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("text/event-stream")
    events = events_of(whole.text)
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "run_completed"
    completed = [e for e in events if e["event"] == "message_completed"]
    assert completed[-1]["data"]["message"] == done["output"]
    # Resumed after the first event, as an EventSource reconnects; `?after=` alike.
    resumed = http.get(f"/v1/runs/{run['run_id']}/events", headers={**RT, "Last-Event-ID": "1"})
    assert events_of(resumed.text) == events[1:]
    after_last = http.get(f"/v1/runs/{run['run_id']}/events?after={len(events)}", headers=RT)
    assert events_of(after_last.text) == []


def test_a_chat_completion_asked_to_respond_async_runs_in_the_background(
    http: httpx.Client,
) -> None:
    agent_id = create(http)
    reply = http.post(
        "/v1/chat/completions",
        json=chat(agent_id, "later please", metadata={"order": "42"}),
        headers={**RT, "Prefer": "respond-async"},
    )
    assert reply.status_code == 202, reply.text
    assert reply.headers["preference-applied"] == "respond-async"
    run = reply.json()
    assert reply.headers["location"] == f"/v1/runs/{run['run_id']}"
    assert run["queued"] is True
    done = ended(http, run["run_id"])
    assert done["status"] == "succeeded"
    assert "later please" in done["output"]["content"]
    assert done["metadata"] == {"order": "42"}


def test_an_idempotency_key_makes_a_start_safe_to_retry(http: httpx.Client) -> None:
    agent_id = create(http)
    headers = {**RT, "Idempotency-Key": f"start-{uuid.uuid4().hex}"}
    first = start(http, headers, agent_id=agent_id, input="just once")
    assert first.status_code == 202, first.text
    run_id = first.json()["run_id"]
    assert first.headers["x-run-id"] == run_id
    assert "idempotent-replayed" not in first.headers
    again = start(http, headers, agent_id=agent_id, input="just once")
    assert again.status_code == 202, again.text
    assert (again.json()["run_id"], again.headers["idempotent-replayed"]) == (run_id, "true")
    other = start(http, headers, agent_id=agent_id, input="something else")
    assert other.status_code == 422, other.text
    assert other.json()["details"]["reason"] == "IDEMPOTENCY_KEY_REUSED"
    assert other.json()["details"]["fields"][0]["field"] == "header.idempotency-key"
    assert ended(http, run_id)["status"] == "succeeded"
    listed = http.get(f"/v1/runs?agent_id={agent_id}", headers=RT).json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]


def test_runs_respect_roles_and_owners(http: httpx.Client) -> None:
    agent_id = create(http, key("acme"))
    refused = start(http, key("viewer"), agent_id=agent_id, input="hi")
    assert refused.status_code == 403, refused.text
    assert code_of(refused.json()) == "FORBIDDEN"
    # Another owner's agent does not exist for a bound key.
    hidden = start(http, key("globex"), agent_id=agent_id, input="hi")
    assert (hidden.status_code, code_of(hidden.json())) == (404, "AGENT_NOT_FOUND")
    reply = start(http, key("acme"), agent_id=agent_id, input="mine")
    assert reply.status_code == 202, reply.text
    run_id = reply.json()["run_id"]
    assert ended(http, run_id, key("acme"))["status"] == "succeeded"
    for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/wait", f"/v1/runs/{run_id}/events"):
        other = http.get(path, headers=key("globex"))
        assert (other.status_code, code_of(other.json())) == (404, "RUN_NOT_FOUND"), path
    cancel = http.post(f"/v1/runs/{run_id}/cancel", headers=key("globex"))
    assert (cancel.status_code, code_of(cancel.json())) == (404, "RUN_NOT_FOUND")
    assert http.get(f"/v1/runs/{run_id}", headers=key("viewer")).json()["status"] == "succeeded"
    mine = http.get(f"/v1/runs?agent_id={agent_id}", headers=key("acme")).json()["runs"]
    assert [r["run_id"] for r in mine] == [run_id]
    assert http.get(f"/v1/runs?agent_id={agent_id}", headers=key("globex")).json()["runs"] == []


# --- one conversation, two runs: the multitask strategies -----------------------------------


def conversation(http: httpx.Client) -> tuple[str, str]:
    """A memory agent whose model answers after 2 s, and a new conversation of it."""
    agent_id = create(http, conversation_config={"memory": True}, llm_config_id="late")
    return agent_id, f"t-{uuid.uuid4().hex[:12]}"


def two_runs(http: httpx.Client, strategy: str) -> tuple[str, httpx.Response]:
    """A run of a conversation, and the answer to a second one started while it runs."""
    agent_id, task_id = conversation(http)
    first = start(http, agent_id=agent_id, input="one", task_id=task_id)
    assert first.status_code == 202, first.text
    running(http, first.json()["run_id"])
    second = start(
        http, agent_id=agent_id, input="two", task_id=task_id, multitask_strategy=strategy
    )
    return first.json()["run_id"], second


def test_reject_refuses_a_second_run_while_the_conversation_has_one(http: httpx.Client) -> None:
    first, second = two_runs(http, "reject")
    assert second.status_code == 409, second.text
    assert code_of(second.json()) == "CONFLICT"
    assert second.json()["details"]["reason"] == "SESSION_BUSY"
    assert ended(http, first)["status"] == "succeeded"


def test_enqueue_runs_the_second_after_the_first(http: httpx.Client) -> None:
    first, second = two_runs(http, "enqueue")
    assert second.status_code == 202, second.text
    one, two = ended(http, first), ended(http, second.json()["run_id"])
    assert (one["status"], two["status"]) == ("succeeded", "succeeded")
    assert one["finished_at"] <= two["started_at"]
    assert two["output"]["content"].endswith("two")


def test_interrupt_stops_the_first_and_runs_the_second(http: httpx.Client) -> None:
    first, second = two_runs(http, "interrupt")
    assert second.status_code == 202, second.text
    one, two = ended(http, first), ended(http, second.json()["run_id"])
    assert (one["status"], one["error"]["code"], one["rolled_back"]) == (
        "cancelled",
        "CANCELLED",
        False,
    )
    assert two["status"] == "succeeded"


def test_rollback_stops_and_undoes_the_first_and_runs_the_second(http: httpx.Client) -> None:
    first, second = two_runs(http, "rollback")
    assert second.status_code == 202, second.text
    one, two = ended(http, first), ended(http, second.json()["run_id"])
    assert (one["status"], one["rolled_back"]) == ("cancelled", True)
    assert two["status"] == "succeeded"
    assert two["output"]["content"].endswith("two")


# --- SIGTERM while runs are in flight ------------------------------------------------------


def stopping_gateway(backend: Any) -> ServiceProcess:
    """A gateway started for one test, to be stopped by it."""
    process = backend.gateway(TOKEN, ENTRIES, **GENEROUS, AGENTRT_SHUTDOWN_GRACE_SECONDS=str(GRACE))
    backend.start(process)
    return process


class Stopper:
    """SIGTERMs a gateway in a thread of its own (stopping waits for the process to exit)."""

    def __init__(self, process: ServiceProcess) -> None:
        self.process = process
        self.code: int | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._stop)

    def _stop(self) -> None:
        began = time.monotonic()
        self.code = self.process.stop(timeout=60)
        self.seconds = time.monotonic() - began

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(90)
        assert self.code == 0, self.process.log()
        assert self.seconds < GRACE + 15, self.seconds


def test_sigterm_answers_a_waiting_completion_with_a_503_naming_its_run_which_goes_on(
    backend: Any, http: httpx.Client
) -> None:
    agent_id = create(http, llm_config_id="later")  # answers after 8 s
    process = stopping_gateway(backend)
    stopper = Stopper(process)
    answer: dict[str, httpx.Response] = {}

    def ask() -> None:
        with httpx.Client(base_url=process.url, timeout=60) as client:
            answer["reply"] = client.post(
                "/v1/chat/completions", json=chat(agent_id, "outlive the gateway"), headers=RT
            )

    asking = threading.Thread(target=ask)
    asking.start()
    run = first_run(http, agent_id)
    stopper.start()
    asking.join(60)
    stopper.join()
    reply = answer["reply"]
    assert reply.status_code == 503, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    run_id = run["run_id"]
    assert body["error"]["type"] == "server_error"
    assert body["error"]["code"] == "service_unavailable"
    assert (body["details"]["reason"], body["details"]["run_id"]) == ("GATEWAY_STOPPING", run_id)
    assert reply.headers["x-run-id"] == run_id
    assert reply.headers["location"] == f"/v1/runs/{run_id}"
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["x-should-retry"] == "false"
    # The run was not cancelled with the gateway's call: joined through another gateway.
    done = ended(http, run_id)
    assert done["status"] == "succeeded", done
    assert done["output"]["content"].endswith("outlive the gateway")
    assert done["queued"] is False  # a foreground run, detached from its gateway


def test_sigterm_ends_an_open_stream_with_an_error_chunk_naming_its_run_which_goes_on(
    backend: Any, http: httpx.Client
) -> None:
    agent_id = create(http, llm_config_id="slow")  # 50 ms a token
    words = " ".join(f"w{n}" for n in range(200))  # ~10 s
    process = stopping_gateway(backend)
    stopper = Stopper(process)
    text, stopped = "", False
    with (
        httpx.Client(base_url=process.url, timeout=60) as client,
        client.stream(
            "POST", "/v1/chat/completions", json=chat(agent_id, words, stream=True), headers=RT
        ) as reply,
    ):
        assert reply.status_code == 200
        for piece in reply.iter_text():
            text += piece
            if not stopped and '"delta":{"content":"' in text:
                stopper.start()  # SIGTERM once the answer has begun
                stopped = True
    stopper.join()
    found = chunks_of(text)
    assert found[-1] == "[DONE]"
    closing = found[-2]
    run_id = closing["metadata"]["run_id"]
    assert closing["choices"][0]["finish_reason"] == "error"
    said = closing["choices"][0]["delta"]["content"]
    assert said.startswith("[GATEWAY_STOPPING]")
    assert f"/v1/runs/{run_id}/events" in said
    resume = closing["agentrt"]
    assert (resume["type"], resume["run_id"]) == ("gateway_stopping", run_id)
    relayed = "".join(c["choices"][0]["delta"].get("content", "") for c in found[1:-2])
    # The run goes on; its events after the last one relayed carry the rest of the answer.
    done = ended(http, run_id)
    assert done["status"] == "succeeded", done
    rest = http.get(
        f"/v1/runs/{run_id}/events", headers={**RT, "Last-Event-ID": str(resume["last_event_id"])}
    )
    later = events_of(rest.text)
    assert int(later[0]["id"]) == resume["last_event_id"] + 1
    assert later[-1]["event"] == "run_completed"
    deltas = "".join(e["data"]["content"] for e in later if e["event"] == "message_delta")
    assert relayed + deltas == done["output"]["content"]
    assert deltas  # the gateway stopped mid-answer


def test_sigterm_leaves_background_runs_going(backend: Any, http: httpx.Client) -> None:
    agent_id = create(http, llm_config_id="late")
    process = stopping_gateway(backend)
    with httpx.Client(base_url=process.url, timeout=30) as client:
        reply = client.post("/v1/runs", json={"agent_id": agent_id, "input": "go on"}, headers=RT)
    assert reply.status_code == 202, reply.text
    run_id = reply.json()["run_id"]
    stopper = Stopper(process)
    stopper.start()
    stopper.join()
    assert ended(http, run_id)["status"] == "succeeded"


def test_the_openai_client_does_not_send_a_stopped_completion_again(
    backend: Any, http: httpx.Client
) -> None:
    agent_id = create(http, llm_config_id="later")
    process = stopping_gateway(backend)
    stopper = Stopper(process)
    raised: dict[str, Exception] = {}

    def ask() -> None:
        # The client's default: it would retry a 503 twice unless told not to.
        with openai.OpenAI(base_url=f"{process.url}/v1", api_key=TOKEN, max_retries=2) as sdk:
            try:
                sdk.chat.completions.create(
                    model=agent_id, messages=[{"role": "user", "content": "only once"}]
                )
            except openai.APIStatusError as e:
                raised["error"] = e

    asking = threading.Thread(target=ask)
    asking.start()
    run = first_run(http, agent_id)
    stopper.start()
    asking.join(60)
    stopper.join()
    error = raised["error"]
    assert isinstance(error, openai.InternalServerError)
    assert error.status_code == 503
    assert error.response.headers["x-run-id"] == run["run_id"]
    assert ended(http, run["run_id"])["status"] == "succeeded"
    runs = http.get(f"/v1/runs?agent_id={agent_id}", headers=RT).json()["runs"]
    assert [r["run_id"] for r in runs] == [run["run_id"]]  # run once, not three times
