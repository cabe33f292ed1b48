"""Kit (pure): which URLs and which addresses a service may reach over HTTP.

The tools service's fetch tool and the executor's run webhooks share this policy;
`agentrt_kit.policed_http` enforces it on the wire. No I/O here: resolving a host is
the caller's job, and what it resolved to is judged below.

A URL must be http(s), carry no userinfo, and name a host. Every address the host
resolves to must be globally reachable unicast, decided from data rather than from
Python's `ipaddress` (whose `is_global` differs between versions and, on 3.11, calls
3fff::/20, 5f00::/16 and 64:ff9b:1::/48 global): the IANA IPv4 and IPv6 Special-Purpose
Address Registries are written down below, every entry with its name, RFC and
"Globally Reachable" value as IANA lists it, and the most specific entry holding an
address decides (192.0.0.9 inside 192.0.0.0/24, 2001:3::/32 inside 2001::/23). A few
rows from outside those registries complete the picture: multicast, the deprecated
IPv4-compatible and IPv4-translated IPv6 forms, and 2000::/3, the only IPv6 global
unicast space: an IPv6 address outside it is refused.

IPv4 carried inside IPv6 (mapped, translated, compatible, NAT64, 6to4, and a Teredo
address's server and client) is unwrapped and judged by the IPv4 table first, so the
refusal names what it carries. Mapped, NAT64 well-known-prefix and 6to4 addresses then
pass when what they carry does; every other IPv6 form must also pass as itself, so
Teredo, local-use NAT64 and the forms outside 2000::/3 stay refused. An operator
allow-list admits any address it covers, and covering the IPv4 address that a mapped,
NAT64 well-known-prefix or 6to4 address carries admits that address too. A deny-list
of networks refuses addresses the rest admits; host allow- and deny-lists come first
(`NetworkPolicy`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
ALWAYS_BLOCKED_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
MAX_URL_CHARS = 4096


class Reach(Enum):
    """A block's "Globally Reachable" value in the IANA registry."""

    TRUE = "True"
    FALSE = "False"
    NOT_APPLICABLE = "N/A"
    TERMINATED = "(blank: a terminated entry)"
    UNLISTED = "(not in the special-purpose registries)"


class Verdict(Enum):
    """What the policy does with an address in a block."""

    ALLOW = "allow"
    REFUSE = "refuse"
    CARRIED = "judged by the IPv4 address it carries"


@dataclass(frozen=True)
class Block:
    """One address block with IANA's reachability and the policy's verdict.

    Attributes:
        network: the block.
        name: IANA's name for it.
        rfc: where it is defined.
        reach: IANA's "Globally Reachable" value.
        verdict: what the policy does: an entry IANA calls True is allowed and one it
            calls False refused, unless `note` says why not; N/A, blank and unlisted
            entries are decided one by one, each with its `note`.
        note: why the verdict is what it is, where IANA's value does not say.
    """

    network: IPNetwork
    name: str
    rfc: str
    reach: Reach
    verdict: Verdict
    note: str = ""

    @property
    def reason(self) -> str:
        """Why an address in this block is refused, to follow "… is"."""
        return (
            f"in {self.network} ({self.name}, {self.rfc}): {self.note or 'not globally reachable'}"
        )


def _row(
    block: str,
    name: str,
    rfc: str,
    reach: Reach,
    *,
    verdict: Verdict | None = None,
    note: str = "",
) -> Block:
    if verdict is None:
        if reach not in (Reach.TRUE, Reach.FALSE):
            raise ValueError(f"{block}: {reach.value} needs a verdict and a note")
        verdict = Verdict.ALLOW if reach is Reach.TRUE else Verdict.REFUSE
    return Block(ipaddress.ip_network(block), name, rfc, reach, verdict, note)


