"""Code sandbox benchmark (issue 14): a fresh bubblewrap sandbox per program next to the bare
interpreter running the same snippet, same run, same machine.

- start to first output: `print("hi")` (Python) and `console.log("hi")` (JavaScript), N
  sequential runs each, interleaved with the bare interpreter (`python3 -I -c`, `node -e`)
  started as an asyncio subprocess. Both are timed the same way: from the moment the spawn
  call returns to the first byte of output. The whole call (spawn to result) is shown too;
- where the time goes, timed the same way: `echo hi` bare and behind each step the sandbox
  puts before bubblewrap (prlimit, setpriv, the cgroup join), bubblewrap alone, the
  interpreter started directly in the full sandbox (no harness), and the run_code harness;
- `run_code` over gRPC: the tools service as its own process (as in tools_bench.py), driven
  by 1, 10 and 50 concurrent callers for a fixed time, next to the bare interpreter at the
  same concurrency in this process, with the CPU each call costs.

The breakdown reaches into the adapter's `_Run` (to swap the command it starts); nothing
else here does.

Usage: python bench/sandbox_bench.py [--write docs/BENCHMARKS.md] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import uvloop
from bench_support import machine, options, publish, stats, sustained

from agentrt.tools.v1 import tools_pb2 as pb
from agentrt.tools.v1 import tools_pb2_grpc as pb_grpc
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess
from tool_service.adapters.sandbox import CodeSandbox, SandboxConfig, _Files, _Run, build_sandbox
from tool_service.config import Settings as ToolsSettings
from tool_service.domain.sandbox import Language, Limits, Program

TITLE = "## Code sandbox (issue 14)"
TOKEN = "bench-token"
SLOTS: int = ToolsSettings.model_fields["sandbox_max_concurrent"].default  # the service's
LIMITS = Limits(timeout_seconds=10)
SNIPPETS = {Language.PYTHON: 'print("hi")', Language.JAVASCRIPT: 'console.log("hi")'}
BARE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
TARGET_P50_MS, TARGET_P95_MS = 50.0, 150.0
BWRAP_ALONE = "bwrap alone (all namespaces, / read-only) → echo"
CONCURRENCY = (1, 10, 50)  # 1: one call at a time, for a shorter time
# Slot uids of their own (when run as root): slot n of every tools process on a host runs
# as the same uid, and RLIMIT_NPROC counts per uid, so a test suite running sandboxes at
# the same time would make our runs fail to start their threads.
UID_BASE = 300_000

Sample = tuple[float, float]  # (ms to the first output, ms for the whole call)


def bare_argv(sandbox: CodeSandbox, language: Language) -> list[str]:
    """The interpreter the sandbox runs, started bare on the snippet."""
    interpreter = sandbox.images[language].interpreter
    if language is Language.PYTHON:
        return [interpreter, "-I", "-c", SNIPPETS[language]]
    return [interpreter, "-e", SNIPPETS[language]]


async def bare(argv: list[str]) -> Sample:
    """One bare run: first stdout byte after the spawn returns, and the whole call."""
    start = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=BARE_ENV,
    )
    spawned = time.monotonic()
    assert process.stdout is not None
    first = await process.stdout.read(1)
    first_ms = (time.monotonic() - spawned) * 1000
    rest, err = await process.communicate()
    if process.returncode != 0 or first + rest != b"hi\n":
        raise RuntimeError(f"bare {argv[0]}: exit {process.returncode}: {err[-300:]!r}")
    return first_ms, (time.monotonic() - start) * 1000


async def sandboxed(sandbox: CodeSandbox, language: Language) -> Sample:
    """One run in a fresh sandbox, the way run_code runs it (harness included)."""
    start = time.monotonic()
    execution, first_ms = await sandbox.timed_run(
        Program(language, SNIPPETS[language], limits=LIMITS)
    )
    if execution.exit_code != 0 or execution.stdout != b"hi\n" or first_ms is None:
        raise RuntimeError(f"sandbox {language}: {execution}")
    return first_ms, (time.monotonic() - start) * 1000


def summary(samples: list[Sample]) -> dict[str, Any]:
    first = stats([s[0] / 1000 for s in samples])
    whole = stats([s[1] / 1000 for s in samples])
    return {
        "first_p50_ms": first["p50_ms"],
        "first_p95_ms": first["p95_ms"],
        "call_p50_ms": whole["p50_ms"],
        "call_p95_ms": whole["p95_ms"],
    }


async def first_output(sandbox: CodeSandbox, n: int) -> dict[str, Any]:
    """Sandbox and bare runs of both snippets, interleaved so they share the machine's noise."""
    runs: dict[str, Callable[[], Awaitable[Sample]]] = {}
    for language in SNIPPETS:
        argv = bare_argv(sandbox, language)
        runs[f"{language}/sandbox"] = partial(sandboxed, sandbox, language)
        runs[f"{language}/bare"] = partial(bare, argv)
    for run in runs.values():  # warm up: page cache, the interpreters' own caches
        for _ in range(5):
            await run()
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    for _ in range(n):
        for name, run in runs.items():
            samples[name].append(await run())
    out: dict[str, Any] = {}
    for language in SNIPPETS:
        box, raw = summary(samples[f"{language}/sandbox"]), summary(samples[f"{language}/bare"])
        out[language.value] = {
            "sandbox": box,
            "bare": raw,
            "overhead_p50_ms": round(box["first_p50_ms"] - raw["first_p50_ms"], 1),
            "overhead_p95_ms": round(box["first_p95_ms"] - raw["first_p95_ms"], 1),
        }
    return out


