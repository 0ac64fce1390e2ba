"""uvicorn's httptools protocol with a deadline for the request head (HEADER_READ_SECONDS).

uvicorn bounds only the idle time between requests (``timeout_keep_alive``); a client that
opens a connection and sends nothing, or trickles a request head a byte at a time, keeps it
(and a slot of MAX_CONCURRENCY) for as long as it likes. Here each connection gets a timer when
it opens and when a request head starts; a head not complete by then is answered 408 and the
connection closed. The body has its own deadline (BODY_READ_TIMEOUT_SECONDS, in the request
middleware).

Used as uvicorn's ``http`` protocol class by ``python -m ml_server serve``; the workers of a
multi-worker server import it by name, so the deadline travels in the environment.
"""

from __future__ import annotations

import asyncio
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_READ_ENV = "HEADER_READ_SECONDS"
DEFAULT_HEADER_READ_SECONDS = 20.0


def _body(seconds: float) -> bytes:
    return (
        b'{"error": {"message": "the request head did not arrive within '
        + f"{seconds:g}".encode()
        + b' s (HEADER_READ_SECONDS)", "type": "invalid_request_error", "param": null, '
        b'"code": "request_timeout"}}'
    )


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_seconds: float = float(os.environ.get(HEADER_READ_ENV) or DEFAULT_HEADER_READ_SECONDS)
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_seconds, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head is late while a response is still going out: finish that
            # response, then close (a 408 now would land inside it).
            cycle.keep_alive = False
            return
        self._unset_keepalive_if_required()
        body = _body(self.header_seconds)
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
