"""``/admin/``: create, list, show, update and revoke API keys; usage; the audit log.

Authenticated by ``Authorization: Bearer <ADMIN_API_KEY>`` (a Secrets Manager secret delivered as
a file, like the provider keys). ``X-Admin-Actor`` names the person or role calling (the
``make keys`` command sends the caller's AWS identity); each call, refused ones included, is
written to ``admin_audit`` and to the log as one line (who, what, when, status), never with a key.
Changes reach every server within ``KEY_CACHE_SECONDS`` (the key cache), limits within that plus
``LIMITS_SYNC_SECONDS``.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ml_server.admin import store
from ml_server.api.deps import StateDep
from ml_server.config import Settings, read_password_file
from ml_server.errors import ApiError
from ml_server.state import AppState

audit_log = logging.getLogger("ml_server.audit")
ACTOR_HEADER = "x-admin-actor"


def _actor(request: Request) -> str:
    raw = request.headers.get(ACTOR_HEADER, "").strip()
    cleaned = "".join(c for c in raw if c.isprintable())[:200]
    return cleaned or "admin"


class AuditedRoute(APIRoute):
    """Writes one audit entry per call, whatever its outcome (401 and 422 included)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        action = f"{','.join(sorted(self.methods or ()))} {self.path_format}"

        async def handler(request: Request) -> Response:
            status = 500
            try:
                response = await original(request)
                status = response.status_code
                return response
            except ApiError as exc:
                status = exc.status
                raise
            except HTTPException as exc:
                status = exc.status_code
                raise
            except RequestValidationError:
                status = 422
                raise
            finally:
                await _audit(request, action, status)

        return handler


async def _audit(request: Request, action: str, status: int) -> None:
    scope_state = request.scope.setdefault("state", {})
    authed = scope_state.get("admin_authenticated", False)
    target = scope_state.get("admin_target") or request.path_params.get("key_id")
    entry = {
        "at": datetime.now(UTC),
        "actor": _actor(request) if authed else "unauthenticated",
        "action": action,
        "target": None if target is None else f"key:{target}",
        "status": status,
        "detail": json.dumps(scope_state["admin_detail"])
        if scope_state.get("admin_detail")
        else None,
        "client": (request.client.host if request.client else "")[:64],
    }
    audit_log.info(
        "admin call",
        extra={"fields": {**{k: v for k, v in entry.items() if k != "at"}, "audit": True}},
    )
    state: AppState = request.app.state.ml
    try:
        async with state.sessions() as session:
            await store.write_audit(session, entry)
    except Exception as exc:  # the log line above still records the call
        audit_log.warning(
            "admin audit row not written", extra={"fields": {"error": type(exc).__name__}}
        )


def current_admin_key(settings: Settings) -> str:
    """The admin key as the ADMIN_API_KEY file in SECRETS_DIR holds it now (the instances refresh
    that file, so a rotated key applies without a restart), else the setting; "" = none."""
    path = FilePath(settings.secrets_dir) / "ADMIN_API_KEY"
    if path.is_file():
        return read_password_file(path) or ""
    configured = settings.admin_api_key
    return configured.get_secret_value().strip() if configured is not None else ""