# IANA IPv4 Special-Purpose Address Registry, every entry as of 2025 (its one entry
# "192.0.0.170/32, 192.0.0.171/32" is two rows here).
IPV4_SPECIAL_PURPOSE: tuple[Block, ...] = (
    _row("0.0.0.0/8", '"This network"', "RFC 791 §3.2", Reach.FALSE),
    _row("0.0.0.0/32", '"This host on this network"', "RFC 1122 §3.2.1.3", Reach.FALSE),
    _row("10.0.0.0/8", "Private-Use", "RFC 1918", Reach.FALSE),
    _row("100.64.0.0/10", "Shared Address Space", "RFC 6598", Reach.FALSE),
    _row("127.0.0.0/8", "Loopback", "RFC 1122 §3.2.1.3", Reach.FALSE),
    _row("169.254.0.0/16", "Link Local", "RFC 3927", Reach.FALSE),
    _row("172.16.0.0/12", "Private-Use", "RFC 1918", Reach.FALSE),
    _row("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890 §2.1", Reach.FALSE),
    _row("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", Reach.FALSE),
    _row("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", Reach.FALSE),
    _row("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", Reach.TRUE),
    _row("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", Reach.TRUE),
    _row("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 §2.2", Reach.FALSE),
    _row("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 §2.2", Reach.FALSE),
    _row("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", Reach.FALSE),
    _row("192.31.196.0/24", "AS112-v4", "RFC 7535", Reach.TRUE),
    _row("192.52.193.0/24", "AMT", "RFC 7450", Reach.TRUE),
    _row(
        "192.88.99.0/24",
        "Deprecated (6to4 Relay Anycast)",
        "RFC 7526",
        Reach.TERMINATED,
        verdict=Verdict.REFUSE,
        note="terminated in 2015 (RFC 7526); it only ever held relay anycast, never a site",
    ),
    _row("192.88.99.2/32", "6a44-relay anycast address", "RFC 6751", Reach.FALSE),
    _row("192.168.0.0/16", "Private-Use", "RFC 1918", Reach.FALSE),
    _row("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", Reach.TRUE),
    _row("198.18.0.0/15", "Benchmarking", "RFC 2544", Reach.FALSE),
    _row("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", Reach.FALSE),
    _row("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", Reach.FALSE),
    _row("240.0.0.0/4", "Reserved", "RFC 1112 §4", Reach.FALSE),
    _row("255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919 §7", Reach.FALSE),
)

