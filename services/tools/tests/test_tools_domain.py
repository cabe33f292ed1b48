"""Unit tier: the pure rules of the tools domain (paths, URLs and addresses, text, results)."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable

import pytest

from tool_service.domain.paths import (
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_PATH_CHARS,
    PathRefused,
    path_parts,
    workspace_parts,
)
from tool_service.domain.text import (
    SNIFF_BYTES,
    decode_text,
    is_binary,
    lines_of,
    matching_lines,
    slice_lines,
)
from tool_service.domain.tools import Artifact, ToolFailure, ToolResult
from tool_service.domain.urls import (
    MAX_URL_CHARS,
    UrlRefused,
    check_addresses,
    embedded_ipv4,
    host_matches,
    parse_target,
    refusal,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network


# ------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("notes.txt", ["notes.txt"]),
        ("notes/today.txt", ["notes", "today.txt"]),
        ("./notes//today.txt/", ["notes", "today.txt"]),
        ("a/./b", ["a", "b"]),
        ("...", ["..."]),
        ("..hidden", ["..hidden"]),
        ("répertoire/naïve.md", ["répertoire", "naïve.md"]),
        ("a\uff0fb", ["a\uff0fb"]),  # a fullwidth solidus inside a name is just a character of it
    ],
)
def test_path_parts_splits_plain_relative_paths(path: str, parts: list[str]) -> None:
    assert path_parts(path) == parts


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (123, "must be a string"),
        ("a\x00b", "NUL"),
        ("a\nb", "control or format"),
        ("a\x7fb", "control or format"),
        ("a\u200bb", "control or format"),  # zero-width space
        ("evil\u202etxt.exe", "control or format"),  # right-to-left override
        ("a\\b", "backslash"),
        ("..\\etc\\passwd", "backslash"),
        ("/etc/passwd", "relative"),
        ("~/secrets", "relative"),
        ("~root", "relative"),
        ("..", "climb out"),
        ("../etc/passwd", "climb out"),
        ("a/../../b", "climb out"),
        ("a/b/..", "climb out"),
        ("\uff0e\uff0e/etc/passwd", "climb out"),  # fullwidth full stops fold to '..'
        ("a/\uff0e\uff0e/b", "climb out"),
        ("\u2025/x", "climb out"),  # TWO DOT LEADER folds to '..'
        ("\uff0fetc/passwd", "climb out"),  # fullwidth solidus folds to '/'
        ("\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fetc", "climb out"),
        ("a\uff0f\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fb", "climb out"),
        ("", "names no file"),
        (".", "names no file"),
        ("./", "names no file"),
        ("x" * (MAX_PATH_CHARS + 1), "longer than"),
        ("/".join(["d"] * (MAX_DEPTH + 1)), "deeper"),
        ("n" * (MAX_NAME_BYTES + 1), "name longer"),
        ("é" * (MAX_NAME_BYTES // 2 + 1), "name longer"),  # bytes, not characters
    ],
)
def test_path_parts_refuses_with_the_reason(path: object, reason: str) -> None:
    with pytest.raises(PathRefused, match=reason):
        path_parts(path)  # type: ignore[arg-type]


def test_path_parts_accepts_the_limits_exactly() -> None:
    assert len(path_parts("/".join(["d"] * MAX_DEPTH))) == MAX_DEPTH
    assert path_parts("n" * MAX_NAME_BYTES) == ["n" * MAX_NAME_BYTES]


@pytest.mark.parametrize("path", ["", ".", "./", ".//."])
def test_path_parts_allows_the_workspace_itself_only_when_asked(path: str) -> None:
    assert path_parts(path, allow_root=True) == []
    with pytest.raises(PathRefused):
        path_parts(path)


def test_allow_root_still_refuses_climbing_out() -> None:
    with pytest.raises(PathRefused, match="climb out"):
        path_parts("..", allow_root=True)
    with pytest.raises(PathRefused, match="relative"):
        path_parts("/", allow_root=True)


@pytest.mark.parametrize(
    ("name", "segments"),
    [
        ("agent-1", ["agent-1"]),
        ("agent-1/task-9", ["agent-1", "task-9"]),
        ("A.b_c:d-e", ["A.b_c:d-e"]),
        ("x" * 128, ["x" * 128]),
    ],
)
def test_workspace_parts_accepts_one_or_two_plain_segments(name: str, segments: list[str]) -> None:
    assert workspace_parts(name) == segments


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/..",
        "../a",
        "a/b/c",
        "/a",
        "a/",
        "a//b",
        "-a",
        ".hidden",
        "_a",
        "a b",
        "a\\b",
        "x" * 129,
        "\uff41gent",  # fullwidth letters are not ASCII letters
        "agent\n",
    ],
)
def test_workspace_parts_refuses_anything_else(name: str) -> None:
    with pytest.raises(PathRefused):
        workspace_parts(name)


# ------------------------------------------------------------------- URLs


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


# ------------------------------------------------------------------- text


def test_text_is_not_binary() -> None:
    assert not is_binary(b"")
    assert not is_binary(b"hello\nworld\n")
    assert not is_binary("naïve café — ☃\n".encode())


def test_nul_or_invalid_utf8_is_binary() -> None:
    assert is_binary(b"abc\x00def")
    assert is_binary(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert is_binary(b"caf\xe9")  # Latin-1, not UTF-8, ending mid-"character"
    assert is_binary(b"caf\xe9s")
    assert is_binary(b"\xff\xfeh\x00i\x00")


def test_a_character_cut_by_the_sniff_window_is_still_text() -> None:
    for char in ("é", "€", "😀"):  # 2, 3 and 4 bytes
        encoded = char.encode()
        for cut in range(1, len(encoded)):
            data = b"a" * (SNIFF_BYTES - cut) + encoded + b"tail"
            assert not is_binary(data), (char, cut)
            assert decode_text(data).endswith(char + "tail")


def test_invalid_bytes_near_the_sniff_window_edge_are_still_binary() -> None:
    assert is_binary(b"a" * (SNIFF_BYTES - 1) + b"\xff" + b"text")
    assert is_binary(b"a" * (SNIFF_BYTES - 2) + b"\xe2\x28" + b"text")  # bad continuation


def test_data_that_really_ends_mid_character_is_binary() -> None:
    assert is_binary(b"a" * (SNIFF_BYTES - 1) + b"\xe2")  # exactly the window: nothing cut
    assert is_binary(b"short \xe2\x82")


def test_only_the_start_of_the_data_is_sniffed() -> None:
    data = b"a" * SNIFF_BYTES + b"\x00\xff"
    assert not is_binary(data)
    assert decode_text(data).endswith("\x00\ufffd")


def test_slice_lines_returns_an_inclusive_one_based_range() -> None:
    text = "one\ntwo\nthree\nfour\n"
    assert slice_lines(text, 1, None, 100) == (["one", "two", "three", "four"], 4, False)
    assert slice_lines(text, 2, 3, 100) == (["two", "three"], 4, False)
    assert slice_lines(text, 4, 4, 100) == (["four"], 4, False)


def test_slice_lines_clamps_to_the_text() -> None:
    text = "one\ntwo\n"
    assert slice_lines(text, 2, 99, 100) == (["two"], 2, False)
    assert slice_lines(text, 3, None, 100) == ([], 2, False)
    assert slice_lines(text, 50, 60, 100) == ([], 2, False)
    assert slice_lines("", 1, None, 100) == ([], 0, False)


def test_slice_lines_cuts_at_max_lines_and_says_so() -> None:
    text = "\n".join(str(n) for n in range(1, 11))
    assert slice_lines(text, 1, None, 3) == (["1", "2", "3"], 10, True)
    assert slice_lines(text, 8, None, 3) == (["8", "9", "10"], 10, False)
    assert slice_lines(text, 5, 7, 3) == (["5", "6", "7"], 10, False)


def test_slice_lines_counts_windows_line_endings_as_one() -> None:
    assert slice_lines("a\r\nb\r\n", 1, None, 10) == (["a", "b"], 2, False)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("", []),
        ("a", ["a"]),
        ("a\nb", ["a", "b"]),
        ("a\nb\n", ["a", "b"]),
        ("a\r\nb\r\n", ["a", "b"]),
        ("\n", [""]),
        ("a\n\n", ["a", ""]),
        ("\nz", ["", "z"]),
    ],
)
def test_lines_end_at_newlines_and_a_final_newline_closes_the_last(
    text: str, lines: list[str]
) -> None:
    assert lines_of(text) == lines


def finder(pattern: str) -> Callable[[bytes, int], int | None]:
    regex = re.compile(pattern.encode(), re.MULTILINE)

    def find(data: bytes, pos: int) -> int | None:
        match = regex.search(data, pos)
        return match.start() if match else None

    return find


def test_matching_lines_numbers_each_matching_line_once() -> None:
    data = b"one\ntwo\nthree\ntttt\n"
    assert matching_lines(data, finder("t"), 10) == (
        [(2, "two"), (3, "three"), (4, "tttt")],
        False,
    )
    assert matching_lines(data, finder("^o"), 10) == ([(1, "one")], False)
    assert matching_lines(data, finder("zzz"), 10) == ([], False)


def test_matching_lines_stops_at_the_limit_only_when_more_match() -> None:
    data = b"t1\nt2\nx\nt3\n"
    assert matching_lines(data, finder("t"), 2) == ([(1, "t1"), (2, "t2")], True)
    assert matching_lines(data, finder("t"), 3) == ([(1, "t1"), (2, "t2"), (4, "t3")], False)


@pytest.mark.parametrize(
    ("data", "pattern", "expected"),
    [
        (b"", "", []),
        (b"a\nb", "", [(1, "a"), (2, "b")]),
        (b"a\nb\n", "", [(1, "a"), (2, "b")]),
        (b"a\nb\n", "$", [(1, "a"), (2, "b")]),
        (b"\n\n", "^", [(1, ""), (2, "")]),
        (b"a\r\nb\r\n", "b$", [(2, "b")]),
        (b"caf\xc3\xa9\nno\xff\n", "no", [(2, "no\ufffd")]),
    ],
)
def test_matching_lines_agrees_with_the_line_numbers_read_lines_uses(
    data: bytes, pattern: str, expected: list[tuple[int, str]]
) -> None:
    assert matching_lines(data, finder(pattern), 100) == (expected, False)
    lines = lines_of(decode_text(data))
    assert all(lines[n - 1] == line for n, line in expected)


# ------------------------------------------------------------------ tools


def test_tool_result_survives_its_document_form() -> None:
    result = ToolResult(
        content="wrote 3 bytes",
        data={"filename": "a.txt", "nested": {"list": [1, 2.5, None, True]}},
        artifacts=(
            Artifact("file", "a.txt", "text/plain", 3),
            Artifact("file", "downloads/b.md"),
        ),
        bytes=3,
    )
    doc = json.loads(json.dumps(result.to_document()))
    assert ToolResult.from_document(doc) == result
    assert not ToolResult.from_document(doc).failed


def test_a_failed_result_survives_its_document_form() -> None:
    result = ToolResult(error_code="NOT_FOUND", error_message="a.txt does not exist")
    back = ToolResult.from_document(result.to_document())
    assert back == result
    assert back.failed


def test_documents_written_before_byte_counts_still_load() -> None:
    doc = ToolResult(content="x").to_document()
    del doc["bytes"]
    assert ToolResult.from_document(doc).bytes == 0


def test_tool_failure_becomes_a_failed_result() -> None:
    failure = ToolFailure("TOO_LARGE", "a.bin is 9 bytes; at most 4 are read", bytes_used=9)
    assert str(failure) == "a.bin is 9 bytes; at most 4 are read"
    result = failure.result()
    assert result.failed
    assert (result.error_code, result.error_message, result.bytes) == (
        "TOO_LARGE",
        "a.bin is 9 bytes; at most 4 are read",
        9,
    )
    assert result.content == ""
    assert result.artifacts == ()


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
