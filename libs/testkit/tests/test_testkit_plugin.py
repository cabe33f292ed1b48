"""The pytest plugin's fixtures, in this run and in an inner pytest run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nats

from agentrt_kit.nats import Names
from agentrt_kit.settings import ServiceSettings, load_settings
from agentrt_testkit.nats_server import NatsServer
from agentrt_testkit.ports import wait_for_port


async def test_nats_server_fixture_runs_jetstream(nats_server: NatsServer) -> None:
    assert nats_server.running
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


def test_nats_prefix_is_usable_everywhere(nats_prefix: str) -> None:
    assert load_settings(ServiceSettings, nats_prefix=nats_prefix).nats_prefix == nats_prefix
    assert Names(nats_prefix).stream("x") == f"{nats_prefix.upper()}_X"


def test_make_nats_server_gives_separate_servers(make_nats_server, nats_server) -> None:
    first, second = make_nats_server(), make_nats_server()
    assert len({first.port, second.port, nats_server.port}) == 3
    first.stop()
    assert not first.running
    assert second.running
    first.start()
    assert first.running


INNER = textwrap.dedent(
    """
    import json, os

    OUT = os.environ["PLUGIN_PROBE_OUT"]

    def record(**facts):
        with open(OUT, "a") as f:
            f.write(json.dumps(facts) + "\\n")

    def test_one(nats_prefix, nats_server):
        record(test="one", prefix=nats_prefix, session_port=nats_server.port,
               session_dir=nats_server.store_dir)

    def test_two(nats_prefix, nats_server, make_nats_server):
        own = make_nats_server()
        record(test="two", prefix=nats_prefix, session_port=nats_server.port,
               own_port=own.port, own_dir=own.store_dir)

    def test_three(nats_server):
        record(test="three", session_port=nats_server.port)
    """
)


def test_fixtures_isolate_tests_and_clean_up(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    out = tmp_path / "facts.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env={**os.environ, "PLUGIN_PROBE_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    facts = {f["test"]: f for f in map(json.loads, out.read_text().splitlines())}
    # A new prefix for each test, one nats_server for the session.
    assert facts["one"]["prefix"] != facts["two"]["prefix"]
    assert facts["one"]["session_port"] == facts["two"]["session_port"]
    assert facts["two"]["session_port"] == facts["three"]["session_port"]
    # Servers are closed and their stores removed: a test's own after it, the session's at the end.
    assert not Path(facts["two"]["own_dir"]).exists()
    assert not Path(facts["one"]["session_dir"]).exists()
    assert not wait_for_port("127.0.0.1", facts["two"]["own_port"], timeout=0.1)
    assert not wait_for_port("127.0.0.1", facts["one"]["session_port"], timeout=0.1)
