"""Executor benchmark: one ReAct agent run in-process with plain LangGraph and through the
executor's Execute and ExecuteStream, in the same run.

The agent: the offline model, scripted to call `parse_url` once and then answer. In-process,
the graph is plain LangGraph (a model node, a ToolNode, the tool's own code). Through the
executor, registry, tools service and executor are real processes on SQLite with NATS, and
the same script runs the same way: the agent is read from the registry (then cached), the run
recorded, events published to JetStream and the tool called over gRPC on the tools service.

Reported: p50/p99 latency and runs/s sequentially and at 100 concurrent callers, time to the
first streamed event, and the executor's idle RSS and memory per session (server-side memory).

Usage: python bench/executor_bench.py [--write docs/BENCHMARKS.md] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import uvloop
from bench_support import atimed, machine, options, publish, stats, throughput
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from agent_executor.adapters.providers.offline import OfflineChatModel, ScriptStep
from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt.registry.v1 import registry_pb2 as rpb
from agentrt.registry.v1 import registry_pb2_grpc as rpb_grpc
from agentrt_kit.grpc.structs import fill
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess
from tool_service.application.url_tools import ParseUrl

TOKEN = "bench-token"
MD = (("authorization", f"Bearer {TOKEN}"),)
URL = "https://docs.example.org/guide/start?page=2&lang=en"
SCRIPT = [
    {"content": "", "tool_calls": [{"name": "parse_url", "args": {"url": URL}}]},
    {"content": "The URL points at {tool_result}"},
]
QUESTION = "Where does this link point?"


# ------------------------------------------------------------------- in-process


def plain_graph() -> Any:
    """The agent as plain LangGraph: model node, ToolNode, the tool's own code."""
    parser = ParseUrl()

    @tool
    async def parse_url(url: str) -> str:
        """Split a URL into its parts."""
        result = await parser.run({"url": url}, None)  # type: ignore[arg-type]
        return result.content

    model = OfflineChatModel(script=[ScriptStep.model_validate(s) for s in SCRIPT])
    bound = model.bind_tools([parse_url])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    async def route(state: MessagesState) -> str:  # async, as the executor's template
        return "tools" if state["messages"][-1].tool_calls else END  # type: ignore[union-attr]

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([parse_url]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["tools", END])
    builder.add_edge("tools", "agent")
    return builder.compile()


async def in_process(n: int, total: int, concurrency: int) -> dict[str, Any]:
    graph = plain_graph()

    async def invoke(_: int) -> None:
        out = await graph.ainvoke({"messages": [HumanMessage(QUESTION)]})
        assert "docs.example.org" in out["messages"][-1].content

    async def stream(_: int) -> None:
        async for _chunk in graph.astream(
            {"messages": [HumanMessage(QUESTION)]}, stream_mode="messages"
        ):
            pass

    for i in range(100):
        await invoke(i)
        await stream(i)
    out: dict[str, Any] = {"invoke": await atimed(invoke, n), "stream": await atimed(stream, n)}
    out["invoke"]["concurrent_runs_s"] = await throughput(invoke, total, concurrency)
    out["stream"]["concurrent_runs_s"] = await throughput(stream, total, concurrency)
    return out


# ------------------------------------------------------------------- the system


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def create_agent(registry: rpb_grpc.AgentRegistryStub, **spec: Any) -> str:
    message = fill(
        rpb.AgentSpec(name=f"bench {time.monotonic_ns()}", template_id="conversation"), spec
    )
    for _ in range(200):
        try:
            reply = await registry.CreateAgent(
                rpb.CreateAgentRequest(spec=message, status=rpb.AGENT_STATUS_ACTIVE), metadata=MD
            )
            return str(reply.agent.id)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            await asyncio.sleep(0.05)
    raise RuntimeError("the registry never learned the executor's templates")


def run_input(agent_id: str, task_id: str = "") -> pb.RunInput:
    return pb.RunInput(
        agent_id=agent_id,
        messages=[pb.ChatMessage(role="user", content=QUESTION)],
        task_id=task_id,
    )


async def through_executor(
    executor: pb_grpc.ExecutorStub, agent_id: str, n: int, total: int, concurrency: int
) -> dict[str, Any]:
    request = pb.ExecuteRequest(input=run_input(agent_id))
    stream_request = pb.ExecuteStreamRequest(input=run_input(agent_id))

    async def execute(_: int) -> None:
        reply = await executor.Execute(request, metadata=MD)
        assert reply.finish_reason == "stop", reply

    first_event: list[float] = []

    async def stream(_: int) -> None:
        t = time.perf_counter()
        call = executor.ExecuteStream(stream_request, metadata=MD)
        first = True
        async for event in call:
            if first:
                first_event.append(time.perf_counter() - t)
                first = False
            last = event
        assert last.HasField("run_completed")

    for i in range(100):
        await execute(i)
        await stream(i)
    first_event.clear()
    out: dict[str, Any] = {"execute": await atimed(execute, n), "stream": await atimed(stream, n)}
    out["first_event"] = stats(first_event)
    out["execute"]["concurrent_runs_s"] = await throughput(execute, total, concurrency)
    out["stream"]["concurrent_runs_s"] = await throughput(stream, total, concurrency)
    return out


