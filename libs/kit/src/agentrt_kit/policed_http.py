"""Kit adapter: HTTP requests that reach only what the URL policy admits.

One hop at a time. `PolicedHttp.destination(url)` checks the URL and its host
(`agentrt_kit.urls.NetworkPolicy`), resolves the host once, checks every address
it resolved to and keeps the first. `PolicedHttp.client(destination)` connects to
that address only, with the URL's host kept in the Host header and in TLS SNI and
certificate verification, so DNS rebinding between check and connect has nothing
to rebind. The client follows no redirect: a caller that follows one takes a new
destination for its Location, so every hop is checked the same way (the fetch tool
does; webhooks follow none). Each client opens its own connection, never a pooled
one, which might carry a request for another host that happens to share the address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from agentrt_kit.urls import IPAddress, NetworkPolicy, Target

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for host:port (IPv4 and IPv6)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, IPAddress] = {}
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        seen.setdefault(text, ipaddress.ip_address(text))
    return list(seen.values())


class Unresolvable(ConnectionError):
    """The host's name could not be resolved (perhaps only for now)."""


@dataclass(frozen=True)
class Destination:
    """One checked hop: the URL's target and the address connections go to."""

    target: Target
    address: IPAddress


class PinnedTransport(httpx.AsyncBaseTransport):
    """Sends every request to the destination's checked address.

    Only the destination's own URL is sent through it: the client that holds it
    follows no redirect (`PolicedHttp.client`).
    """

    def __init__(self, destination: Destination, inner: httpx.AsyncBaseTransport) -> None:
        self._destination = destination
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Rewrite the connection target, nothing else (Host and SNI keep the URL's host)."""
        host = request.url.host
        request.url = request.url.copy_with(host=str(self._destination.address))
        request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._inner.aclose()


class PolicedHttp:
    """Checked destinations and clients pinned to them."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        resolver: Resolver = system_resolver,
        verify_tls: bool = True,
    ) -> None:
        self.policy = policy
        self._resolve = resolver
        self._verify_tls = verify_tls

    async def destination(self, url: str) -> Destination:
        """Where a request for `url` may go, checked.

        Raises:
            UrlRefused: the URL, its host or an address it resolves to is refused.
            Unresolvable: the host's name could not be resolved.
        """
        target = self.policy.target(url)
        try:
            addresses = await self._resolve(target.host, target.port)
        except (OSError, UnicodeError) as e:
            raise Unresolvable(f"cannot resolve {target.host}: {e}") from None
        return Destination(target, self.policy.admit(target, addresses)[0])

    def client(
        self, destination: Destination, *, timeout: httpx.Timeout | float | None
    ) -> httpx.AsyncClient:
        """A client that reaches `destination` only: no redirects, no proxy from env."""
        inner = httpx.AsyncHTTPTransport(retries=0, verify=self._verify_tls)
        return httpx.AsyncClient(
            transport=PinnedTransport(destination, inner),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        )
