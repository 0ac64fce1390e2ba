"""The link fetcher's SSRF rule, table-driven, with an injected resolver (no traffic at all)."""

from __future__ import annotations

import ipaddress

import pytest

from ml_server.links import LinkError, UrlGuard, system_resolve

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

DNS: dict[str, list[str]] = {
    "public.test": [PUBLIC_V4],
    "public6.test": [PUBLIC_V6],
    "localhost.test": ["127.0.0.1"],
    "private.test": ["10.1.2.3"],
    "mixed.test": [PUBLIC_V4, "192.168.1.10"],  # one bad address is enough to refuse
    "imds.test": ["169.254.169.254"],
    "imds6.test": ["fd00:ec2::254"],
    "cgnat.test": ["100.64.0.1"],
    "vpc.test": ["172.31.5.5"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],  # 169.254.169.254 through NAT64
    "multicast.test": ["224.0.0.251"],
    "ula.test": ["fd12:3456::1"],
    "linklocal6.test": ["fe80::1"],
    "unspecified.test": ["0.0.0.0"],
    "broadcast.test": ["255.255.255.255"],
    "docs.test": ["192.0.2.10"],
}


async def fake_resolve(host: str) -> list[str]:
    if host not in DNS:
        raise OSError(f"no such host {host}")
    return DNS[host]


GUARD = UrlGuard(resolve=fake_resolve, blocked=(ipaddress.ip_network("172.31.0.0/16"),))

# (url, allowed?, words the refusal must contain)
CASES: list[tuple[str, bool, str]] = [
    ("https://public.test/article", True, ""),
    ("http://public.test/", True, ""),
    ("https://public6.test/", True, ""),
    (f"https://{PUBLIC_V4}/", True, ""),
    ("ftp://public.test/file", False, "only http and https"),
    ("file:///etc/passwd", False, "only http and https"),
    ("gopher://public.test/", False, "only http and https"),
    ("https://user:pass@public.test/", False, "credentials"),
    ("https://public.test:8443/", False, "port 8443"),
    ("http://public.test:22/", False, "port 22"),
    ("http://127.0.0.1/", False, "not a public address"),
    ("http://localhost.test/", False, "127.0.0.1"),
    ("http://[::1]/", False, "not a public address"),
    ("http://private.test/", False, "10.0.0.0/8"),
    ("http://10.0.0.5/", False, "10.0.0.0/8"),
    ("http://172.16.0.1/", False, "172.16.0.0/12"),
    ("http://192.168.0.1/", False, "192.168.0.0/16"),
    ("http://mixed.test/", False, "192.168.1.10"),
    ("http://169.254.169.254/latest/meta-data/", False, "169.254.0.0/16"),
    ("http://imds.test/latest/api/token", False, "169.254.0.0/16"),
    ("http://[fd00:ec2::254]/latest/meta-data/", False, "fc00::/7"),
    ("http://imds6.test/", False, "fc00::/7"),
    ("http://169.254.170.2/v2/credentials", False, "169.254.0.0/16"),  # ECS task credentials
    ("http://cgnat.test/", False, "100.64.0.0/10"),
    ("http://vpc.test/", False, "blocked range of this deployment (172.31.0.0/16)"),
    ("http://mapped.test/", False, "embeds 127.0.0.1"),
    ("http://[::ffff:169.254.169.254]/", False, "embeds 169.254.169.254"),
    ("http://nat64.test/", False, "embeds 169.254.169.254"),
    ("http://multicast.test/", False, "224.0.0.0/4"),
    ("http://ula.test/", False, "fc00::/7"),
    ("http://linklocal6.test/", False, "fe80::/10"),
    ("http://unspecified.test/", False, "0.0.0.0/8"),
    ("http://broadcast.test/", False, "240.0.0.0/4"),
    ("http://docs.test/", False, "192.0.2.0/24"),
    ("http:///nohost", False, "no host"),
    ("http://[::1/", False, "not a valid URL"),
]


@pytest.mark.parametrize(("url", "allowed", "words"), CASES, ids=[c[0] for c in CASES])
async def test_ssrf_rule(url: str, allowed: bool, words: str) -> None:
    if allowed:
        await GUARD.check_url(url)
        return
    with pytest.raises(LinkError) as err:
        await GUARD.check_url(url)
    assert err.value.status == 400 and err.value.code == "url_not_allowed"
    assert words in err.value.message, err.value.message


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "017700000001", "127.1"])
async def test_numeric_host_spellings_resolve_to_loopback_and_are_refused(host: str) -> None:
    """The system resolver reads these spellings of 127.0.0.1 (inet_aton's rules): the guard
    judges the address they resolve to, not the spelling."""
    guard = UrlGuard(resolve=system_resolve)
    with pytest.raises(LinkError) as err:
        await guard.check_url(f"http://{host}/")
    assert "127.0.0.1" in err.value.message


async def test_an_unknown_host_is_a_dns_failure_not_a_refusal() -> None:
    with pytest.raises(LinkError) as err:
        await GUARD.check_url("http://nowhere.test/")
    assert (err.value.status, err.value.code) == (502, "dns_failure")


async def test_allowed_ranges_are_the_only_exception() -> None:
    guard = UrlGuard(resolve=fake_resolve, allowed=(ipaddress.ip_network("127.0.0.1/32"),))
    await guard.check_url("http://localhost.test/")
    with pytest.raises(LinkError):
        await guard.check_url("http://127.0.0.2/")
    with pytest.raises(LinkError):
        await guard.check_url("http://imds.test/")
