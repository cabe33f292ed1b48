"""Shutdown waiting and the service entry point."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from agentrt_kit.lifecycle import run, wait_for_shutdown
from agentrt_kit.settings import ConfigError


async def test_wait_for_shutdown_returns_when_the_stop_event_is_set() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await asyncio.wait_for(wait_for_shutdown(stop), 5) == "stop requested"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_wait_for_shutdown_returns_on_a_signal(sig: signal.Signals) -> None:
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), sig)
    assert await asyncio.wait_for(wait_for_shutdown(), 5) == sig.name
    # The handlers are removed again: a later Ctrl-C interrupts as usual.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_run_exits_2_with_the_message_on_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        raise ConfigError("invalid configuration: AGENTRT_LOG_FORMAT: bad")

    with pytest.raises(SystemExit) as info:
        run(main)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: invalid configuration: AGENTRT_LOG_FORMAT: bad\n"


def test_run_runs_main_to_completion() -> None:
    ran: list[bool] = []

    async def main() -> None:
        await asyncio.sleep(0)
        ran.append(True)

    run(main)
    assert ran == [True]


def test_run_lets_other_errors_through() -> None:
    async def main() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run(main)