# ------------------------------------------------------------------ where the time goes


class _Direct(_Run):
    """The sandbox's own run (chain, mounts, seccomp) starting `argv` instead of the harness."""

    def __init__(self, sandbox: CodeSandbox, language: Language, argv: list[str]) -> None:
        super().__init__(sandbox, 0, sandbox.images[language], _Files("run.py", b""), LIMITS)
        self.argv = argv

    def _command(self, code_path: str) -> list[str]:
        return self.argv


async def direct(sandbox: CodeSandbox, language: Language) -> Sample:
    """The interpreter started directly in a full sandbox, no harness: first output."""
    image = sandbox.images[language]
    option = "-c" if language is Language.PYTHON else "-e"
    run = _Direct(
        sandbox, language, [image.interpreter, *image.options, option, SNIPPETS[language]]
    )
    start = time.monotonic()
    await run.start()
    execution = await run.wait()
    if execution.stdout != b"hi\n" or run.first_output_ms is None:
        raise RuntimeError(f"direct {language}: {execution}")
    return run.first_output_ms, (time.monotonic() - start) * 1000


def chain_steps(sandbox: CodeSandbox) -> dict[str, list[str]]:
    """`echo hi` behind each step the sandbox puts before bubblewrap, and behind bubblewrap
    alone (its namespaces over the host's `/`, read-only)."""
    echo = [shutil.which("echo") or "/bin/echo", "hi"]
    run = _Run(sandbox, 0, sandbox.images[Language.PYTHON], _Files("run.py", b""), LIMITS)
    argv = run._prefix()
    steps = {"echo": echo}
    steps["prlimit → echo"] = [*argv[argv.index("prlimit") :], *echo]
    if "setpriv" in argv:
        steps["setpriv → prlimit → echo"] = [*argv[argv.index("setpriv") :], *echo]
    if argv[0] == "/bin/sh":
        steps["cgroup join → setpriv → prlimit → echo"] = [*argv, *echo]
    steps[BWRAP_ALONE] = [
        sandbox.bwrap,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/",
        "/",
        *echo,
    ]
    return steps


