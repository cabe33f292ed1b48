"""Gateway benchmark: a non-streamed chat completion through the gateway (HTTP) next to the
executor's `Execute` (gRPC) and plain LangGraph in-process, in the same run.

The agent is the executor benchmark's: the offline model calls `parse_url` once, then answers.
Registry, tools service, executor and gateway are real processes on SQLite with NATS (audit
records published, rate limits off so the load is not refused). Load comes from aiohttp
(httpx tops out near 650 requests/s on this machine and would measure itself), keep-alive
connections, one session.

Reported: p50/p99 and runs/s sequentially and at 100 concurrent callers for each path, and
the time to the first SSE chunk of a streamed completion.

Usage: python bench/gateway_bench.py [--write docs/BENCHMARKS.md] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import psycopg
import uvloop
from bench_support import atimed, load, machine, options, publish, stats
from executor_bench import (
    MD,
    QUESTION,
    TOKEN,
    common_env,
    create_agent,
    plain_graph,
    run_input,
    start_services,
)
from langchain_core.messages import HumanMessage

from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt.registry.v1 import registry_pb2_grpc as rpb_grpc
from agentrt_kit.grpc.client import create_channel
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess

RUNTIME_TOKEN = "bench-runtime-token"
TITLE = "## Gateway (issue 5)"


async def in_process(args: argparse.Namespace) -> dict[str, Any]:
    graph = plain_graph()

    async def invoke(_: int) -> None:
        out = await graph.ainvoke({"messages": [HumanMessage(QUESTION)]})
        assert "docs.example.org" in out["messages"][-1].content

    for i in range(100):
        await invoke(i)
    return {
        "sequential": await atimed(invoke, args.runs),
        "concurrent": await load(invoke, args.total, args.concurrency),
    }


async def both_paths(
    executor: pb_grpc.ExecutorStub,
    url: str,
    agent_id: str,
    args: argparse.Namespace,
    *,
    streams: bool = True,
) -> dict[str, Any]:
    """`Execute` and the gateway's chat completion on the same agent.

    Sequential latencies are taken alternately (one `Execute`, one completion, ...), so drift
    of this shared machine during the run affects both paths alike.
    """
    request = pb.ExecuteRequest(input=run_input(agent_id))
    headers = {"Authorization": f"Bearer {RUNTIME_TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"model": agent_id, "messages": [{"role": "user", "content": QUESTION}]})
    streamed = json.dumps(
        {"model": agent_id, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    )
    connector = aiohttp.TCPConnector(limit=args.concurrency + 10)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def execute(_: int) -> None:
            reply = await executor.Execute(request, metadata=MD)
            assert reply.finish_reason == "stop", reply

        async def complete(_: int) -> None:
            async with session.post(f"{url}/v1/chat/completions", data=body) as reply:
                answer = await reply.json()
                assert reply.status == 200, answer
                assert "docs.example.org" in answer["choices"][0]["message"]["content"]

        first_chunk: list[float] = []

        async def stream(_: int) -> None:
            t = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", data=streamed) as reply:
                assert reply.status == 200
                first = True
                async for line in reply.content:
                    if first and line.startswith(b"data: "):
                        first_chunk.append(time.perf_counter() - t)
                        first = False
                    last = line
                assert last.strip() in (b"data: [DONE]", b"")

        for i in range(100):
            await execute(i)
            await complete(i)
            await stream(i)
        first_chunk.clear()
        direct: list[float] = []
        through: list[float] = []
        for i in range(args.runs):
            for fn, samples in ((execute, direct), (complete, through)):
                t = time.perf_counter()
                await fn(i)
                samples.append(time.perf_counter() - t)
        out: dict[str, Any] = {
            "execute": {
                "sequential": stats(direct),
                "concurrent": await load(execute, args.total, args.concurrency),
            },
            "gateway": {
                "sequential": stats(through),
                "concurrent": await load(complete, args.total, args.concurrency),
            },
        }
        if streams:
            await atimed(stream, args.runs // 2)
            out["gateway"]["first_chunk"] = stats(first_chunk)
        return out


@contextlib.contextmanager
def fresh_database(prefix: str = "gwbench") -> Iterator[str]:
    """A new PostgreSQL database on the machine's server (dropped afterwards): its URL."""
    server = os.environ.get(
        "AGENTRT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def gateway_process(
    nats_url: str, prefix: str, registry_target: str, executor_target: str
) -> ServiceProcess:
    """The gateway (not started): rate limits and per-key bounds off, token RUNTIME_TOKEN."""
    port = free_port()
    return ServiceProcess(
        "agent_gateway",
        {
            **common_env(nats_url, prefix),
            "AGENTRT_RUNTIME_TOKEN": RUNTIME_TOKEN,
            "AGENTRT_GATEWAY_PORT": str(port),
            "AGENTRT_GATEWAY_REGISTRY_TARGET": registry_target,
            "AGENTRT_GATEWAY_EXECUTOR_TARGET": executor_target,
            "AGENTRT_GATEWAY_RATE_LIMIT_PER_SECOND": "0",
            "AGENTRT_GATEWAY_ADDRESS_RATE_LIMIT_PER_SECOND": "0",
            "AGENTRT_GATEWAY_MAX_STREAMS_PER_KEY": "0",
            "AGENTRT_GATEWAY_MAX_WAITS_PER_KEY": "0",
        },
        port,
        http_ready="/readyz",
    )


