"""Sessions benchmark: the bytes a session stores per turn, with the checkpoint bound and without.

One session (an agent with memory, the `conversation` template, the offline model answering
`You said: <message>`) runs K turns through the executor's run service (the application
code a run takes: admission, the run driver, the graph, the checkpointer, the prune after
each run), with its sessions in the real checkpointer: a SQLite file and a fresh PostgreSQL
database. The run store, agents and events are the in-memory twins (they store no session).
Each backend runs the session twice in the same run: unbounded (the baseline: no prune) and
bounded (`SESSION_CHECKPOINTS_KEPT` at its default).

Reported per backend and mode: stored bytes after K turns (the session's rows in
LangGraph's tables: checkpoints and their metadata, pending writes, and on PostgreSQL the
blobs; SQLite: the values' lengths, PostgreSQL: their stored sizes, compressed where
PostgreSQL compressed them), the marginal bytes per turn over the last tenth of the turns,
the checkpoints left, and the time of a turn and of its prune (p50), with the bounded
figures as ratios of the unbounded ones.

Usage: python bench/sessions_bench.py [--write docs/BENCHMARKS.md] [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services" / "executor" / "tests"))

from bench_support import machine, options, publish, stats  # noqa: E402
from sessions_support import (  # noqa: E402
    SessionStack,
    checkpoint_ids,
    open_sessions,
    request,
    stored_bytes,
)

from agent_executor.config import Settings  # noqa: E402
from agent_executor.domain.runs import RunCompleted, RunFailed  # noqa: E402
from agentrt_testkit.postgres import create_schema, test_database  # noqa: E402

TITLE = "## Sessions: bytes per turn (issue 13)"
KEPT = Settings.model_fields["session_checkpoints_kept"].default
# fmt: off
WORDS = (
    "the", "a", "to", "of", "and", "in", "is", "it", "you", "that", "for", "on", "with", "as",
    "was", "be", "this", "have", "are", "not", "but", "what", "can", "your", "agent", "run",
    "session", "tool", "file", "message", "answer", "model", "please", "could", "would",
    "about", "from", "next", "step", "plan", "data", "report", "check", "list", "write", "read",
    "again", "when", "then", "why", "how", "which", "order", "price", "user", "city", "weather",
    "time", "today", "tomorrow", "thanks", "sure", "yes", "no", "more", "less",
)
# fmt: on


def message(turn: int) -> str:
    """A user message of about 40 words (seeded by the turn: every run says the same)."""
    rng = random.Random(turn)
    return " ".join(rng.choice(WORDS) for _ in range(40)).capitalize() + "?"


async def session(kind: str, keep: int | None, turns: int, **where: Any) -> dict[str, Any]:
    """K turns of one session, unbounded (`keep` None) or bounded; what it stored."""
    async with open_sessions(kind, **where) as (saver, history):
        stack = SessionStack(saver, history if keep else None, keep=keep or 1)
        sizes, turn_s, prune_s = [], [], []
        for turn in range(1, turns + 1):
            started = time.perf_counter()
            handle = await stack.runs.start(request(message(turn)))
            async for event in handle:
                if isinstance(event.body, RunFailed):
                    raise RuntimeError(f"turn {turn} failed: {event.body}")
                if isinstance(event.body, RunCompleted):
                    break
            ended = time.perf_counter()
            await stack.settled()
            turn_s.append(ended - started)
            prune_s.append(time.perf_counter() - ended)
            sizes.append(await stored_bytes(saver))
        last = max(1, turns // 10)
        return {
            "bytes": sizes[-1],
            "bytes_per_turn": (sizes[-1] - sizes[-1 - last]) / last,
            "first_turn_bytes": sizes[0],
            "checkpoints": len(await checkpoint_ids(saver)),
            "turn_ms": stats(turn_s[-last:])["p50_ms"],
            "prune_ms": stats(prune_s[-last:])["p50_ms"],
            "sizes": sizes,
        }


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, keep in (("unbounded", None), ("bounded", KEPT)):
            where = Path(tmp) / mode
            where.mkdir()
            results.setdefault("sqlite", {})[mode] = await session(
                "sqlite", keep, args.turns, tmp=where
            )
    with test_database() as db:
        for mode, keep in (("unbounded", None), ("bounded", KEPT)):
            results.setdefault("postgres", {})[mode] = await session(
                "postgres", keep, args.turns, dsn=db.dsn, schema=create_schema(db)
            )
    return results


def human(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def cell(r: dict[str, Any], base: dict[str, Any] | None, key: str, fmt: Any) -> str:
    """A figure, and its ratio to the baseline's when there is one."""
    text: str = fmt(r[key])
    if base is not None and base[key]:
        text += f" (**{r[key] / base[key]:.3f}×**)"
    return text


