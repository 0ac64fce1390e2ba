"""Settings read from a boot-shaped secrets folder (issue 10, items 2 and 8).

The instances' boot writes one file per secret into SECRETS_DIR; a provider still at its CDK
placeholder becomes an empty file, which means "provider not configured". The DB_PASSWORD file
is the one the rotation refresh keeps current, so no environment variable may shadow it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_server.config import SettingsError, load_settings

BASE = {"ENVIRONMENT": "production", "DB_HOST": "db.internal", "DB_USERNAME": "humansa"}
OPTIONAL_SECRET_FILES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "DEEPSEEK_API_KEY",
    "GOOGLE_API_KEY",
    "XAI_API_KEY",
    "AZURE_INFERENCE_ENDPOINT",
    "AZURE_INFERENCE_CREDENTIAL",
    "WEBSHARE_PROXY_USERNAME",
    "WEBSHARE_PROXY_PASSWORD",
    "MEM0_API_KEY",
)


def _env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name in ("DB_PASSWORD", *OPTIONAL_SECRET_FILES):
        monkeypatch.delenv(name, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("environment", ["dev", "staging", "production"])
def test_empty_provider_files_mean_not_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: str
) -> None:
    _env(monkeypatch, {**BASE, "ENVIRONMENT": environment})
    (tmp_path / "DB_PASSWORD").write_text("a-real-password-from-file")
    for name in OPTIONAL_SECRET_FILES:
        (tmp_path / name).write_text("")
    s = load_settings(secrets_dir=str(tmp_path))
    for name in OPTIONAL_SECRET_FILES:
        assert getattr(s, name.lower()) is None, name
    assert s.configured_provider_names() == []


def test_an_empty_db_password_file_is_still_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _env(monkeypatch, BASE)
    (tmp_path / "DB_PASSWORD").write_text("")
    with pytest.raises(SettingsError, match="DB_PASSWORD is missing"):
        load_settings(secrets_dir=str(tmp_path))


def test_a_filled_provider_file_configures_the_provider(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _env(monkeypatch, BASE)
    (tmp_path / "DB_PASSWORD").write_text("a-real-password-from-file")
    (tmp_path / "OPENAI_API_KEY").write_text("sk-test-not-a-real-key-file")
    (tmp_path / "ANTHROPIC_API_KEY").write_text("")
    s = load_settings(secrets_dir=str(tmp_path))
    assert s.configured_provider_names() == ["openai"]


def test_the_rotated_password_file_wins_over_an_environment_db_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _env(monkeypatch, {**BASE, "DB_PASSWORD": "stale-password-from-an-old-env-file"})
    (tmp_path / "DB_PASSWORD").write_text("rotated-password-from-the-secret-file\n")
    s = load_settings(secrets_dir=str(tmp_path))
    assert s.db_password is not None
    assert s.db_password.get_secret_value() == "rotated-password-from-the-secret-file"
    assert s.db_password_file == tmp_path / "DB_PASSWORD"


def test_environment_db_password_still_works_without_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _env(monkeypatch, {**BASE, "DB_PASSWORD": "a-real-password-from-env"})
    s = load_settings(secrets_dir=str(tmp_path))
    assert s.db_password is not None
    assert s.db_password.get_secret_value() == "a-real-password-from-env"