# IANA IPv6 Special-Purpose Address Registry, every entry as of 2025 (the last added:
# 100:0:0:1::/64, 2025-04).
IPV6_SPECIAL_PURPOSE: tuple[Block, ...] = (
    _row("::1/128", "Loopback Address", "RFC 4291", Reach.FALSE),
    _row("::/128", "Unspecified Address", "RFC 4291", Reach.FALSE),
    _row(
        "::ffff:0:0/96",
        "IPv4-mapped Address",
        "RFC 4291",
        Reach.FALSE,
        verdict=Verdict.CARRIED,
        note="never on the wire: a dual-stack socket sends IPv4 to the address it carries",
    ),
    _row(
        "64:ff9b::/96",
        "IPv4-IPv6 Translat.",
        "RFC 6052",
        Reach.TRUE,
        verdict=Verdict.CARRIED,
        note="the well-known NAT64 prefix stands for global IPv4 only (RFC 6052 §3.1)",
    ),
    _row(
        "64:ff9b:1::/48",
        "IPv4-IPv6 Translat.",
        "RFC 8215",
        Reach.FALSE,
        note=(
            "not globally reachable, and a local translator chooses where in the prefix the "
            "IPv4 address sits (RFC 8215 §5), so an operator who runs one allow-lists it"
        ),
    ),
    _row("100::/64", "Discard-Only Address Block", "RFC 6666", Reach.FALSE),
    _row("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", Reach.FALSE),
    _row("2001::/23", "IETF Protocol Assignments", "RFC 2928", Reach.FALSE),
    _row(
        "2001::/32",
        "TEREDO",
        "RFC 4380, RFC 8190",
        Reach.NOT_APPLICABLE,
        verdict=Verdict.REFUSE,
        note="a Teredo tunnel to a host behind NAT, reached through relays nobody vouches for",
    ),
    _row("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", Reach.TRUE),
    _row("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", Reach.TRUE),
    _row("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", Reach.TRUE),
    _row("2001:2::/48", "Benchmarking", "RFC 5180, RFC Errata 1752", Reach.FALSE),
    _row("2001:3::/32", "AMT", "RFC 7450", Reach.TRUE),
    _row("2001:4:112::/48", "AS112-v6", "RFC 7535", Reach.TRUE),
    _row(
        "2001:10::/28",
        "Deprecated (previously ORCHID)",
        "RFC 4843",
        Reach.TERMINATED,
        verdict=Verdict.REFUSE,
        note="terminated in 2014 and returned to IANA; unassigned within 2001::/23",
    ),
    _row("2001:20::/28", "ORCHIDv2", "RFC 7343", Reach.TRUE),
    _row(
        "2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", Reach.TRUE
    ),
    _row("2001:db8::/32", "Documentation", "RFC 3849", Reach.FALSE),
    _row(
        "2002::/16",
        "6to4",
        "RFC 3056",
        Reach.NOT_APPLICABLE,
        verdict=Verdict.CARRIED,
        note="a 6to4 site is reached over the IPv4 address its prefix carries",
    ),
    _row("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", Reach.TRUE),
    _row("3fff::/20", "Documentation", "RFC 9637", Reach.FALSE),
    _row("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", Reach.FALSE),
    _row("fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", Reach.FALSE),
    _row("fe80::/10", "Link-Local Unicast", "RFC 4291", Reach.FALSE),
)

# What the special-purpose registries leave to other registries and RFCs.
BEYOND_THE_REGISTRIES: tuple[Block, ...] = (
    _row(
        "224.0.0.0/4",
        "Multicast",
        "RFC 5771",
        Reach.UNLISTED,
        verdict=Verdict.REFUSE,
        note="multicast, not a unicast destination",
    ),
    _row(
        "ff00::/8",
        "Multicast",
        "RFC 4291 §2.7",
        Reach.UNLISTED,
        verdict=Verdict.REFUSE,
        note="multicast, not a unicast destination",
    ),
    _row(
        "::/96",
        "IPv4-compatible Address (deprecated)",
        "RFC 4291 §2.5.5.1",
        Reach.UNLISTED,
        verdict=Verdict.REFUSE,
        note="deprecated; outside 2000::/3, so not global unicast",
    ),
    _row(
        "::ffff:0:0:0/96",
        "IPv4-translated Address",
        "RFC 2765 §2.1",
        Reach.UNLISTED,
        verdict=Verdict.REFUSE,
        note="historic SIIT form; outside 2000::/3, so not global unicast",
    ),
    _row(
        "2000::/3",
        "Global Unicast",
        "RFC 4291 §2.4",
        Reach.UNLISTED,
        verdict=Verdict.ALLOW,
        note="the IPv6 global unicast space; the rest of IPv6 is refused",
    ),
)

# Most specific first, so the first block holding an address is the one that decides.
_BLOCKS = sorted(
    IPV4_SPECIAL_PURPOSE + IPV6_SPECIAL_PURPOSE + BEYOND_THE_REGISTRIES,
    key=lambda b: (b.network.version, -b.network.prefixlen),
)


