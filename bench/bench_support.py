"""Timing helpers and the report writer shared by the benchmarks in this folder."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HEADER = "# Benchmarks\n\nNumbers measured by `make bench`; each section is rewritten by its benchmark.\n"


def stats(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99 latency in milliseconds and the sequential rate of a list of durations."""
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 4),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000, 4),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 4),
        "ops_s": round(len(ordered) / sum(ordered), 1),
    }


def timed(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    """Call ``fn(i)`` for i in range(n), one after another, and time each call."""
    samples = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t)
    return stats(samples)


async def atimed(fn: Callable[[int], Awaitable[Any]], n: int) -> dict[str, float]:
    """Await ``fn(i)`` for i in range(n), one after another, and time each call."""
    samples = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        samples.append(time.perf_counter() - t)
    return stats(samples)


async def load(fn: Callable[[int], Awaitable[Any]], n: int, concurrency: int) -> dict[str, float]:
    """Calls per second, and p50/p99 of each call, when ``concurrency`` workers share ``n``
    calls of ``fn(i)``."""
    counter = iter(range(n))
    samples: list[float] = []

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await fn(i)
            samples.append(time.perf_counter() - t)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t
    latency = stats(samples)
    return {
        "runs_s": round(n / elapsed, 1),
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
    }


async def sustained(
    fn: Callable[[int], Awaitable[Any]], seconds: float, concurrency: int
) -> dict[str, float]:
    """Calls per second, and p50/p95 of each call, when ``concurrency`` workers call
    ``fn(i)`` back to back for ``seconds`` (calls started before the end all count)."""
    counter = iter(range(1 << 62))
    samples: list[float] = []
    t = time.perf_counter()
    end = t + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            start = time.perf_counter()
            await fn(next(counter))
            samples.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t
    latency = stats(samples)
    return {
        "calls": len(samples),
        "calls_s": round(len(samples) / elapsed, 1),
        "p50_ms": latency["p50_ms"],
        "p95_ms": latency["p95_ms"],
    }


async def throughput(fn: Callable[[int], Awaitable[Any]], n: int, concurrency: int) -> float:
    """Calls per second when ``concurrency`` workers share ``n`` calls of ``fn(i)``."""
    return (await load(fn, n, concurrency))["runs_s"]


def options(
    parser: argparse.ArgumentParser | None = None, **sizes: tuple[int, int]
) -> argparse.Namespace:
    """`--write FILE` and `--quick`, and each `name=(quick, full)` size set as an attribute."""
    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--write", type=Path, help="update this report (docs/BENCHMARKS.md)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    for name, (quick, full) in sizes.items():
        setattr(args, name, quick if args.quick else full)
    return args


def machine() -> dict[str, str]:
    """CPU model, core count, Python version and date, for the report's header."""
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the section starting at ``title`` (up to the next ``## ``) or append it."""
    text = path.read_text() if path.exists() else HEADER
    start = text.find(title)
    if start == -1:
        text = text.rstrip() + "\n\n" + section + "\n"
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "\n")
    path.write_text(text)


def publish(name: str, raw: dict[str, Any], title: str, section: str, write: Path | None) -> None:
    """Print the report, keep the raw numbers in ``.bench/<name>.json``, update the doc."""
    print(section)
    saved = Path(__file__).resolve().parent.parent / ".bench" / f"{name}.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(raw, indent=2))
    if write:
        write_section(write, title, section)
