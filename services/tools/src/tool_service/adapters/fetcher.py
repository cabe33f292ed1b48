"""Adapter: fetching URLs over HTTP(S) under the network policy.

- Only http and https, no userinfo; host allow- and deny-lists by setting.
- The host is resolved once per hop; every address must pass the policy
  (`agentrt_kit.urls`), and the connection goes to the address that was checked
  (`agentrt_kit.policed_http`: the URL's host stays in the Host header and TLS
  SNI/verification), so DNS rebinding between check and connect has nothing to
  rebind.
- Redirects are followed by hand, each hop checked the same way, at most
  `max_redirects`.
- Connect, read and total timeouts; a byte cap enforced while streaming (on the
  decoded body, so compression cannot smuggle a bomb past it); retries with
  exponential backoff and jitter for connection failures and 502/503/504; a
  circuit breaker per host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from agentrt_kit.policed_http import (
    Destination,
    PolicedHttp,
    Resolver,
    Unresolvable,
    system_resolver,
)
from agentrt_kit.resilience import CircuitBreaker
from agentrt_kit.urls import NetworkPolicy, UrlRefused
from tool_service.application.ports import Fetched
from tool_service.domain.tools import ToolFailure
from tool_service.errors import UrlBlocked

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({502, 503, 504})
# Sent only to the origin the caller named: a redirect elsewhere drops them (as browsers,
# requests, curl and httpx do), so an open redirect cannot collect an agent's credentials.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
USER_AGENT = "agentrt-tools/0.1 (+fetch_url)"


@dataclass(frozen=True)
class FetchPolicy:
    """The network policy and budgets of fetch_url (all from settings)."""

    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    max_redirects: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_bytes: int = 5 * 1024 * 1024
    retries: int = 2
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0
    verify_tls: bool = True


class _HostFailure(ToolFailure):
    """A failure that says the host is unwell (counts towards its circuit breaker)."""


class _Transient(Exception):
    def __init__(self, failure: ToolFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _content_type(response: httpx.Response) -> tuple[str, str | None]:
    value = response.headers.get("content-type", "")
    mime, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, val = param.strip().partition("=")
        if key.lower() == "charset" and val:
            charset = val.strip('"').strip()
    return mime.strip().lower(), charset


class HttpFetcher:
    """Fetcher over httpx with the policy above."""

    def __init__(self, policy: FetchPolicy, resolver: Resolver = system_resolver) -> None:
        self.policy = policy
        self._http = PolicedHttp(policy.network, resolver=resolver, verify_tls=policy.verify_tls)
        self._breakers: dict[str, CircuitBreaker] = {}

    async def _destination(self, url: str) -> Destination:
        try:
            return await self._http.destination(url)
        except UrlRefused as e:
            raise UrlBlocked(url, str(e)) from None
        except Unresolvable as e:
            raise ToolFailure("FETCH_FAILED", str(e)) from None

    def _breaker(self, host: str) -> CircuitBreaker:
        breaker = self._breakers.get(host)
        if breaker is None:
            breaker = CircuitBreaker(
                self.policy.breaker_failures, self.policy.breaker_cooldown, name=host
            )
            self._breakers[host] = breaker
        return breaker

    async def fetch(self, url: str, headers: Mapping[str, str], follow_redirects: bool) -> Fetched:
        """GET `url` under the policy."""
        try:
            async with asyncio.timeout(self.policy.total_timeout):
                return await self._follow(url, headers, follow_redirects)
        except TimeoutError:
            raise ToolFailure(
                "TIMEOUT", f"no complete response within {self.policy.total_timeout:.0f} s"
            ) from None

    async def _follow(
        self, url: str, headers: Mapping[str, str], follow_redirects: bool
    ) -> Fetched:
        current = url
        origin: tuple[str, str, int] | None = None
        for _ in range(self.policy.max_redirects + 1):
            # Checked and resolved first: the breaker's one half-open trial is spent on
            # an exchange with the host, and every trial reports how the host answered.
            destination = await self._destination(current)
            target = destination.target
            if origin is None:
                origin = (target.scheme, target.host, target.port)
            elif (target.scheme, target.host, target.port) != origin:
                headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
            breaker = self._breaker(target.host)
            if not breaker.allow():
                raise ToolFailure(
                    "CIRCUIT_OPEN",
                    f"{target.host} failed {breaker.failures} times in a row; not retried for "
                    f"{self.policy.breaker_cooldown:.0f} s",
                )
            try:
                status, location, fetched = await self._get_retrying(destination, headers)
            except _HostFailure:
                breaker.failed()
                raise
            except ToolFailure:
                breaker.succeeded()  # the host answered (a 4xx, a body too large): it is up
                raise
            breaker.succeeded()
            if fetched is not None:
                return fetched
            if not follow_redirects:
                raise ToolFailure(
                    "REDIRECT", f"{current} redirects ({status}) to {location}; not followed"
                )
            current = urljoin(current, location)
        raise ToolFailure("TOO_MANY_REDIRECTS", f"more than {self.policy.max_redirects} redirects")

    async def _get_retrying(
        self, destination: Destination, headers: Mapping[str, str]
    ) -> tuple[int, str, Fetched | None]:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Transient),
                stop=stop_after_attempt(self.policy.retries + 1),
                wait=wait_random_exponential(multiplier=0.2, max=2.0),
                reraise=True,
            ):
                with attempt:
                    return await self._get(destination, headers)
        except _Transient as e:
            raise e.failure from None
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _get(
        self, destination: Destination, headers: Mapping[str, str]
    ) -> tuple[int, str, Fetched | None]:
        """One attempt: (status, redirect location, response or None for a redirect)."""
        policy, target = self.policy, destination.target
        timeout = httpx.Timeout(
            connect=policy.connect_timeout, read=policy.read_timeout, write=5.0, pool=5.0
        )
        try:
            async with (
                self._http.client(destination, timeout=timeout) as client,
                client.stream(
                    "GET", target.url, headers={"user-agent": USER_AGENT, **headers}
                ) as response,
            ):
                if response.status_code in (301, 302, 303, 307, 308):
                    location = response.headers.get("location", "")
                    if not location:
                        raise ToolFailure("HTTP_ERROR", f"{response.status_code} without Location")
                    return response.status_code, location, None
                if response.status_code in RETRYABLE_STATUS:
                    raise _Transient(
                        _HostFailure("HTTP_ERROR", f"{target.url} answered {response.status_code}")
                    )
                if response.status_code >= 500:
                    raise _HostFailure(
                        "HTTP_ERROR", f"{target.url} answered {response.status_code}"
                    )
                if response.status_code >= 400:
                    raise ToolFailure(
                        "HTTP_ERROR",
                        f"{target.url} answered {response.status_code} {response.reason_phrase}",
                    )
                body = await self._body(response)
                mime, charset = _content_type(response)
                return (
                    response.status_code,
                    "",
                    Fetched(
                        url=target.url,
                        status=response.status_code,
                        content_type=mime,
                        charset=charset,
                        body=body,
                    ),
                )
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _Transient(
                _HostFailure("FETCH_FAILED", f"cannot connect to {target.host}: {e}")
            ) from None
        except httpx.TimeoutException:
            raise _HostFailure(
                "TIMEOUT", f"{target.host} sent nothing for {policy.read_timeout:.0f} s"
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            # InvalidURL: e.g. a host the system resolver accepts but httpx's IDNA 2008 refuses.
            raise ToolFailure("FETCH_FAILED", f"{target.host}: {e}") from None

    async def _body(self, response: httpx.Response) -> bytes:
        cap = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise ToolFailure("TOO_LARGE", f"response is {declared} bytes; at most {cap} are read")
        chunks, total = [], 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > cap:
                raise ToolFailure("TOO_LARGE", f"response is larger than {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
