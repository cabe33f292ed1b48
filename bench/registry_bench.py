"""Registry benchmark: gRPC operations next to the same operations in-process, same run.

For each backend (SQLite file, PostgreSQL database), in one run:
- the registry runs as its own process (as deployed) and this process drives it over
  gRPC: create, update, get, list latency (sequential) and create throughput
  (concurrent callers);
- the same operations run in this process on the registry application without gRPC,
  and on a bare eventsourcing application (one aggregate, no validation, no name
  index), as baselines;
- listing 50 agents out of 100,000 (seeded in bulk through the domain and the
  projection), with and without filters;
- loading an agent with 10,000 events, with snapshots and (for contrast) without.

Usage: python bench/registry_bench.py [--write docs/BENCHMARKS.md] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import nats
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services" / "agent_registry" / "tests"))

from bench_support import (  # noqa: E402
    atimed,
    machine,
    options,
    throughput,
    timed,
    write_section,
)
from registry_support import SIMPLE  # noqa: E402

from agent_registry.adapters.memory import InMemoryTemplateCatalog  # noqa: E402
from agent_registry.adapters.persistence import eventsourcing_env  # noqa: E402
from agent_registry.adapters.read_model import read_model_for  # noqa: E402
from agent_registry.application.listing import AgentListing  # noqa: E402
from agent_registry.application.ports import ListFilter  # noqa: E402
from agent_registry.application.registry import AgentRegistry  # noqa: E402
from agent_registry.config import Settings  # noqa: E402
from agent_registry.domain.agent import Agent, AgentName, CommandContext, agent_uuid  # noqa: E402
from agent_registry.domain.spec import complete  # noqa: E402
from agent_registry.domain.status import Status  # noqa: E402
from agentrt.registry.v1 import registry_pb2 as pb  # noqa: E402
from agentrt.registry.v1 import registry_pb2_grpc as pb_grpc  # noqa: E402
from agentrt_kit.catalog import open_bucket, publish_descriptor  # noqa: E402
from agentrt_kit.nats import Names  # noqa: E402
from agentrt_testkit.nats_server import NatsServer  # noqa: E402
from agentrt_testkit.ports import free_port  # noqa: E402
from agentrt_testkit.postgres import test_database  # noqa: E402
from agentrt_testkit.processes import ServiceProcess  # noqa: E402

CTX = CommandContext(actor="bench", request_id="bench")
TOKEN = "bench-token"


# ------------------------------------------------------------------ baseline app


class Thing(Aggregate):
    """The bare-library baseline: one aggregate with a dict of config."""

    @event("Registered")
    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config

    @event("Changed")
    def change(self, description: str) -> None:
        self.config = {**self.config, "description": description}


class Bare(Application[uuid.UUID]):
    name = "BareBench"


# ---------------------------------------------------------------------- helpers


def spec_message(name: str, **extra: Any) -> pb.AgentSpec:
    message = pb.AgentSpec(name=name, template_id="simple-test", **extra)
    message.template_config.update({"response_prefix": ">> "})
    return message


def spec_dict(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "template_id": "simple-test",
        "template_config": {"response_prefix": ">> "},
    }


# ---------------------------------------------------------------- measurements


def bare_ops(env: dict[str, str], n: int) -> dict[str, Any]:
    app = Bare(env={k: v for k, v in env.items() if k != "IS_SNAPSHOTTING_ENABLED"})
    ids: list[uuid.UUID] = []

    def create(i: int) -> None:
        thing = Thing(name=f"bare {i}", config=spec_dict(f"bare {i}"))
        app.save(thing)
        ids.append(thing.id)

    out = {"create": timed(create, n)}

    def update(i: int) -> None:
        thing: Thing = app.repository.get(ids[i % len(ids)])
        thing.change(f"d{i}")
        app.save(thing)

    out["update"] = timed(update, n)
    out["get"] = timed(lambda i: app.repository.get(ids[i % len(ids)]), n)
    app.close()
    return out


def app_ops(env: dict[str, str], n: int) -> dict[str, Any]:
    app = AgentRegistry(env, InMemoryTemplateCatalog([SIMPLE]))
    listing = AgentListing(app, read_model_for(app.recorder, app.name))
    out = {
        "create": timed(lambda i: app.create_agent(f"app-{i}", spec_dict(f"app {i}"), None, CTX), n)
    }
    out["update"] = timed(
        lambda i: app.update_agent(f"app-{i % n}", {"description": f"d{i}"}, None, CTX), n
    )
    out["get"] = timed(lambda i: app.get_agent(f"app-{i % n}"), n)
    listing.catch_up()
    out["list"] = timed(lambda i: listing.list(ListFilter(), 50), min(n, 500))
    app.close()
    return out


async def grpc_ops(stub: pb_grpc.AgentRegistryStub, n: int, concurrency: int) -> dict[str, Any]:
    md = (("authorization", f"Bearer {TOKEN}"),)

    async def settle() -> None:
        # Let the relay and the projection finish the previous phase's backlog first.
        await asyncio.sleep(2)

    out = {
        "create": await atimed(
            lambda i: stub.CreateAgent(
                pb.CreateAgentRequest(agent_id=f"g-{i}", spec=spec_message(f"g {i}")), metadata=md
            ),
            n,
        )
    }
    await settle()
    out["update"] = await atimed(
        lambda i: stub.UpdateAgent(
            pb.UpdateAgentRequest(agent_id=f"g-{i % n}", spec=pb.AgentSpec(description=f"d{i}")),
            metadata=md,
        ),
        n,
    )
    await settle()
    out["get"] = await atimed(
        lambda i: stub.GetAgent(pb.GetAgentRequest(agent_id=f"g-{i % n}"), metadata=md), n
    )
    out["list"] = await atimed(
        lambda i: stub.ListAgents(pb.ListAgentsRequest(page_size=50), metadata=md), min(n, 500)
    )
    out["get_concurrent_ops_s"] = await throughput(
        lambda i: stub.GetAgent(pb.GetAgentRequest(agent_id=f"g-{i % n}"), metadata=md),
        n * 2,
        concurrency,
    )
    return out


def seed(env: dict[str, str], total: int, batch: int = 500) -> float:
    """Register `total` agents through the domain in bulk and project them; returns seconds."""
    t = time.perf_counter()
    app = AgentRegistry(env, InMemoryTemplateCatalog([SIMPLE]))
    listing = AgentListing(app, read_model_for(app.recorder, app.name), batch_size=2000)
    for start in range(0, total, batch):
        aggregates: list[Any] = []
        for i in range(start, min(total, start + batch)):
            spec = complete(spec_dict(f"seed {i}"))
            spec["owner_id"] = f"owner-{i % 100}"
            if i % 10 == 0:
                spec["template_id"] = "other-template"
            status = Status.ACTIVE if i % 3 == 0 else Status.CREATED
            aggregates += [
                Agent.register(f"seed-{i}", spec, status, CTX),
                AgentName.claim_new(spec["name"], f"seed-{i}"),
            ]
        app.save(*aggregates)
        listing.catch_up()
    app.close()
    return time.perf_counter() - t


async def list_ops(stub: pb_grpc.AgentRegistryStub, n: int) -> dict[str, Any]:
    md = (("authorization", f"Bearer {TOKEN}"),)
    deep = await stub.ListAgents(pb.ListAgentsRequest(page_size=1000), metadata=md)
    for _ in range(40):  # a page token deep into the listing
        deep = await stub.ListAgents(
            pb.ListAgentsRequest(page_size=1000, page_token=deep.next_page_token), metadata=md
        )
    cases = {
        "first page": pb.ListAgentsRequest(page_size=50),
        "by owner": pb.ListAgentsRequest(page_size=50, owner_id="owner-42"),
        "by template": pb.ListAgentsRequest(page_size=50, template_id="other-template"),
        "by status": pb.ListAgentsRequest(page_size=50, status=pb.AGENT_STATUS_ACTIVE),
        "page 41k": pb.ListAgentsRequest(page_size=50, page_token=deep.next_page_token),
    }
    out = {}
    for label, request in cases.items():
        out[label] = await atimed(lambda i, r=request: stub.ListAgents(r, metadata=md), n)
    return out


def snapshot_load(env: dict[str, str], events: int, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, snapshots in (("with snapshots (every 100)", True), ("without snapshots", False)):
        app_env = {k: v for k, v in env.items() if k != "AGGREGATE_CACHE_MAXSIZE"}
        app_env["IS_SNAPSHOTTING_ENABLED"] = "y" if snapshots else "n"
        app = AgentRegistry(app_env, InMemoryTemplateCatalog([SIMPLE]), snapshot_interval=100)
        if not snapshots:
            app.snapshotting_intervals = {}  # type: ignore[misc]
        agent_id = f"long-{label[:4]}-{uuid.uuid4().hex[:6]}"
        app.create_agent(agent_id, spec_dict(f"long {agent_id}"), None, CTX)
        agent = app.repository.get(agent_uuid(agent_id))
        for i in range(events - 1):
            agent.change_configuration({"description": f"step {i}"}, CTX)
            if len(agent.pending_events) >= 1000:
                app.save(agent)
        app.save(agent)
        out[label] = timed(lambda i, a=agent_id, app=app: app.get_agent(a), n)
        out[label]["version"] = app.get_agent(agent_id).version
        app.close()
    return out


# ------------------------------------------------------------------------ main


def process_env(backend: str, settings: Settings, nats_url: str, prefix: str) -> dict[str, str]:
    env = {
        "AGENTRT_NATS_URL": nats_url,
        "AGENTRT_NATS_PREFIX": prefix,
        "AGENTRT_SERVICE_TOKEN": TOKEN,
        "AGENTRT_LOG_LEVEL": "WARNING",
        "AGENTRT_REGISTRY_PERSISTENCE": backend,
    }
    if backend == "sqlite":
        env["AGENTRT_REGISTRY_SQLITE_PATH"] = str(settings.sqlite_path)
    else:
        env["AGENTRT_REGISTRY_POSTGRES_DSN"] = settings.postgres_dsn.get_secret_value()  # type: ignore[union-attr]
    return env


def start(env: dict[str, str], role: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        "agent_registry",
        {**env, "AGENTRT_REGISTRY_PORT": str(port), "AGENTRT_REGISTRY_ROLE": role},
        port,
    ).start()


def stub_for(process: ServiceProcess) -> tuple[grpc.aio.Channel, pb_grpc.AgentRegistryStub]:
    # A plain grpcio channel, as any client would use (the token goes in each call's metadata).
    channel = grpc.aio.insecure_channel(process.address)
    return channel, pb_grpc.AgentRegistryStub(channel)


async def create_throughput(
    stubs: list[pb_grpc.AgentRegistryStub], tag: str, n: int, concurrency: int
) -> float:
    md = (("authorization", f"Bearer {TOKEN}"),)
    return await throughput(
        lambda i: stubs[i % len(stubs)].CreateAgent(
            pb.CreateAgentRequest(agent_id=f"{tag}-{i}", spec=spec_message(f"{tag} {i}")),
            metadata=md,
        ),
        n,
        concurrency,
    )


async def run_backend(
    backend: str, settings_kwargs: dict[str, Any], nats_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    settings = Settings(port=0, nats_url=nats_url, nats_prefix=prefix, **settings_kwargs)
    nc = await nats.connect(nats_url)
    await publish_descriptor(
        await open_bucket(nc.jetstream(), Names(prefix), settings.catalog_limits()),
        SIMPLE.to_document(),
    )
    await nc.close()
    env = eventsourcing_env(settings)
    result: dict[str, Any] = {"backend": backend}
    n = args.ops

    print(f"[{backend}] bare eventsourcing baseline ...", flush=True)
    result["bare"] = bare_ops(env, n)
    print(f"[{backend}] registry application in-process ...", flush=True)
    result["app"] = app_ops(env, n)

    penv = process_env(backend, settings, nats_url, prefix)
    print(f"[{backend}] gRPC against one registry process (role all) ...", flush=True)
    process = start(penv, "all")
    try:
        channel, stub = stub_for(process)
        result["grpc"] = await grpc_ops(stub, n, args.concurrency)
        print(f"[{backend}] seeding {args.agents} agents ...", flush=True)
        result["seed_seconds"] = round(seed(env, args.agents), 1)
        print(f"[{backend}] listing ...", flush=True)
        result["list"] = await list_ops(stub, 300)
        await channel.close()
    finally:
        process.stop()

    print(f"[{backend}] scale-out topologies ...", flush=True)
    topologies: dict[str, dict[str, float]] = {}
    for label, roles in (
        ("1 × role all", ["all"]),
        ("1 × api + 1 × worker", ["api", "worker"]),
        ("2 × api + 1 × worker", ["api", "api", "worker"]),
    ):
        processes = [start(penv, role) for role in roles]
        try:
            apis = [
                stub_for(p) for p, role in zip(processes, roles, strict=True) if role != "worker"
            ]
            tag = f"t{len(topologies)}"
            sequential = await atimed(
                lambda i, stub=apis[0][1], tag=tag: stub.CreateAgent(
                    pb.CreateAgentRequest(agent_id=f"{tag}s-{i}", spec=spec_message(f"{tag}s {i}")),
                    metadata=(("authorization", f"Bearer {TOKEN}"),),
                ),
                min(n, 1000),
            )
            await asyncio.sleep(2)  # let the background work of the sequential phase finish
            topologies[label] = {
                "create_p50_ms": sequential["p50_ms"],
                "create_p99_ms": sequential["p99_ms"],
                "creates_s": await create_throughput(
                    [s for _, s in apis], tag, n * 2, args.concurrency
                ),
            }
            for channel, _ in apis:
                await channel.close()
        finally:
            for p in processes:
                p.stop()
    result["topologies"] = topologies

    print(f"[{backend}] snapshot load ...", flush=True)
    result["snapshots"] = snapshot_load(env, args.events, 200)
    return result


def row(op: str, r: dict[str, Any]) -> str:
    bare, app, rpc = r["bare"].get(op), r["app"].get(op), r["grpc"][op]
    cells = [op]
    for m in (bare, app, rpc):
        cells.append(f"{m['p50_ms']:.3f} / {m['p99_ms']:.3f}" if m else "—")
    cells.append(f"{rpc['ops_s']:.0f}")
    cells.append(f"{rpc['p50_ms'] - bare['p50_ms']:+.3f}" if bare else "—")
    cells.append(f"{rpc['p50_ms'] / bare['p50_ms']:.2f}x" if bare else "—")
    cells.append(f"{rpc['p50_ms'] / app['p50_ms']:.2f}x")
    return "| " + " | ".join(cells) + " |"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | |", "|---|---|---|"]
    for r in results:
        b = r["backend"]
        worst = max(
            (r["grpc"][op]["p50_ms"] - r["bare"][op]["p50_ms"], op)
            for op in ("create", "update", "get")
        )
        lines.append(
            f"| gRPC overhead ≤ 1 ms p50 over the bare library ({b}) | worst: {worst[1]} "
            f"+{worst[0]:.2f} ms | {verdict(worst[0] <= 1.0)} |"
        )
        page = max(v["p50_ms"] for v in r["list"].values())
        lines.append(
            f"| list 50 of 100,000 ≤ 10 ms p50 ({b}) | slowest listing {page:.2f} ms | "
            f"{verdict(page <= 10.0)} |"
        )
        load = r["snapshots"]["with snapshots (every 100)"]["p50_ms"]
        lines.append(
            f"| agent with 10,000 events loads ≤ 5 ms ({b}) | {load:.2f} ms | {verdict(load <= 5.0)} |"
        )
        if b == "sqlite":
            rates = {k: v["creates_s"] for k, v in r["topologies"].items()}
            single = rates["1 × role all"]
            best_label, best = max(rates.items(), key=lambda kv: kv[1])
            lines.append(
                f"| create ≥ 800/s on SQLite | {single:.0f}/s one process; {best:.0f}/s {best_label} "
                f"| {verdict(single >= 800)} |"
            )
    return lines


def report(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, str]) -> str:
    lines = [
        "## Agent registry (issue 2)",
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), Python {info['python']}.",
        "Reproduce: `make bench` (or `python bench/registry_bench.py --write docs/BENCHMARKS.md`).",
        f"Sequential ops: {args.ops} each; concurrent: {args.concurrency} callers; listing over "
        f"{args.agents:,} agents; snapshot load of an agent with {args.events:,} events.",
        "The registry runs as its own process (uvloop); the client is this benchmark process",
        "(grpcio aio on uvloop, a plain channel). Baselines run in the benchmark process in the",
        "same run: *bare* is a plain eventsourcing application (one aggregate, no validation, no",
        "name index), *app* is the registry application called directly (no gRPC).",
        "",
        *targets(results),
        "",
    ]
    for r in results:
        g = r["grpc"]
        lines += [
            f"### {r['backend']}",
            "",
            "| op | bare p50 / p99 ms | app p50 / p99 ms | gRPC p50 / p99 ms | gRPC ops/s (seq) "
            "| gRPC − bare p50 ms | gRPC / bare p50 | gRPC / app p50 |",
            "|---|---|---|---|---|---|---|---|",
            *[row(op, r) for op in ("create", "update", "get", "list")],
            "",
            f"- get throughput, {args.concurrency} concurrent callers, one process: "
            f"{g['get_concurrent_ops_s']:.0f}/s.",
            f"- create throughput, {args.concurrency} concurrent callers, by deployment "
            "(roles: `all` = API + projection follower + relay; `api` = API only; "
            "`worker` = follower + relay):",
            "",
            "| topology | creates/s, 16 callers | sequential create p50 / p99 ms |",
            "|---|---|---|",
            *[
                f"| {k} | **{v['creates_s']:.0f}** | {v['create_p50_ms']:.3f} / {v['create_p99_ms']:.3f} |"
                for k, v in r["topologies"].items()
            ],
            "",
            f"- list 50 of {args.agents:,} agents over gRPC (seeded in {r['seed_seconds']} s):",
            "",
            "| listing | p50 ms | p99 ms |",
            "|---|---|---|",
            *[f"| {k} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} |" for k, v in r["list"].items()],
            "",
            f"- load of an agent with {args.events:,} events (cold, no aggregate cache):",
            "",
            "| load | p50 ms | p99 ms |",
            "|---|---|---|",
            *[
                f"| {k} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} |"
                for k, v in r["snapshots"].items()
            ],
            "",
            f"  Snapshots make the load {r['snapshots']['without snapshots']['p50_ms'] / r['snapshots']['with snapshots (every 100)']['p50_ms']:.0f}x faster.",
            "",
        ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument(
        "--from-json",
        action="store_true",
        help="re-render the last run's report (.bench/registry.json)",
    )
    args = options(
        parser,
        ops=(300, 2000),
        concurrency=(16, 16),
        agents=(5_000, 100_000),
        events=(1_000, 10_000),
    )

    saved = ROOT / ".bench" / "registry.json"
    if args.from_json:
        doc = json.loads(saved.read_text())
        results, info = doc["results"], doc["machine"]
        args.ops, args.concurrency, args.agents, args.events = (
            doc["args"][k] for k in ("ops", "concurrency", "agents", "events")
        )
    else:
        results = []
        nats_server = NatsServer().start()
        try:
            with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
                for backend in args.backends.split(","):
                    if backend == "sqlite":
                        kwargs: dict[str, Any] = {
                            "persistence": "sqlite",
                            "sqlite_path": Path(tmp) / "bench.sqlite3",
                        }
                    else:
                        db = stack.enter_context(test_database())
                        kwargs = {"persistence": "postgres", "postgres_dsn": db.dsn}
                    results.append(await run_backend(backend, kwargs, nats_server.url, args))
        finally:
            nats_server.close()
        info = machine()
        saved.parent.mkdir(exist_ok=True)
        params = {k: getattr(args, k) for k in ("ops", "concurrency", "agents", "events")}
        saved.write_text(
            json.dumps({"machine": info, "args": params, "results": results}, indent=2)
        )
    section = report(results, args, info)
    print(section)
    if args.write:
        write_section(args.write, "## Agent registry (issue 2)", section)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
