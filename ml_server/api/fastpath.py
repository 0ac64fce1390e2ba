"""The hot routes (POST /v1/chat/completions, /v1/embeddings) served without FastAPI's machinery.

FastAPI's routing, dependency solving and exception middleware cost more CPU per request than
our own work (see docs/ml-server.md, Performance). ``GatewayApp`` (ml_server/app.py) hands these
two routes, wrapped in the request middleware only, to ``endpoint_app``, which calls the *same*
dependencies (``require_key``, ``json_body``) and the *same* endpoint function in the same order,
and answers ``ApiError`` the same way; the FastAPI routes stay registered for everything else
(405 on other methods, the OpenAPI schema in development). Unexpected exceptions get the same
JSON 500 as the app's handler gives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_server.api.deps import json_body, require_key
from ml_server.context import context_of
from ml_server.db.keys import KeyInfo
from ml_server.errors import ApiError, error_body, error_response
from ml_server.middleware import BodyTimeout, BodyTooLarge
from ml_server.state import AppState

log = logging.getLogger("ml_server")

# A client leaving a call shorter than this is noticed when the answer is sent (and accounted
# normally); a longer call is cancelled when the client leaves.
LISTEN_AFTER_SECONDS = 0.2

Endpoint = Callable[[Request, AppState, KeyInfo, dict[str, Any]], Awaitable[Response]]


def endpoint_app(endpoint: Endpoint) -> ASGIApp:
    """An ASGI app for an endpoint declared as ``(request, state: StateDep, key: KeyDep, body:
    BodyDep)``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        state: AppState = scope["app"].state.ml
        task = asyncio.current_task()
        gone = False

        def on_message(f: asyncio.Future[Message]) -> None:
            nonlocal gone
            if f.cancelled() or f.exception() is not None:
                return
            if f.result().get("type") == "http.disconnect" and task is not None:
                gone = True
                task.cancel()

        try:
            key = await require_key(request, state)
            body = await json_body(request)
            # The body is read: a message now can only be the client leaving. Then the endpoint
            # (and its upstream call) is cancelled, and its usage row says 499. The listener is
            # armed only for calls that last (a timer costs far less than a task per request).
            listener: asyncio.Future[Message] | None = None

            def arm() -> None:
                nonlocal listener
                listener = asyncio.ensure_future(receive())
                listener.add_done_callback(on_message)

            timer = asyncio.get_running_loop().call_later(LISTEN_AFTER_SECONDS, arm)
            try:
                response = await endpoint(request, state, key, body)
            finally:
                timer.cancel()
                if listener is not None and not listener.done():
                    listener.cancel()
        except ClientDisconnect:  # left while sending the body: nothing to answer, no traceback
            context_of(scope).client_gone = True
            return
        except asyncio.CancelledError:
            if not gone or task is None:
                raise
            task.uncancel()
            context_of(scope).client_gone = True
            return
        except ApiError as exc:
            response = error_response(exc)
        except (BodyTooLarge, BodyTimeout):
            raise  # the request middleware answers 413 / 408
        except Exception as exc:  # as the app's 500 handler does
            rid = context_of(scope).request_id
            log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": rid}})
            response = Response(
                error_body(f"internal error (request id {rid})", "api_error", "internal_error"),
                status_code=500,
                media_type="application/json",
            )
        await response(scope, receive, send)

    return app
