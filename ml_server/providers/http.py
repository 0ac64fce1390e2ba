"""The HTTP base of the providers: one aiohttp session per provider, its credential, JSON posts
and opened SSE streams, with transport failures and upstream errors mapped to ProviderError.

The providers built on it (``openai_compat``, ``anthropic``, and ``responses`` through its
OpenAI provider) keep only what is theirs: URLs, headers, translation and usage parsing.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from ml_server.providers.base import (
    ChatStream,
    Provider,
    ProviderError,
    error_from_upstream,
    sse_lines,
)

Answer = tuple[int, CIMultiDictProxy[str], bytes]  # status, headers, body


def make_session(
    headers: dict[str, str], *, timeout: float, connect_timeout: float
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"Content-Type": "application/json", **headers},
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout),
        raise_for_status=False,
        # Providers set no cookies we need; a real jar filters cookies on every request.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


@contextlib.contextmanager
def transport_errors(provider: str) -> Iterator[None]:
    """Turn timeouts and connection failures into 504/502 ProviderErrors."""
    try:
        yield
    except ProviderError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise ProviderError(
            504,
            f"provider {provider} did not answer in time",
            code="provider_timeout",
            kind="timeout",
        ) from exc
    except aiohttp.ClientError as exc:
        raise ProviderError(
            502,
            f"cannot reach provider {provider}: {type(exc).__name__}",
            code="provider_unreachable",
            kind="connection",
        ) from exc


def json_of(provider: str, raw: bytes) -> Any:
    """A provider's JSON answer, parsed. Raises: ProviderError 502 when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(
            502,
            f"provider {provider} sent a response that is not JSON",
            code="provider_bad_response",
        ) from exc


class HttpProvider(Provider):
    """A provider reached over HTTP with one shared aiohttp session.

    Args:
        name: our provider prefix (``openai``, ``anthropic``, ...).
        base_url: the URL the paths (``/chat/completions``, ``/messages``) are appended to.
        headers: sent with every request, the credential's header included.
        credential_header: the header holding the API key (``set_credential`` replaces it);
            None: the provider has no key to swap.
        credential_prefix: put before the key in that header (``"Bearer "``).
        timeout: seconds between two reads (PROVIDER_TIMEOUT_SECONDS or its per-provider value).
        connect_timeout: seconds to connect (PROVIDER_CONNECT_TIMEOUT_SECONDS or per provider).
        query: query string added to every URL (Azure's ``api-version``); default none.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        headers: dict[str, str],
        *,
        credential_header: str | None,
        credential_prefix: str = "",
        timeout: float,
        connect_timeout: float,
        query: str = "",
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._headers = headers
        self._credential_header = credential_header
        self._credential_prefix = credential_prefix
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._query = f"?{query}" if query else ""
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    # --- session and credential -----------------------------------------------------------------
    async def start(self) -> None:
        """Create the session now (else at the first request; either inside the running loop)."""
        if self._session is None:
            self._session = self._new_session()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:  # lazily: a provider added while running (provider_keys.py)
            session = self._session = self._new_session()
        return session

    def _new_session(self) -> aiohttp.ClientSession:
        return make_session(
            self._headers, timeout=self._timeout, connect_timeout=self._connect_timeout
        )

    def set_credential(self, value: str) -> bool:
        header = self._credential_header
        if header is None:
            return False
        self._headers[header] = self._credential_prefix + value
        if self._session is not None:  # the session's default headers, sent with every request
            self._session.headers[header] = self._headers[header]
        return True

    def url(self, path: str) -> URL:
        """``base_url + path`` with the provider's query; parsed once per path (aiohttp would
        otherwise parse the string on every request)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(f"{self.base_url}{path}{self._query}")
        return url

    # --- requests -------------------------------------------------------------------------------
    def upstream_error(self, status: int, body: bytes, headers: Any) -> ProviderError:
        """The ProviderError for a non-2xx answer (override for a provider's own statuses)."""
        return error_from_upstream(self.name, status, body, headers)

    async def request(
        self,
        method: str,
        url: URL,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send and read the whole answer. Raises: ProviderError for a transport failure or a
        non-2xx answer (``upstream_error``)."""
        with transport_errors(self.name):
            async with self.session.request(method, url, data=data, headers=headers) as resp:
                raw = await resp.read()
        if resp.status >= 400:
            raise self.upstream_error(resp.status, raw, resp.headers)
        return resp.status, resp.headers, raw

    async def post_json(
        self, path: str, payload: Any, headers: Mapping[str, str] | None = None
    ) -> Answer:
        """POST ``payload`` as JSON to ``path``; as ``request``."""
        return await self.request("POST", self.url(path), orjson.dumps(payload), headers)

    async def open_stream(
        self, path: str, payload: Any, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """POST ``payload`` and return the response once its head says success (its body
        unread: hand it to an ``SseStream``, whose ``aclose`` releases it).

        Raises: ProviderError as ``request`` (the failed response is released).
        """
        with transport_errors(self.name):
            resp = await self.session.post(
                self.url(path), data=orjson.dumps(payload), headers=headers
            )
            if resp.status >= 400:
                try:
                    raw = await resp.read()
                finally:
                    resp.release()
                raise self.upstream_error(resp.status, raw, resp.headers)
        return resp


class SseStream(ChatStream):
    """An opened upstream SSE response, read line by line.

    ``events`` reads the body, splits it into lines and hands each read's complete lines to
    ``feed`` (synchronous: no await per read beyond the body's own); what ``feed`` puts
    in ``out`` goes to the client as one chunk. A ProviderError raised by ``feed`` (an error
    inside the stream) goes to the router after what ``out`` already held. When the body ends
    (or ``feed`` says the end marker came), ``finish`` gives the last events or raises for a
    stream cut short. ``aclose`` releases the response. ``feed`` may leave in ``_pending`` an
    awaitable that must be done before its chunk goes out (the Responses stream records who
    owns the id of ``response.created``).

    Args:
        provider: the provider's name, for error messages.
        resp: the response ``HttpProvider.open_stream`` returned.
    """

    def __init__(self, provider: str, resp: aiohttp.ClientResponse) -> None:
        super().__init__()
        self._provider = provider
        self._resp = resp
        self._pending: Awaitable[None] | None = None

    @abc.abstractmethod
    def feed(self, lines: list[bytes], out: list[bytes]) -> bool:
        """Translate or pass on one read's lines into ``out``; True at the end marker (the
        rest of the body is not read)."""

    def finish(self, done: bool) -> Iterable[bytes]:
        """The events after the last read (each its own chunk); ``done``: the end marker came.
        Raises: ProviderError when the stream is incomplete."""
        return ()

    async def events(self) -> AsyncIterator[bytes]:
        buffer = bytearray()
        done = False
        with transport_errors(self._provider):
            async for chunk in self._resp.content.iter_any():
                out: list[bytes] = []
                try:
                    done = self.feed(sse_lines(buffer, chunk), out)
                except ProviderError:
                    if self._pending is not None:
                        await self._settle()
                    if out:  # what came before the error still reaches the client
                        yield b"".join(out)
                    raise
                if self._pending is not None:
                    await self._settle()
                if out:
                    yield b"".join(out)
                if done:
                    break
        for event in self.finish(done):
            yield event

    async def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def aclose(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()  # a half-read stream cannot go back to the pool
