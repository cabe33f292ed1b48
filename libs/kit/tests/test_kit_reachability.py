"""Unit tier: the kit's address policy against every block of the IANA special-purpose tables.

The tables in `agentrt_kit.urls` are the IANA IPv4 and IPv6 Special-Purpose Address
Registries plus the few rows the registries leave out (multicast, the old IPv4-in-IPv6 forms,
2000::/3). Each block's edges are probed, its neighbours just outside, and every way IPv6 can
carry a refused IPv4 address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from agentrt_kit.urls import (
    BEYOND_THE_REGISTRIES,
    IPV4_SPECIAL_PURPOSE,
    IPV6_SPECIAL_PURPOSE,
    Block,
    Reach,
    Verdict,
    block_of,
    refusal,
)

ip = ipaddress.ip_address
IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

REGISTRY = IPV4_SPECIAL_PURPOSE + IPV6_SPECIAL_PURPOSE
EVERY_BLOCK = REGISTRY + BEYOND_THE_REGISTRIES
GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
REFUSED = [b for b in EVERY_BLOCK if b.verdict is Verdict.REFUSE]
REGISTRY_ALLOWED = [b for b in REGISTRY if b.verdict is Verdict.ALLOW]
CARRIED = [b for b in EVERY_BLOCK if b.verdict is Verdict.CARRIED]
REFUSED_V4 = [b for b in REFUSED if b.network.version == 4]


def ids(block: Block) -> str:
    return str(block.network)


def edges(block: Block) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [block.network[0], block.network[-1]]


def plain_global_unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """In no table block at all (2000::/3 aside), and IPv4 or inside 2000::/3."""
    for block in EVERY_BLOCK:
        if (
            block.network.version == address.version
            and address in block.network
            and block.network != GLOBAL_UNICAST_V6
        ):
            return False
    return address.version == 4 or address in GLOBAL_UNICAST_V6


def neighbours(block: Block) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses just before and just after the block, where they exist."""
    first, last = int(block.network[0]), int(block.network[-1])
    around = [n for n in (first - 1, last + 1) if 0 <= n < 2**block.network.max_prefixlen]
    return [IPv6(n) if block.network.version == 6 else IPv4(n) for n in around]


# --------------------------------------------------------------------- the tables themselves


def test_the_tables_hold_every_entry_of_both_registries_as_iana_lists_them() -> None:
    v4 = {str(b.network): b.reach.value for b in IPV4_SPECIAL_PURPOSE}
    v6 = {str(b.network): b.reach.value for b in IPV6_SPECIAL_PURPOSE}
    blank = Reach.TERMINATED.value
    assert v4 == {
        "0.0.0.0/8": "False",
        "0.0.0.0/32": "False",
        "10.0.0.0/8": "False",
        "100.64.0.0/10": "False",
        "127.0.0.0/8": "False",
        "169.254.0.0/16": "False",
        "172.16.0.0/12": "False",
        "192.0.0.0/24": "False",
        "192.0.0.0/29": "False",
        "192.0.0.8/32": "False",
        "192.0.0.9/32": "True",
        "192.0.0.10/32": "True",
        "192.0.0.170/32": "False",
        "192.0.0.171/32": "False",
        "192.0.2.0/24": "False",
        "192.31.196.0/24": "True",
        "192.52.193.0/24": "True",
        "192.88.99.0/24": blank,
        "192.88.99.2/32": "False",
        "192.168.0.0/16": "False",
        "192.175.48.0/24": "True",
        "198.18.0.0/15": "False",
        "198.51.100.0/24": "False",
        "203.0.113.0/24": "False",
        "240.0.0.0/4": "False",
        "255.255.255.255/32": "False",
    }
    assert v6 == {
        "::1/128": "False",
        "::/128": "False",
        "::ffff:0:0/96": "False",
        "64:ff9b::/96": "True",
        "64:ff9b:1::/48": "False",
        "100::/64": "False",
        "100:0:0:1::/64": "False",
        "2001::/23": "False",
        "2001::/32": "N/A",
        "2001:1::1/128": "True",
        "2001:1::2/128": "True",
        "2001:1::3/128": "True",
        "2001:2::/48": "False",
        "2001:3::/32": "True",
        "2001:4:112::/48": "True",
        "2001:10::/28": blank,
        "2001:20::/28": "True",
        "2001:30::/28": "True",
        "2001:db8::/32": "False",
        "2002::/16": "N/A",
        "2620:4f:8000::/48": "True",
        "3fff::/20": "False",
        "5f00::/16": "False",
        "fc00::/7": "False",
        "fe80::/10": "False",
    }


def test_every_registry_entry_iana_calls_false_is_refused_unless_it_carries_ipv4() -> None:
    for block in REGISTRY:
        if block.reach is Reach.FALSE and block.verdict is not Verdict.REFUSE:
            assert block.verdict is Verdict.CARRIED, block
            assert str(block.network) == "::ffff:0:0/96"  # the one False entry judged by IPv4


def test_every_verdict_iana_does_not_decide_says_why() -> None:
    undecided = [b for b in EVERY_BLOCK if b.reach not in (Reach.TRUE, Reach.FALSE)]
    assert {str(b.network) for b in undecided if b.reach is Reach.NOT_APPLICABLE} == {
        "2001::/32",
        "2002::/16",
    }
    assert all(b.note for b in undecided)


# --------------------------------------------------------------------- edges and neighbours


@pytest.mark.parametrize("block", REFUSED, ids=ids)
def test_the_first_and_last_address_of_a_refused_block_are_refused(block: Block) -> None:
    for address in edges(block):
        reason = refusal(address)
        assert reason is not None, address
        assert reason.startswith(f"{address} ")


