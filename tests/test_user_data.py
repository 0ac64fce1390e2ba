"""The rendered boot script of every environment: shellcheck, the settings it refuses, the unit's
mounts and ports as the boot writes them."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from components.boot import (
    METRICS_PORT,
    USAGE_SPOOL_DIR,
    BootSettings,
    SecretFile,
    render_user_data,
)
from config import load_environment
from system_tests.unit import parse_docker_run
from tests import boot_harness as h

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


@pytest.mark.slow
def test_the_usage_spool_is_a_host_folder_mounted_read_write_and_the_rest_read_only(
    tmp_path: Path,
) -> None:
    # GIVEN the boot run under the harness against moto
    with h.moto_server() as moto:
        sandbox = h.Sandbox(tmp_path)
        sandbox.setup()
        result = sandbox.run(render_user_data(h.settings(moto.secret_arns)), moto.endpoint)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    unit = (sandbox.root / "etc/systemd/system/humansa-ml.service").read_text()
    run = parse_docker_run(unit)
    env = dict(
        line.split("=", 1)
        for line in (sandbox.root / "etc/humansa/humansa-ml.env").read_text().splitlines()
    )
    # THEN the server's USAGE_SPOOL_DIR is a bind mount of a host folder, writable, on the
    # instance's disk (not the tmpfs /run), created by the boot for the container user only
    (spool,) = [v for v in run.volumes if v.container == env["USAGE_SPOOL_DIR"]]
    assert not spool.read_only
    assert spool.host == USAGE_SPOOL_DIR and not spool.host.startswith(("/run/", "/tmp/"))
    st = (sandbox.root / spool.host.lstrip("/")).stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, run.uid, run.gid)
    # AND every other mount stays read-only (the secrets), as does the container's own root
    # (only a tmpfs /tmp besides the spool is writable)
    assert [v.read_only for v in run.volumes if v is not spool] == [True]
    assert "--read-only" in run.flags and run.tmpfs == ["/tmp"]
    # AND the metrics port is published on the instance's loopback only (never to the ALB)
    assert env["METRICS_PORT"] == str(METRICS_PORT)
    metrics = [p for p in run.publish if p.endswith(f":{METRICS_PORT}")]
    assert metrics == [f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}"]
    # AND the image named once in the user data is the one the unit runs
    assert run.image == h.IMAGE


def test_forwarded_allow_ips_is_validated() -> None:
    settings = _settings("dev")
    for bad in ("*", "", "10.0.0.0/33", "vpc"):
        with pytest.raises(ValueError, match=r"BootSettings\.forwarded_allow_ips"):
            render_user_data(BootSettings(**{**settings.__dict__, "forwarded_allow_ips": bad}))
    ok = BootSettings(**{**settings.__dict__, "forwarded_allow_ips": "10.20.0.0/16"})
    assert "FORWARDED_ALLOW_IPS='10.20.0.0/16'" in render_user_data(ok)


def test_a_secret_name_that_looks_like_a_partial_arn_is_refused() -> None:
    settings = _settings("dev")
    files = {"DB_PASSWORD": SecretFile("humansa/dev/db-AbCdEf", "password")}
    with pytest.raises(ValueError, match=r"ends in a hyphen and six characters"):
        render_user_data(BootSettings(**{**settings.__dict__, "secret_files": files}))
