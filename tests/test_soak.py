"""`make soak`'s judgements (scripts/soak.py): when a process's RSS counts as flat, and which
log lines count as errors. The soak itself runs in CI after the suite (`.ci/run`)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("script_soak", ROOT / "scripts" / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_rss_that_levels_off_is_flat_and_steady_growth_is_not(soak: ModuleType) -> None:
    levelled = [100.0] * 10 + [105.0] * 40  # a step early in the second half, then flat
    growing = [100.0 + i for i in range(50)]  # +1 % of the start per sample

    assert soak.flatness(levelled).flat
    assert soak.flatness(levelled).growth == pytest.approx(0.05)
    assert not soak.flatness(growing).flat
    assert soak.flatness(growing).growth == pytest.approx(144.5 / 104.5 - 1)


def test_nats_may_grow_by_its_bounded_write_caches_and_no_more(soak: ModuleType) -> None:
    streams = [
        {"max_bytes": 512 * 1024 * 1024, "bytes": 34_000_000},  # an 8 MiB block
        {"max_bytes": 32 * 1024 * 1024, "bytes": 1024 * 1024},  # a 4 MiB block
        {"max_bytes": 1024 * 1024 * 1024, "bytes": 0},  # never written
    ]
    allowance = soak.nats_write_caches_kb(streams)
    assert allowance == 8 * 1024 + 4 * 1024
    filling = [40_000.0] * 25 + [40_000.0 * 1.1 + allowance] * 25
    assert soak.flatness(filling, allowance).flat
    assert not soak.flatness(filling).flat
    assert not soak.flatness(
        [40_000.0] * 25 + [40_000.0 * 1.1 + allowance + 1] * 25, allowance
    ).flat


def test_one_spike_does_not_decide_flatness_and_shrinking_passes(soak: ModuleType) -> None:
    spiky = [100.0] * 24 + [300.0] + [100.0] * 25  # one sample three times as large
    spike_at_the_end = [100.0] * 49 + [300.0]
    shrinking = [200.0] * 25 + [100.0] * 25

    assert soak.flatness(spiky).growth == 0
    assert soak.flatness(spike_at_the_end).growth == 0  # the median of the last ten
    assert soak.flatness(shrinking).flat
    assert soak.flatness([100.0, 111.0]).growth == pytest.approx(0.11)  # a fifth is one sample
    with pytest.raises(ValueError, match="no samples"):
        soak.flatness([])


def record(level: str, **extra: object) -> str:
    doc = {"ts": "2026-12-06T13:25:46.044+00:00", "level": level, "service": "executor"}
    return json.dumps({**doc, "logger": "x", "msg": "hello", **extra})


@pytest.mark.parametrize(
    ("line", "source", "error", "warning"),
    [
        (record("INFO"), "executor", False, False),
        (record("WARNING"), "executor", False, True),
        (record("ERROR"), "executor", True, False),
        (record("CRITICAL"), "executor", True, False),
        (
            record("WARNING", exc="Traceback (most recent call last):\n  File ..."),
            "executor",
            True,
            False,
        ),
        ("13:25:46.044 ERROR   gateway agent_gateway.app: boom", "gateway", True, False),
        (
            "13:25:46.044 INFO    gateway agent_gateway.app: ok [request_id=1]",
            "gateway",
            False,
            False,
        ),
        ("Traceback (most recent call last):", "dev.py", True, False),
        ("executor exited (code -9); restarting in 0.5 s", "dev.py", True, False),
        ("gateway did not become healthy; see the log above", "dev.py", True, False),
        ("nats started (pid 14007)", "dev.py", False, False),
        ('  File "x.py", line 1, in <module>', "dev.py", False, False),
        ('{"not": "a record"}', "dev.py", False, False),
    ],
)
def test_log_lines_are_classified_by_level_traceback_and_restart(
    soak: ModuleType, line: str, source: str, error: bool, warning: bool
) -> None:
    found = soak.classify(line)

    assert (found.source, found.error, found.warning) == (source, error, warning)


@pytest.mark.parametrize(
    ("line", "error", "warning"),
    [
        ("[14007] 2026/12/06 13:25:45.123456 [INF] Server is ready", False, False),
        ("[14007] 2026/12/06 13:25:45.123456 [WRN] Slow consumer detected", False, True),
        ("[14007] 2026/12/06 13:25:45.123456 [ERR] JetStream out of resources", True, False),
        ("[14007] 2026/12/06 13:25:45.123456 [FTL] cannot start", True, False),
    ],
)
def test_nats_server_lines_are_classified_by_their_level(
    soak: ModuleType, line: str, error: bool, warning: bool
) -> None:
    found = soak.classify(line, "nats")

    assert (found.source, found.error, found.warning) == ("nats", error, warning)


def test_stack_processes_are_named_from_their_command_lines(soak: ModuleType) -> None:
    assert soak.process_name(["/venv/bin/python", "-m", "agent_executor"]) == "executor"
    assert soak.process_name(["/venv/bin/python", "-m", "tool_service"]) == "tools"
    assert soak.process_name(["/x/bin/nats-server", "-a", "127.0.0.1", "-js"]) == "nats"
    assert soak.process_name(["/venv/bin/python", "/repo/scripts/dev.py"]) == "dev.py"
    assert soak.process_name([]) == "?"
