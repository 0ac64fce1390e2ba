"""Configuration validation: each bad input gives one clear line and no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import ConfigError, environment_names, load_all, load_environment
from tests.conftest import ROOT


def _config_dir(tmp_path: Path, env: str = "production", **changes: Any) -> Path:
    """Copy config/*.yaml to tmp_path/config and apply ``section.key=value`` changes to env."""
    folder = tmp_path / "config"
    folder.mkdir()
    for source in (ROOT / "config").glob("*.yaml"):
        shutil.copy(source, folder / source.name)
    data = yaml.safe_load((folder / f"{env}.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    (folder / f"{env}.yaml").write_text(yaml.safe_dump(data))
    return folder


@pytest.fixture
def use_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)

    def _use(**changes: Any) -> None:
        monkeypatch.setenv("HUMANSA_CONFIG_DIR", str(_config_dir(tmp_path, **changes)))

    return _use


def test_committed_configs_load() -> None:
    assert environment_names() == ["dev", "staging", "production"]
    configs = {c.name: c for c in load_all()}
    assert configs["dev"].vpc.nat == "nat-instance"
    assert configs["production"].database.multi_az is True
    assert {c.account for c in configs.values()} == {"992382528744"}
    assert {c.region for c in configs.values()} == {"ap-east-1"}


CASES = [
    (
        {"fleet__min_capacity": 3, "fleet__desired_capacity": 3, "fleet__max_capacity": 2},
        "config/production.yaml: fleet.min_capacity=3 is above fleet.max_capacity=2",
    ),
    (
        {"fleet__desired_capacity": 9},
        "config/production.yaml: fleet.desired_capacity=9 is outside "
        "fleet.min_capacity=2..fleet.max_capacity=6",
    ),
    (
        {"vpc__nat": "nat-gateway"},
        "config/production.yaml: vpc.nat=nat-gateway is not allowed (allowed: "
        "'gateway-per-az', 'single-gateway', 'nat-instance', 'none')",
    ),
    (
        {"vpc__max_azs": 1},
        "config/production.yaml: vpc.max_azs=1 is not allowed: "
        "input should be greater than or equal to 2",
    ),
    (
        {"vpc__max_azs": 4},
        "config/production.yaml: vpc.max_azs=4 is above the 3 availability zones of "
        "ap-east-1 recorded in cdk.context.json",
    ),
    (
        {"vpc__nat": "none", "vpc__interface_endpoints": False},
        "config/production.yaml: vpc.interface_endpoints=false is not allowed with vpc.nat=none "
        "(instances without NAT reach SSM, ECR and Secrets Manager only through endpoints)",
    ),
    (
        {"fleet__size": 3},
        "config/production.yaml: fleet.size is not a known setting (allowed: instance_type, "
        "architecture, min_capacity, desired_capacity, max_capacity, root_volume_gib, "
        "health_check_grace_seconds, spot, on_demand_base_capacity, "
        "on_demand_percentage_above_base, instance_types)",
    ),
    (
        {"account": None},
        "config/production.yaml: account is required",
    ),
    (
        {"account": 992382528744},
        "config/production.yaml: account=992382528744 is not allowed: "
        "input should be a valid string",
    ),
    (
        {"fleet__instance_type": "t3.small"},
        "config/production.yaml: fleet.instance_type=t3.small is not a Graviton type but "
        "fleet.architecture=arm64 (use t4g, m7g, c7g, ... or set x86_64)",
    ),
    (
        {"database__engine_version": "15.4"},
        "config/production.yaml: database.engine_version=15.4 must be a pinned PostgreSQL 16 "
        "minor version such as 16.13",
    ),
    (
        {"service__idle_timeout_seconds": 60},
        "config/production.yaml: service.idle_timeout_seconds=60 is not allowed: "
        "input should be greater than or equal to 120",
    ),
    (
        {"image__source": "docker-hub"},
        "config/production.yaml: image.source=docker-hub is not allowed (allowed: 'asset', 'ghcr')",
    ),
    (
        {"region": "eu-west-1"},
        "config/production.yaml: account=992382528744 region=eu-west-1 has no availability "
        "zones recorded in cdk.context.json (add them so synth stays offline)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "message"), CASES, ids=[m.split(": ")[1][:40] for _, m in CASES]
)
def test_bad_config_gives_one_line(use_dir: Any, changes: dict[str, Any], message: str) -> None:
    use_dir(**changes)
    with pytest.raises(ConfigError) as caught:
        load_environment("production")
    assert str(caught.value) == message


def test_unknown_environment_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        load_environment("prod")
    assert str(caught.value) == (
        "unknown environment 'prod'; known environments: dev, staging, production"
    )


def test_invalid_yaml(use_dir: Any, tmp_path: Path) -> None:
    use_dir()
    (tmp_path / "config" / "production.yaml").write_text("fleet: [1,\n")
    with pytest.raises(ConfigError, match=r"^config/production.yaml: not valid YAML at line 2$"):
        load_environment("production")


def _run_app(
    tmp_path: Path, *args: str, config_dir: Path | None = None, env_name: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDK_DISABLE_CLI_TELEMETRY": "true", "ENV": env_name}
    env["JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"] = "20"
    if config_dir is not None:
        env["HUMANSA_CONFIG_DIR"] = str(config_dir)
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_app_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    folder = _config_dir(tmp_path, fleet__min_capacity=3, fleet__max_capacity=2)
    result = _run_app(tmp_path, config_dir=folder)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config/production.yaml: fleet.min_capacity=3 is above fleet.max_capacity=2"
    ]
    assert "Traceback" not in result.stderr + result.stdout


def test_app_reports_unknown_environment(tmp_path: Path) -> None:
    result = _run_app(tmp_path, env_name="qa")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown environment 'qa'; known environments: dev, staging, production"
    ]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"fleet__instance_type": "t4g.smal"},
            "fleet.instance_type=t4g.smal is not an instance type botocore's EC2 model knows "
            "(nearest: t4g.small",
        ),
        (
            {"database__instance_class": "db.r7g.larg"},
            "database.instance_class=db.r7g.larg is not an instance type botocore's EC2 model "
            "knows (nearest: db.r7g.large",
        ),
    ],
)
def test_instance_type_typos_fail_with_the_nearest_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("HUMANSA_CONFIG_DIR", str(_config_dir(tmp_path, **changes)))
    with pytest.raises(ConfigError) as caught:
        load_environment("production")
    assert str(caught.value).startswith(f"config/production.yaml: {message}") or message in str(
        caught.value
    ), caught.value
    assert "\n" not in str(caught.value)
