"""Link analysis: fetch one web page safely (through the Webshare proxy) and extract its text.

The fetch is the dangerous part of this feature: the server runs inside a VPC next to the
instance metadata service, the database and every other private address. So every URL, the
first and each redirect target, passes :class:`UrlGuard` before a connection is made:

- only ``http`` and ``https``, no user-info in the URL, ports 80/443 unless configured;
- the host is resolved and *every* address must be public: loopback, private (RFC 1918, ULA),
  link-local (169.254.0.0/16, fe80::/10, so the IMDS addresses 169.254.169.254 and
  fd00:ec2::254 too), CGNAT (100.64.0.0/10), multicast, reserved, unspecified and the VPC's own
  ranges (``LINKS_BLOCKED_CIDRS``) are refused;
- a direct fetch connects through a resolver that applies the same rule to the address it
  hands to the socket, so a DNS answer that changes between the check and the connection (DNS
  rebinding) is refused on the connection itself;
- redirects are followed by hand (at most ``LINKS_MAX_REDIRECTS``), each one checked again;
- bounded in time (``LINKS_TIMEOUT_SECONDS``), size (``LINKS_MAX_BYTES``, read incrementally)
  and content type (HTML, XHTML, plain text); no cookies are kept or sent and no header of the
  caller is forwarded.

With ``WEBSHARE_PROXY_USERNAME``/``WEBSHARE_PROXY_PASSWORD`` set, every fetch goes through the
proxy (``LINKS_PROXY_URL``, HTTP proxy with basic authentication; HTTPS through CONNECT). The
proxy then resolves and connects from its own network, where our VPC and IMDS do not exist; the
guard still checks the host first. Without proxy credentials a direct fetch happens only when
``LINKS_ALLOW_DIRECT`` is true; otherwise the feature answers 503 and says which settings to set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str], Awaitable[list[str]]]
"""Host name -> its addresses (strings). Injected in tests; the default uses getaddrinfo."""

ALLOWED_CONTENT_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
USER_AGENT = "HumansaLinkAnalysis/1.0 (+https://github.com/humansa)"

# Ranges never fetched, whatever the resolver says. Python's is_global covers most of them;
# they are listed so the rule reads in one place and does not depend on the Python version.
ALWAYS_BLOCKED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, IMDS 169.254.169.254, ECS 169.254.170.2
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::ffff:0:0/96",  # IPv4-mapped: checked again as IPv4 below
        "64:ff9b::/96",  # NAT64: embeds an IPv4 address
        "100::/64",  # discard
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local, IMDS fd00:ec2::254
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)


class LinkError(Exception):
    """A fetch the server refuses or cannot complete; ``status`` and ``code`` go to the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def refused(message: str) -> LinkError:
    return LinkError(400, "url_not_allowed", message)


