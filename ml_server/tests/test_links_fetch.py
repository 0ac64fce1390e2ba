"""The link fetcher against real local HTTP servers and a real forward proxy (tinyproxy with basic
authentication), all on 127.0.0.1. The guard's only exception is 127.0.0.1/32, standing in for
"the internet"; every other private address stays refused, so a refusal sends no traffic."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from ml_server.links import FetchPolicy, LinkError, LinkFetcher, UrlGuard, extract

ARTICLE = """<!doctype html><html lang="en"><head><title>Tide tables of Victoria Harbour</title>
<meta name="author" content="Harbour Office"><meta name="description" content="When the tide turns">
</head><body><nav>Home | About | Contact</nav><article><h1>Tide tables of Victoria Harbour</h1>
<p>The harbour sees two high tides a day. The spring tides of March reach 2.6 metres above chart
datum, and the neap tides of June stay near 1.1 metres.</p>
<p>Ferries between Central and Tsim Sha Tsui run at every tide; only typhoon signal 8 stops them.
</p></article><footer>Copyright footer text</footer></body></html>"""


@dataclass
class Site:
    """A local web server that records each request's headers."""

    url: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)


SITE: web.AppKey[Site] = web.AppKey("site", Site)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _handler(request: web.Request) -> web.StreamResponse:
    site: Site = request.app[SITE]
    site.seen.append({"path": request.path_qs, **dict(request.headers)})
    path = request.path
    if path == "/article":
        return web.Response(text=ARTICLE, content_type="text/html", charset="utf-8")
    if path == "/plain":
        return web.Response(text="just text", content_type="text/plain")
    if path == "/to-article":
        response = web.HTTPFound("/article")
        response.set_cookie("session", "from-the-site")
        raise response
    if path == "/to-imds":
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/")
    if path == "/to-private":
        raise web.HTTPMovedPermanently("http://10.20.30.40/admin")
    if path == "/to-loopback-2":
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.2:{request.url.port}/article")
    if path == "/loop":
        raise web.HTTPFound("/loop")
    if path == "/pdf":
        return web.Response(body=b"%PDF-1.7", content_type="application/pdf")
    if path == "/huge-declared":
        return web.Response(body=b"x" * 300_000, content_type="text/html")
    if path == "/huge-chunked":
        stream = web.StreamResponse(headers={"Content-Type": "text/html"})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        for _ in range(40):
            await stream.write(b"<p>" + b"y" * 10_000 + b"</p>")
        await stream.write_eof()
        return stream
    if path == "/slow":
        stream = web.StreamResponse(headers={"Content-Type": "text/html"})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        for _ in range(50):  # 10 s in all, far past the fetch's 1 s budget
            await stream.write(b"<p>slow</p>")
            await asyncio.sleep(0.2)
        await stream.write_eof()
        return stream
    raise web.HTTPNotFound()


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    state = Site()
    app = web.Application()
    app[SITE] = state
    app.router.add_route("GET", "/{tail:.*}", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def _fetcher(site: Site, **policy: object) -> LinkFetcher:
    port = int(site.url.rsplit(":", 1)[1])
    guard = UrlGuard(
        allowed=(ipaddress.ip_network("127.0.0.1/32"),), ports=frozenset({80, 443, port})
    )
    options: dict[str, object] = {"allow_direct": True, "max_bytes": 200_000, **policy}
    return LinkFetcher(FetchPolicy(**options), guard)  # type: ignore[arg-type]


async def test_a_page_is_fetched_and_its_text_and_metadata_extracted(site: Site) -> None:
    page = await _fetcher(site).fetch(f"{site.url}/article")
    content = extract(page)
    assert page.status == 200 and page.final_url == f"{site.url}/article"
    assert content.title == "Tide tables of Victoria Harbour"
    assert content.author == "Harbour Office"
    assert "2.6 metres above chart" in content.text and "typhoon signal 8" in content.text
    assert "Copyright footer" not in content.text and "Home | About" not in content.text


async def test_redirects_are_followed_and_cookies_never_sent(site: Site) -> None:
    page = await _fetcher(site).fetch(f"{site.url}/to-article")
    assert page.redirects == [f"{site.url}/article"]
    assert [s["path"] for s in site.seen] == ["/to-article", "/article"]
    assert all("Cookie" not in s and "Authorization" not in s for s in site.seen)
    assert site.seen[0]["User-Agent"].startswith("HumansaLinkAnalysis/")


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/to-imds", "169.254.169.254"),
        ("/to-private", "10.20.30.40"),
        ("/to-loopback-2", "127.0.0.2"),
    ],
)
async def test_a_redirect_to_a_private_address_is_refused(
    site: Site, path: str, words: str
) -> None:
    with pytest.raises(LinkError) as err:
        await _fetcher(site).fetch(f"{site.url}{path}")
    assert err.value.code == "url_not_allowed" and words in err.value.message
    assert [s["path"] for s in site.seen] == [path]  # nothing fetched past the refusal


