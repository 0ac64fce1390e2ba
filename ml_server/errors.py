"""Errors answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.responses import Response

if TYPE_CHECKING:
    from ml_server.router import Target


class ApiError(Exception):
    """An error to answer with.

    Args:
        status: HTTP status.
        message: human-readable reason (never contains secrets).
        type: OpenAI error type (invalid_request_error, authentication_error, api_error, ...).
        code: short machine code.
        kind: metric label for provider errors.
        retry_after: seconds, sent as ``Retry-After``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "api_error",
        code: str | None = None,
        kind: str = "http_5xx",
        retry_after: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.kind = kind
        self.retry_after = retry_after
        self.param = param
        # The provider's request id for this failure, sent as X-Upstream-Request-Id.
        self.upstream_request_id: str | None = None
        # A provider failure: the target the router tried last (accounting records it).
        self.target: Target | None = None


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def error_response(exc: ApiError) -> Response:
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
    if exc.upstream_request_id:
        headers = {**(headers or {}), "X-Upstream-Request-Id": exc.upstream_request_id}
    return Response(
        error_body(exc.message, exc.type, exc.code, exc.param),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )


def invalid_request(message: str, *, status: int = 400, param: str | None = None) -> ApiError:
    return ApiError(
        status,
        message,
        type="invalid_request_error",
        code="invalid_request",
        kind="client",
        param=param,
    )
