"""Rotated provider keys reach a running server (issue 12).

Reproduction: the boot's refresh timer rewrites the key files in SECRETS_DIR, but the server read
them once at start, so a rotated provider key never reached it (the old one kept being sent
until a restart). Here a real server reads its OpenAI and Anthropic keys from files; the fake
provider records the key it receives and refuses keys containing ``rejected`` with a 401.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env


def _write_atomically(path: Path, value: str) -> None:
    """As the boot's refresh does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


@pytest.fixture
def secrets_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ml-server-secrets-") as folder:
        yield Path(folder)


def _server(pg: TempPostgres, fake: FakeProvider, secrets: Path, interval: str) -> ServerProcess:
    env = {
        **TEST_SETTINGS,
        **pg.env(),
        **provider_env(fake.url),
        "SECRETS_DIR": str(secrets),
        "PROVIDER_KEY_RELOAD_SECONDS": interval,
    }
    return ServerProcess(env)


def _client(server: ServerProcess) -> openai.OpenAI:
    key = server.cli("keys", "create", "--name", "rotation").stdout.strip()
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20)


def _chat(client: openai.OpenAI, model: str) -> None:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def test_changed_key_file_is_used_without_restart(
    pg: TempPostgres, fake: FakeProvider, secrets_dir: Path
) -> None:
    (secrets_dir / "OPENAI_API_KEY").write_text("sk-test-rotation-first\n")
    (secrets_dir / "ANTHROPIC_API_KEY").write_text("sk-ant-test-rotation-first\n")
    server = _server(pg, fake, secrets_dir, "0.3").start()
    try:
        client = _client(server)
        _chat(client, "openai/gpt-4o-mini")
        assert fake.last("/openai/v1/chat/completions")["headers"]["authorization"] == (
            "Bearer sk-test-rotation-first"
        )
        _write_atomically(secrets_dir / "OPENAI_API_KEY", "sk-test-rotation-second")
        _write_atomically(secrets_dir / "ANTHROPIC_API_KEY", "sk-ant-test-rotation-second")
        time.sleep(1.0)  # a few reload intervals
        _chat(client, "openai/gpt-4o-mini")
        _chat(client, "anthropic/claude-haiku-4-5")
        assert fake.last("/openai/v1/chat/completions")["headers"]["authorization"] == (
            "Bearer sk-test-rotation-second"
        )
        assert fake.last("/anthropic/v1/messages")["headers"]["x-api-key"] == (
            "sk-ant-test-rotation-second"
        )
        # An empty file (a secret back at its placeholder) keeps the key in use.
        _write_atomically(secrets_dir / "OPENAI_API_KEY", "")
        time.sleep(1.0)
        _chat(client, "openai/gpt-4o-mini")
        assert fake.last("/openai/v1/chat/completions")["headers"]["authorization"] == (
            "Bearer sk-test-rotation-second"
        )
        assert "provider key reloaded from its file" in server.log()
        assert "sk-test-rotation" not in server.log()  # never the key itself
    finally:
        server.stop()


def test_provider_401_rereads_the_key_file_and_retries(
    pg: TempPostgres, fake: FakeProvider, secrets_dir: Path
) -> None:
    """The provider already refuses the old key and the interval has not come round yet: the
    401 makes the server look at the file and try again with the new key."""
    (secrets_dir / "OPENAI_API_KEY").write_text("sk-test-rejected-old\n")
    server = _server(pg, fake, secrets_dir, "3600").start()
    try:
        client = _client(server)
        with pytest.raises(openai.APIStatusError) as refused:
            _chat(client, "openai/gpt-4o-mini")
        assert refused.value.status_code == 502  # provider_auth_failed: our key, not the client's
        _write_atomically(secrets_dir / "OPENAI_API_KEY", "sk-test-rotation-new")
        time.sleep(1.1)  # the server looks again at most once a second after a 401
        _chat(client, "openai/gpt-4o-mini")
        assert fake.last("/openai/v1/chat/completions")["headers"]["authorization"] == (
            "Bearer sk-test-rotation-new"
        )
    finally:
        server.stop()
