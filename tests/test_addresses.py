"""The outbound address policy (integrations.addresses) and the URL checks built on it: tables."""

from __future__ import annotations

import asyncio

import pytest

from integrations.addresses import AddressRefused, OutboundPolicy, parse_address
from services import validation as v
from services.errors import InvalidInput

STRICT = OutboundPolicy()
LOOPBACK_OK = OutboundPolicy.of(networks=["127.0.0.0/8", "::1/128"])

METADATA_SPELLINGS = [
    "169.254.169.254",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[::169.254.169.254]",  # IPv4-compatible
    "[64:ff9b::169.254.169.254]",  # NAT64
    "[::ffff:0:169.254.169.254]",  # SIIT
    "[2002:a9fe:a9fe::1]",  # 6to4
    "2852039166",  # decimal
    "0xa9fea9fe",  # hexadecimal
    "0251.0376.0251.0376",  # octal
    "169.254.43518",  # short form
    "0xA9.0xFE.0xA9.0xFE",
    "metadata.google.internal.",
    "METADATA.GOOGLE.INTERNAL",
    "metadata",
    "[fd00:ec2::254]",
    "100.100.100.200",
    "168.63.129.16",
    "169.254.170.2",
]
LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "0177.0.0.1",
    "017700000001",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "127.0.0.1.",
]
ALWAYS = [
    "0.0.0.0",  # noqa: S104  a host to refuse, not one to bind
    "0",
    "[::]",
    "169.254.1.1",
    "[fe80::1]",
    "[fe80::1%25eth0]",
    "224.0.0.1",
    "[ff02::1]",
    "255.255.255.255",
    "240.0.0.1",
]
PRIVATE = ["10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "[fd12::1]", "[fc00::1]"]
INVALID_NUMERIC = ["1.2.3.4.5", "08.1.1.1", "0x1g.1", "999.1.1.1", "[1:2:3]"]
PUBLIC = ["8.8.8.8", "[2606:4700:4700::1111]", "[::ffff:8.8.8.8]", "api.example.com"]


def host_of(spelling: str) -> str:
    return spelling.strip("[]").replace("%25", "%")


@pytest.mark.parametrize("spelling", METADATA_SPELLINGS + LOOPBACK_SPELLINGS + ALWAYS + PRIVATE)
def test_refused_spellings(spelling: str) -> None:
    with pytest.raises(AddressRefused):
        STRICT.check_host(host_of(spelling))


@pytest.mark.parametrize("spelling", INVALID_NUMERIC)
def test_numeric_hosts_that_are_no_address_are_refused(spelling: str) -> None:
    with pytest.raises(AddressRefused, match="not a valid"):
        STRICT.check_host(host_of(spelling))


@pytest.mark.parametrize("spelling", PUBLIC)
def test_public_hosts_pass(spelling: str) -> None:
    STRICT.check_host(host_of(spelling))


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_an_allowed_network_lifts_the_loopback_refusal(spelling: str) -> None:
    LOOPBACK_OK.check_host(host_of(spelling))


@pytest.mark.parametrize("spelling", METADATA_SPELLINGS + ALWAYS)
def test_no_network_allowance_reaches_metadata_or_link_local(spelling: str) -> None:
    everything = OutboundPolicy.of(networks=["0.0.0.0/0", "::/0"])
    with pytest.raises(AddressRefused):
        everything.check_host(host_of(spelling))


def test_allowed_hosts_are_trusted_whatever_they_are() -> None:
    policy = OutboundPolicy.of(hosts=["Minio.Internal.", "10.1.2.3"])
    policy.check_host("minio.internal")
    policy.check_host("MINIO.internal.")
    policy.check_host("10.1.2.3")
    policy.check_host("0x0a010203")  # the same address, spelled otherwise
    with pytest.raises(AddressRefused):
        policy.check_host("10.1.2.4")


def test_spellings_normalise_to_the_address_the_c_library_connects_to() -> None:
    assert str(parse_address("2130706433")) == "127.0.0.1"
    assert str(parse_address("0x7f.1")) == "127.0.0.1"
    assert str(parse_address("[::FFFF:7F00:1]")) == "::ffff:7f00:1"
    assert parse_address("example.com") is None


async def test_every_resolved_address_is_checked_and_a_rebinding_name_is_refused() -> None:
    answers = {"twice.test": ["93.184.216.34", "127.0.0.1"], "public.test": ["93.184.216.34"]}

    async def lookup(host: str, port: int, family: int) -> list[tuple[int, str]]:
        return [(2, a) for a in answers[host]]

    policy = OutboundPolicy.of(lookup=lookup)
    assert await policy.resolve("public.test", 80) == [(2, "93.184.216.34")]
    with pytest.raises(AddressRefused, match="loopback"):
        await policy.resolve("twice.test", 80)  # one bad answer refuses the name
    answers["public.test"] = ["::ffff:169.254.169.254"]
    with pytest.raises(AddressRefused, match="metadata"):
        await policy.resolve("public.test", 80)


async def test_a_name_that_does_not_resolve_passes_creation_and_is_checked_later() -> None:
    async def lookup(host: str, port: int, family: int) -> list[tuple[int, str]]:
        raise OSError("no such name")

    await OutboundPolicy.of(lookup=lookup).check_url("http://nowhere.test/v1")


async def test_a_slow_resolver_does_not_hold_creation() -> None:
    async def lookup(host: str, port: int, family: int) -> list[tuple[int, str]]:
        await asyncio.Event().wait()
        return []

    policy = OutboundPolicy.of(lookup=lookup)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await policy.check_url("http://slow.test/v1")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://api.example.com/v1?key=sk-123", "query string"),
        ("http://api.example.com/v1#key=sk-123", "query string or fragment"),
        ("http://user:pw@api.example.com/v1", "credentials"),
        ("http://@api.example.com/v1", "credentials"),
        ("ftp://api.example.com/v1", "http://"),
        ("http://①②⑦.0.0.1/v1", "plainly"),
        ("http://127.0.0.%31/v1", "plainly"),
        ("http://127.0.0.1 x/v1", "plainly"),
        ("http://127.0.0.1:80\\@api.example.com/v1", "credentials"),
        ("http://api.example.com\\.127.0.0.1/v1", "plainly"),
        ("http://[fe80::1%25eth0]/v1", "plainly"),
        ("http://api.example.com:99999/v1", "valid URL"),
        ("http://[::ffff:169.254.169.254]/v1", "metadata"),
        ("http://2130706433/v1", "loopback"),
        ("http://metadata.google.internal./v1", "metadata"),
    ],
)
def test_url_checks_name_the_field(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as caught:
        v.check_remote_url("source.url", url, outbound=STRICT)
    assert caught.value.field == "source.url"
    with pytest.raises(InvalidInput, match=reason) as caught:
        v.check_endpoint("downloadTarget.s3.endpoint", url, outbound=STRICT)
    assert caught.value.field == "downloadTarget.s3.endpoint"


def test_good_urls_pass_unchanged_but_for_a_trailing_slash() -> None:
    url = "https://api.example.com/v1/"
    assert v.check_remote_url("source.url", url, outbound=STRICT) == url.rstrip("/")
    assert v.check_endpoint("e", "http://127.0.0.1:9000", outbound=LOOPBACK_OK) == (
        "http://127.0.0.1:9000"
    )
    assert v.check_endpoint("e", None, outbound=STRICT) is None