def db_bytes(db: Path) -> int:
    """Size of the SQLite database with its journal files."""
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


async def session_memory(
    executor: pb_grpc.ExecutorStub, agent_id: str, pid: int, sessions: int, db: Path
) -> dict[str, float]:
    """RSS and checkpoint bytes per session: one turn in each of `sessions` new sessions."""
    for i in range(20):  # warm the memory path
        await executor.Execute(
            pb.ExecuteRequest(input=run_input(agent_id, f"warm-{i}")), metadata=MD
        )
    before, db_before = rss_kb(pid), db_bytes(db)
    for i in range(sessions):
        await executor.Execute(
            pb.ExecuteRequest(input=run_input(agent_id, f"session-{i}")), metadata=MD
        )
    after = rss_kb(pid)
    db_after = db_bytes(db)
    return {
        "sessions": sessions,
        "rss_per_session_kb": round((after - before) / sessions, 2),
        "db_per_session_kb": round((db_after - db_before) / 1024 / sessions, 2),
    }


def executor_process(
    n: int,
    tmp: str,
    nats_url: str,
    prefix: str,
    registry: ServiceProcess,
    tools: ServiceProcess,
    *,
    database_url: str = "",
    env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    """Executor replica `n` (not started), running SCRIPT's agent; `env` adds settings."""
    config = {
        "llm": {"providers": {"offline": {"type": "offline", "metadata": {"script": SCRIPT}}}}
    }
    port = free_port()
    return ServiceProcess(
        "agent_executor",
        {
            **common_env(nats_url, prefix),
            "SERVICES_CONFIG": json.dumps(config),
            "AGENTRT_EXECUTOR_PORT": str(port),
            "AGENTRT_EXECUTOR_EXECUTOR_ID": f"executor-{n}",
            "AGENTRT_EXECUTOR_REGISTRY_TARGET": registry.address,
            "AGENTRT_EXECUTOR_TOOLS_TARGET": tools.address,
            "AGENTRT_EXECUTOR_DATABASE_URL": database_url or f"sqlite:///{tmp}/executor.sqlite3",
            "AGENTRT_EXECUTOR_SESSIONS_URL": database_url or f"sqlite:///{tmp}/sessions.sqlite3",
            "AGENTRT_EXECUTOR_MAX_CONCURRENT_RUNS": "256",
            **(env or {}),
        },
        port,
    )


def common_env(nats_url: str, prefix: str) -> dict[str, str]:
    """The settings every service process of a benchmark shares."""
    return {
        "AGENTRT_NATS_URL": nats_url,
        "AGENTRT_NATS_PREFIX": prefix,
        "AGENTRT_SERVICE_TOKEN": TOKEN,
        "AGENTRT_LOG_LEVEL": "WARNING",
    }


def start_services(
    tmp: str,
    nats_url: str,
    prefix: str,
    *,
    executors: int = 1,
    database_url: str = "",
    tools_database_url: str = "",
) -> list[ServiceProcess]:
    """Registry, tools service and executor(s) as processes, running SCRIPT's agent.

    Runs and sessions are in SQLite files by default (one executor); several executors share
    `database_url` (PostgreSQL), as replicas must. The tools service's ledger is in
    `tools_database_url` (default: an SQLite file).
    """
    common = common_env(nats_url, prefix)
    ports = {name: free_port() for name in ("registry", "tools")}
    registry = ServiceProcess(
        "agent_registry",
        {
            **common,
            "AGENTRT_REGISTRY_PORT": str(ports["registry"]),
            "AGENTRT_REGISTRY_SQLITE_PATH": f"{tmp}/registry.sqlite3",
        },
        ports["registry"],
    )
    tools = ServiceProcess(
        "tool_service",
        {
            **common,
            "AGENTRT_TOOLS_PORT": str(ports["tools"]),
            "AGENTRT_TOOLS_WORKSPACE_ROOT": f"{tmp}/workspaces",
            "AGENTRT_TOOLS_DATABASE_URL": tools_database_url or f"sqlite:///{tmp}/tools.sqlite3",
        },
        ports["tools"],
    )
    processes = [registry, tools]
    for n in range(executors):
        processes.append(
            executor_process(n, tmp, nats_url, prefix, registry, tools, database_url=database_url)
        )
    started: list[ServiceProcess] = []
    try:
        for process in processes:
            process.start()
            started.append(process)
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise
    return started


async def system(args: argparse.Namespace) -> dict[str, Any]:
    nats_server = NatsServer().start()
    processes: list[ServiceProcess] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            processes = start_services(tmp, nats_server.url, "execbench")
            registry, _, executor_process = processes
            await asyncio.sleep(1.0)  # let the executor settle (imports, first publication)
            idle = rss_kb(executor_process.pid)
            async with (
                grpc.aio.insecure_channel(registry.address) as rc,
                grpc.aio.insecure_channel(executor_process.address) as ec,
            ):
                registry_stub = rpb_grpc.AgentRegistryStub(rc)
                executor = pb_grpc.ExecutorStub(ec)
                agent_id = await create_agent(registry_stub, toolsets=["parse_url"])
                print("through the executor ...", flush=True)
                out = await through_executor(
                    executor, agent_id, args.runs, args.total, args.concurrency
                )
                out["rss_idle_kb"] = idle
                out["rss_after_runs_kb"] = rss_kb(executor_process.pid)
                print("sessions ...", flush=True)
                memory_agent = await create_agent(
                    registry_stub, toolsets=["parse_url"], conversation_config={"memory": True}
                )
                out["sessions"] = await session_memory(
                    executor,
                    memory_agent,
                    executor_process.pid,
                    args.sessions,
                    Path(tmp) / "sessions.sqlite3",
                )
            return out
    finally:
        for process in reversed(processes):
            process.stop()
        nats_server.close()


# ------------------------------------------------------------------- report


def report(inproc: dict[str, Any], rpc: dict[str, Any], args: argparse.Namespace) -> str:
    info = machine()
    base, stream_base = inproc["invoke"], inproc["stream"]
    ex, st, first = rpc["execute"], rpc["stream"], rpc["first_event"]
    added = ex["p50_ms"] - base["p50_ms"]
    added_stream = st["p50_ms"] - stream_base["p50_ms"]
    share = ex["concurrent_runs_s"] / base["concurrent_runs_s"]
    share_stream = st["concurrent_runs_s"] / stream_base["concurrent_runs_s"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    sessions = rpc["sessions"]
    lines = [
        "## Executor (issue 4)",
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), Python {info['python']}.",
        "Reproduce: `make bench` (or `python bench/executor_bench.py --write docs/BENCHMARKS.md`).",
        f"The agent: the offline model calls `parse_url` once, then answers ({args.runs} sequential "
        f"runs per row; throughput: {args.total} runs from {args.concurrency} concurrent callers). "
        "In-process is plain LangGraph (model node, ToolNode, the tool's own code) in this "
        "process; through the executor, registry, tools service and executor are processes on "
        "SQLite with NATS, the tool call goes over gRPC to the tools service, the run is recorded "
        "and its events published to JetStream. Baselines are measured in the same run: "
        "`Execute` against `graph.ainvoke`, `ExecuteStream` against "
        '`graph.astream(stream_mode="messages")`.',
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| ≤ 3 ms p50 added over in-process | Execute +{added:.2f} ms; ExecuteStream "
        f"+{added_stream:.2f} ms | {verdict(added <= 3 and added_stream <= 3)} |",
        f"| ≥ 60 % of in-process throughput at 100 concurrent | Execute {share:.0%}; "
        f"ExecuteStream {share_stream:.0%} | {verdict(share >= 0.6 and share_stream >= 0.6)} |",
        f"| time to first streamed event ≤ 5 ms p50 | {first['p50_ms']:.2f} ms "
        f"(p99 {first['p99_ms']:.2f}) | {verdict(first['p50_ms'] <= 5)} |",
        "",
        "| path | p50 / p99 ms | sequential runs/s | 100 concurrent runs/s |",
        "|---|---|---|---|",
    ]
    for label, row in (
        ("in-process `ainvoke`", base),
        ("`Execute`", ex),
        ("in-process `astream` (messages)", stream_base),
        ("`ExecuteStream`", st),
    ):
        lines.append(
            f"| {label} | {row['p50_ms']:.2f} / {row['p99_ms']:.2f} | {row['ops_s']:.0f} | "
            f"**{row['concurrent_runs_s']:.0f}** |"
        )
    lines += [
        "",
        f"Memory: executor RSS idle **{rpc['rss_idle_kb'] / 1024:.0f} MiB**, after the runs above "
        f"{rpc['rss_after_runs_kb'] / 1024:.0f} MiB; per session (server-side memory, one turn "
        f"each, {sessions['sessions']} sessions) **{sessions['rss_per_session_kb']:.1f} KiB** of "
        f"RSS and {sessions['db_per_session_kb']:.1f} KiB in the sessions database.",
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    args = options(runs=(200, 1000), total=(500, 3000), concurrency=(100, 100), sessions=(100, 500))
    print("in-process ...", flush=True)
    inproc = await in_process(args.runs, args.total, args.concurrency)
    rpc = await system(args)
    section = report(inproc, rpc, args)
    publish(
        "executor",
        {"inproc": inproc, "executor": rpc},
        "## Executor (issue 4)",
        section,
        args.write,
    )


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
