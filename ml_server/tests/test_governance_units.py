"""Key governance without a server: settings, model globs, the governor's local decisions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ml_server.config import SettingsError, load_settings
from ml_server.db.keys import KeyInfo
from ml_server.errors import ApiError
from ml_server.limits import Governor, KeyPolicy, next_month

BASE = {"ENVIRONMENT": "production", "DB_HOST": "db.internal", "DB_USERNAME": "humansa"}


class FakeRequest:
    """What ``Governor.admit`` reads of a request: its scope state and body."""

    def __init__(self, body: bytes = b'{"model": "openai/gpt-4o"}') -> None:
        self.scope: dict[str, Any] = {"state": {}}
        self._body = body

    async def body(self) -> bytes:
        return self._body


def test_admin_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "DB_PASSWORD").write_text("a-real-password-42")
    (tmp_path / "ADMIN_API_KEY").write_text("")  # the boot's file for the CDK placeholder
    assert load_settings(secrets_dir=str(tmp_path)).admin_api_key is None
    (tmp_path / "ADMIN_API_KEY").write_text("hsa-a-real-admin-key\n")
    key = load_settings(secrets_dir=str(tmp_path)).admin_api_key
    assert key is not None and key.get_secret_value() == "hsa-a-real-admin-key"
    (tmp_path / "ADMIN_API_KEY").write_text("changeme")
    with pytest.raises(SettingsError, match="ADMIN_API_KEY holds a placeholder"):
        load_settings(secrets_dir=str(tmp_path))


def test_model_globs() -> None:
    policy = KeyPolicy(allowed_models=("openai/*", "cheap", "anthropic/claude-*-4-5"))
    assert policy.allows("openai/gpt-4o")
    assert policy.allows("cheap", "openai/gpt-4o-mini")
    assert policy.allows("smart", "anthropic/claude-haiku-4-5")  # by what the alias resolves to
    assert not policy.allows("deepseek/deepseek-chat")
    assert not policy.allows("OPENAI/gpt-4o")  # case matters, as in model ids
    assert KeyPolicy().allows("anything/at-all")


def test_a_glob_without_provider_matches_the_model_name() -> None:
    bare = KeyPolicy(allowed_models=("claude-*",))
    assert bare.allows("anthropic/claude-haiku-4-5")
    assert bare.allows("smart", "anthropic/claude-sonnet-4-5")
    assert not bare.allows("openai/gpt-4o") and not bare.allows("anthropic/opus-claude-x")
    # With a provider the glob matches the full name only: "openai/*" never admits "azure/...".
    assert not KeyPolicy(allowed_models=("openai/*",)).allows("azure/openai/gpt-4o")
    assert not KeyPolicy(allowed_models=("gpt-*",)).allows("claude-gpt-x")


async def test_rpm_and_concurrency_in_one_process() -> None:
    gov = Governor(None, default_rpm=0, sync_seconds=1)
    key = KeyInfo(1, "k", rpm=3, policy=KeyPolicy(max_concurrent=2))
    held = []
    for _ in range(2):
        r = FakeRequest()
        await gov.admit(r, key)  # type: ignore[arg-type]
        held.append(r)
    with pytest.raises(ApiError) as busy:
        await gov.admit(FakeRequest(), key)  # type: ignore[arg-type]
    assert busy.value.status == 429 and busy.value.code == "concurrency_limit_exceeded"
    gov.release(held[0].scope["state"])
    gov.release(held[0].scope["state"])  # idempotent
    await gov.admit(FakeRequest(), key)  # type: ignore[arg-type]
    gov.release(held[1].scope["state"])
    with pytest.raises(ApiError) as limited:
        await gov.admit(FakeRequest(), key)  # type: ignore[arg-type]
    assert limited.value.code == "rate_limit_exceeded" and "3 requests per minute" in str(
        limited.value
    )
    assert gov.refused == {"concurrency": 1, "rpm": 1}


async def test_tpm_charged_after_the_request() -> None:
    gov = Governor(None, default_rpm=0, sync_seconds=1)
    key = KeyInfo(2, "k", policy=KeyPolicy(tpm=100))
    await gov.admit(FakeRequest(), key)  # type: ignore[arg-type]
    gov.record_usage(2, 150, None)  # one large answer: the bucket goes into debt
    with pytest.raises(ApiError) as err:
        await gov.admit(FakeRequest(), key)  # type: ignore[arg-type]
    assert "100 tokens per minute" in err.value.message
    assert 25 <= int(err.value.retry_after or 0) <= 31  # 51 tokens at 100/min


async def test_budget_names_itself_and_its_reset() -> None:
    gov = Governor(None, default_rpm=0, sync_seconds=1)
    key = KeyInfo(3, "k", policy=KeyPolicy(budget_daily_usd=1.0, budget_monthly_usd=10.0))
    await gov.admit(FakeRequest(), key)  # type: ignore[arg-type]
    gov.record_usage(3, 10, "1.25")  # Decimal-like text, as the usage row's cost
    with pytest.raises(ApiError) as err:
        await gov.admit(FakeRequest(), key)  # type: ignore[arg-type]
    e = err.value
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    assert (e.status, e.type, e.code, e.param) == (
        429, "insufficient_quota", "budget_exceeded", "budget_daily_usd",
    )  # fmt: skip
    assert "daily budget of $1.00" in e.message and f"resets at {tomorrow}T00:00:00Z" in e.message
    assert 0 < int(e.retry_after or 0) <= 86400


async def test_expired_and_model_not_allowed() -> None:
    gov = Governor(None, default_rpm=0, sync_seconds=1)
    old = KeyInfo(4, "k", policy=KeyPolicy(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with pytest.raises(ApiError) as expired:
        await gov.admit(FakeRequest(), old)  # type: ignore[arg-type]
    assert (expired.value.status, expired.value.code) == (401, "api_key_expired")
    only = KeyInfo(5, "k", policy=KeyPolicy(allowed_models=("deepseek/*",)))
    with pytest.raises(ApiError) as denied:
        await gov.admit(FakeRequest(), only)  # type: ignore[arg-type]
    assert (denied.value.status, denied.value.param) == (403, "model")
    await gov.admit(FakeRequest(b'{"model": "deepseek/deepseek-chat"}'), only)  # type: ignore[arg-type]


def test_next_month() -> None:
    assert next_month(date(2026, 12, 31)) == date(2027, 1, 1)
    assert next_month(date(2027, 1, 31)) == date(2027, 2, 1)


def test_admin_key_file_is_reread_for_rotation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ml_server.admin.routes import current_admin_key

    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "DB_PASSWORD").write_text("a-real-password-42")
    (tmp_path / "ADMIN_API_KEY").write_text("hsa-first-admin-key\n")
    settings = load_settings(secrets_dir=str(tmp_path))
    assert current_admin_key(settings) == "hsa-first-admin-key"
    (tmp_path / "ADMIN_API_KEY").write_text("hsa-rotated-admin-key\n")  # the refresh timer
    assert current_admin_key(settings) == "hsa-rotated-admin-key"
    (tmp_path / "ADMIN_API_KEY").write_text("")
    assert current_admin_key(settings) == ""  # back at the placeholder: admin API off


def test_the_cli_states_the_servers_limits() -> None:
    from ml_server.admin import cli, routes

    assert cli.MAX_EXPIRES_IN_DAYS == routes.MAX_EXPIRES_IN_DAYS
    assert cli.MAX_BUDGET_USD == routes.MAX_BUDGET_USD
