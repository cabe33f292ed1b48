"""The gateway's pure parts: keys, roles, token buckets, stream slots, audit actions, runs."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from agent_gateway.adapters.http_errors import ApiError
from agent_gateway.adapters.openai_render import ChunkWriter
from agent_gateway.domain.agents import expected_version, idempotent_agent_id, same_spec
from agent_gateway.domain.audit import action_of, audited, outcome_of
from agent_gateway.domain.auth import (
    ApiKey,
    Authenticator,
    Principal,
    digest_of,
    new_key,
)
from agent_gateway.domain.chat import Finished, Message, Started, ToolCall, Usage
from agent_gateway.domain.limits import RateLimiter, StreamSlots
from agent_gateway.domain.runs import (
    RunRecord,
    idempotent_run_id,
    valid_idempotency_key,
)
from agent_gateway.domain.sandbox import NO_SANDBOX, CodeSandbox, code_sandbox
from agent_gateway.domain.stats import ExecutionStats
from agent_gateway.main import keys_command


def test_new_keys_are_random_and_their_digest_authenticates() -> None:
    key, digest = new_key()
    other, _ = new_key()
    assert key != other
    assert key.startswith("art_")
    assert len(key) > 40
    auth = Authenticator(None, [ApiKey("k", digest, "viewer", "acme")])
    assert auth.authenticate(None, f"Bearer {key}") == Principal("key:k", "viewer", "acme")
    assert auth.authenticate(key, None) == Principal("key:k", "viewer", "acme")
    assert auth.authenticate(None, f"Basic {key}") is None
    assert auth.authenticate(None, None) is None
    assert auth.authenticate("", None) is None


def test_the_runtime_token_is_admin_and_unbound() -> None:
    auth = Authenticator(digest_of("rt"), [])
    assert auth.authenticate("rt", None) == Principal("runtime-token", "admin", None)
    assert auth.authenticate("rt2", None) is None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"id": "a", "sha256": "abc", "role": "admin"}, "64 lowercase hex"),
        ({"id": "a", "sha256": "0" * 64, "role": "root"}, "role must be one of"),
        ({"id": "", "sha256": "0" * 64}, "1-64 printable"),
        ({"id": "a\nb", "sha256": "0" * 64}, "1-64 printable"),
    ],
)
def test_bad_key_entries_are_refused(entry: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ApiKey(**entry)


def test_roles_nest_and_owners_bound_what_a_key_sees() -> None:
    viewer, operator, admin = (Principal("x", r) for r in ("viewer", "operator", "admin"))
    assert viewer.may("viewer")
    assert not viewer.may("operator")
    assert operator.may("viewer")
    assert not operator.may("admin")
    assert admin.may("operator")
    assert admin.sees("anyone")
    bound = Principal("y", "admin", "acme")
    assert bound.sees("acme")
    assert not bound.sees("")
    assert not bound.sees("globex")


def test_keys_command_prints_a_key_once_and_only_its_digest_in_the_entry() -> None:
    printed = keys_command(["new-key", "--id", "ci", "--role", "admin"])
    key_line, entry_line = printed.splitlines()
    key = key_line.removeprefix("key:").strip()
    entry = json.loads(entry_line.removeprefix("entry:"))
    assert entry == {
        "id": "ci",
        "sha256": f"sha256:{digest_of(key).hex()}",
        "role": "admin",
        "owner": None,
    }
    assert key not in entry_line
    hashed = keys_command(["hash-key", "--id", "mine", "--owner", "acme"], read=lambda: "s3cret\n")
    assert (
        json.loads(hashed.removeprefix("entry:"))["sha256"] == f"sha256:{digest_of('s3cret').hex()}"
    )
    assert "s3cret" not in hashed
    with pytest.raises(SystemExit):
        keys_command(["hash-key", "--id", "empty"], read=lambda: "\n")
    with pytest.raises(SystemExit):
        keys_command(["new-key"])


def test_a_bucket_refills_at_its_rate_and_says_when_to_retry() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.take("a").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.take("a")
    assert (refused.retry_after, refused.headers()["Retry-After"]) == (1, "1")
    assert limiter.take("b").allowed  # another key has its own bucket
    now[0] = 0.5  # one token back
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    now[0] = 100.0  # never more than the burst
    assert [limiter.take("a").remaining for _ in range(3)] == [2, 1, 0]


def test_a_zero_rate_turns_limiting_off_and_idle_buckets_are_forgotten() -> None:
    assert not RateLimiter(0, 5).enabled
    now = [0.0]
    limiter = RateLimiter(1.0, 1, clock=lambda: now[0], max_keys=2)
    for key in ("a", "b", "c"):
        limiter.take(key)
    assert len(limiter._buckets) <= 2
    now[0] = 10.0
    for key in ("d", "e", "f"):
        limiter.take(key)
    assert len(limiter._buckets) <= 2


def test_stream_slots_bound_each_key() -> None:
    slots = StreamSlots(2)
    assert slots.acquire("k")
    assert slots.acquire("k")
    assert not slots.acquire("k")
    assert slots.acquire("other")
    slots.release("k")
    assert slots.acquire("k")
    assert not slots.acquire("k")  # one was given back, and taken again
    unbounded = StreamSlots(0)
    assert all(unbounded.acquire("k") for _ in range(100))


@pytest.mark.parametrize(
    ("method", "path", "action", "target"),
    [
        ("POST", "/v1/agents", "agent.create", ""),
        ("POST", "/v1/agents/", "agent.create", ""),
        ("POST", "/v1/agents/compose", "agent.compose", ""),
        ("PUT", "/v1/agents/a1", "agent.update", "a1"),
        ("DELETE", "/v1/agents/a1/", "agent.delete", "a1"),
        ("PATCH", "/v1/agents/a1/status", "agent.status", "a1"),
        ("POST", "/v1/chat/completions", "chat.completion", ""),
        ("POST", "/v1/unknown", "http.post", "/v1/unknown"),
    ],
)
def test_audit_actions_come_from_the_request_line(
    method: str, path: str, action: str, target: str
) -> None:
    assert audited(method, path)
    assert action_of(method, path) == (action, target)


def test_what_is_audited_and_how_it_ended() -> None:
    assert not audited("GET", "/v1/agents")
    assert not audited("POST", "/ping")
    assert [outcome_of(s) for s in (200, 201, 401, 403, 429, 404, 500)] == [
        "succeeded",
        "succeeded",
        "denied",
        "denied",
        "denied",
        "failed",
        "failed",
    ]
    assert outcome_of(200, run_failed=True) == "failed"


def test_chunks_carry_the_task_and_end_with_the_reason() -> None:
    writer = ChunkWriter(Started("r1", "t1", ""), "agent", 7, include_usage=False)
    opening = json.loads(writer.opening().removeprefix(b"data: "))
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert opening["metadata"] == {"task_id": "t1", "context_id": None, "run_id": "r1"}
    failed = writer.closing(Finished("error", Usage(), "PROVIDER_ERROR", "model down"))
    first, done = failed.split(b"\n\n")[0], failed.split(b"\n\n")[1]
    chunk = json.loads(first.removeprefix(b"data: "))
    assert chunk["choices"][0] == {
        "index": 0,
        "delta": {"content": "[PROVIDER_ERROR] model down"},
        "finish_reason": "error",
    }
    assert done == b"data: [DONE]"


def test_stats_count_executions_failures_and_time() -> None:
    stats = ExecutionStats()
    with stats.measure():
        assert stats.snapshot()["active_agents"] == 1
    with pytest.raises(RuntimeError), stats.measure():
        raise RuntimeError
    measured = stats.begin()
    measured.end(failed=True)
    measured.end(failed=False)  # counted once
    snapshot = stats.snapshot()
    assert snapshot["total_executions"] == 3
    assert snapshot["error_rate"] == round(2 / 3, 4)
    assert snapshot["active_agents"] == 0


def test_an_empty_runtime_token_header_lets_the_bearer_key_count() -> None:
    key, digest = new_key()
    auth = Authenticator(digest_of("rt"), [ApiKey("k", digest, "viewer")])
    assert auth.authenticate("", f"Bearer {key}") == Principal("key:k", "viewer")
    assert auth.authenticate("", None) is None


def test_if_match_star_means_any_version() -> None:
    assert expected_version("*") is None
    assert expected_version(' "7" ') == 7
    assert expected_version('W/"7"') == 7
    with pytest.raises(ValueError, match="x"):
        expected_version('"x"')


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("body.messages.0.content.constrained-str", "messages[0].content"),
        ("body.stop.list[constrained-str]", "stop"),
        ("body.temperature", "temperature"),
        ("body", None),
        ("query.limit", "limit"),
    ],
)
def test_openai_errors_name_the_parameter_as_openai_does(field: str, param: str | None) -> None:
    error = ApiError(400, "VALIDATION_ERROR", "bad", details={"fields": [{"field": field}]})
    assert error.body("openai")["error"]["param"] == param


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def test_an_idempotency_key_names_one_run_of_one_caller() -> None:
    run_id = idempotent_run_id("key:acme", "order-42")
    assert run_id == idempotent_run_id("key:acme", "order-42")
    assert RUN_ID.fullmatch(run_id)
    assert run_id.startswith("idem-")
    assert len(run_id) == len("idem-") + 32
    assert idempotent_run_id("key:globex", "order-42") != run_id
    assert idempotent_run_id("key:acme", "order-43") != run_id


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("k", True),
        ("x" * 255, True),
        ("a b ~!", True),
        ("", False),
        ("x" * 256, False),
        ("caf\xe9", False),
        ("tab\t", False),
        ("nul\x00", False),
        ("line\n", False),
    ],
)
def test_idempotency_keys_are_1_to_255_printable_ascii_characters(key: str, valid: bool) -> None:
    assert valid_idempotency_key(key) is valid


def _record(status: str, **fields: object) -> RunRecord:
    values: dict[str, object] = {
        "run_id": "r1",
        "agent_id": "a1",
        "agent_version": 2,
        "status": status,
        "task_id": "t1",
        "context_id": "c1",
        "owner_id": "",
        "usage": Usage(3, 4, 7),
        "tool_calls": 0,
        "executor_id": "e1",
        **fields,
    }
    return RunRecord(**values)  # type: ignore[arg-type]


def test_an_ended_run_reports_its_result_as_a_completion_does() -> None:
    call = ToolCall("c1", "lookup", '{"q": 1}')
    done = _record(
        "succeeded",
        output=Message("assistant", "", tool_calls=(call,)),
        finish_reason="tool_calls",
    ).result()
    assert (done.run_id, done.finish_reason, done.tool_calls, done.usage) == (
        "r1",
        "tool_calls",
        (call,),
        Usage(3, 4, 7),
    )
    assert (done.task_id, done.context_id, done.agent_version) == ("t1", "c1", 2)
    failed = _record("timed_out", error_code="TIMEOUT", error_message="too slow").result()
    assert (failed.finish_reason, failed.error_code, failed.content) == ("error", "TIMEOUT", "")
    cancelled = _record("cancelled", error_code="CANCELLED").result()
    assert cancelled.finish_reason == "cancelled"
    assert _record("succeeded", output=Message("assistant", "hi")).result().finish_reason == "stop"


def test_starting_and_cancelling_runs_are_audited_as_run_actions() -> None:
    assert action_of("POST", "/v1/runs") == ("run.start", "")
    assert action_of("POST", "/v1/runs/") == ("run.start", "")
    assert action_of("POST", "/v1/runs/r1/cancel") == ("run.cancel", "r1")


def test_an_agent_key_names_one_uuid_per_caller() -> None:
    mine = idempotent_agent_id("key:ops", "k-1")
    assert mine == idempotent_agent_id("key:ops", "k-1")
    assert str(uuid.UUID(mine)) == mine
    assert uuid.UUID(mine).version == 5
    assert mine != idempotent_agent_id("runtime-token", "k-1")
    assert mine != idempotent_agent_id("key:ops", "k-2")


def test_a_create_is_compared_with_its_registration_as_the_registry_stores_it() -> None:
    stored = {
        "name": "Keyed",
        "description": "",
        "template_id": "simple-test",
        "template_config": {"n": 1.0, "deep": [{"x": 2}]},
        "toolsets": [],
        "metadata": {"on": True},
    }
    asked = {
        "name": " Keyed ",
        "template_id": "simple-test",
        "template_config": {"deep": [{"x": 2.0}], "n": 1},
        "metadata": {"on": True},
    }
    assert same_spec(asked, stored)
    assert not same_spec({**asked, "metadata": {"on": 1}}, stored)
    assert not same_spec({**asked, "description": "x"}, stored)
    assert not same_spec({**asked, "toolsets": ["custom"]}, stored)
    assert not same_spec({**asked, "name": "keyed"}, stored)


def _entry(sandbox: object, expires_at: object = 200.0) -> dict[str, object]:
    return {"executor_id": "e", "sandbox": sandbox, "expires_at": expires_at}


def test_code_runs_when_a_live_executor_reports_an_available_sandbox() -> None:
    bwrap = {"available": True, "isolation": "bubblewrap"}
    dev = {"available": True, "isolation": "unsandboxed"}
    broken = {"available": False, "isolation": "", "reason": "namespaces refused"}
    assert code_sandbox([], 100.0) == CodeSandbox(False, reason=NO_SANDBOX)
    assert code_sandbox([_entry(None), _entry(bwrap, 99.0)], 100.0) == CodeSandbox(
        False, reason=NO_SANDBOX
    )
    assert code_sandbox([_entry(broken), _entry(broken)], 100.0) == CodeSandbox(
        False, reason="namespaces refused"
    )
    assert code_sandbox([_entry(broken), _entry(bwrap)], 100.0) == CodeSandbox(True, "bubblewrap")
    # A fleet that mixes isolations says so: any of them may run the code.
    mixed = code_sandbox([_entry(dev), _entry(bwrap), _entry(bwrap)], 100.0)
    assert mixed == CodeSandbox(True, "bubblewrap, unsandboxed")
    # Entries the executors never wrote this way count for nothing.
    odd = [_entry("yes"), _entry(bwrap, "later"), _entry(bwrap, True), {"sandbox": bwrap}]
    assert not code_sandbox(odd, 100.0).available
    assert CodeSandbox(True, "bubblewrap").health() == {
        "available": True,
        "isolation": "bubblewrap",
    }
    assert CodeSandbox(False, reason="x").health() == {
        "available": False,
        "isolation": "",
        "reason": "x",
    }