async def system(
    args: argparse.Namespace, *, executors: int = 1, database_url: str = "", streams: bool = True
) -> dict[str, Any]:
    """The whole system as processes: `Execute` and the gateway measured against it."""
    nats_server = NatsServer().start()
    processes: list[ServiceProcess] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            processes = start_services(
                tmp, nats_server.url, "gwbench", executors=executors, database_url=database_url
            )
            registry, replicas = processes[0], processes[2:]
            # One target naming every replica; the kit's channels balance calls round-robin.
            target = "ipv4:" + ",".join(p.address for p in replicas)
            gateway = gateway_process(nats_server.url, "gwbench", registry.address, target)
            gateway.start()
            processes.append(gateway)
            await asyncio.sleep(1.0)  # let everything settle (imports, first publications)
            async with grpc.aio.insecure_channel(registry.address) as rc:
                agent_id = await create_agent(
                    rpb_grpc.AgentRegistryStub(rc), toolsets=["parse_url"]
                )
            channel = create_channel(target, service_token=TOKEN, default_timeout=30)
            try:
                print(f"Execute and the gateway ({executors} executor(s)) ...", flush=True)
                return await both_paths(
                    pb_grpc.ExecutorStub(channel),
                    gateway.url,
                    agent_id,
                    args,
                    streams=streams,
                )
            finally:
                await channel.close()
    finally:
        for process in reversed(processes):
            process.stop()
        nats_server.close()


