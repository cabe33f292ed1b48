"""ServiceProcess: a real service process, up when SERVING, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import textwrap
from pathlib import Path

import pytest

from agentrt_kit.grpc.server import GrpcServer
from agentrt_testkit.ports import free_port
from agentrt_testkit.processes import ServiceProcess, grpc_serving, http_ok

# A minimal service built the way every agentrt main is: kit lifecycle + GrpcServer.
PROBE_SERVICE = textwrap.dedent(
    """
    import asyncio, os, signal

    from agentrt_kit.grpc.server import GrpcServer
    from agentrt_kit.lifecycle import run, wait_for_shutdown
    from agentrt_kit.settings import ConfigError


    async def main() -> None:
        mode = os.environ.get("PROBE_MODE", "serve")
        if mode == "bad-config":
            raise ConfigError("invalid configuration: PROBE_MODE: not this")
        if mode == "ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            server = GrpcServer([], port=int(os.environ["PROBE_PORT"]))
            await server.start()
            await asyncio.sleep(60)
            return
        if mode == "never-serves":
            await asyncio.sleep(60)
            return
        server = GrpcServer([], port=int(os.environ["PROBE_PORT"]))
        await server.start()
        reason = await wait_for_shutdown()
        await server.stop(1)
        print(f"probe stopped: {reason}", flush=True)


    if __name__ == "__main__":
        run(main)
    """
)


@pytest.fixture
def probe(tmp_path: Path):
    (tmp_path / "kit_probe_service.py").write_text(PROBE_SERVICE)
    made: list[ServiceProcess] = []

    def make(mode: str = "serve") -> ServiceProcess:
        port = free_port()
        env = {"PYTHONPATH": str(tmp_path), "PROBE_PORT": str(port), "PROBE_MODE": mode}
        process = ServiceProcess("kit_probe_service", env, grpc_port=port)
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill()
        process.log_path.unlink(missing_ok=True)


def test_service_starts_serving_and_stops_cleanly_on_sigterm(probe) -> None:
    service = probe().start()
    assert service.address == f"127.0.0.1:{service.port}"
    assert grpc_serving(service.address)
    assert service.stop() == 0
    assert "probe stopped: SIGTERM" in service.log()
    assert not grpc_serving(service.address, timeout=0.2)


def test_start_reports_an_early_exit_with_its_output(probe) -> None:
    service = probe("bad-config")
    with pytest.raises(RuntimeError) as info:
        service.start()
    message = str(info.value)
    assert message.startswith("kit_probe_service exited 2:")
    assert "error: invalid configuration: PROBE_MODE: not this" in message


def test_start_gives_up_and_kills_a_service_that_never_serves(probe) -> None:
    service = probe("never-serves")
    with pytest.raises(RuntimeError, match=r"kit_probe_service not serving after 1\.0s"):
        service.start(timeout=1.0)
    assert service.stop() == -signal.SIGKILL


def test_stop_kills_a_service_that_ignores_sigterm(probe) -> None:
    service = probe("ignore-term").start()
    assert service.stop(timeout=0.5) == -signal.SIGKILL
    assert not grpc_serving(service.address, timeout=0.2)


def test_kill_is_a_crash(probe) -> None:
    service = probe().start()
    service.kill()
    assert not grpc_serving(service.address, timeout=0.2)
    assert service.stop() == -signal.SIGKILL


def test_stop_before_start_is_zero(probe) -> None:
    assert probe().stop() == 0


def test_log_returns_the_tail(probe) -> None:
    service = probe()
    service.log_path.write_text("x" * 10 + "end")
    assert service.log(tail=5) == "x" * 2 + "end"


async def test_grpc_serving_follows_the_health_status() -> None:
    server = GrpcServer([])
    port = await server.start()
    address = f"127.0.0.1:{port}"
    try:
        # grpc_serving blocks: run it off the loop that serves the server.
        assert await asyncio.to_thread(grpc_serving, address) is True
        await server.set_serving(False)
        assert await asyncio.to_thread(grpc_serving, address) is False
    finally:
        await server.stop(0)
    assert await asyncio.to_thread(grpc_serving, address, 0.2) is False


# A minimal HTTP service with a readiness path (as the gateway has).
HTTP_SERVICE = textwrap.dedent(
    """
    import http.server, os, signal, sys


    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ready = self.path == "/readyz" and os.environ["PROBE_MODE"] == "serve"
            self.send_response(200 if ready else 503)
            self.end_headers()

        def log_message(self, *args):
            pass


    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("http probe up", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(os.environ["PROBE_PORT"])), Handler).serve_forever()
    """
)


@pytest.fixture
def http_probe(tmp_path: Path):
    (tmp_path / "kit_http_probe.py").write_text(HTTP_SERVICE)
    made: list[ServiceProcess] = []

    def make(mode: str = "serve") -> ServiceProcess:
        port = free_port()
        env = {"PYTHONPATH": str(tmp_path), "PROBE_PORT": str(port), "PROBE_MODE": mode}
        process = ServiceProcess(
            "kit_http_probe", env, port, http_ready="/readyz", log_path=tmp_path / f"{mode}.log"
        )
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill()


def test_an_http_service_is_up_once_its_readiness_path_answers_200(http_probe) -> None:
    service = http_probe().start()
    assert service.url == f"http://127.0.0.1:{service.port}"
    assert service.ready()
    assert http_ok(service.url + "/readyz")
    assert not http_ok(service.url + "/elsewhere")  # 503
    assert service.stop() == 0
    assert "http probe up" in service.log_path.read_text()
    assert not service.ready(timeout=0.2)


def test_an_http_service_whose_readiness_path_never_answers_200_is_given_up(http_probe) -> None:
    service = http_probe("not-ready")
    with pytest.raises(RuntimeError, match=r"kit_http_probe not serving after 1\.0s"):
        service.start(timeout=1.0)
    assert service.stop() == -signal.SIGKILL


def test_http_ok_is_false_for_nothing_listening_and_refuses_other_schemes() -> None:
    assert not http_ok(f"http://127.0.0.1:{free_port()}/readyz", timeout=0.2)
    with pytest.raises(ValueError, match="not an http"):
        http_ok("file:///etc/passwd")