def _blocked_reason(address: IPAddress, extra: Sequence[Network]) -> str | None:
    """Why an address must not be fetched, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            inner = _blocked_reason(mapped, extra)
            return f"embeds {mapped}, which {inner}" if inner else None
        if address in ipaddress.ip_network("64:ff9b::/96"):
            inner_v4 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            inner = _blocked_reason(inner_v4, extra)
            return f"embeds {inner_v4}, which {inner}" if inner else None
    for network in extra:
        if address.version == network.version and address in network:
            return f"is in a blocked range of this deployment ({network})"
    for network in ALWAYS_BLOCKED:
        if address.version == network.version and address in network:
            return f"is not a public address ({network})"
    if not address.is_global:
        return "is not a public address"
    return None


async def system_resolve(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class UrlGuard:
    """The SSRF rule: which URLs may be fetched (see the module docstring).

    Args:
        resolve: host -> addresses; default the system resolver.
        blocked: extra ranges refused (the VPC CIDR and peered ranges).
        allowed: ranges accepted although the rule refuses them. Empty in production; the tests
            use it for their servers on 127.0.0.1 (a stand-in for the internet).
        ports: ports a URL may name. Default 80 and 443.
    """

    resolve: Resolve = system_resolve
    blocked: tuple[Network, ...] = ()
    allowed: tuple[Network, ...] = ()
    ports: frozenset[int] = frozenset({80, 443})

    def check_syntax(self, url: str) -> tuple[str, str, int]:
        """Scheme, host and port of an acceptable URL, or LinkError naming the problem."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise refused(f"'url' is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise refused(f"only http and https URLs are fetched, not {scheme or 'no scheme'!r}")
        if parts.username is not None or parts.password is not None:
            raise refused("URLs with credentials (user:password@) are not fetched")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise refused("the URL has no host")
        port = port or (443 if scheme == "https" else 80)
        if port not in self.ports:
            allowed = ", ".join(str(p) for p in sorted(self.ports))
            raise refused(f"port {port} is not fetched (allowed: {allowed})")
        return scheme, host, port

    def check_address(self, host: str, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip.version == n.version and ip in n for n in self.allowed):
            return
        reason = _blocked_reason(ip, self.blocked)
        if reason:
            shown = host if host == address else f"{host} ({address})"
            raise refused(f"{shown} {reason}")

    async def addresses(self, host: str) -> list[str]:
        """The host's addresses, all checked; LinkError when any is refused or none exists."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            found = [str(literal)]
        else:
            try:
                found = await self.resolve(host)
            except (OSError, UnicodeError) as exc:
                raise LinkError(502, "dns_failure", f"cannot resolve {host}: {exc}") from None
            if not found:
                raise LinkError(502, "dns_failure", f"{host} has no address")
        for address in found:  # every address: a client library may use any of them
            self.check_address(host, address)
        return found

    async def check_url(self, url: str) -> None:
        _, host, _ = self.check_syntax(url)
        await self.addresses(host)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for direct fetches: the address handed to each new connection is the
    one the guard checked at that moment (no DNS rebinding between the check and the connect).
    The proxy's own host, when a proxy is used, is exempt: it is configuration, not user input."""

    def __init__(self, guard: UrlGuard, exempt_host: str | None = None) -> None:
        self._guard = guard
        self._exempt = exempt_host

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._exempt is not None and host == self._exempt:
            addresses = await system_resolve(host)
        else:
            addresses = await self._guard.addresses(host)
        results: list[ResolveResult] = []
        for address in addresses:
            ip = ipaddress.ip_address(address)
            results.append(
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        return results

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class FetchedPage:
    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    redirects: list[str] = field(default_factory=list)
    elapsed_ms: int = 0
    via_proxy: bool = False


@dataclass(frozen=True)
class FetchPolicy:
    """Bounds of one fetch.

    Args:
        proxy_url: ``http://host:port`` of the forward proxy; None = direct.
        proxy_auth: (username, password) for the proxy's basic authentication.
        allow_direct: fetch without a proxy when none is configured. Default False.
        max_bytes: largest body read. Default 2 MiB.
        timeout_seconds: the whole fetch, redirects included. Default 15.
        max_redirects: redirects followed. Default 5.
    """

    proxy_url: str | None = None
    proxy_auth: tuple[str, str] | None = None
    allow_direct: bool = False
    max_bytes: int = 2 * 1024 * 1024
    timeout_seconds: float = 15.0
    max_redirects: int = 5


class LinkFetcher:
    """Fetches pages under a :class:`UrlGuard` and a :class:`FetchPolicy`."""

    def __init__(self, policy: FetchPolicy, guard: UrlGuard | None = None) -> None:
        self.policy = policy
        self.guard = guard or UrlGuard()

    @property
    def available(self) -> bool:
        return self.policy.proxy_url is not None or self.policy.allow_direct

    async def fetch(self, url: str) -> FetchedPage:
        policy = self.policy
        if not self.available:
            raise LinkError(
                503,
                "link_fetch_not_configured",
                "link analysis needs the Webshare proxy (WEBSHARE_PROXY_USERNAME and "
                "WEBSHARE_PROXY_PASSWORD secrets) or LINKS_ALLOW_DIRECT=true",
            )
        proxy_host = urlsplit(policy.proxy_url).hostname if policy.proxy_url else None
        proxy_headers = (
            {"Proxy-Authorization": aiohttp.encode_basic_auth(*policy.proxy_auth)}
            if policy.proxy_auth
            else None
        )
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.guard, exempt_host=proxy_host),
            use_dns_cache=False,
            force_close=True,
            limit=4,
        )
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=policy.timeout_seconds)
        async with aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=timeout,
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept": ", ".join(ALLOWED_CONTENT_TYPES)},
        ) as session:
            try:
                return await asyncio.wait_for(
                    self._follow(session, url, proxy_headers, started),
                    timeout=policy.timeout_seconds,
                )
            except TimeoutError:
                raise LinkError(
                    504, "fetch_timeout", f"the page did not arrive in {policy.timeout_seconds:g} s"
                ) from None

    async def _follow(
        self,
        session: aiohttp.ClientSession,
        url: str,
        proxy_headers: dict[str, str] | None,
        started: float,
    ) -> FetchedPage:
        policy = self.policy
        current = url
        redirects: list[str] = []
        while True:
            await self.guard.check_url(current)  # literal IPs skip the resolver: check here
            try:
                async with session.get(
                    current,
                    allow_redirects=False,
                    proxy=policy.proxy_url,
                    # A plain-http request goes to the proxy as is (the proxy strips this header
                    # before forwarding); an https one opens a CONNECT tunnel with it.
                    headers=proxy_headers if urlsplit(current).scheme.lower() == "http" else None,
                    proxy_headers=proxy_headers,
                ) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location")
                        if not location:
                            raise LinkError(502, "bad_redirect", "a redirect without a Location")
                        if len(redirects) >= policy.max_redirects:
                            raise LinkError(
                                502,
                                "too_many_redirects",
                                f"more than {policy.max_redirects} redirects",
                            )
                        current = urljoin(current, location)
                        redirects.append(current)
                        continue
                    if response.status == 407:
                        raise LinkError(
                            502, "proxy_auth_failed", "the proxy refused its credentials (407)"
                        )
                    if response.status >= 400:
                        raise LinkError(
                            502, "page_error", f"the page answered HTTP {response.status}"
                        )
                    content_type = response.headers.get("Content-Type", "")
                    media = content_type.split(";", 1)[0].strip().lower()
                    if media not in ALLOWED_CONTENT_TYPES:
                        raise LinkError(
                            415,
                            "unsupported_content_type",
                            f"the page is {media or 'untyped'}; fetched types are "
                            + ", ".join(ALLOWED_CONTENT_TYPES),
                        )
                    body = await _read_bounded(response, policy.max_bytes)
                    return FetchedPage(
                        url=url,
                        final_url=current,
                        status=response.status,
                        content_type=content_type,
                        body=body,
                        redirects=redirects,
                        elapsed_ms=int((time.monotonic() - started) * 1000),
                        via_proxy=policy.proxy_url is not None,
                    )
            except LinkError:
                raise
            except aiohttp.ClientProxyConnectionError as exc:
                raise LinkError(
                    502, "proxy_unreachable", f"cannot reach the proxy: {exc}"
                ) from None
            except aiohttp.ClientHttpProxyError as exc:
                code = "proxy_auth_failed" if exc.status == 407 else "proxy_error"
                raise LinkError(502, code, f"the proxy answered {exc.status}") from None
            except aiohttp.ClientConnectorError as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, LinkError):
                    raise cause from None
                raise LinkError(502, "fetch_failed", f"cannot connect: {exc.strerror}") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise LinkError(502, "fetch_failed", f"the fetch failed: {exc}") from None


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > limit:
        raise LinkError(413, "page_too_large", f"the page is {declared} bytes; at most {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise LinkError(413, "page_too_large", f"the page is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str | None
    author: str | None
    date: str | None
    sitename: str | None
    description: str | None
    language: str | None


def extract(page: FetchedPage) -> Extracted:
    """Readable text and metadata with trafilatura (CPU-bound: call it in a thread)."""
    import trafilatura

    media = page.content_type.split(";", 1)[0].strip().lower()
    if media == "text/plain":
        text = page.body.decode(_charset(page.content_type), errors="replace")
        return Extracted(text.strip(), None, None, None, None, None, None)
    html = page.body.decode(_charset(page.content_type), errors="replace")
    doc = trafilatura.bare_extraction(
        html,
        url=page.final_url,
        with_metadata=True,
        include_comments=False,
        favor_precision=True,
    )
    if doc is None:
        return Extracted("", None, None, None, None, None, None)
    data: dict[str, Any] = doc.as_dict() if hasattr(doc, "as_dict") else dict(doc)
    return Extracted(
        text=(data.get("text") or "").strip(),
        title=data.get("title"),
        author=data.get("author"),
        date=data.get("date"),
        sitename=data.get("sitename"),
        description=data.get("description"),
        language=data.get("language"),
    )


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            candidate = value.strip('"').lower()
            try:
                "".encode(candidate)
            except LookupError:
                break
            return candidate
    return "utf-8"


def parse_networks(values: Iterable[str], setting: str) -> tuple[Network, ...]:
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{setting}: {value!r} is not a CIDR range like 10.0.0.0/16") from None
    return tuple(networks)


TOOL_NAME = "humansa_analyze_link"
TOOL_DEFINITION: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": (
            "Fetch a public web page and return its readable text and metadata (title, author, "
            "date). Use it when the user gives a URL or asks about a page's content."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "http or https URL of the page"},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
    },
}
"""The OpenAI tool definition a client adds to ``tools`` to let a model read links; see
docs/ml-server.md, "Link analysis"."""
