"""Shared aiohttp plumbing: one session per provider, transport errors mapped to ProviderError."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiohttp

from ml_server.providers.base import ProviderError


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
