"""Tools service benchmark: InvokeTool over gRPC next to the tool called in-process, same run.

- in-process: the tool's function on a real workspace (no gRPC, no thread hop), and the
  application's full `invoke` path (validation, thread hop, audit) without gRPC;
- gRPC: the tools service as its own process (audit to NATS on), driven by this process
  with a plain grpcio aio channel: sequential latency, and throughput at 100 concurrent.

Usage: python bench/tools_bench.py [--write docs/BENCHMARKS.md] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import uvloop
from bench_support import atimed, machine, options, publish, throughput, timed

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt.tools.v1 import tools_pb2_grpc as pb_grpc
from agentrt_kit.concurrency import BlockingRunner
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess
from tool_service.adapters.fetcher import FetchPolicy, HttpFetcher
from tool_service.adapters.memory import InMemoryLedger, ListAuditSink
from tool_service.adapters.workspace_fs import ConfinedWorkspaces
from tool_service.application.catalog import BUILTIN_TOOLS
from tool_service.application.environment import ToolEnv
from tool_service.application.file_tools import GrepFile, ReadLines
from tool_service.application.runner import ToolCatalog, ToolRunner
from tool_service.domain.tools import InvocationContext

TOKEN = "bench-token"
CALLS = {
    "read_lines": {"filename": "docs/notes.txt", "start": 10, "end": 30},
    "grep_file": {"filename": "docs/notes.txt", "pattern": "dog [0-9]*7$", "ignore_case": False},
}


def prepare(root: Path) -> None:
    folder = root / "bench" / "docs"
    folder.mkdir(parents=True)
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(200)]
    (folder / "notes.txt").write_text("\n".join(lines) + "\n")


async def in_process(root: Path, n: int) -> dict[str, Any]:
    workspaces = ConfinedWorkspaces(root)
    run_blocking = BlockingRunner(8, "bench")
    env = ToolEnv(
        context=InvocationContext(agent_id="bench"),
        workspace="bench",
        workspaces=workspaces,
        fetcher=HttpFetcher(FetchPolicy()),
        run_blocking=run_blocking,
    )
    catalog = ToolCatalog(BUILTIN_TOOLS)
    runner = ToolRunner(
        catalog,
        workspaces=workspaces,
        fetcher=env.fetcher,
        ledger=InMemoryLedger(),
        audit=ListAuditSink(),
        run_blocking=run_blocking,
    )
    out: dict[str, Any] = {}
    for name, tool in (("read_lines", ReadLines()), ("grep_file", GrepFile())):
        args = catalog.arguments(name, CALLS[name])
        out[f"{name}/function"] = timed(lambda _i, tool=tool, args=args: tool._run(args, env), n)
        ctx = InvocationContext(agent_id="bench")
        out[f"{name}/invoke"] = await atimed(
            lambda _i, name=name, ctx=ctx: runner.invoke(name, CALLS[name], ctx), n
        )
    run_blocking.shutdown()
    workspaces.close()
    return out


def request(name: str) -> pb.InvokeToolRequest:
    message = pb.InvokeToolRequest(tool_name=name, context=pb.InvocationContext(agent_id="bench"))
    message.arguments.update(CALLS[name])
    return message


async def over_grpc(address: str, n: int, concurrency: int, total: int) -> dict[str, Any]:
    md = (("authorization", f"Bearer {TOKEN}"),)
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ToolServiceStub(channel)
        for name in CALLS:
            message = request(name)
            for _ in range(200):  # warm up
                await stub.InvokeTool(message, metadata=md)
            out[name] = await atimed(lambda _i, m=message: stub.InvokeTool(m, metadata=md), n)
            out[name]["concurrent_ops_s"] = await throughput(
                lambda _i, m=message: stub.InvokeTool(m, metadata=md), total, concurrency
            )
    return out


async def two_replicas(target: str, concurrency: int, total: int) -> dict[str, float]:
    """Throughput with the client spreading calls over two replicas (round robin)."""
    md = (("authorization", f"Bearer {TOKEN}"),)
    options = [("grpc.lb_policy_name", "round_robin")]
    out: dict[str, float] = {}
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await channel.channel_ready()
        stub = pb_grpc.ToolServiceStub(channel)
        for name in CALLS:
            message = request(name)
            for _ in range(200):
                await stub.InvokeTool(message, metadata=md)
            out[name] = await throughput(
                lambda _i, m=message: stub.InvokeTool(m, metadata=md), total, concurrency
            )
    return out


def verdicts(inproc: dict[str, Any], rpc: dict[str, Any]) -> list[str]:
    lines = ["| target | measured | |", "|---|---|---|"]
    for name in CALLS:
        overhead = rpc[name]["p50_ms"] - inproc[f"{name}/function"]["p50_ms"]
        ok = overhead <= 1.0
        lines.append(
            f"| {name}: ≤ 1 ms p50 overhead over the in-process function | +{overhead:.3f} ms | "
            f"{'met' if ok else '**not met**'} |"
        )
        rate, two = rpc[name]["concurrent_ops_s"], rpc["two_replicas"][name]
        lines.append(
            f"| {name}: ≥ 2,000 invocations/s at 100 concurrent | {rate:.0f}/s one process; "
            f"{two:.0f}/s two replicas | {'met' if rate >= 2000 else '**not met**'} |"
        )
    return lines


def report(inproc: dict[str, Any], rpc: dict[str, Any], args: argparse.Namespace) -> str:
    info = machine()
    lines = [
        "## Tools service (issue 3)",
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), "
        f"Python {info['python']}.",
        "Reproduce: `make bench` (or `python bench/tools_bench.py --write docs/BENCHMARKS.md`).",
        f"{args.ops} sequential calls per row; throughput: {args.total} calls from "
        f"{args.concurrency} concurrent callers. The service runs as its own process (uvloop,",
        "audit records to NATS on, openat2 confinement); the client is this benchmark process",
        "(grpcio aio on uvloop). The file read is 200 lines (11 KB); read_lines returns 21 of",
        "them, grep_file scans all 200 with an RE2 pattern that matches 20 (10 %). Baselines,",
        "same run, same file:",
        "*function* is the tool's own code called directly; *invoke* is the application's full",
        "path (argument validation, thread hop, audit) without gRPC.",
        "",
        *verdicts(inproc, rpc),
        "",
        "| tool | function p50 / p99 ms | invoke p50 / p99 ms | gRPC p50 / p99 ms | "
        "gRPC − function p50 | gRPC / function p50 | 100 concurrent ops/s | same, 2 replicas |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in CALLS:
        fn, inv, g = inproc[f"{name}/function"], inproc[f"{name}/invoke"], rpc[name]
        lines.append(
            f"| {name} | {fn['p50_ms']:.3f} / {fn['p99_ms']:.3f} | {inv['p50_ms']:.3f} / "
            f"{inv['p99_ms']:.3f} | {g['p50_ms']:.3f} / {g['p99_ms']:.3f} | "
            f"+{g['p50_ms'] - fn['p50_ms']:.3f} ms | {g['p50_ms'] / fn['p50_ms']:.1f}x | "
            f"**{g['concurrent_ops_s']:.0f}** | {rpc['two_replicas'][name]:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


async def main() -> None:
    args = options(ops=(500, 3000), total=(2000, 20000), concurrency=(100, 100))

    nats_server = NatsServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "workspaces"
            prepare(root)
            print("in-process baselines ...", flush=True)
            inproc = await in_process(root, args.ops)
            env = {
                "AGENTRT_NATS_URL": nats_server.url,
                "AGENTRT_NATS_PREFIX": "toolsbench",
                "AGENTRT_SERVICE_TOKEN": TOKEN,
                "AGENTRT_LOG_LEVEL": "WARNING",
                "AGENTRT_TOOLS_WORKSPACE_ROOT": str(root),
                "AGENTRT_TOOLS_DATABASE_URL": f"sqlite:///{tmp}/tools.sqlite3",
            }
            replicas = []
            for _ in range(2):
                port = free_port()
                replicas.append(
                    ServiceProcess("tool_service", {**env, "AGENTRT_TOOLS_PORT": str(port)}, port)
                )
            try:
                replicas[0].start()
                print("gRPC against one tools process ...", flush=True)
                rpc = await over_grpc(replicas[0].address, args.ops, args.concurrency, args.total)
                replicas[1].start()
                print("gRPC against two replicas ...", flush=True)
                target = "ipv4:" + ",".join(r.address for r in replicas)
                rpc["two_replicas"] = await two_replicas(target, args.concurrency, args.total)
            finally:
                for replica in replicas:
                    replica.stop()
    finally:
        nats_server.close()
    section = report(inproc, rpc, args)
    publish(
        "tools", {"inproc": inproc, "grpc": rpc}, "## Tools service (issue 3)", section, args.write
    )


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
