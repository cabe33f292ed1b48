"""Integration tier: the URL policy on the wire, against a real local HTTP server.

Only DNS is a test double where a name must resolve to the server's loopback address;
the policy, the pinned connection and the server are real.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from agentrt_kit.policed_http import PolicedHttp, Unresolvable, system_resolver
from agentrt_kit.urls import NetworkPolicy, UrlRefused
from agentrt_testkit.http import RecordingHttp, Reply

LOOPBACK = NetworkPolicy.of(allowed_networks=["127.0.0.0/8"])


class Resolver:
    """Answers every name with the given addresses, counting lookups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = [ipaddress.ip_address(a) for a in addresses]
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[Any]:
        self.lookups.append((host, port))
        return self.addresses


async def test_a_request_goes_to_the_checked_address_with_the_urls_host() -> None:
    with RecordingHttp() as http:
        http.script("/hook", Reply(204))
        resolver = Resolver("127.0.0.1")
        policed = PolicedHttp(LOOPBACK, resolver=resolver)
        url = http.url("/hook", host="hooks.example")
        destination = await policed.destination(url)
        async with policed.client(destination, timeout=5) as client:
            response = await client.post(url, content=b"{}")
    assert response.status_code == 204
    assert resolver.lookups == [("hooks.example", http.port)]
    assert str(destination.address) == "127.0.0.1"
    assert [(h.method, h.path, h.headers["host"]) for h in http.hits] == [
        ("POST", "/hook", f"hooks.example:{http.port}")
    ]


async def test_the_client_follows_no_redirect() -> None:
    with RecordingHttp() as http:
        http.script("/a", Reply(302, headers={"Location": "/b"}))
        policed = PolicedHttp(LOOPBACK)
        destination = await policed.destination(http.url("/a"))
        async with policed.client(destination, timeout=5) as client:
            response = await client.get(destination.target.url)
    assert response.status_code == 302
    assert [h.path for h in http.hits] == ["/a"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost"], ids=["loopback-literal", "name-of-loopback"]
)
async def test_loopback_is_refused_without_an_allowance(host: str) -> None:
    with (
        RecordingHttp() as http,
        pytest.raises(UrlRefused, match=r"127\.0\.0\.0/8 \(Loopback"),
    ):
        await PolicedHttp(NetworkPolicy()).destination(http.url("/", host=host))
    assert http.connections == 0


async def test_a_denied_network_is_refused_although_allowed_otherwise() -> None:
    policy = NetworkPolicy.of(allowed_networks=["127.0.0.0/8"], denied_networks=["127.0.0.1/32"])
    with pytest.raises(UrlRefused, match=r"127\.0\.0\.1 is on the deny list"):
        await PolicedHttp(policy, resolver=Resolver("127.0.0.1")).destination("http://x.test/")


async def test_a_refused_url_is_not_resolved() -> None:
    resolver = Resolver("1.1.1.1")
    with pytest.raises(UrlRefused, match="user name or password"):
        await PolicedHttp(NetworkPolicy(), resolver=resolver).destination("http://u:p@x.test/")
    assert resolver.lookups == []


async def test_a_name_that_does_not_resolve_is_unresolvable() -> None:
    async def failing(host: str, port: int) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(Unresolvable, match=r"cannot resolve nowhere\.test: "):
        await PolicedHttp(NetworkPolicy(), resolver=failing).destination("http://nowhere.test/")


async def test_the_system_resolver_answers_addresses_once_each() -> None:
    addresses = await system_resolver("localhost", 80)
    assert addresses
    assert all(a.is_loopback for a in addresses)
    assert len({str(a) for a in addresses}) == len(addresses)
    assert await system_resolver("127.0.0.1", 80) == [ipaddress.ip_address("127.0.0.1")]