def report(inproc: dict[str, Any], measured: dict[str, Any], args: argparse.Namespace) -> str:
    info = machine()
    base, execute, gateway = inproc, measured["execute"], measured["gateway"]
    added = gateway["sequential"]["p50_ms"] - execute["sequential"]["p50_ms"]
    share = gateway["concurrent"]["runs_s"] / base["concurrent"]["runs_s"]
    p99 = gateway["concurrent"]["p99_ms"]
    first = gateway["first_chunk"]
    scaled = measured["replicas"]["gateway"]
    share_scaled = scaled["concurrent"]["runs_s"] / base["concurrent"]["runs_s"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        TITLE,
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), Python {info['python']}.",
        "Reproduce: `make bench` (or `python bench/gateway_bench.py --write docs/BENCHMARKS.md`).",
        "The agent is the executor benchmark's (the offline model calls `parse_url` once, then "
        f"answers); {args.runs} sequential runs per row, and {args.total} runs from "
        f"{args.concurrency} concurrent callers. Through the gateway: a non-streamed "
        "`POST /v1/chat/completions` from aiohttp (keep-alive, one session) to the gateway "
        "process, which calls `Execute` on the executor process; registry, tools service, "
        "executor and gateway run as processes on SQLite with NATS, audit records are "
        "published, rate limits are off. `Execute` is called over gRPC on the same executor "
        "(sequential calls alternate with the gateway's, so both see the same machine) and "
        "in-process LangGraph (`graph.ainvoke`) runs in this process, in the same run. "
        "Load generator and all services share the machine's cores. The last rows run the "
        "same with two executor replicas (runs and sessions in one PostgreSQL database on this "
        "machine, as replicas must share them), which the gateway and the `Execute` caller "
        "reach through one `ipv4:` target balanced round-robin by the kit's channels.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| gateway adds ≤ 2 ms p50 over `Execute` | +{added:.2f} ms "
        f"({gateway['sequential']['p50_ms']:.2f} vs {execute['sequential']['p50_ms']:.2f}) "
        f"| {verdict(added <= 2)} |",
        f"| whole-system throughput at {args.concurrency} concurrent ≥ 50 % of in-process, "
        f"one executor | {share:.0%} ({gateway['concurrent']['runs_s']:.0f} vs "
        f"{base['concurrent']['runs_s']:.0f} runs/s) | {verdict(share >= 0.5)} |",
        f"| the same, two executor replicas | {share_scaled:.0%} "
        f"({scaled['concurrent']['runs_s']:.0f} runs/s) | {verdict(share_scaled >= 0.5)} |",
        f"| p99 at {args.concurrency} concurrent ≤ 1 s | {p99:.0f} ms | {verdict(p99 <= 1000)} |",
        "",
        f"| path | sequential p50 / p99 ms | sequential runs/s | {args.concurrency} concurrent "
        "runs/s | p50 / p99 ms under that load |",
        "|---|---|---|---|---|",
    ]
    for label, row in (
        ("in-process `graph.ainvoke`", base),
        ("`Execute` (gRPC)", execute),
        ("gateway `POST /v1/chat/completions`", gateway),
        ("`Execute`, two executor replicas (PostgreSQL)", measured["replicas"]["execute"]),
        ("gateway, two executor replicas (PostgreSQL)", scaled),
    ):
        seq, con = row["sequential"], row["concurrent"]
        lines.append(
            f"| {label} | {seq['p50_ms']:.2f} / {seq['p99_ms']:.2f} | {seq['ops_s']:.0f} | "
            f"**{con['runs_s']:.0f}** | {con['p50_ms']:.1f} / {con['p99_ms']:.1f} |"
        )
    lines += [
        "",
        "Spread between runs on this shared 2-core VM is large. In four runs on 2026-11-25 "
        "with nothing else running (three `--quick`) the one-executor throughput share "
        "ranged 42-53 %, the two-replica share 43-52 % (three runs) and the gateway's added p50 "
        "0.65-2.3 ms: the throughput target sits at the edge of what this machine gives, "
        "bounded by the executor's CPU per run (about 5 ms; the gateway's is about 1.4 ms).",
        "",
        f"Time to the first SSE chunk of a streamed completion (the assistant-role chunk, sent "
        f"once the run has started): p50 **{first['p50_ms']:.2f} ms**, p99 {first['p99_ms']:.2f} ms.",
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    args = options(runs=(200, 1000), total=(500, 3000), concurrency=(100, 100))
    print("in-process ...", flush=True)
    inproc = await in_process(args)
    measured = await system(args)
    print("two executor replicas on PostgreSQL ...", flush=True)
    with fresh_database() as database_url:
        measured["replicas"] = await system(
            args, executors=2, database_url=database_url, streams=False
        )
    publish(
        "gateway", {"inproc": inproc, **measured}, TITLE, report(inproc, measured, args), args.write
    )


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
