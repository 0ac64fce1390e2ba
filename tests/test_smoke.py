"""The release's smoke test (humansa_ops/smoke.py) against the real server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from humansa_ops import smoke
from ml_server.tests.server_proc import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("smoke-data")
    proc = ServerProcess({"ENVIRONMENT": "development", "LOCAL_DATA_DIR": str(data)})
    done = proc.cli("migrate")
    assert done.returncode == 0, done.stderr
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.mark.slow
def test_smoke_passes_on_a_running_server_with_a_key(server: ServerProcess) -> None:
    created = server.cli("keys", "create", "--name", "smoke")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    lines = smoke.smoke(server.url, api_key=key, model="fake/echo")
    assert lines[0] == f"GET {server.url}/health: 200"
    assert lines[1] == "OpenAI SDK with a made-up key: AuthenticationError (401)"
    assert lines[2].startswith("OpenAI SDK models.list: ")
    assert lines[3].startswith("OpenAI SDK chat.completions with fake/echo: ")


@pytest.mark.slow
def test_smoke_fails_when_nothing_answers(tmp_path: Path) -> None:
    from ml_server.tests.pg import free_port

    with pytest.raises(smoke.SmokeError, match=r"^GET http://127\.0\.0\.1:\d+/health failed"):
        smoke.smoke(f"http://127.0.0.1:{free_port()}", api_key=None, model=None, timeout=2)
