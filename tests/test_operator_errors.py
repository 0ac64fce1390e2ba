"""The operator commands' error paths (`make status|logs|shell|keys|secrets ENV=...`) against
moto on 127.0.0.1 with nothing deployed: each ends in one line naming the resource or setting and
the fix, never a traceback or a raw AWS error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

from humansa_ops import operate
from ml_server.admin import cli

ACCOUNT = "123456789012"  # moto's account (config/dev.yaml names another: the line says which)


@pytest.fixture(scope="module")
def nothing_deployed() -> Iterator[str]:
    """A moto server with no stacks, and the credentials the commands use pointed at it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing-not-a-real-key",
            "AWS_SECRET_ACCESS_KEY": "testing-not-a-real-secret",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }.items():
            monkeypatch.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"):
            monkeypatch.delenv(key, raising=False)
        try:
            yield endpoint
        finally:
            server.stop()


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "An error occurred" not in err, err
    return lines[0]


def test_keys_of_an_environment_not_deployed_names_the_stack_and_the_deploy(
    nothing_deployed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--env", "dev", "keys", "list"]) == 1
    line = _one_line(capsys.readouterr().err)
    print(line)  # shown with -s: what `make keys ENV=dev ARGS=list` prints
    assert line == (
        f"error: stack Humansa-Dev-Service is not deployed in ap-east-1/{ACCOUNT} "
        "(config/dev.yaml names account 992382528744): deploy it with `make deploy ENV=dev`"
    )


def test_keys_of_an_unknown_environment_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--env", "qa", "keys", "list"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: ENV: unknown environment 'qa'; known environments: dev"), line


def test_shell_checks_the_stack_before_the_plugin(
    nothing_deployed: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stack and no plugin: say the environment is not deployed (installing the plugin first
    would not help)."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert operate.main(["shell", "--env", "dev"]) == 1
    line = _one_line(capsys.readouterr().err)
    print(line)  # shown with -s: what `make shell ENV=dev` prints
    assert line == (
        "make shell: Humansa-Dev-Service is not deployed in ap-east-1 (make deploy ENV=dev)"
    )
