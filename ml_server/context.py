"""The one per-request object: who is asking, and which target answered.

``RequestMiddleware`` creates a ``RequestContext`` for every HTTP request (the only per-request
object it adds) and makes it reachable three ways, all pointing at the same object:

- ``scope[SCOPE_KEY]``, for ASGI code that holds the scope (the fast path, the app's handlers);
- ``ContextDep`` (``ml_server.api.deps``), for routes;
- ``current()``, a context variable, for code that has neither: the router (the key's fair
  share of a provider) and log records (``ml_server.logging`` adds the request id).

The router never mutates shared routing objects: what served a call comes back with its result
(``Served``) or with its error (``ApiError.target``), and accounting copies it here for the
access log line.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

if TYPE_CHECKING:
    from ml_server.db.keys import KeyInfo
    from ml_server.router import Target

SCOPE_KEY = "ml_server.context"


class RequestContext:
    """One request's identity and outcome (plain ``__slots__``: it is made per request).

    Attributes:
        request_id: the client's valid ``X-Request-Id`` or one the middleware made.
        client: the client's IP (uvicorn applies X-Forwarded-For only from FORWARDED_ALLOW_IPS).
        key: the verified API key (``require_key``); None before, or on routes without a key.
        log_fields: extra fields of the access log line (model, tokens), set by accounting.
        target: the target that served (or, failed, was tried last by) the request's last
            provider call; None if no provider was called.
        client_gone: the client left before the answer (the access log says 499).
    """

    __slots__ = ("client", "client_gone", "key", "log_fields", "request_id", "target")

    def __init__(self, request_id: str, client: str) -> None:
        self.request_id = request_id
        self.client = client
        self.key: KeyInfo | None = None
        self.log_fields: dict[str, Any] | None = None
        self.target: Target | None = None
        self.client_gone = False

    @property
    def key_id(self) -> int | None:
        key = self.key
        return key.id if key is not None else None


_current: ContextVar[RequestContext | None] = ContextVar("ml_server_request", default=None)
set_current = _current.set
reset_current = _current.reset


def current() -> RequestContext | None:
    """The context of the request this code runs for (None outside a request)."""
    return _current.get()


def context_of(scope: Scope) -> RequestContext:
    """The request's context from its ASGI scope (one made on the spot if the middleware did not
    run, e.g. an app mounted without it in a test)."""
    ctx: RequestContext | None = scope.get(SCOPE_KEY)
    if ctx is None:
        client = scope.get("client")
        ctx = scope[SCOPE_KEY] = RequestContext("", client[0] if client else "")
    return ctx
