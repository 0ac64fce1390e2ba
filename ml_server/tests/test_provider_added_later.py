"""A provider without a key at start is added once its key file is filled (issue 12).

Reproduction: the watcher of SECRETS_DIR swapped the keys of providers built at start, but a
provider whose key file was absent or empty at start was never built, so putting its key in
Secrets Manager (the boot's timer rewrites the file) needed a restart. Here a real server starts
with no OpenAI key at all and an empty DeepSeek key file; the keys are written while it runs.
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

# How long the server may take to pick up a written key file (the interval is 0.2 s).
PICKUP_SECONDS = 10.0


def _write_atomically(path: Path, value: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


def _chat(client: openai.OpenAI, model: str) -> None:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def _until_served(client: openai.OpenAI, model: str) -> None:
    end = time.monotonic() + PICKUP_SECONDS
    while True:
        try:
            _chat(client, model)
            return
        except openai.NotFoundError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


@pytest.fixture
def server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    with tempfile.TemporaryDirectory(prefix="ml-server-secrets-") as folder:
        secrets = Path(folder)
        (secrets / "DEEPSEEK_API_KEY").write_text("\n")  # a secret still at its placeholder
        env = {**TEST_SETTINGS, **pg.env(), **provider_env(fake.url)}
        del env["OPENAI_API_KEY"], env["DEEPSEEK_API_KEY"]
        env.update({"SECRETS_DIR": folder, "PROVIDER_KEY_RELOAD_SECONDS": "0.2"})
        proc = ServerProcess(env).start()
        try:
            yield proc
        finally:
            proc.stop()


def test_provider_whose_key_file_appears_is_added_without_restart(
    server: ServerProcess, fake: FakeProvider
) -> None:
    secrets = Path(server.env["SECRETS_DIR"])
    key = server.cli("keys", "create", "--name", "added-later").stdout.strip()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20)

    # Not configured at start: a 404 naming the provider, the alias too, nothing listed.
    for model in ("openai/gpt-4o-mini", "cheap", "deepseek/deepseek-chat"):
        with pytest.raises(openai.NotFoundError) as missing:
            _chat(client, model)
        assert "not configured" in str(missing.value)
    listed = [m.id for m in client.models.list()]
    assert not [m for m in listed if m.startswith(("openai/", "deepseek/"))]

    _write_atomically(secrets / "OPENAI_API_KEY", "sk-test-added-later-openai")
    _write_atomically(secrets / "DEEPSEEK_API_KEY", "sk-test-added-later-deepseek")
    _until_served(client, "openai/gpt-4o-mini")
    assert fake.last("/openai/v1/chat/completions")["headers"]["authorization"] == (
        "Bearer sk-test-added-later-openai"
    )
    _until_served(client, "deepseek/deepseek-chat")
    assert fake.last("/deepseek/v1/chat/completions")["headers"]["authorization"] == (
        "Bearer sk-test-added-later-deepseek"
    )
    _chat(client, "cheap")  # the alias naming openai resolves now
    assert fake.last("/openai/v1/chat/completions")["body"]["model"] == "gpt-4o-mini"
    listed = [m.id for m in client.models.list()]
    assert any(m.startswith("openai/") for m in listed)
    assert "cheap" in listed

    # Added providers are watched like the others: a rotation reaches them, an empty file
    # (the secret back at its placeholder) keeps the key in use.
    _write_atomically(secrets / "OPENAI_API_KEY", "sk-test-added-later-rotated")
    end = time.monotonic() + PICKUP_SECONDS
    while True:
        _chat(client, "openai/gpt-4o-mini")
        sent = fake.last("/openai/v1/chat/completions")["headers"]["authorization"]
        if sent == "Bearer sk-test-added-later-rotated" or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert sent == "Bearer sk-test-added-later-rotated"
    _write_atomically(secrets / "OPENAI_API_KEY", "")
    time.sleep(1.0)  # five reload intervals
    _chat(client, "openai/gpt-4o-mini")
    assert fake.last("/openai/v1/chat/completions")["headers"]["authorization"] == (
        "Bearer sk-test-added-later-rotated"
    )
    log = server.log_path.read_text(errors="replace")  # the whole log, not its tail
    assert "provider added from its key file" in log
    assert "sk-test-added-later" not in log  # never the key itself