async def breakdown(sandbox: CodeSandbox, rounds: int) -> dict[str, dict[str, float]]:
    """p50/p95 (ms) of each step, interleaved round by round."""
    runs: dict[str, Callable[[], Awaitable[Sample]]] = {
        name: partial(bare, argv) for name, argv in chain_steps(sandbox).items()
    }
    for language in SNIPPETS:
        argv = bare_argv(sandbox, language)
        runs[f"{language}: bare interpreter"] = partial(bare, argv)
        runs[f"{language}: interpreter directly in the sandbox"] = partial(
            direct, sandbox, language
        )
        runs[f"{language}: run_code harness in the sandbox"] = partial(sandboxed, sandbox, language)
    for run in runs.values():
        await run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append((await run())[0] / 1000)
    out = {}
    for name, values in samples.items():
        figures = stats(values)
        out[name] = {"p50_ms": figures["p50_ms"], "p95_ms": figures["p95_ms"]}
    return out


# ------------------------------------------------------------------------ over gRPC


def run_code_request(key: str) -> pb.InvokeToolRequest:
    message = pb.InvokeToolRequest(
        tool_name="run_code",
        context=pb.InvocationContext(agent_id="bench", idempotency_key=key),
    )
    message.arguments.update({"language": "python", "code": SNIPPETS[Language.PYTHON]})
    return message


def duration(seconds: int, concurrency: int) -> float:
    """Seconds a row runs: one caller needs fewer to settle its percentiles."""
    return seconds / 3 if concurrency == 1 else seconds


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process: its own, and its reaped children's (the sandboxes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / tick, (cutime + cstime) / tick


async def over_grpc(address: str, seconds: int, pid: int) -> dict[str, Any]:
    """run_code calls/s through the service (process `pid`) at each concurrency."""
    md = (("authorization", f"Bearer {TOKEN}"),)
    prefix = uuid.uuid4().hex[:8]
    keys = itertools.count()
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ToolServiceStub(channel)
        listing = await stub.ListTools(pb.ListToolsRequest(), metadata=md)
        if listing.sandbox.isolation != "bubblewrap":
            raise RuntimeError(f"the service has no sandbox: {listing.sandbox}")

        async def call(_i: int) -> None:
            reply = await stub.InvokeTool(run_code_request(f"{prefix}-{next(keys)}"), metadata=md)
            if reply.error.code or reply.data["stdout"] != "hi\n":
                raise RuntimeError(f"run_code: {reply.error} {reply.content[:300]}")

        for i in range(20):  # warm up
            await call(i)
        for concurrency in CONCURRENCY:
            print(f"run_code over gRPC, {concurrency} callers ...", flush=True)
            own, children = cpu_seconds(pid)
            row = await sustained(call, duration(seconds, concurrency), concurrency)
            own_after, children_after = cpu_seconds(pid)
            row["service_cpu_ms"] = round((own_after - own) * 1000 / row["calls"], 1)
            row["sandbox_cpu_ms"] = round((children_after - children) * 1000 / row["calls"], 1)
            out[str(concurrency)] = row
    return out


