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


@pytest.mark.slow
def test_with_the_key_set_the_release_smoke_runs_a_chat_completion(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the environment secret as release.yml passes it, and no model named
    created = server.cli("keys", "create", "--name", "release-smoke")
    assert created.returncode == 0, created.stderr
    monkeypatch.setenv("HUMANSA_SMOKE_API_KEY", created.stdout.strip())
    monkeypatch.delenv("HUMANSA_SMOKE_MODEL", raising=False)
    # WHEN the workflow's command runs
    assert smoke.main(["--url", server.url]) == 0
    # THEN the SDK listed the models and completed a chat with the first one
    out = capsys.readouterr().out
    assert "smoke: ok: OpenAI SDK models.list: " in out
    assert "smoke: ok: OpenAI SDK chat.completions with " in out and "skipped" not in out


@pytest.mark.slow
def test_without_the_key_the_smoke_says_what_it_skipped(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HUMANSA_SMOKE_API_KEY", "")  # an unset secret is an empty string
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert smoke.main(["--url", server.url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == f"smoke: {smoke.SKIPPED}"
    assert "models.list and chat.completions" in out[-2] and "HUMANSA_SMOKE_API_KEY" in out[-2]
    assert out[-1].startswith("::warning title=smoke test incomplete::skipped: ")
    assert not any("chat.completions with" in line for line in out)


@pytest.mark.slow
def test_a_model_the_server_does_not_list_fails_by_name(server: ServerProcess) -> None:
    created = server.cli("keys", "create", "--name", "smoke-model")
    key = created.stdout.strip()
    with pytest.raises(smoke.SmokeError, match=r"model no/such-model is not listed"):
        smoke.smoke(server.url, api_key=key, model="no/such-model")
