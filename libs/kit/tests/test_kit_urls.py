"""Unit tier: the kit's URL policy — URL forms, address verdicts, operator lists.

The fetch tool and run webhooks both apply it; `test_kit_reachability.py` probes every
block of the IANA tables, `test_kit_policed_http.py` the policy on the wire.
"""

from __future__ import annotations

import ipaddress

import pytest

from agentrt_kit.urls import (
    MAX_URL_CHARS,
    NetworkPolicy,
    UrlRefused,
    check_addresses,
    embedded_ipv4,
    host_matches,
    parse_networks,
    parse_target,
    refusal,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port"),
    [
        ("http://example.com", "http", "example.com", 80),
        ("https://example.com/a?b=c#d", "https", "example.com", 443),
        ("HTTPS://Example.COM./path", "https", "example.com", 443),
        ("http://example.com:8080/", "http", "example.com", 8080),
        ("https://[2001:db8::1]:8443/", "https", "2001:db8::1", 8443),
        ("http://93.184.216.34/", "http", "93.184.216.34", 80),
    ],
)
def test_parse_target_accepts_http_urls_with_a_host(
    url: str, scheme: str, host: str, port: int
) -> None:
    target = parse_target(url)
    assert (target.url, target.scheme, target.host, target.port) == (url, scheme, host, port)


def test_target_knows_whether_it_names_an_address() -> None:
    assert parse_target("http://10.0.0.1/").host_is_ip
    assert parse_target("http://[::1]/").host_is_ip
    assert not parse_target("http://example.com/").host_is_ip


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("http://example.com/" + "a" * MAX_URL_CHARS, "longer than"),
        ("http://exa mple.com/", "spaces or control"),
        ("http://example.com/\x00", "spaces or control"),
        ("http://example.com/\x7f", "spaces or control"),
        ("http://example.com\n.evil/", "spaces or control"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://example.com/", "scheme 'ftp'"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("//example.com/", "scheme '\\(none\\)'"),
        ("example.com", "scheme '\\(none\\)'"),
        ("http://user@example.com/", "user name or password"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http://@example.com/", "user name or password"),
        ("http://example.com\\@evil.com/", "user name or password"),
        ("http:///path", "names no host"),
        ("http://./", "names no host"),
        ("http://example.com:99999/", "cannot be parsed"),
        ("http://example.com:port/", "cannot be parsed"),
        ("http://[::1/", "cannot be parsed"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata endpoint"),
        ("http://METADATA.google.internal./", "metadata endpoint"),
        ("http://metadata/", "metadata endpoint"),
        ("http://instance-data/latest/meta-data/", "metadata endpoint"),
    ],
)
def test_parse_target_refuses_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused, match=reason):
        parse_target(url)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.216.34",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2002:808:808::1",  # 6to4 wrapping a public address
    ],
)
def test_public_addresses_may_be_contacted(address: str) -> None:
    assert refusal(ip(address)) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "127.0.0.0/8 (Loopback"),
        ("127.255.0.9", "127.0.0.0/8 (Loopback"),
        ("::1", "::1/128 (Loopback Address"),
        ("0.0.0.0", '0.0.0.0/32 ("This host on this network"'),
        ("::", "::/128 (Unspecified Address"),
        ("169.254.169.254", "169.254.0.0/16 (Link Local"),
        ("fe80::1", "fe80::/10 (Link-Local Unicast"),
        ("10.0.0.1", "10.0.0.0/8 (Private-Use"),
        ("172.16.5.4", "172.16.0.0/12 (Private-Use"),
        ("192.168.1.1", "192.168.0.0/16 (Private-Use"),
        ("100.64.0.1", "100.64.0.0/10 (Shared Address Space"),  # CGNAT
        ("100.127.255.254", "100.64.0.0/10 (Shared Address Space"),
        ("192.0.2.10", "192.0.2.0/24 (Documentation (TEST-NET-1)"),
        ("198.51.100.10", "198.51.100.0/24 (Documentation (TEST-NET-2)"),
        ("203.0.113.10", "203.0.113.0/24 (Documentation (TEST-NET-3)"),
        ("2001:db8::1", "2001:db8::/32 (Documentation"),
        ("3fff::1", "3fff::/20 (Documentation"),  # global to Python 3.11
        ("5f00::1", "5f00::/16 (Segment Routing (SRv6) SIDs"),  # global to Python 3.11
        ("100:0:0:1::1", "100:0:0:1::/64 (Dummy IPv6 Prefix"),  # global to Python 3.11
        ("192.88.99.2", "192.88.99.2/32 (6a44-relay anycast address"),  # global to 3.11
        ("198.18.0.1", "198.18.0.0/15 (Benchmarking"),
        ("fc00::1", "fc00::/7 (Unique-Local"),
        ("fd00:ec2::254", "fc00::/7 (Unique-Local"),  # AWS IMDS over IPv6
        ("224.0.0.1", "224.0.0.0/4 (Multicast"),
        ("239.255.255.250", "224.0.0.0/4 (Multicast"),
        ("ff02::1", "ff00::/8 (Multicast"),
        ("ff0e::1", "ff00::/8 (Multicast"),
        ("255.255.255.255", "255.255.255.255/32 (Limited Broadcast"),
        ("240.0.0.1", "240.0.0.0/4 (Reserved"),
        ("4000::1", "outside 2000::/3"),  # reserved by the IETF; global to Python 3.11
        ("fec0::1", "outside 2000::/3"),  # deprecated site-local
    ],
)
def test_internal_addresses_are_refused_with_the_reason(address: str, why: str) -> None:
    reason = refusal(ip(address))
    assert reason is not None
    assert why in reason
    assert address in reason or str(ip(address)) in reason