async def test_redirects_are_bounded(site: Site) -> None:
    with pytest.raises(LinkError) as err:
        await _fetcher(site, max_redirects=3).fetch(f"{site.url}/loop")
    assert err.value.code == "too_many_redirects"
    assert len(site.seen) == 4


@pytest.mark.parametrize("path", ["/huge-declared", "/huge-chunked"])
async def test_a_huge_body_is_refused_at_the_limit(site: Site, path: str) -> None:
    with pytest.raises(LinkError) as err:
        await _fetcher(site).fetch(f"{site.url}{path}")
    assert (err.value.status, err.value.code) == (413, "page_too_large")


async def test_a_slow_body_is_cut_at_the_time_limit(site: Site) -> None:
    started = time.monotonic()
    with pytest.raises(LinkError) as err:
        await _fetcher(site, timeout_seconds=1.0).fetch(f"{site.url}/slow")
    assert (err.value.status, err.value.code) == (504, "fetch_timeout")
    assert time.monotonic() - started < 3


async def test_other_content_types_are_refused(site: Site) -> None:
    with pytest.raises(LinkError) as err:
        await _fetcher(site).fetch(f"{site.url}/pdf")
    assert (err.value.status, err.value.code) == (415, "unsupported_content_type")


async def test_without_proxy_credentials_and_direct_off_nothing_is_fetched(site: Site) -> None:
    with pytest.raises(LinkError) as err:
        await _fetcher(site, allow_direct=False).fetch(f"{site.url}/article")
    assert err.value.status == 503 and "WEBSHARE_PROXY_USERNAME" in err.value.message
    assert site.seen == []


async def test_dns_rebinding_is_refused_on_the_connection() -> None:
    """The check sees a public address; the connection's own lookup gets 127.0.0.1 and is
    refused there, so no socket is opened to either."""
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])

    async def rebinding(host: str) -> list[str]:
        return next(answers)

    fetcher = LinkFetcher(FetchPolicy(allow_direct=True), UrlGuard(resolve=rebinding))
    with pytest.raises(LinkError) as err:
        await fetcher.fetch("http://rebind.test/")
    assert err.value.code == "url_not_allowed" and "127.0.0.1" in err.value.message


# --- a real forward proxy -------------------------------------------------------------------


@dataclass
class Proxy:
    url: str
    username: str
    password: str


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    if not Path(binary).exists():
        pytest.fail("tinyproxy is not installed (Debian package tinyproxy; .ci/run installs it)")
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="tinyproxy-"))
    conf = folder / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nLogLevel Info\n"
        f'LogFile "{folder / "tinyproxy.log"}"\nPidFile "{folder / "tinyproxy.pid"}"\n'
        "Allow 127.0.0.1\nBasicAuth humansa-rotate test-proxy-password\n"
        "User nobody\nGroup nogroup\n"
    )
    folder.chmod(0o777)
    process = subprocess.Popen(
        [binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    pytest.fail(f"tinyproxy did not start: {err.strip()}")
                time.sleep(0.05)
        yield Proxy(f"http://127.0.0.1:{port}", "humansa-rotate", "test-proxy-password")
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


async def test_every_fetch_and_redirect_goes_through_the_authenticated_proxy(
    site: Site, proxy: Proxy
) -> None:
    fetcher = _fetcher(
        site,
        allow_direct=False,
        proxy_url=proxy.url,
        proxy_auth=(proxy.username, proxy.password),
    )
    page = await fetcher.fetch(f"{site.url}/to-article")
    assert page.via_proxy and "typhoon signal 8" in extract(page).text
    assert len(site.seen) == 2
    for request in site.seen:  # tinyproxy announces itself on what it forwards
        assert "tinyproxy" in request.get("Via", ""), request
        assert "Proxy-Authorization" not in request  # the proxy's credentials stop at the proxy


async def test_wrong_proxy_credentials_are_a_clear_error(site: Site, proxy: Proxy) -> None:
    fetcher = _fetcher(site, proxy_url=proxy.url, proxy_auth=(proxy.username, "wrong"))
    with pytest.raises(LinkError) as err:
        await fetcher.fetch(f"{site.url}/article")
    # A proxy answers 407; tinyproxy 1.11 answers wrong credentials with 401 (realm Tinyproxy).
    assert err.value.status == 502 and ("407" in err.value.message or "401" in err.value.message)
    assert site.seen == []  # nothing reached the site


async def test_the_guard_still_applies_through_the_proxy(site: Site, proxy: Proxy) -> None:
    fetcher = _fetcher(site, proxy_url=proxy.url, proxy_auth=(proxy.username, proxy.password))
    with pytest.raises(LinkError) as err:
        await fetcher.fetch(f"{site.url}/to-imds")
    assert "169.254.169.254" in err.value.message
    assert [s["path"] for s in site.seen] == ["/to-imds"]