def block_of(address: IPAddress) -> Block | None:
    """The most specific block holding `address`, or None (plain IPv4, or IPv6 nowhere)."""
    for block in _BLOCKS:
        if block.network.version == address.version and address in block.network:
            return block
    return None


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


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries, the destination first.

    Mapped, translated and compatible forms and NAT64 (both prefixes, read as /96) carry
    one; 6to4 carries its site's address; Teredo carries its client (stored inverted) and
    its server. `::` and `::1` are themselves, not compatible forms of 0.0.0.0 and 0.0.0.1.
    """
    packed = int(address)
    low = ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address in IPV4_TRANSLATED or address in NAT64 or address in NAT64_LOCAL:
        return (low,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        server, client = address.teredo
        return (client, server)
    if packed >> 32 == 0 and packed > 1:
        return (low,)
    return ()


def _admitted(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    return any(address in net for net in allowed)


def refusal(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why `address` may not be contacted, or None when it may.

    The most specific block holding the address decides; an IPv4 address in no block is
    global unicast. An IPv6 address first has every IPv4 address it carries judged (each
    admitted by the allow-list or by the IPv4 table); then a block whose verdict is
    CARRIED (IPv4-mapped, the NAT64 well-known prefix, 6to4) admits it, and any other IPv6
    address must pass as itself, so Teredo and local-use NAT64 stay refused even when what
    they carry is public. The allow-list admits an address it covers outright.
    """
    if _admitted(address, allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        for v4 in embedded_ipv4(address):
            carried = block_of(v4)
            if not _admitted(v4, allowed) and carried and carried.verdict is Verdict.REFUSE:
                return f"{address} carries {v4}, which is {carried.reason}"
    block = block_of(address)
    if block is None:
        if isinstance(address, ipaddress.IPv4Address):
            return None
        return f"{address} is outside {IPV6_GLOBAL_UNICAST}, the IPv6 global unicast space"
    if block.verdict is Verdict.REFUSE:
        return f"{address} is {block.reason}"
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


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses) as networks; host bits are ignored (`10.1.2.3/16`).

    Raises:
        ValueError: naming the first item that is not a network.
    """
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


@dataclass(frozen=True)
class NetworkPolicy:
    """How an operator widens and narrows the default policy (all from settings).

    Attributes:
        allowed_networks: admitted although not globally reachable (an internal proxy).
        denied_networks: refused although globally reachable.
        allow_hosts: when set, the only hosts reached (`example.com`, `*.example.com`).
        deny_hosts: hosts never reached.
    """

    allowed_networks: Sequence[IPNetwork] = ()
    denied_networks: Sequence[IPNetwork] = ()
    allow_hosts: Sequence[str] = ()
    deny_hosts: Sequence[str] = ()

    @classmethod
    def of(
        cls,
        *,
        allowed_networks: Iterable[str] = (),
        denied_networks: Iterable[str] = (),
        allow_hosts: Iterable[str] = (),
        deny_hosts: Iterable[str] = (),
    ) -> NetworkPolicy:
        """The policy settings describe, networks given as text.

        Raises:
            ValueError: a network is not a CIDR.
        """
        return cls(
            parse_networks(allowed_networks),
            parse_networks(denied_networks),
            tuple(allow_hosts),
            tuple(deny_hosts),
        )

    def target(self, url: str) -> Target:
        """The URL's target, when its form and its host pass.

        Raises:
            UrlRefused: with the reason.
        """
        target = parse_target(url)
        if host_matches(target.host, self.deny_hosts):
            raise UrlRefused(f"host {target.host!r} is on the deny list")
        if self.allow_hosts and not host_matches(target.host, self.allow_hosts):
            raise UrlRefused(f"host {target.host!r} is not on the allow list")
        return target

    def admit(self, target: Target, addresses: Iterable[IPAddress]) -> list[IPAddress]:
        """All of `addresses` the target's host resolved to, when every one may be contacted.

        Raises:
            UrlRefused: the host resolved to nothing, or to any refused or denied address.
        """
        checked = check_addresses(target.host, addresses, self.allowed_networks)
        for address in checked:
            if any(address in net for net in self.denied_networks):
                raise UrlRefused(f"{address} is on the deny list")
        return checked