@pytest.mark.parametrize(
    ("address", "embedded", "why"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1", "Loopback"),  # v4-mapped
        ("::ffff:169.254.169.254", "169.254.169.254", "Link Local"),
        ("::ffff:10.1.2.3", "10.1.2.3", "Private-Use"),
        ("::ffff:0:127.0.0.1", "127.0.0.1", "Loopback"),  # v4-translated (SIIT)
        ("::127.0.0.1", "127.0.0.1", "Loopback"),  # deprecated v4-compatible
        ("::10.0.0.1", "10.0.0.1", "Private-Use"),
        ("64:ff9b::127.0.0.1", "127.0.0.1", "Loopback"),  # NAT64 well-known prefix
        ("64:ff9b::169.254.169.254", "169.254.169.254", "Link Local"),
        ("64:ff9b::192.168.0.1", "192.168.0.1", "Private-Use"),
        ("64:ff9b:1::127.0.0.1", "127.0.0.1", "Loopback"),  # local-use NAT64
        ("64:ff9b:1:ffff::10.0.0.1", "10.0.0.1", "Private-Use"),
        ("2002:7f00:1::", "127.0.0.1", "Loopback"),  # 6to4
        ("2002:a9fe:a9fe::1", "169.254.169.254", "Link Local"),
        ("2002:c0a8:101::", "192.168.1.1", "Private-Use"),
        # Teredo: the client address is stored inverted in the last 32 bits.
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1", "Loopback"),
        ("2001:0:4136:e378:8000:63bf:5601:5601", "169.254.169.254", "Link Local"),
    ],
)
def test_ipv4_inside_ipv6_is_judged_by_the_ipv4_address(
    address: str, embedded: str, why: str
) -> None:
    assert embedded_ipv4(ip(address))[0] == ip(embedded)  # type: ignore[arg-type]
    reason = refusal(ip(address))
    assert reason is not None
    assert f"carries {embedded}, which is in " in reason
    assert why in reason


def test_plain_ipv6_addresses_carry_no_ipv4() -> None:
    assert embedded_ipv4(ip("2606:4700:4700::1111")) == ()  # type: ignore[arg-type]
    assert embedded_ipv4(ip("::1")) == ()  # type: ignore[arg-type]
    assert embedded_ipv4(ip("::")) == ()  # type: ignore[arg-type]


def test_allowed_networks_admit_addresses_otherwise_refused() -> None:
    allowed = [net("10.20.0.0/16"), net("fd00:1::/64")]
    assert refusal(ip("10.20.3.4"), allowed) is None
    assert refusal(ip("fd00:1::5"), allowed) is None
    # the IPv4 an IPv6 address carries is admitted by an IPv4 allowance too
    assert refusal(ip("::ffff:10.20.3.4"), allowed) is None
    assert refusal(ip("64:ff9b::10.20.3.4"), allowed) is None
    # and only what the allowance covers
    assert refusal(ip("10.21.0.1"), allowed) is not None
    assert refusal(ip("::ffff:10.21.0.1"), allowed) is not None
    assert refusal(ip("127.0.0.1"), allowed) is not None


def test_check_addresses_returns_every_address_when_all_are_public() -> None:
    addresses = [ip("93.184.216.34"), ip("2606:2800:220:1:248:1893:25c8:1946")]
    assert check_addresses("example.com", addresses) == addresses


def test_check_addresses_refuses_a_host_with_any_internal_address() -> None:
    # DNS answering one public and one internal address must not get through.
    with pytest.raises(UrlRefused, match=r"'rebind\.example' resolves to 127\.0\.0\.1 is in 127\."):
        check_addresses("rebind.example", [ip("93.184.216.34"), ip("127.0.0.1")])


