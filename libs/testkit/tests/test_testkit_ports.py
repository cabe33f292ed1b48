"""Free ports and waiting for a listener."""

from __future__ import annotations

import socket
import threading
import time

from agentrt_testkit.ports import free_port, wait_for_port


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_free_ports_differ() -> None:
    assert len({free_port() for _ in range(20)}) > 1


def test_wait_for_port_sees_a_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert wait_for_port("127.0.0.1", s.getsockname()[1], timeout=2) is True


def test_wait_for_port_waits_for_a_late_listener() -> None:
    port = free_port()
    listener = socket.socket()

    def listen_later() -> None:
        time.sleep(0.2)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        started = time.monotonic()
        assert wait_for_port("127.0.0.1", port, timeout=5) is True
        assert time.monotonic() - started >= 0.15
    finally:
        thread.join()
        listener.close()


def test_wait_for_port_gives_up_after_the_timeout() -> None:
    port = free_port()
    started = time.monotonic()
    assert wait_for_port("127.0.0.1", port, timeout=0.2) is False
    assert 0.2 <= time.monotonic() - started < 1.5