@pytest.mark.parametrize("block", REFUSED, ids=ids)
def test_a_global_unicast_address_just_outside_a_refused_block_is_allowed(block: Block) -> None:
    for address in neighbours(block):
        if plain_global_unicast(address):
            assert refusal(address) is None, address


def test_the_neighbour_checks_reach_most_refused_blocks() -> None:
    """The test above passes over neighbours that are special themselves; most are not."""
    checked = {
        str(b.network) for b in REFUSED if any(plain_global_unicast(n) for n in neighbours(b))
    }
    assert len(checked) >= 18, checked
    assert {"10.0.0.0/8", "2001:db8::/32", "3fff::/20", "2001::/23", "fc00::/7"} - checked == {
        "fc00::/7"  # fbff:... and fe00:: lie outside 2000::/3
    }


@pytest.mark.parametrize("block", REGISTRY_ALLOWED, ids=ids)
def test_a_globally_reachable_block_is_allowed_even_inside_a_refused_one(block: Block) -> None:
    for address in edges(block):
        assert block_of(address) is block
        assert refusal(address) is None, address


@pytest.mark.parametrize("block", CARRIED, ids=ids)
def test_a_block_judged_by_the_ipv4_it_carries_follows_that_address(block: Block) -> None:
    # first and last carry 0.0.0.0 and 255.255.255.255 (for 6to4: in the prefix bits)
    for address in edges(block):
        assert refusal(address) is not None, address
    public = next(
        a
        for a in (ip("::ffff:8.8.8.8"), ip("64:ff9b::808:808"), ip("2002:808:808::1"))
        if a in block.network
    )
    assert refusal(public) is None


# --------------------------------------------------------------------- IPv4 inside IPv6

NAT64 = int(IPv6("64:ff9b::"))
NAT64_LOCAL = int(IPv6("64:ff9b:1::"))
TEREDO_SERVER = IPv4("65.54.227.120")
PUBLIC = IPv4("8.8.8.8")


def teredo(server: IPv4, client: IPv4) -> IPv6:
    """2001:0:<server>:<flags>:<port>:<client>, the client address and port stored inverted."""
    return IPv6(
        (0x2001_0000 << 96)
        | (int(server) << 64)
        | (0x8000 << 48)
        | (0x63BF << 32)
        | (int(client) ^ 0xFFFF_FFFF)
    )


FORMS: dict[str, Callable[[IPv4], IPv6]] = {
    "mapped": lambda v4: IPv6((0xFFFF << 32) | int(v4)),
    "translated": lambda v4: IPv6((0xFFFF_0000 << 32) | int(v4)),
    "compatible": lambda v4: IPv6(int(v4)),
    "nat64": lambda v4: IPv6(NAT64 | int(v4)),
    "nat64-local": lambda v4: IPv6(NAT64_LOCAL | int(v4)),
    "6to4": lambda v4: IPv6((0x2002 << 112) | (int(v4) << 80) | 1),
    "teredo-client": lambda v4: teredo(TEREDO_SERVER, v4),
    "teredo-server": lambda v4: teredo(v4, PUBLIC),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("block", REFUSED_V4, ids=ids)
def test_ipv6_carrying_a_refused_ipv4_address_is_refused_and_says_so(
    block: Block, form: str
) -> None:
    for v4 in edges(block):
        assert isinstance(v4, IPv4)
        address = FORMS[form](v4)
        reason = refusal(address)
        assert reason is not None, address
        if form == "compatible" and int(v4) < 2:
            continue  # :: and ::1 are refused as themselves, not as 0.0.0.0 and 0.0.0.1
        assert f"{address} carries {v4}, which is in " in reason


@pytest.mark.parametrize(
    ("form", "allowed"),
    [
        ("mapped", True),  # a dual-stack socket sends IPv4 to 8.8.8.8
        ("nat64", True),  # the well-known prefix reaches global IPv4 only
        ("6to4", True),
        ("translated", False),  # outside 2000::/3
        ("compatible", False),  # outside 2000::/3
        ("nat64-local", False),  # IANA: not globally reachable
        ("teredo-client", False),  # Teredo is refused as itself
    ],
)
def test_ipv6_carrying_a_public_ipv4_address_passes_only_where_the_form_does(
    form: str, allowed: bool
) -> None:
    assert (refusal(FORMS[form](PUBLIC)) is None) is allowed


def test_the_operator_allow_list_admits_what_it_names() -> None:
    local_nat64 = ip("64:ff9b:1::808:808")
    assert refusal(local_nat64) is not None
    assert refusal(local_nat64, [ipaddress.ip_network("64:ff9b:1::/96")]) is None
    # allowing the IPv4 address admits its mapped form, not a form refused as itself
    allowed = [ipaddress.ip_network("10.0.0.0/8")]
    assert refusal(ip("::ffff:10.1.2.3"), allowed) is None
    assert refusal(ip("64:ff9b:1::a01:203"), allowed) is not None
    assert refusal(ip("3fff::1"), [ipaddress.ip_network("3fff::/20")]) is None


# --------------------------------------------------------------------- ordinary addresses


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "9.9.9.9",
        "93.184.216.34",
        "192.0.1.1",  # beside 192.0.0.0/24
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2a00:1450:4001:80b::200e",
        "2620:fe::fe",
    ],
)
def test_ordinary_public_addresses_are_allowed(address: str) -> None:
    assert block_of(ip(address)) in (None, *BEYOND_THE_REGISTRIES)
    assert refusal(ip(address)) is None