async def require_admin(request: Request, state: StateDep) -> str:
    expected = current_admin_key(state.settings)
    if not expected:
        raise ApiError(
            503,
            "The admin API is disabled: ADMIN_API_KEY is not set on this server",
            type="api_error",
            code="admin_api_disabled",
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise ApiError(
            401,
            "Missing or incorrect admin key: send 'Authorization: Bearer <ADMIN_API_KEY>'",
            type="invalid_request_error",
            code="invalid_admin_key",
        )
    request.scope["state"]["admin_authenticated"] = True
    return _actor(request)


AdminDep = Annotated[str, Depends(require_admin)]
router = APIRouter(prefix="/admin", tags=["admin"], route_class=AuditedRoute)


# What the database columns hold (api_keys.id, rate_limit_rpm and max_concurrent are INTEGER),
# and a sane ceiling for money: the API refuses more with 422 naming the field, never a 500.
MAX_KEY_ID = 2**31 - 1
MAX_RPM = 2**31 - 1
MAX_TPM = 10**12
MAX_CONCURRENT = 1_000_000
MAX_BUDGET_USD = 1_000_000_000.0
MAX_EXPIRES_IN_DAYS = 36_500  # 100 years


def _valid_text(value: Any) -> Any:
    """PostgreSQL text is valid UTF-8 without NUL; JSON can carry both (\\u0000, \\ud800)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must be valid UTF-8 text without NUL characters (\\u0000 found)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                "must be valid UTF-8 text without NUL characters "
                f"(a lone surrogate at position {exc.start})"
            ) from None
    return value


Text = Annotated[str, BeforeValidator(_valid_text)]
KeyId = Annotated[int, Path(ge=1, le=MAX_KEY_ID, description="the key's id (from the list)")]
Money = Annotated[float, Field(ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "must lie between 0001-01-01 and 9999-12-31 once converted to UTC"
        ) from None


When = Annotated[AwareDatetime, AfterValidator(_utc)]


class _KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Text | None = Field(default=None, max_length=200)
    allowed_models: list[Annotated[Text, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, description="globs such as 'openai/*'; empty or null = every model"
    )
    rpm: int | None = Field(
        default=None, ge=0, le=MAX_RPM, description="null = RATE_LIMIT_RPM; 0 = none"
    )
    tpm: int | None = Field(default=None, ge=1, le=MAX_TPM)
    max_concurrent: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT)
    budget_daily_usd: Money | None = Field(default=None, description="USD per UTC day")
    budget_monthly_usd: Money | None = Field(default=None, description="USD per UTC month")
    expires_at: When | None = None
    expires_in_days: float | None = Field(
        default=None,
        gt=0,
        le=MAX_EXPIRES_IN_DAYS,
        allow_inf_nan=False,
        description="or expires_at (whole seconds from now)",
    )


class KeyCreate(_KeyFields):
    name: Text = Field(min_length=1, max_length=200)


class KeyUpdate(_KeyFields):
    name: Text | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def _name_not_null(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("name cannot be null")
        return value


def _state(request: Request) -> dict[str, Any]:
    state: dict[str, Any] = request.scope["state"]
    return state


def _expiry(fields: dict[str, Any]) -> None:
    """expires_in_days (if given) becomes expires_at, in whole seconds."""
    days = fields.pop("expires_in_days", None)
    if days is None:
        return
    if fields.get("expires_at") is not None:
        raise ApiError(
            422,
            "Give expires_at or expires_in_days, not both",
            type="invalid_request_error",
            code="invalid_request",
            param="expires_in_days",
        )
    fields["expires_at"] = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request, state: StateDep, _: AdminDep) -> Any:
    fields = body.model_dump(exclude_none=True)
    _expiry(fields)
    expires = fields.get("expires_at")
    if expires is not None and expires <= datetime.now(UTC):
        raise ApiError(
            422,
            f"expires_at ({expires.isoformat()}) is in the past: the new key would be expired "
            "already; give a future time (PATCH can expire an existing key now)",
            type="invalid_request_error",
            code="invalid_request",
            param="expires_at",
        )
    async with state.sessions() as session:
        row, secret = await store.create_key(session, fields)
    view = store.key_view(row)
    _state(request)["admin_target"] = row.id
    _state(request)["admin_detail"] = {"fields": sorted(fields)}
    return {**view, "key": secret, "note": "The key is shown only once: store it now."}


@router.get("/keys")
async def list_keys(state: StateDep, _: AdminDep, include_revoked: bool = False) -> dict[str, Any]:
    async with state.sessions() as session:
        rows = await store.list_keys(session, include_revoked=include_revoked)
    return {"object": "list", "data": [store.key_view(r) for r in rows]}


def _not_found(key_id: int) -> ApiError:
    return ApiError(
        404,
        f"No API key with id {key_id}",
        type="invalid_request_error",
        code="key_not_found",
        param="key_id",
    )


@router.get("/keys/{key_id}")
async def show_key(key_id: KeyId, state: StateDep, _: AdminDep) -> dict[str, Any]:
    async with state.sessions() as session:
        row = await store.get_key(session, key_id)
        if row is None:
            raise _not_found(key_id)
        return store.key_view(row)


@router.patch("/keys/{key_id}")
async def update_key(
    key_id: KeyId, body: KeyUpdate, request: Request, state: StateDep, _: AdminDep
) -> dict[str, Any]:
    fields = body.model_dump(exclude_unset=True)
    _expiry(fields)
    if not fields:
        raise ApiError(
            422,
            f"Nothing to update: give one or more of {', '.join(store.KEY_FIELDS)}, "
            "expires_in_days",
            type="invalid_request_error",
            code="invalid_request",
        )
    _state(request)["admin_detail"] = {"fields": sorted(fields)}
    async with state.sessions() as session:
        row = await store.get_key(session, key_id)
        if row is None:
            raise _not_found(key_id)
        if row.revoked_at is not None:
            raise ApiError(
                409,
                f"API key {key_id} is revoked; create a new key instead",
                type="invalid_request_error",
                code="key_revoked",
            )
        row = await store.update_key(session, row, fields)
        return store.key_view(row)


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: KeyId, state: StateDep, _: AdminDep) -> dict[str, Any]:
    async with state.sessions() as session:
        row = await store.get_key(session, key_id)
        if row is None:
            raise _not_found(key_id)
        row = await store.revoke_key(session, row)
        return store.key_view(row)


@router.get("/usage")
async def usage(
    state: StateDep,
    _: AdminDep,
    start: Annotated[date | None, Query(description="first UTC day (default: 30 days ago)")] = None,
    end: Annotated[date | None, Query(description="last UTC day (default: today)")] = None,
    key_id: Annotated[int | None, Query(ge=1, le=MAX_KEY_ID)] = None,
) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    last = end or today
    first = start or (last - timedelta(days=29))
    if first > last:
        raise ApiError(
            422,
            f"start ({first}) is after end ({last})",
            type="invalid_request_error",
            code="invalid_request",
            param="start",
        )
    started = time.perf_counter()
    async with state.sessions() as session:
        rows = await store.usage_report(
            session, start=first, end=last + timedelta(days=1), key_id=key_id
        )
    totals: dict[str, float] = {}
    for r in rows:
        if r["cost_usd"] is not None and r["key_id"] is not None:
            k = str(r["key_id"])
            totals[k] = totals.get(k, 0.0) + r["cost_usd"]
    return {
        "object": "usage_report",
        "start": first.isoformat(),
        "end": last.isoformat(),
        "data": rows,
        "cost_usd_by_key": totals,
        "query_ms": round((time.perf_counter() - started) * 1000, 1),
    }


@router.get("/audit")
async def audit(
    state: StateDep, _: AdminDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    async with state.sessions() as session:
        return {"object": "list", "data": await store.read_audit(session, limit)}