async def bare_throughput(seconds: int, python: list[str]) -> dict[str, Any]:
    """The bare interpreter at each concurrency (no gRPC channel open: nothing else forks)."""
    out: dict[str, Any] = {}
    for concurrency in CONCURRENCY:
        print(f"bare interpreter, {concurrency} callers ...", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = await sustained(lambda _i: bare(python), duration(seconds, concurrency), concurrency)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        row["cpu_ms"] = round(cpu * 1000 / row["calls"], 1)
        out[str(concurrency)] = row
    return out


async def throughput(seconds: int, python: list[str]) -> dict[str, Any]:
    """run_code through the tools service next to the bare interpreter, each concurrency."""
    nats_server = NatsServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            env = {
                "AGENTRT_NATS_URL": nats_server.url,
                "AGENTRT_NATS_PREFIX": "sandboxbench",
                "AGENTRT_SERVICE_TOKEN": TOKEN,
                "AGENTRT_LOG_LEVEL": "WARNING",
                "AGENTRT_TOOLS_PORT": str(port),
                "AGENTRT_TOOLS_WORKSPACE_ROOT": f"{tmp}/workspaces",
                "AGENTRT_TOOLS_DATABASE_URL": f"sqlite:///{tmp}/tools.sqlite3",
                "AGENTRT_TOOLS_SANDBOX_MAX_CONCURRENT": str(SLOTS),
                "AGENTRT_TOOLS_SANDBOX_UID_BASE": str(UID_BASE + 1000),
                # Measure the sandbox, never the development fallback.
                "AGENTRT_TOOLS_UNSAFE_UNSANDBOXED_CODE": "false",
            }
            service = ServiceProcess("tool_service", env, port)
            service.start(timeout=60)
            try:
                sandbox = await over_grpc(service.address, seconds, service.pid)
            finally:
                service.stop()
    finally:
        nats_server.close()
    bare_rows = await bare_throughput(seconds, python)
    return {
        str(c): {
            "sandbox": sandbox[str(c)],
            "bare": bare_rows[str(c)],
            "ratio": round(sandbox[str(c)]["calls_s"] / bare_rows[str(c)]["calls_s"], 3),
        }
        for c in CONCURRENCY
    }


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def where_the_time_goes(steps: dict[str, dict[str, float]], language: str) -> str:
    """One sentence splitting a language's overhead (p50) into the steps measured."""

    def p50(name: str) -> float:
        return steps[name]["p50_ms"]

    chain_name = next(n for n in reversed(list(steps)) if n.endswith("prlimit → echo"))
    chain = p50(chain_name) - p50("echo")
    bwrap = p50(BWRAP_ALONE) - p50("echo")
    isolation = p50(f"{language}: interpreter directly in the sandbox") - p50(
        f"{language}: bare interpreter"
    )
    harness = p50(f"{language}: run_code harness in the sandbox") - p50(
        f"{language}: interpreter directly in the sandbox"
    )
    join = ""
    if "cgroup join → setpriv → prlimit → echo" in steps:
        joined = p50("cgroup join → setpriv → prlimit → echo") - p50("setpriv → prlimit → echo")
        join = f", of which {joined:.1f} ms joining the slot's cgroups"
    rest = isolation - chain
    mounts = f"the other {rest:.1f} ms" if rest > 0 else "nothing measurable beyond that"
    return (
        f"{language}: the interpreter started directly in the sandbox is +{isolation:.1f} ms "
        f"over the bare one: the steps before bubblewrap (sh, setpriv, prlimit: one exec "
        f"each) take {chain:.1f} ms{join}; bubblewrap's namespaces, runtime mounts and seccomp "
        f"{mounts} (bubblewrap alone over `/`: +{bwrap:.1f} ms). The run_code harness adds "
        + (f"{harness:.1f} ms" if harness > 0 else "nothing measurable")
        + " before the program's first output."
    )


def report(
    sandbox: CodeSandbox,
    first: dict[str, Any],
    steps: dict[str, dict[str, float]],
    rpc: dict[str, Any],
    versions: dict[str, str],
    load: tuple[float, float],
    args: argparse.Namespace,
) -> str:
    info = machine()
    status = sandbox.status
    lines = [
        TITLE,
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), benchmark on "
        f"Python {info['python']}; {versions['bwrap']}, sandboxed Python "
        f"{versions['python']}, Node.js {versions['node']}; the service runs as "
        f"{'root (a uid per slot)' if sandbox.root else 'a regular user'}, enforcement "
        f"{', '.join(e for e in status.enforcement if e.startswith(('memory', 'pids')))}.",
        "Reproduce: `make bench` (or `python bench/sandbox_bench.py --write docs/BENCHMARKS.md`).",
        "",
        f"**Start to first output**: {args.n} sequential runs per row, the sandbox and the bare "
        "interpreter interleaved. Both are timed from the moment the spawn returns to the first "
        "byte of output (the sandbox's `timed_run`; an asyncio subprocess for the bare "
        "`python3 -I -c` / `node -e`). *Call* is the whole call, spawn to result. Overhead is "
        "sandbox − bare of each percentile.",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    missed = []
    for language, row in first.items():
        ok50 = row["overhead_p50_ms"] <= TARGET_P50_MS
        ok95 = row["overhead_p95_ms"] <= TARGET_P95_MS
        if not (ok50 and ok95):
            missed.append(language)
        lines += [
            f"| {language}: sandbox overhead p50 ≤ {TARGET_P50_MS:.0f} ms | "
            f"+{row['overhead_p50_ms']:.1f} ms | {verdict(ok50)} |",
            f"| {language}: sandbox overhead p95 ≤ {TARGET_P95_MS:.0f} ms | "
            f"+{row['overhead_p95_ms']:.1f} ms | {verdict(ok95)} |",
        ]
    py = first["python"]["sandbox"]
    one = rpc["1"]["sandbox"]
    lines += [
        "",
        "Hosted anchors: about 440 ms p50 and 800 ms p95 for a hosted sandbox's create-exec-close; "
        f"here a whole Python call takes {py['call_p50_ms']:.0f} / {py['call_p95_ms']:.0f} ms "
        f"(p50 / p95) in the adapter, and {one['p50_ms']:.0f} / {one['p95_ms']:.0f} ms as a "
        "run_code call over gRPC, one at a time.",
        "",
        "| language | sandbox first output p50 / p95 ms | bare p50 / p95 ms | overhead p50 / p95 "
        "ms | sandbox call p50 / p95 ms | bare call p50 / p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for language, row in first.items():
        box, raw = row["sandbox"], row["bare"]
        lines.append(
            f"| {language} | {box['first_p50_ms']:.1f} / {box['first_p95_ms']:.1f} | "
            f"{raw['first_p50_ms']:.1f} / {raw['first_p95_ms']:.1f} | "
            f"**+{row['overhead_p50_ms']:.1f} / +{row['overhead_p95_ms']:.1f}** | "
            f"{box['call_p50_ms']:.1f} / {box['call_p95_ms']:.1f} | "
            f"{raw['call_p50_ms']:.1f} / {raw['call_p95_ms']:.1f} |"
        )
    lines += [
        "",
        f"**run_code over gRPC**: the tools service as its own process (uvloop, SQLite ledger: "
        f"each call claims a fresh idempotency key, audit to NATS on), {args.seconds} s per row "
        f'({duration(args.seconds, 1):.0f} s for one caller), Python `print("hi")`; the '
        f"service runs at most {SLOTS} "
        "sandboxes at once (`AGENTRT_TOOLS_SANDBOX_MAX_CONCURRENT`), further calls wait for a "
        "slot. Baseline: the bare interpreter as an asyncio subprocess from this process, same "
        "concurrency, no cap.",
        "",
        "| concurrent callers | run_code calls/s | p50 / p95 ms | CPU ms per call: service + "
        "sandbox | bare calls/s | p50 / p95 ms | CPU ms per call | run_code / bare |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for concurrency in CONCURRENCY:
        row = rpc[str(concurrency)]
        box, raw = row["sandbox"], row["bare"]
        lines.append(
            f"| {concurrency} | **{box['calls_s']:.1f}** | {box['p50_ms']:.0f} / "
            f"{box['p95_ms']:.0f} | {box['service_cpu_ms']:.1f} + {box['sandbox_cpu_ms']:.1f} | "
            f"{raw['calls_s']:.1f} | {raw['p50_ms']:.0f} / {raw['p95_ms']:.0f} | "
            f"{raw['cpu_ms']:.1f} | **{row['ratio']:.2f}** |"
        )
    ten = rpc["10"]
    cpu_box = ten["sandbox"]["service_cpu_ms"] + ten["sandbox"]["sandbox_cpu_ms"]
    cores = int(info["cores"])
    lines += [
        "",
        f"CPU is what a call costs: at 10 callers a run_code call takes {cpu_box:.0f} ms of CPU "
        f"(the service's gRPC, ledger, audit and spawn: {ten['sandbox']['service_cpu_ms']:.0f} "
        "ms; the chain, bubblewrap, the interpreter and the harness, as the service reaps them: "
        f"{ten['sandbox']['sandbox_cpu_ms']:.0f} ms) against {ten['bare']['cpu_ms']:.0f} ms "
        f"for the bare interpreter, which bounds {cores} cores at about "
        f"{cores * 1000 / cpu_box:.0f} and {cores * 1000 / ten['bare']['cpu_ms']:.0f} calls/s. "
        f"Past saturation more callers only queue (at {CONCURRENCY[-1]}: for the {SLOTS} slots). "
        f"The machine was not idle: load average {load[0]:.1f} before the run, "
        f"{load[1]:.1f} after ({cores} cores).",
    ]
    lines += [
        "",
        f"**Where the time goes** ({args.rounds} interleaved rounds, spawn to first output "
        "as above; *adds* is the p50 over the row it builds on):",
        "",
        "| step | p50 ms | p95 ms | adds p50 ms |",
        "|---|---|---|---|",
    ]
    previous = {
        "prlimit → echo": "echo",
        "setpriv → prlimit → echo": "prlimit → echo",
        "cgroup join → setpriv → prlimit → echo": "setpriv → prlimit → echo",
        BWRAP_ALONE: "echo",
    }
    for language in first:
        previous[f"{language}: interpreter directly in the sandbox"] = (
            f"{language}: bare interpreter"
        )
        previous[f"{language}: run_code harness in the sandbox"] = (
            f"{language}: interpreter directly in the sandbox"
        )
    for name, row in steps.items():
        base = previous.get(name)
        adds = f"{row['p50_ms'] - steps[base]['p50_ms']:+.1f}" if base in steps else ""
        lines.append(f"| {name} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {adds} |")
    lines += ["", *[where_the_time_goes(steps, language) for language in first]]
    if missed:
        lines += [
            "",
            f"Targets missed for {', '.join(missed)}: see the split above; the steps that "
            "could shrink are the harness's imports before the program runs and the cgroup "
            "join (one `sh` exec).",
        ]
    lines.append("")
    return "\n".join(lines)


def versions(sandbox: CodeSandbox) -> dict[str, str]:
    bwrap = subprocess.run(
        [sandbox.bwrap, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    runtimes = {r.language.value: r.version for r in sandbox.status.runtimes}
    return {
        "bwrap": bwrap or "bubblewrap",
        "python": runtimes.get("python", "?"),
        "node": runtimes.get("javascript", "?"),
    }


async def main() -> None:
    args = options(n=(20, 200), rounds=(5, 40), seconds=(3, 15))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    sandbox = await asyncio.to_thread(build_sandbox, SandboxConfig(uid_base=UID_BASE))
    sandbox.forget_loop()
    try:
        status = sandbox.status
        if status.isolation != "bubblewrap" or set(SNIPPETS) - set(sandbox.images):
            raise SystemExit(f"no sandbox with Python and Node.js here: {status.reason}")
        print(f"start to first output, {args.n} runs each ...", flush=True)
        first = await first_output(sandbox, args.n)
        print(f"where the time goes, {args.rounds} rounds ...", flush=True)
        steps = await breakdown(sandbox, args.rounds)
        rpc = await throughput(args.seconds, bare_argv(sandbox, Language.PYTHON))
        load = (load_before, os.getloadavg()[0])
        section = report(sandbox, first, steps, rpc, versions(sandbox), load, args)
    finally:
        sandbox.close()
    publish(
        "sandbox",
        {"first_output": first, "breakdown": steps, "grpc": rpc},
        TITLE,
        section,
        args.write,
    )
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
