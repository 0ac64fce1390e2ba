"""The rendered boot script of every environment passes shellcheck."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.boot import BootSettings, SecretFile, render_user_data
from config import load_environment

SHELLCHECK = str(Path(sys.executable).parent / "shellcheck")


def _settings(env: str) -> BootSettings:
    config = load_environment(env)
    account, region = config.account, config.region
    registry = f"{account}.dkr.ecr.{region}.amazonaws.com"
    return BootSettings(
        environment=env,
        region=region,
        parameter_path=config.parameter_path,
        image_uri=f"{registry}/cdk-hnb659fds-container-assets-{account}-{region}:0123abcd",
        registry=registry,
        secret_files={
            "DB_PASSWORD": SecretFile(
                f"arn:aws:secretsmanager:{region}:{account}:secret:humansa/{env}/db-AbCdEf",
                "password",
            )
        },
        app_log_group=f"/aws/ec2/humansa-ml/{env}",
        setup_log_group=f"/aws/ec2/humansa-ml/{env}/setup",
        container_port=config.service.container_port,
        health_path=config.service.health_path,
    )


@pytest.mark.parametrize("env", ["dev", "staging", "production"])
def test_rendered_user_data_is_shellcheck_clean(env: str, tmp_path: Path) -> None:
    script = render_user_data(_settings(env))
    assert script.startswith("#!/bin/bash\n")
    assert f"PARAM_PATH='/humansa/{env}/'" in script
    path = tmp_path / f"boot-{env}.sh"
    path.write_text(script)
    result = subprocess.run(
        [SHELLCHECK, "--severity=style", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_hostile_values_are_refused_before_rendering() -> None:
    settings = _settings("dev")
    hostile = BootSettings(**{**settings.__dict__, "health_path": "/health; rm -rf /"})
    with pytest.raises(ValueError, match=r"BootSettings.health_path must be a path like /health"):
        render_user_data(hostile)


def test_parameter_path_needs_slashes() -> None:
    settings = _settings("dev")
    message = r"BootSettings\.parameter_path must start and end with '/'"
    with pytest.raises(ValueError, match=message):
        render_user_data(BootSettings(**{**settings.__dict__, "parameter_path": "/humansa/dev"}))