def test_check_addresses_refuses_a_host_without_addresses() -> None:
    with pytest.raises(UrlRefused, match="resolved to no address"):
        check_addresses("nothing.example", [])


def test_check_addresses_honours_allowed_networks() -> None:
    proxy = [ip("10.0.0.5")]
    with pytest.raises(UrlRefused):
        check_addresses("proxy.internal", proxy)
    assert check_addresses("proxy.internal", proxy, [net("10.0.0.0/24")]) == proxy


@pytest.mark.parametrize(
    ("host", "patterns", "matches"),
    [
        ("example.com", ["example.com"], True),
        ("example.com", ["Example.COM."], True),
        ("www.example.com", ["example.com"], False),
        ("www.example.com", ["*.example.com"], True),
        ("a.b.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], True),
        ("evilexample.com", ["*.example.com"], False),
        ("example.com.evil.net", ["*.example.com"], False),
        ("example.org", ["example.com", "*.example.org"], True),
        ("anything", [], False),
    ],
)
def test_host_matches_exact_names_and_wildcard_domains(
    host: str, patterns: list[str], matches: bool
) -> None:
    assert host_matches(host, patterns) is matches


@pytest.mark.parametrize(
    "address",
    ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_ipv6_forms_of_a_public_ipv4_address_may_be_contacted(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_a_teredo_address_must_also_pass_as_itself() -> None:
    teredo = ipaddress.ip_address("2001:0:4136:e378:8000:63bf:f7f7:f7f7")  # client 8.8.8.8
    reason = refusal(teredo)
    assert reason is not None
    assert reason.startswith(f"{teredo} is in 2001::/32 (TEREDO, RFC 4380, RFC 8190): ")


def test_port_zero_is_refused() -> None:
    with pytest.raises(UrlRefused, match="cannot be parsed"):
        parse_target("http://example.com:0/")


# ------------------------------------------------------------ operator lists


def test_parse_networks_reads_cidrs_and_single_addresses() -> None:
    assert parse_networks(["10.1.2.3/16", " fd00::/8 ", "127.0.0.1"]) == (
        net("10.1.0.0/16"),
        net("fd00::/8"),
        net("127.0.0.1/32"),
    )


def test_parse_networks_names_the_item_that_is_not_a_network() -> None:
    with pytest.raises(ValueError, match="not-a-net"):
        parse_networks(["10.0.0.0/8", "not-a-net"])


def test_network_policy_of_settings_text() -> None:
    policy = NetworkPolicy.of(
        allowed_networks=["127.0.0.0/8"], denied_networks=["8.8.8.0/24"], allow_hosts=["a.test"]
    )
    assert policy.allowed_networks == (net("127.0.0.0/8"),)
    assert policy.denied_networks == (net("8.8.8.0/24"),)
    assert policy.allow_hosts == ("a.test",)
    assert policy.deny_hosts == ()


def test_network_policy_target_applies_the_host_lists_after_the_url_form() -> None:
    policy = NetworkPolicy(allow_hosts=["*.example.com"], deny_hosts=["bad.example.com"])
    assert policy.target("https://api.example.com/hook").host == "api.example.com"
    with pytest.raises(UrlRefused, match=r"'bad\.example\.com' is on the deny list"):
        policy.target("https://bad.example.com/")
    with pytest.raises(UrlRefused, match=r"'example\.org' is not on the allow list"):
        policy.target("https://example.org/")
    with pytest.raises(UrlRefused, match="scheme 'ftp'"):
        policy.target("ftp://api.example.com/")


def test_network_policy_without_lists_takes_any_well_formed_host() -> None:
    assert NetworkPolicy().target("http://anything.test:8080/x").port == 8080


def test_network_policy_admit_refuses_denied_and_internal_addresses() -> None:
    policy = NetworkPolicy.of(allowed_networks=["10.0.0.0/24"], denied_networks=["8.8.8.0/24"])
    target = policy.target("http://svc.test/")
    both = [ip("10.0.0.5"), ip("1.1.1.1")]
    assert policy.admit(target, both) == both
    with pytest.raises(UrlRefused, match=r"8\.8\.8\.8 is on the deny list"):
        policy.admit(target, [ip("1.1.1.1"), ip("8.8.8.8")])
    with pytest.raises(UrlRefused, match="Private-Use"):
        policy.admit(target, [ip("10.0.1.5")])
    with pytest.raises(UrlRefused, match="resolved to no address"):
        policy.admit(target, [])
