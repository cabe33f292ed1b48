"""Domain: which URLs and which addresses the fetch tool may reach.

A URL must be http(s), carry no userinfo, and name a host. Every address the
host resolves to must be global unicast once IPv4 embedded in IPv6 is unwrapped
(v4-mapped, v4-compatible, NAT64, 6to4, Teredo): loopback, private, link-local
(cloud metadata lives there), shared (CGNAT), multicast, reserved and
unspecified addresses are refused, unless an operator allow-list admits them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
TEREDO = ipaddress.IPv6Network("2001::/32")
ALWAYS_BLOCKED_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
MAX_URL_CHARS = 4096


class UrlRefused(ValueError):
    """A URL or address the policy refuses; the message says why."""


@dataclass(frozen=True)
class Target:
    """A URL that passed the syntactic checks."""

    url: str
    scheme: str
    host: str
    port: int

    @property
    def host_is_ip(self) -> bool:
        """True when the URL names an address rather than a host name."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_target(url: str) -> Target:
    """Check the URL's form (scheme, userinfo, host, port).

    Raises:
        UrlRefused: with the reason.
    """
    if not isinstance(url, str) or not url:
        raise UrlRefused("is empty")
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"is longer than {MAX_URL_CHARS} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise UrlRefused("contains spaces or control characters")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
        if port == 0:
            raise ValueError("port 0")
    except ValueError as e:
        raise UrlRefused(f"cannot be parsed ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused(f"scheme {scheme or '(none)'!r} is not http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlRefused("must not carry a user name or password")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UrlRefused("names no host")
    if host in ALWAYS_BLOCKED_HOSTS:
        raise UrlRefused(f"host {host!r} is a metadata endpoint")
    return Target(
        url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80)
    )


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64 or address in NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed)
    return None


def _refusal_of(candidate: IPAddress, shown: IPAddress) -> str | None:
    if candidate.is_unspecified:
        return f"{shown} is unspecified"
    if candidate.is_loopback:
        return f"{shown} is a loopback address"
    if candidate.is_link_local:
        return f"{shown} is link-local (metadata services live there)"
    if candidate.is_multicast:
        return f"{shown} is multicast"
    if candidate.is_reserved:
        return f"{shown} is reserved"
    if candidate.is_private or not candidate.is_global:
        return f"{shown} is not a public address"
    return None


def refusal(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why `address` may not be contacted, or None when it may.

    An IPv6 address that *is* an IPv4 destination (v4-mapped, v4-compatible, NAT64) is
    judged by that IPv4 address alone: Python versions disagree on the IPv6 forms, and
    NAT64 is how IPv6-only networks reach public IPv4 sites. A tunnelling address (6to4,
    Teredo) must pass both as itself and by the IPv4 address it carries.
    """
    if any(address in net for net in allowed):
        return None
    if not isinstance(address, ipaddress.IPv6Address):
        return _refusal_of(address, address)
    v4 = embedded_ipv4(address)
    if v4 is None:
        return _refusal_of(address, address)
    if any(v4 in net for net in allowed):
        return None
    if (reason := _refusal_of(v4, address)) is not None:
        return reason
    if address.sixtofour is not None or address.teredo is not None:
        return _refusal_of(address, address)
    return None


def check_addresses(
    host: str, addresses: Iterable[IPAddress], allowed: Sequence[IPNetwork] = ()
) -> list[IPAddress]:
    """All of `addresses`, when every one may be contacted.

    Raises:
        UrlRefused: when the host resolved to nothing or to any refused address.
    """
    checked = list(addresses)
    if not checked:
        raise UrlRefused(f"host {host!r} resolved to no address")
    for address in checked:
        if (reason := refusal(address, allowed)) is not None:
            raise UrlRefused(f"host {host!r} resolves to {reason}")
    return checked


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether `host` matches one of `patterns` (`example.com` or `*.example.com`)."""
    for raw in patterns:
        pattern = raw.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) or host == pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False
