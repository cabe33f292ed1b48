"""The code sandbox: programs, agents' code, run_code and RunAgentCode over real gRPC.

Attacks on the sandbox are in test_tools_sandbox_escapes.py; these are the
functions it offers and the ways it says no.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from tools_support import ToolsService, invoke_request

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt_kit.grpc.status import error_from_rpc
from tool_service.adapters.cgroups import V2Slots, open_slots
from tool_service.adapters.runtimes import discover, node_images, python_image
from tool_service.adapters.sandbox import CodeSandbox, SandboxConfig, build_sandbox
from tool_service.config import Settings
from tool_service.domain.sandbox import (
    Finished,
    Language,
    Limits,
    Program,
    Progress,
    SourceFile,
    ToolCall,
)
from tool_service.errors import SandboxUnavailable

FAST = Limits(timeout_seconds=10)


@pytest.fixture(scope="module")
def sandbox() -> CodeSandbox:
    built = build_sandbox(SandboxConfig())
    built.forget_loop()
    assert built.status.available, built.status.reason
    return built


async def test_a_python_program_runs_with_its_stdin_files_and_output(sandbox: CodeSandbox) -> None:
    code = (
        "import os, sys\n"
        "data = sys.stdin.read()\n"
        "print(data.upper(), open('/workspace/notes/in.txt').read())\n"
        "os.makedirs('/output/sub', exist_ok=True)\n"
        "open('/output/sub/result.txt', 'w').write('done')\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    execution = await sandbox.run(
        Program(
            Language.PYTHON,
            code,
            stdin=b"hello",
            files=(SourceFile("notes/in.txt", b"input file"),),
            limits=FAST,
        )
    )
    assert execution.exit_code == 3
    assert execution.stdout == b"HELLO input file\n"
    assert execution.stderr == b"to stderr\n"
    assert [(f.path, f.data) for f in execution.files] == [("sub/result.txt", b"done")]
    assert not execution.killed_reason
    assert not execution.timed_out
    assert execution.cpu_ms > 0
    assert execution.max_rss_kb > 1000
    assert execution.duration_ms > 0


async def test_a_javascript_program_runs_and_leaves_files(sandbox: CodeSandbox) -> None:
    code = (
        "const fs = require('fs');\n"
        "fs.writeFileSync('/output/a.json', JSON.stringify({n: 1}));\n"
        "console.log('js', process.versions.node.split('.')[0] > 0);\n"
    )
    execution = await sandbox.run(Program(Language.JAVASCRIPT, code, limits=FAST))
    assert execution.exit_code == 0, execution.stderr
    assert execution.stdout == b"js true\n"
    assert [(f.path, json.loads(f.data)) for f in execution.files] == [("a.json", {"n": 1})]


async def test_an_exception_shows_the_programs_own_traceback(sandbox: CodeSandbox) -> None:
    execution = await sandbox.run(
        Program(Language.PYTHON, "def f():\n    raise ValueError('boom')\nf()\n", limits=FAST)
    )
    assert execution.exit_code == 1
    assert b'File "/sandbox/main.py", line 2, in f' in execution.stderr
    assert b"ValueError: boom" in execution.stderr
    assert b"runpy" not in execution.stderr
    assert b"run.py" not in execution.stderr


async def test_output_is_capped_with_a_flag(sandbox: CodeSandbox) -> None:
    limits = Limits(timeout_seconds=10, captured_bytes=1024)
    execution = await sandbox.run(Program(Language.PYTHON, "print('x' * 5000)", limits=limits))
    assert execution.exit_code == 0
    assert len(execution.stdout) == 1024
    assert execution.stdout_truncated
    assert not execution.stderr_truncated


async def test_programs_run_concurrently_each_in_its_own_sandbox(sandbox: CodeSandbox) -> None:
    code = "import os; open('/tmp/mine', 'w').write(str(os.getpid())); print(os.listdir('/tmp'))"
    runs = await asyncio.gather(
        *(sandbox.run(Program(Language.PYTHON, code, limits=FAST)) for _ in range(6))
    )
    assert all(r.stdout == b"['mine']\n" for r in runs), [r.stderr for r in runs]


async def test_the_timeout_kills_and_says_so(sandbox: CodeSandbox) -> None:
    execution = await sandbox.run(
        Program(Language.PYTHON, "import time; time.sleep(30)", limits=Limits(timeout_seconds=1))
    )
    assert execution.timed_out
    assert execution.killed_reason == "TIMEOUT"
    assert execution.exit_code == 137
    assert 1000 <= execution.duration_ms < 3000


async def test_agent_code_in_python_calls_a_tool_and_streams_progress(
    sandbox: CodeSandbox,
) -> None:
    code = (
        "def main(messages, agent):\n"
        "    print('thinking about', messages[-1]['content'])\n"
        "    agent.progress('calling')\n"
        "    found = agent.call_tool('read_lines', {'filename': 'a.txt'})\n"
        "    return {'content': agent.id + ': ' + found['content']}\n"
    )
    events = await _drive(sandbox, "python", code, {"read_lines": {"content": "line one"}})
    assert events[:3] == [
        Progress("thinking about hi"),
        Progress("calling"),
        ToolCall("1", "read_lines", {"filename": "a.txt"}),
    ]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reply == "agent-1: line one"
    assert not finished.error_code


async def test_agent_code_in_javascript_calls_a_tool(sandbox: CodeSandbox) -> None:
    code = (
        "async function main(messages, agent) {\n"
        "  const found = await agent.callTool('read_lines', {filename: 'a.txt'});\n"
        "  return `${messages.length} ${found.content}`;\n"
        "}\n"
    )
    events = await _drive(sandbox, "javascript", code, {"read_lines": {"content": "x"}})
    assert events[0] == ToolCall("1", "read_lines", {"filename": "a.txt"})
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reply == "1 x"


@pytest.mark.parametrize(
    ("language", "code", "error"),
    [
        ("python", "def other(m, a):\n    return 'x'\n", "INVALID_CODE"),
        ("python", "def main(m, a)\n", "INVALID_CODE"),
        ("python", "def main(m, a):\n    return {}['missing']\n", "CODE_ERROR"),
        ("javascript", "function main( {", "INVALID_CODE"),
        ("javascript", "exports.main = () => { throw new Error('nope'); };", "CODE_ERROR"),
        ("python", "import time\ndef main(m, a):\n    time.sleep(30)\n", "TIMEOUT"),
        ("python", "def main(m, a):\n    b = bytearray(2 * 1024 ** 3)\n", "LIMIT_EXCEEDED"),
    ],
    ids=["no-entry", "syntax", "raises", "js-syntax", "js-throws", "timeout", "memory"],
)
async def test_agent_code_failures_have_codes(
    sandbox: CodeSandbox, language: str, code: str, error: str
) -> None:
    events = await _drive(sandbox, language, code, {}, Limits(timeout_seconds=2, memory_mb=128))
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.error_code == error, (finished.error_message, finished.stderr_tail)
    assert not finished.reply


async def _drive(
    sandbox: CodeSandbox,
    language: str,
    code: str,
    results: dict[str, dict[str, Any]],
    limits: Limits = FAST,
) -> list[Any]:
    start = {"messages": [{"role": "user", "content": "hi"}], "agent": {"id": "agent-1"}}
    run = sandbox.agent(language, code, "main", start, limits)
    events = []
    async for event in run.events():
        events.append(event)
        if isinstance(event, ToolCall):
            await run.answer(event.call_id, results.get(event.name, {}))
    return events


# --------------------------------------------------------------- building one


def test_without_bubblewrap_there_is_no_sandbox_and_it_says_why() -> None:
    built = build_sandbox(SandboxConfig(bwrap="/nonexistent/bwrap"))
    assert not built.status.available
    assert "bubblewrap (/nonexistent/bwrap) is not installed" in built.status.reason
    with pytest.raises(SandboxUnavailable):
        asyncio.run(built.run(Program(Language.PYTHON, "print(1)")))


def test_without_runtimes_there_is_no_sandbox() -> None:
    built = build_sandbox(SandboxConfig(python="/nonexistent/python", node=""))
    assert not built.status.available
    assert built.status.reason.startswith("no runtime: python: /nonexistent/python")


def test_the_unsafe_development_setting_runs_code_unsandboxed(tmp_path: Path) -> None:
    built = build_sandbox(SandboxConfig(bwrap="/nonexistent/bwrap", unsafe_unsandboxed=True))
    assert built.status.available
    assert built.status.isolation == "unsandboxed"
    assert "not installed" in built.status.reason
    code = "import os; open(os.environ['AGENTRT_OUTPUT'] + '/f', 'w').write('1'); print('ran')"
    execution = asyncio.run(built.run(Program(Language.PYTHON, code, limits=FAST)))
    assert execution.stdout == b"ran\n"
    assert [f.path for f in execution.files] == ["f"]


def test_runtimes_report_version_modules_and_what_they_bind() -> None:
    python = python_image("/usr/bin/python3")
    assert python.runtime.language is Language.PYTHON
    assert {"json", "asyncio", "ctypes"} <= set(python.runtime.modules)
    assert "pip" not in python.runtime.modules
    assert any(
        path.endswith("/lib-dynload") is False and "python3" in path for path in python.binds
    )
    [javascript, *more] = node_images("node")
    assert javascript.runtime.language is Language.JAVASCRIPT
    assert {"fs", "path", "crypto"} <= set(javascript.runtime.modules)
    images, problems = discover("/nonexistent/python", "")
    assert not images
    assert problems == ["python: /nonexistent/python: not found"]


def test_cgroup_slots_fall_back_to_none_when_off() -> None:
    slots, why = open_slots(2, "off")
    assert slots.version == "none"
    assert why == "control groups are off (setting)"
    assert slots.procs_files(0) == []
    assert slots.kill(0) == 0


def test_cgroup_v1_slots_set_limits_and_count(sandbox: CodeSandbox) -> None:
    slots, why = open_slots(1, "v1")
    assert slots.version == "v1", why
    try:
        before = slots.prepare(0, 64 * 1024 * 1024, 8)
        assert before.oom_kills >= 0
        assert all(Path(p).exists() for p in slots.procs_files(0))
    finally:
        slots.close()
    assert not any(Path(p).exists() for p in slots.procs_files(0))


def test_cgroup_v2_slots_write_the_v2_files(tmp_path: Path) -> None:
    slots = V2Slots(2, tmp_path)
    group = tmp_path / "slot-1"
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    (group / "pids.events").write_text("max 5\n")
    (group / "memory.peak").write_text(str(64 * 1024 * 1024))
    (group / "cgroup.procs").write_text("")
    counters = slots.prepare(1, 128 * 1024 * 1024, 32)
    assert (group / "memory.max").read_text() == str(128 * 1024 * 1024)
    assert (group / "pids.max").read_text() == "32"
    assert (counters.oom_kills, counters.pids_refused) == (2, 5)
    assert slots.procs_files(1) == [str(group / "cgroup.procs")]
    assert slots.kill(1) == 0
    slots.close()


# ------------------------------------------------------------ through the service


async def test_list_tools_reports_the_sandbox(stub: Any) -> None:
    reply = await stub.ListTools(pb.ListToolsRequest())
    sandbox = reply.sandbox
    assert sandbox.available
    assert sandbox.isolation == "bubblewrap"
    assert not sandbox.reason
    languages = {r.language: r for r in sandbox.runtimes}
    assert {"python", "javascript"} <= set(languages)
    assert "json" in languages["python"].modules
    assert "seccomp:allowlist" in sandbox.enforcement
    run_code = next(t for t in reply.tools if t.name == "run_code")
    assert run_code.side_effect == pb.SIDE_EFFECT_AT_MOST_ONCE
    assert set(run_code.arguments_schema["properties"]["language"]["enum"]) == set(languages)


async def test_run_code_reads_workspace_files_and_saves_its_output(
    stub: Any, workspace_root: Path
) -> None:
    (workspace_root / "agent-1" / "data").mkdir(parents=True)
    (workspace_root / "agent-1" / "data" / "n.txt").write_text("21")
    code = "n = int(open('/workspace/data/n.txt').read()); open('/output/double.txt','w').write(str(2*n)); print(n)"
    reply = await stub.InvokeTool(
        invoke_request(
            "run_code",
            key="rc-1",
            language="python",
            code=code,
            files=["data/n.txt"],
            output_dir="results",
        )
    )
    assert not reply.HasField("error"), reply.error
    assert reply.data["exit_code"] == 0
    assert reply.data["stdout"] == "21\n"
    assert reply.content == "exit code 0\n--- stdout ---\n21\n"
    assert [(a.kind, a.location, a.size_bytes) for a in reply.artifacts] == [
        ("file", "results/double.txt", 2)
    ]
    assert (workspace_root / "agent-1" / "results" / "double.txt").read_text() == "42"
    replay = await stub.InvokeTool(
        invoke_request(
            "run_code",
            key="rc-1",
            language="python",
            code=code,
            files=["data/n.txt"],
            output_dir="results",
        )
    )
    assert replay.replayed
    assert replay.data["stdout"] == "21\n"


async def test_run_code_that_times_out_is_a_tool_error_with_its_report(stub: Any) -> None:
    reply = await stub.InvokeTool(
        invoke_request(
            "run_code", key="rc-2", language="python", code="while True: pass", timeout_seconds=1
        )
    )
    assert reply.error.code == "TIMEOUT"
    assert reply.data["timed_out"] is True
    assert reply.data["killed_reason"] == "TIMEOUT"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"language": "cobol", "code": "x"}, "arguments.language"),
        ({"language": "python", "code": ""}, "arguments.code"),
        ({"language": "python", "code": "1", "timeout_seconds": 301}, "arguments.timeout_seconds"),
        ({"language": "python", "code": "1", "memory_mb": 32}, "arguments.memory_mb"),
        ({"language": "python", "code": "1", "files": ["../x"]}, "arguments.files[0]"),
    ],
    ids=["language", "code", "timeout", "memory", "file-escape"],
)
async def test_run_code_refuses_bad_arguments_naming_them(
    stub: Any, arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.InvokeTool(invoke_request("run_code", key="bad", **arguments))
    error = error_from_rpc(info.value)
    assert field in [v.field for v in error.violations] or field in error.message


def _start(**fields: Any) -> pb.RunAgentCodeRequest:
    values: dict[str, Any] = {
        "language": "python",
        "entry_point": "main",
        "messages_json": json.dumps([{"role": "user", "content": "ping"}]),
        "agent_json": json.dumps({"id": "agent-1", "name": "A"}),
        "timeout_seconds": 10,
        "memory_mb": 256,
        "context": pb.InvocationContext(agent_id="agent-1", run_id="run-1"),
        **fields,
    }
    return pb.RunAgentCodeRequest(start=pb.AgentCodeStart(**values))


async def test_run_agent_code_over_grpc_with_a_tool_call(stub: Any) -> None:
    code = (
        "def main(messages, agent):\n"
        "    agent.progress('working')\n"
        "    got = agent.call_tool('read_lines', {'filename': 'x'})\n"
        "    return agent.name + ' ' + messages[0]['content'] + ' ' + got['content']\n"
    )
    answers: asyncio.Queue[pb.RunAgentCodeRequest | None] = asyncio.Queue()
    await answers.put(_start(code=code))

    async def requests() -> Any:
        while (item := await answers.get()) is not None:
            yield item

    call = stub.RunAgentCode(requests())
    seen = []
    async for event in call:
        kind = event.WhichOneof("kind")
        seen.append(kind)
        if kind == "tool_call":
            assert event.tool_call.name == "read_lines"
            assert dict(event.tool_call.arguments) == {"filename": "x"}
            result = json.dumps({"content": "pong", "error": None})
            await answers.put(
                pb.RunAgentCodeRequest(
                    tool_result=pb.AgentToolResult(
                        call_id=event.tool_call.call_id, result_json=result
                    )
                )
            )
        if kind == "finished":
            finished = event.finished
    await answers.put(None)
    assert seen == ["progress", "tool_call", "finished"]
    assert finished.reply == "A ping pong"
    assert not finished.HasField("error")
    assert finished.report.exit_code == 0
    assert finished.report.cpu_ms > 0


async def test_run_agent_code_reads_its_code_from_the_workspace(
    stub: Any, workspace_root: Path
) -> None:
    (workspace_root / "agent-1").mkdir(parents=True, exist_ok=True)
    (workspace_root / "agent-1" / "agent.js").write_text(
        "exports.main = (messages) => 'js:' + messages[0].content;"
    )
    events = [
        e
        async for e in stub.RunAgentCode(
            _requests(_start(language="javascript", code_path="agent.js"))
        )
    ]
    assert events[-1].finished.reply == "js:ping"
    missing = [e async for e in stub.RunAgentCode(_requests(_start(code_path="missing.py")))]
    assert [e.WhichOneof("kind") for e in missing] == ["finished"]
    assert missing[0].finished.error.code == "NOT_FOUND"


async def _requests(*items: pb.RunAgentCodeRequest) -> Any:
    for item in items:
        yield item


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.RunAgentCodeRequest(tool_result=pb.AgentToolResult(call_id="1")), "start"),
        (_start(language="ruby", code="x"), "start.language"),
        (_start(entry_point="not an id", code="x"), "start.entry_point"),
        (_start(code=""), "start.code"),
        (_start(code="x", timeout_seconds=999), "start.timeout_seconds"),
        (_start(code="x", memory_mb=4096), "start.memory_mb"),
        (_start(code="x", messages_json="{not json"), "start.messages_json"),
        (_start(code_path="../../etc/passwd"), "start.code_path"),
    ],
    ids=["no-start", "language", "entry", "no-code", "timeout", "memory", "json", "path"],
)
async def test_run_agent_code_refuses_bad_starts(
    stub: Any, request_: pb.RunAgentCodeRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.RunAgentCode(_requests(request_)):
            pass
    error = error_from_rpc(info.value)
    assert info.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert field in [v.field for v in error.violations] or field in error.message


async def test_without_a_sandbox_run_code_is_not_offered_and_agent_code_is_refused(
    make_settings: Callable[..., Settings],
) -> None:
    service = await ToolsService(make_settings(sandbox_bwrap="/nonexistent/bwrap")).start()
    try:
        stub = service.stub()
        reply = await stub.ListTools(pb.ListToolsRequest())
        assert "run_code" not in {t.name for t in reply.tools}
        assert not reply.sandbox.available
        assert "not installed" in reply.sandbox.reason
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.RunAgentCode(_requests(_start(code="x"))):
                pass
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_from_rpc(info.value).reason == "SANDBOX_UNAVAILABLE"
    finally:
        await service.stop()


def test_the_service_environment_never_reaches_a_sandbox(
    sandbox: CodeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_TEST_SECRET", "s3cr3t-value")
    execution = asyncio.run(
        sandbox.run(Program(Language.PYTHON, "import os; print(sorted(os.environ))", limits=FAST))
    )
    names = eval(execution.stdout)
    assert "AGENTRT_TEST_SECRET" not in names
    assert set(names) <= {
        "HOME",
        "LANG",
        "PATH",
        "TMPDIR",
        "USER",
        "LC_CTYPE",
        "AGENTRT_OUTPUT",
        "PWD",
    }
    assert os.environ["AGENTRT_TEST_SECRET"] == "s3cr3t-value"


def test_cgroup_v1_kill_ends_what_is_left_in_a_slot() -> None:
    slots, why = open_slots(1, "v1")
    assert slots.version == "v1", why
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        slots.prepare(0, 64 * 1024 * 1024, 8)
        for procs in slots.procs_files(0):
            Path(procs).write_text(str(sleeper.pid))
        assert slots.kill(0) == 1
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
        assert slots.kill(0) == 0
        assert slots.peak_memory_kb(0) >= 0
    finally:
        sleeper.kill()
        slots.close()


def test_cgroup_v1_slots_of_a_dead_service_are_removed() -> None:
    slots, why = open_slots(1, "v1")
    assert slots.version == "v1", why
    parent = Path(slots.procs_files(0)[0]).parent.parent.parent
    stale = parent / "agentrt-sandbox-999999999-deadbeef"
    (stale / "slot-0").mkdir(parents=True)
    try:
        again, _ = open_slots(1, "v1")
        again.close()
        assert not stale.exists()
    finally:
        slots.close()
        for folder in (stale / "slot-0", stale):
            if folder.exists():
                folder.rmdir()


def test_cgroup_v2_slots_kill_and_peak(tmp_path: Path) -> None:
    slots = V2Slots(1, tmp_path)
    group = tmp_path / "slot-0"
    (group / "memory.peak").write_text(str(3 * 1024 * 1024))
    assert slots.peak_memory_kb(0) == 3 * 1024
    (group / "memory.peak").write_text("not a number")
    assert slots.peak_memory_kb(0) == 0
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (group / "cgroup.procs").write_text(f"{sleeper.pid}\n")
        assert slots.kill(0) == 1
        assert (group / "cgroup.kill").read_text() == "1"
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        sleeper.kill()
    assert open_slots(1, "v2")[0].version in ("none", "v2")
