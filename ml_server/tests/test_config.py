"""Settings: the seed's names, secret files, placeholder refusal outside development."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_server.config import SettingsError, load_settings
from ml_server.tests.server_proc import ServerProcess

BASE = {"ENVIRONMENT": "production", "DB_HOST": "db.internal", "DB_USERNAME": "humansa"}


def _env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for k, v in values.items():
        monkeypatch.setenv(k, v)


def test_development_defaults_to_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DB_HOST", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    s = load_settings(secrets_dir="/nonexistent", environment="development")
    assert s.sqlalchemy_url.startswith("sqlite+aiosqlite:///")
    assert s.ml_server_port == 5001 and s.max_body_bytes == 10 * 1024 * 1024


def test_db_settings_build_postgres_url_and_db_name_alias(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _env(monkeypatch, {**BASE, "DB_NAME": "humansa_prod", "DB_PORT": "5433", "ALB_DNS_NAME": "x"})
    (tmp_path / "DB_PASSWORD").write_text("s3cret-from-file/with@chars\n")
    s = load_settings(secrets_dir=str(tmp_path))
    assert s.db_active_database == "humansa_prod"
    assert s.db_password is not None
    assert s.db_password.get_secret_value() == "s3cret-from-file/with@chars"
    assert s.sqlalchemy_url == (
        "postgresql+asyncpg://humansa:s3cret-from-file%2Fwith%40chars@db.internal:5433/humansa_prod"
    )
    assert "s3cret" not in repr(s)  # SecretStr


def test_db_active_database_is_the_seed_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {**BASE, "DB_ACTIVE_DATABASE": "seeddb", "DB_PASSWORD": "a-real-password"})
    monkeypatch.delenv("DB_NAME", raising=False)
    assert load_settings(secrets_dir="/nonexistent").db_active_database == "seeddb"


@pytest.mark.parametrize("password", [None, "", "changeme", "placeholder"])
def test_production_refuses_missing_or_placeholder_password(
    monkeypatch: pytest.MonkeyPatch, password: str | None
) -> None:
    _env(monkeypatch, BASE)
    if password is None:
        monkeypatch.delenv("DB_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("DB_PASSWORD", password)
    with pytest.raises(SettingsError, match="DB_PASSWORD"):
        load_settings(secrets_dir="/nonexistent")


def test_production_refuses_placeholder_provider_key(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {**BASE, "DB_PASSWORD": "a-real-password", "OPENAI_API_KEY": "sk-..."})
    with pytest.raises(SettingsError, match="OPENAI_API_KEY"):
        load_settings(secrets_dir="/nonexistent")


def test_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {"ML_SERVER_PORT": "not-a-port"})
    with pytest.raises(SettingsError, match="ML_SERVER_PORT"):
        load_settings(secrets_dir="/nonexistent")


def test_fake_provider_only_in_development_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ENABLE_FAKE_PROVIDER"):
        monkeypatch.delenv(k, raising=False)
    assert load_settings(
        secrets_dir="/nonexistent", environment="development"
    ).fake_provider_enabled
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    assert not load_settings(
        secrets_dir="/nonexistent", environment="development"
    ).fake_provider_enabled


def test_cli_fails_start_with_one_clear_line() -> None:
    proc = ServerProcess({**BASE, "DB_PASSWORD": "changeme"})
    result = proc.cli("serve")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DB_PASSWORD" in lines[0] and "changeme" not in lines[0]
