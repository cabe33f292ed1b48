"""Adapter: run webhooks over HTTP, signed as Standard Webhooks (the `WebhookSender` port).

Each attempt POSTs the JSON body with the headers of https://www.standardwebhooks.com/:
`webhook-id` (the message id, the same on every attempt), `webhook-timestamp` (this
attempt's Unix seconds) and `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over
`<id>.<timestamp>.<body>`, keyed with the bytes of the `whsec_` secret). Receivers
verify it with any Standard Webhooks library and refuse stale timestamps.

Where it may go is the fetch tool's policy (`agentrt_kit.policed_http`): the host is
resolved, every address must be globally reachable unless an operator allowed its
network, and the connection goes to the address that was checked. The answer decides:
2xx delivered; 408, 429 and 5xx, timeouts and connection failures retried later
(Retry-After honoured); any other status, a refused or malformed URL given up.

Redirects are not followed: a 3xx is given up. The receiver was named when the run
started; following a Location would send a signed body to a host nobody named, and
an endpoint that moved is a configuration to fix, which no retry within the hour will.
The response body is never read: the status decides, and closing the response drops
the rest, so a receiver can neither stall nor flood the sender with it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from agent_executor.application.webhooks import WebhookOutcome
from agentrt_kit.policed_http import PolicedHttp, Resolver, Unresolvable, system_resolver
from agentrt_kit.urls import NetworkPolicy, UrlRefused

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not one
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64  # Standard Webhooks: 24 to 64 random bytes
USER_AGENT = "agentrt-webhooks/1"
RETRY_STATUS = frozenset({408, 429})


def signing_key(secret: str) -> bytes:
    """The key a `whsec_<base64>` secret stands for.

    Raises:
        ValueError: the secret has another form (the message never repeats it).
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {SECRET_PREFIX!r} followed by base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"holds {len(key)} bytes; a Standard Webhooks key has {MIN_KEY_BYTES} to "
            f"{MAX_KEY_BYTES} (e.g. whsec_ + base64 of 32 random bytes)"
        )
    return key


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header's wait in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - now).total_seconds(), 0.0)


def _where(location: str | None) -> str:
    """Where a Location points, without its path and query (they may carry tokens)."""
    try:
        parts = urlsplit(location or "")
    except ValueError:
        return "an unreadable location"
    if parts.hostname:
        return f"{parts.scheme}://{parts.hostname}" if parts.scheme else parts.hostname
    return "another path here" if location else "nowhere (no Location)"


class HttpWebhookSender:
    """Signs and POSTs webhooks under the network policy, one attempt per call."""

    def __init__(
        self,
        secret: str,
        *,
        timeout: float = 10.0,
        allowed_networks: Iterable[str] = (),
        denied_networks: Iterable[str] = (),
        allow_hosts: Iterable[str] = (),
        resolver: Resolver = system_resolver,
        verify_tls: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Check the secret and the networks.

        Raises:
            ValueError: the secret is not a `whsec_` secret, or a network is not a CIDR.
        """
        self._key = signing_key(secret)
        self.timeout = timeout
        self._clock = clock
        policy = NetworkPolicy.of(
            allowed_networks=allowed_networks,
            denied_networks=denied_networks,
            allow_hosts=allow_hosts,
        )
        self._http = PolicedHttp(policy, resolver=resolver, verify_tls=verify_tls)

    def signature(self, message_id: str, timestamp: int, payload: bytes) -> str:
        """The `webhook-signature` value for one message at one timestamp."""
        signed = f"{message_id}.{timestamp}.".encode() + payload
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")

    async def deliver(self, url: str, message_id: str, body: Mapping[str, Any]) -> WebhookOutcome:
        """One attempt: resolve and check, sign, POST, judge the status."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post(url, message_id, payload)
        except TimeoutError:
            return WebhookOutcome.retry_later(f"no answer within {self.timeout:g} s")

    async def _post(self, url: str, message_id: str, payload: bytes) -> WebhookOutcome:
        try:
            destination = await self._http.destination(url)
        except UrlRefused as e:
            return WebhookOutcome.give_up(f"URL refused: {e}")
        except Unresolvable as e:
            return WebhookOutcome.retry_later(str(e))
        host = destination.target.host
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(message_id, timestamp, payload),
        }
        try:
            async with (
                # One deadline for the whole attempt, DNS included: `deliver`'s.
                self._http.client(destination, timeout=None) as client,
                client.stream("POST", url, content=payload, headers=headers) as response,
            ):
                return self._judge(response)
        except httpx.TransportError as e:
            return WebhookOutcome.retry_later(f"cannot reach {host}: {type(e).__name__}: {e}")
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            # InvalidURL: e.g. a host the system resolver takes but httpx's IDNA 2008 refuses.
            return WebhookOutcome.give_up(f"{host}: {type(e).__name__}: {e}")

    def _judge(self, response: httpx.Response) -> WebhookOutcome:
        status = response.status_code
        if 200 <= status < 300:
            return WebhookOutcome.delivered(status)
        if 300 <= status < 400:
            return WebhookOutcome.give_up(
                f"answered {status}, a redirect to {_where(response.headers.get('location'))}; "
                "webhooks follow no redirects",
                status=status,
            )
        if status in RETRY_STATUS or status >= 500:
            now = datetime.fromtimestamp(self._clock(), UTC)
            return WebhookOutcome.retry_later(
                f"answered {status}",
                status=status,
                retry_after=retry_after_seconds(response.headers.get("retry-after"), now),
            )
        return WebhookOutcome.give_up(f"answered {status}", status=status)