def report(
    results: dict[str, Any],
    args: argparse.Namespace,
    info: dict[str, str],
    loadavg: tuple[float, float, float],
) -> str:
    turns = args.turns
    lines = [
        TITLE,
        "",
        f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), Python "
        f"{info['python']}.",
        "Reproduce: `make bench` (or `python bench/sessions_bench.py --write docs/BENCHMARKS.md`).",
        f"Load average {loadavg[0]:.1f} / {loadavg[1]:.1f} / {loadavg[2]:.1f} when the run "
        "began; the machine is shared, so the times carry noise the bytes do not.",
        f"One session, {turns} turns (a user message of about 40 words and the offline "
        "model's echo of it), through the "
        "executor's run service with the sessions in the real checkpointer; unbounded (no "
        f"prune, the baseline) and bounded (`SESSION_CHECKPOINTS_KEPT={KEPT}`, the default), "
        "in the same run. *Stored* is the session's rows in LangGraph's tables (checkpoints "
        "and metadata, pending writes, PostgreSQL's blobs; PostgreSQL's sizes are as stored, "
        "compressed). *Per turn* is the marginal growth over the last tenth of the turns. "
        "*Turn* is start to `run_completed`; *prune* the prune after it, off the run's path.",
        "",
        "| backend | mode | stored after "
        f"{turns} turns | per turn (marginal) | checkpoints | turn p50 | prune p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, modes in results.items():
        base, bound = modes["unbounded"], modes["bounded"]
        for mode, r in modes.items():
            of = base if mode == "bounded" else None
            lines.append(
                f"| {backend} | {mode} | {cell(r, of, 'bytes', human)} | "
                f"{cell(r, of, 'bytes_per_turn', human)} | {r['checkpoints']} | "
                f"{cell(r, of, 'turn_ms', lambda v: f'{v:.1f} ms')} | "
                f"{r['prune_ms']:.2f} ms |"
            )
    lines.append("")
    for backend, modes in results.items():
        base, bound = modes["unbounded"], modes["bounded"]
        half = turns // 2 - 1
        lines.append(
            f"- {backend}: doubling the turns ({turns // 2} → {turns}) multiplies the stored "
            f"bytes by {bound['sizes'][-1] / bound['sizes'][half]:.2f} bounded (linear: 2) "
            f"and by {base['sizes'][-1] / base['sizes'][half]:.2f} unbounded (quadratic: 4); "
            f"over the {turns} turns a turn cost {human(bound['bytes'] / turns)} of storage "
            f"on average bounded, {human(base['bytes'] / turns)} unbounded."
        )
    lines += [
        "",
        "Reading the numbers: every checkpoint holds the conversation so far (SQLite inline, "
        "PostgreSQL as a blob per new version of the messages), and a plain turn writes three "
        "(input, start, answer), so unbounded the marginal bytes of a turn grow with the "
        "conversation and the total with its square. Bounded, a session keeps "
        f"{KEPT} checkpoints: its bytes are about {KEPT} copies of the conversation plus "
        "their writes, and a turn adds a constant: its two messages in each kept copy. "
        "The conversation itself still grows by its messages: the "
        "bound caps the copies, not the history (`conversation_config.historyLength` "
        "bounds what the model sees, not what is stored).",
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    args = options(turns=(40, 200))
    info, loadavg = machine(), os.getloadavg()
    results = await run_all(args)
    publish(
        "sessions",
        {"turns": args.turns, "loadavg": loadavg, **results},
        TITLE,
        report(results, args, info, loadavg),
        args.write,
    )


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
