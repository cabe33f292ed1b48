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
import json
import sys
import tempfile
import time
from typing import Any

import aiohttp
import grpc
import uvloop
from bench_support import atimed, load, machine, options, publish, stats
from executor_bench import MD, QUESTION, TOKEN, create_agent, plain_graph, run_input, start_services
from langchain_core.messages import HumanMessage

from agentrt.executor.v1 import executor_pb2 as pb
from agentrt.executor.v1 import executor_pb2_grpc as pb_grpc
from agentrt.registry.v1 import registry_pb2_grpc as rpb_grpc
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


async def through_execute(
    executor: pb_grpc.ExecutorStub, agent_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    request = pb.ExecuteRequest(input=run_input(agent_id))

    async def execute(_: int) -> None:
        reply = await executor.Execute(request, metadata=MD)
        assert reply.finish_reason == "stop", reply

    for i in range(100):
        await execute(i)
    return {
        "sequential": await atimed(execute, args.runs),
        "concurrent": await load(execute, args.total, args.concurrency),
    }


async def through_gateway(url: str, agent_id: str, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {RUNTIME_TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"model": agent_id, "messages": [{"role": "user", "content": QUESTION}]})
    streamed = json.dumps(
        {"model": agent_id, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    )
    connector = aiohttp.TCPConnector(limit=args.concurrency + 10)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

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
                assert last.strip() == b"data: [DONE]" or last.strip() == b""

        for i in range(100):
            await complete(i)
            await stream(i)
        first_chunk.clear()
        out: dict[str, Any] = {
            "sequential": await atimed(complete, args.runs),
            "concurrent": await load(complete, args.total, args.concurrency),
        }
        await atimed(stream, args.runs // 2)
        out["first_chunk"] = stats(first_chunk)
        return out


async def system(args: argparse.Namespace) -> dict[str, Any]:
    nats_server = NatsServer().start()
    processes: list[ServiceProcess] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            processes = start_services(tmp, nats_server.url, "gwbench")
            registry, _, executor_process = processes
            port = free_port()
            gateway = ServiceProcess(
                "agent_gateway",
                {
                    "AGENTRT_NATS_URL": nats_server.url,
                    "AGENTRT_NATS_PREFIX": "gwbench",
                    "AGENTRT_SERVICE_TOKEN": TOKEN,
                    "AGENTRT_LOG_LEVEL": "WARNING",
                    "AGENTRT_RUNTIME_TOKEN": RUNTIME_TOKEN,
                    "AGENTRT_GATEWAY_PORT": str(port),
                    "AGENTRT_GATEWAY_REGISTRY_TARGET": registry.address,
                    "AGENTRT_GATEWAY_EXECUTOR_TARGET": executor_process.address,
                    "AGENTRT_GATEWAY_RATE_LIMIT_PER_SECOND": "0",
                    "AGENTRT_GATEWAY_ADDRESS_RATE_LIMIT_PER_SECOND": "0",
                    "AGENTRT_GATEWAY_MAX_STREAMS_PER_KEY": "0",
                },
                port,
                http_ready="/readyz",
            ).start()
            processes.append(gateway)
            await asyncio.sleep(1.0)  # let everything settle (imports, first publications)
            async with (
                grpc.aio.insecure_channel(registry.address) as rc,
                grpc.aio.insecure_channel(executor_process.address) as ec,
            ):
                agent_id = await create_agent(
                    rpb_grpc.AgentRegistryStub(rc), toolsets=["parse_url"]
                )
                print("through Execute ...", flush=True)
                execute = await through_execute(pb_grpc.ExecutorStub(ec), agent_id, args)
            print("through the gateway ...", flush=True)
            gateway_out = await through_gateway(f"http://127.0.0.1:{port}", agent_id, args)
            return {"execute": execute, "gateway": gateway_out}
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
        "and in-process LangGraph (`graph.ainvoke`) runs in this process, in the same run. "
        "Load generator and all services share the machine's cores.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| gateway adds ≤ 2 ms p50 over `Execute` | +{added:.2f} ms "
        f"({gateway['sequential']['p50_ms']:.2f} vs {execute['sequential']['p50_ms']:.2f}) "
        f"| {verdict(added <= 2)} |",
        f"| whole-system throughput at {args.concurrency} concurrent ≥ 50 % of in-process "
        f"| {share:.0%} ({gateway['concurrent']['runs_s']:.0f} vs "
        f"{base['concurrent']['runs_s']:.0f} runs/s) | {verdict(share >= 0.5)} |",
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
    ):
        seq, con = row["sequential"], row["concurrent"]
        lines.append(
            f"| {label} | {seq['p50_ms']:.2f} / {seq['p99_ms']:.2f} | {seq['ops_s']:.0f} | "
            f"**{con['runs_s']:.0f}** | {con['p50_ms']:.1f} / {con['p99_ms']:.1f} |"
        )
    lines += [
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
    publish(
        "gateway", {"inproc": inproc, **measured}, TITLE, report(inproc, measured, args), args.write
    )


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
