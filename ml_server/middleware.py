"""Pure ASGI middleware: the request's context (request id, client), body-size limit, one JSON
access-log line, request metrics.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched and cheaply.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_server.context import SCOPE_KEY, RequestContext, reset_current, set_current
from ml_server.errors import error_body
from ml_server.logging import access_log
from ml_server.metrics import Metrics


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "-_.:" for c in value)


class RequestMiddleware:
    """Args:
    fast_routes: POST paths answered by these ASGI apps directly, past FastAPI's router
        (``ml_server.api.fastpath``); the route label in metrics and logs is the path.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        fast_routes: Mapping[str, ASGIApp] | None = None,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.body_timeout = body_timeout
        self.fast_routes = dict(fast_routes or {})
        # Request ids: 16 random hex digits per process, then a counter (unique, and cheaper
        # than a uuid4 per request).
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = itertools.count(1)

    def _new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        content_length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _valid_request_id(candidate):
                    request_id = candidate
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
        if not request_id:
            request_id = self._new_request_id()
        client = scope.get("client")
        ctx = scope[SCOPE_KEY] = RequestContext(request_id, client[0] if client else "")
        token = set_current(ctx)
        if "state" not in scope:  # Starlette's request.state (uvicorn always passes one)
            scope["state"] = {}
        rid_header = (b"x-request-id", request_id.encode())
        status = 0
        sent_start = False
        received = 0

        body_done = expired = waiting = False
        # The body deadline: one plain timer per request (asyncio.timeout costs ~10x more),
        # armed at the first read and cancelled once the body is in. It cancels the read it
        # interrupts; a read started after it fired fails at once.
        timer: asyncio.TimerHandle | None = None
        task = asyncio.current_task()

        def on_deadline() -> None:
            nonlocal expired
            expired = True
            if waiting and task is not None:
                task.cancel()

        async def limited_receive() -> Message:
            nonlocal received, body_done, timer, waiting
            if body_done:  # afterwards only a disconnect can come: no deadline
                return await receive()
            if expired:
                raise BodyTimeout
            if timer is None:
                timer = asyncio.get_running_loop().call_later(self.body_timeout, on_deadline)
            waiting = True
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not expired or task is None:
                    raise
                task.uncancel()
                raise BodyTimeout from None
            finally:
                waiting = False
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    timer.cancel()
                    raise BodyTooLarge
                if not message.get("more_body"):
                    body_done = True
                    timer.cancel()
            else:
                timer.cancel()  # the client left
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent_start
            if message["type"] == "http.response.start":
                status = message["status"]
                sent_start = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        route_label = ""
        app = self.app
        if scope["method"] == "POST":
            fast = self.fast_routes.get(scope["path"])
            if fast is not None:
                app, route_label = fast, scope["path"]
        try:
            if content_length is not None and content_length > self.max_body:
                raise BodyTooLarge
            await app(scope, limited_receive, send_wrapper)
        except BodyTooLarge:
            if sent_start:
                raise
            await self._too_large(send_wrapper)
        except BodyTimeout:
            if sent_start:
                raise
            await self._reject(
                send_wrapper,
                408,
                f"the request body did not arrive within {self.body_timeout:g} s "
                "(BODY_READ_TIMEOUT_SECONDS)",
                "request_timeout",
            )
        finally:
            if timer is not None:
                timer.cancel()
            reset_current(token)
            if not status and ctx.client_gone:
                status = 499  # the client left before the answer (nginx's code)
            elapsed = time.perf_counter() - started
            route: str = route_label or getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.observe_request(route, method, status or 500, elapsed)
            fields: dict[str, Any] = {
                "request_id": request_id,
                "method": method,
                "path": scope["path"],
                "status": status or 500,
                "duration_ms": round(elapsed * 1000, 2),
                "client": ctx.client,
            }
            extra = ctx.log_fields
            if extra:
                fields.update(extra)
            access_log.write(fields)

    async def _too_large(self, send: Send) -> None:
        await self._reject(
            send,
            413,
            f"request body exceeds the limit of {self.max_body} bytes (MAX_BODY_BYTES)",
            "request_too_large",
        )

    async def _reject(self, send: Send, status: int, message: str, code: str) -> None:
        body = error_body(message, "invalid_request_error", code)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
