"""Any environment name: a fourth config/<name>.yaml (a personal stage) synthesizes, every name
is derived from it in config/naming.py, and a bad name fails in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App

from app import build
from config import ConfigError, load_environment, naming
from tests.conftest import cdk_context

ROOT = Path(__file__).resolve().parent.parent


def _with_personal_stage(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    for source in (ROOT / "config").glob("*.yaml"):
        shutil.copy(source, folder / source.name)
    shutil.copy(ROOT / "config" / "dev.yaml", folder / f"{name}.yaml")
    return folder


@pytest.mark.slow
def test_a_fourth_environment_synthesizes_with_derived_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUMANSA_CONFIG_DIR", str(_with_personal_stage(tmp_path, "dev-alice")))
    outdir = tmp_path / "cdk.out"
    app = App(outdir=str(outdir), context={**cdk_context(), "env": "dev-alice"})
    (stacks,) = build(app).environments
    try:
        app.synth()
    except RuntimeError as exc:  # cdk-nag findings would be a failure of their own
        pytest.fail(str(exc))
    assert (
        [s.stack_name for s in (stacks.network, stacks.data, stacks.service)]
        == (naming.stack_names("dev-alice"))
        == ["Humansa-DevAlice-Network", "Humansa-DevAlice-Data", "Humansa-DevAlice-Service"]
    )
    service: dict[str, Any] = json.loads(
        (outdir / "Humansa-DevAlice-Service.template.json").read_text()
    )
    resources = service["Resources"].values()

    def names(kind: str, prop: str) -> set[str]:
        return {
            r["Properties"][prop]
            for r in resources
            if r["Type"] == kind and prop in r["Properties"]
        }

    alarms = names("AWS::CloudWatch::Alarm", "AlarmName")
    assert alarms and all(a.startswith("Humansa-DevAlice-") for a in alarms)
    assert names("AWS::CloudWatch::Dashboard", "DashboardName") == {"Humansa-DevAlice"}
    assert names("AWS::Logs::LogGroup", "LogGroupName") >= {
        naming.log_group("dev-alice"),
        naming.log_group("dev-alice", setup=True),
    }
    secrets = names("AWS::SecretsManager::Secret", "Name")
    assert secrets and all(s.startswith("/humansa/dev-alice/") for s in secrets)
    parameters = names("AWS::SSM::Parameter", "Name")
    assert parameters and all(p.startswith(naming.parameter_path("dev-alice")) for p in parameters)


@pytest.mark.parametrize("bad", ["Dev", "dev_alice", "dev--alice", "-dev", "a" * 21, "1dev"])
def test_a_bad_name_fails_in_one_line(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_environment(bad)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{bad!r} is not an environment name: lower-case letters")


def test_a_bad_file_name_stops_synth_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _with_personal_stage(tmp_path, "Dev_Alice")
    done = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env={"HUMANSA_CONFIG_DIR": str(folder), "PATH": "/usr/bin:/bin", "ENV": "Dev_Alice"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: 'Dev_Alice' is not an environment name")


def test_names_agree_with_the_model() -> None:
    for name in ("dev", "staging", "production"):
        config = load_environment(name)
        assert config.title == naming.title(name)
        assert config.parameter_path == naming.parameter_path(name)
    assert naming.title("dev-alice") == "DevAlice"
