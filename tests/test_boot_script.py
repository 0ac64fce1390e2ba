"""The rendered boot script: shellcheck, size, and executed under stubs against moto."""

from __future__ import annotations

import dataclasses
import json
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.boot import (
    ENVIRONMENTS,
    PLACEHOLDER_SECRET_VALUE,
    PROVIDER_SECRET_NAMES,
    RUNBOOK_PARAMETER_NAMES,
    USER_DATA_LIMIT_BYTES,
    BootSettings,
    SecretFile,
    render_file,
    render_user_data,
    secret_name,
)
from tests import boot_harness as h

SHELLCHECK = str(Path(sys.executable).parent / "shellcheck")
REPO = Path(__file__).parent.parent


def realistic(environment: str, **overrides: object) -> BootSettings:
    """Settings with literal values as long as the deployed ones (tokens resolve longer)."""
    account, region = "992382528744", "ap-east-1"
    # By name, as the stacks pass them (components/secrets.py).
    files = {"DB_PASSWORD": SecretFile(f"humansa/{environment}/db-app", "password")}
    files.update({n: SecretFile(secret_name(environment, n)) for n in PROVIDER_SECRET_NAMES})
    registry = f"{account}.dkr.ecr.{region}.amazonaws.com"
    base: dict[str, object] = {
        "environment": environment,
        "region": region,
        "parameter_path": f"/humansa/{environment}/",
        "image_uri": f"{registry}/cdk-hnb659fds-container-assets-{account}-{region}:{'a' * 64}",
        "registry": registry,
        "secret_files": files,
        "app_log_group": f"/aws/ec2/humansa-ml/{environment}",
        "setup_log_group": f"/aws/ec2/humansa-ml/{environment}/setup",
    }
    base.update(overrides)
    return BootSettings(**base)  # type: ignore[arg-type]


def shellcheck(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHELLCHECK, "-S", "warning", *extra, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


# --- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_rendered_scripts_pass_shellcheck(environment: str, tmp_path: Path) -> None:
    settings = realistic(environment)
    scripts = {
        "boot.sh": render_user_data(settings),
        "fetch-secrets": render_file("fetch-secrets.sh.j2", settings),
        "health-check": render_file("health-check.sh.j2", settings),
    }
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
        result = shellcheck(tmp_path / name)
        assert result.returncode == 0, f"{environment} {name}:\n{result.stdout}"
    (tmp_path / "lib.sh").write_text(render_file("lib.sh.j2", settings))
    result = shellcheck(tmp_path / "lib.sh", "-s", "bash")
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_user_data_stays_under_the_ec2_limit(environment: str) -> None:
    size = len(render_user_data(realistic(environment)).encode())
    assert size < USER_DATA_LIMIT_BYTES - 1024, (
        f"{environment}: {size} bytes leaves < 1 KB headroom"
    )


def test_script_shape() -> None:
    script = render_user_data(realistic("production"))
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script
    assert "set -x" not in script and "xtrace" not in script
    assert not re.search(r"\b(yum|dnf) (-y )?(update|upgrade)", script)
    assert "--env-file /etc/humansa/humansa-ml.env" in script
    assert "-a fetch-config -m ec2" in script and "-a query" not in script
    for line in script.splitlines():
        if "169.254.169.254" in line and "api/token" not in line and "IMDS=" not in line:
            pytest.fail(f"metadata call without the token header: {line}")


def test_cdk_tokens_stay_one_shell_word_and_out_of_comments() -> None:
    token = "${Token[TOKEN.123]}"
    settings = realistic(
        "dev",
        image_uri=f"{token}.dkr.ecr.{token}.amazonaws.com/repo:{token}",
        registry=f"{token}.dkr.ecr.ap-east-1.amazonaws.com",
        secret_files={"DB_PASSWORD": SecretFile(token, "password")},
    )
    script = render_user_data(settings)
    assert f"IMAGE='{token}.dkr.ecr.{token}.amazonaws.com/repo:{token}'" in script
    assert f"fetch DB_PASSWORD '{token}' 'password'" in script
    for line in script.splitlines():
        if line.lstrip().startswith("#"):
            assert "Token[" not in line, line


def test_unit_and_agent_config() -> None:
    settings = realistic("staging", drain_seconds=45)
    unit = render_file("humansa-ml.service.j2", settings)
    assert "Restart=always" in unit
    assert "ExecStop=/usr/bin/docker stop -t 45 humansa-ml" in unit
    assert int(re.search(r"TimeoutStopSec=(\d+)", unit)[1]) > 45  # type: ignore[index]
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    for part in (
        "--rm",
        "--name humansa-ml",
        "-v /run/humansa/secrets:/run/secrets/humansa:ro",
        "-p 5001:5001",
        "--user 10001:10001",
        "--log-driver awslogs",
        "awslogs-group=/aws/ec2/humansa-ml/staging",
    ):
        assert part in start
    # No secret on the command line: the only -e is the keep-alive (the ALB's idle timeout + 5).
    assert re.findall(r" -e (\S+)", start) == ["KEEP_ALIVE_SECONDS=305"]
    timer = render_file("humansa-health.timer.j2", settings)
    assert "OnUnitActiveSec=60" in timer
    agent = json.loads(render_file("cloudwatch-agent.json.j2", settings))
    assert agent["metrics"]["namespace"] == "humansa-ml/staging"
    assert set(agent["metrics"]["metrics_collected"]) == {"cpu", "disk", "mem"}
    groups = {
        f["log_group_name"]: f["file_path"]
        for f in agent["logs"]["logs_collected"]["files"]["collect_list"]
    }
    assert groups == {
        "/aws/ec2/humansa-ml/staging": "/var/log/humansa-ml/*.log",
        "/aws/ec2/humansa-ml/staging/setup": "/var/log/user-data.log",
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("environment", "Prod", "BootSettings.environment must be an environment name"),
        (
            "parameter_path",
            "/humansa/dev",
            "BootSettings.parameter_path must start and end with '/'",
        ),
        ("image_uri", "repo:tag; rm -rf /", "BootSettings.image_uri must be non-empty"),
        ("container_port", 70000, "BootSettings.container_port must be an integer in 1..65535"),
        ("health_path", "health", "BootSettings.health_path must be a path"),
        ("secret_files", {"db-password": SecretFile("arn")}, "secret_files key 'db-password'"),
    ],
)
def test_bad_settings_are_refused_by_name(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render_user_data(dataclasses.replace(realistic("dev"), **{field: value}))


# --- execution under stubs against moto -----------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[h.Moto]:
    with h.moto_server() as server:
        yield server


@pytest.fixture
def sandbox(tmp_path: Path) -> h.Sandbox:
    box = h.Sandbox(tmp_path)
    box.setup()
    return box


def assert_no_secret_in(text: str, where: str) -> None:
    for value in h.secret_values():
        assert value not in text, f"a secret value appears in {where}"


@pytest.mark.slow
def test_boot_writes_config_and_secrets_starts_the_unit_and_is_idempotent(
    moto: h.Moto, sandbox: h.Sandbox
) -> None:
    script = render_user_data(h.settings(moto.secret_arns))
    first = sandbox.run(script, moto.endpoint)
    assert first.returncode == 0, first.stdout + first.stderr
    root = sandbox.root

    env_file = root / "etc/humansa/humansa-ml.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert (env_file.stat().st_uid, env_file.stat().st_gid) == (0, 0)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    for name in RUNBOOK_PARAMETER_NAMES:  # the runbook's names, read by name
        assert env[name.upper()] == h.PARAMETERS[name]
    # Nothing else under the path: not the extra Strings, not the planted SecureString.
    assert "LOG_LEVEL" not in env and "RATE_LIMIT" not in env and "GITHUB_PAT" not in env
    assert env["ENVIRONMENT"] == "production" and env["AWS_REGION"] == "ap-east-1"
    assert env["INSTANCE_ID"] == "i-0123456789abcdef0" and env["ML_SERVER_PORT"] == "5001"
    assert env["DB_ACTIVE_DATABASE"] == h.PARAMETERS["db_name"]
    assert "not-this-env" not in env_file.read_text()

    secrets = root / "run/humansa/secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o500 and secrets.stat().st_uid == 10001
    expected = {"DB_PASSWORD": h.DB_PASSWORD, **h.provider_values()}
    expected[h.UNSET_PROVIDER] = ""  # the CDK placeholder means "provider not configured"
    assert sorted(p.name for p in secrets.iterdir()) == sorted(expected)
    for name, value in expected.items():
        path = secrets / name
        assert path.read_text() == value, name
        assert stat.S_IMODE(path.stat().st_mode) == 0o400 and path.stat().st_uid == 10001

    log = (root / "var/log/user-data.log").read_text()
    assert "boot complete" in log and "ready: http://127.0.0.1:5001/health answers" in log
    assert_no_secret_in(sandbox.stub_log.read_text(), "a recorded command line")
    assert_no_secret_in(env_file.read_text(), "the env file")
    assert_no_secret_in(log + first.stdout + first.stderr, "the boot log")
    assert_no_secret_in(script, "the user data")

    runs = [c["argv"] for c in sandbox.calls("docker") if c["argv"][0] == "run"]
    assert len(runs) == 1
    run = runs[0]
    assert run[run.index("-v") + 1] == "/run/humansa/secrets:/run/secrets/humansa:ro"
    assert run[run.index("-p") + 1] == "5001:5001"
    assert run[run.index("--env-file") + 1] == "/etc/humansa/humansa-ml.env"
    assert "awslogs-stream=i-0123456789abcdef0/humansa-ml" in run
    # The only -e is the keep-alive (no secret on the command line).
    assert run.count("-e") == 1 and run[run.index("-e") + 1] == "KEEP_ALIVE_SECONDS=305"
    assert run[-1] == h.IMAGE
    dnf = [c["argv"] for c in sandbox.calls("dnf")]
    assert dnf == [["install", "-y", "amazon-cloudwatch-agent"]]  # docker present, no update
    login = [c["argv"] for c in sandbox.calls("docker") if c["argv"][0] == "login"]
    assert login == [["login", "--username", "AWS", "--password-stdin", h.REGISTRY]]
    ctl = [c["argv"] for c in sandbox.calls("amazon-cloudwatch-agent-ctl")]
    assert ctl and ctl[0][:4] == ["-a", "fetch-config", "-m", "ec2"] and ctl[0][-1] == "-s"
    imds = [c["argv"] for c in sandbox.calls("curl") if "169.254.169.254" in c["argv"][-1]]
    assert all(any(a.startswith("@") or "token" in a for a in argv) for argv in imds)

    before = sandbox.manifest()
    calls_before = len(sandbox.calls())
    second = sandbox.run(script, moto.endpoint)
    assert second.returncode == 0, second.stdout + second.stderr
    assert sandbox.manifest() == before
    later = sandbox.calls()[calls_before:]
    assert not [
        c for c in later if c["prog"] == "docker" and c["argv"][0] in ("run", "pull", "login")
    ]
    assert not [c for c in later if c["prog"] in ("dnf", "amazon-cloudwatch-agent-ctl")]
    assert not [
        c
        for c in later
        if c["prog"] == "systemctl" and c["argv"][0] in ("restart", "daemon-reload")
    ]


@pytest.mark.slow
def test_a_rotated_secret_reaches_the_file_through_the_refresh_helper(
    moto: h.Moto, sandbox: h.Sandbox
) -> None:
    arns = {k: moto.secret_arns[k] for k in ("DB_PASSWORD", "OPENAI_API_KEY")}
    script = render_user_data(h.settings(arns))
    assert sandbox.run(script, moto.endpoint).returncode == 0
    rotated = "pw-test-not-a-real-password-rotated-77"
    moto.client("secretsmanager").put_secret_value(
        SecretId=moto.secret_arns["DB_PASSWORD"], SecretString=json.dumps({"password": rotated})
    )
    try:
        refresh = subprocess.run(
            [str(sandbox.root / "usr/local/libexec/humansa/fetch-secrets")],
            env=sandbox.env(moto.endpoint),
            capture_output=True,
            text=True,
            check=False,
        )
        assert refresh.returncode == 0, refresh.stderr
        path = sandbox.root / "run/humansa/secrets/DB_PASSWORD"
        assert path.read_text() == rotated
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
        assert rotated not in refresh.stdout + refresh.stderr + sandbox.stub_log.read_text()
    finally:
        moto.client("secretsmanager").put_secret_value(
            SecretId=moto.secret_arns["DB_PASSWORD"],
            SecretString=json.dumps({"password": h.DB_PASSWORD}),
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("endpoint_env", "line", "service_prefix"),
    [
        (
            "AWS_ENDPOINT_URL",
            "FATAL: could not fetch parameters under /humansa/production/ from SSM after 2 attempts",  # noqa: E501
            "ssm",
        ),
        (
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "FATAL: could not fetch secret ANTHROPIC_API_KEY from Secrets Manager after 2 attempts",
            "secretsmanager",
        ),
    ],
)
def test_an_outage_gives_bounded_retries_and_a_clear_fatal_line(
    moto: h.Moto, sandbox: h.Sandbox, endpoint_env: str, line: str, service_prefix: str
) -> None:
    dead = f"http://127.0.0.1:{h.free_port()}"  # nothing listens: the service is down
    # Only the secret that fails: each AWS CLI call costs ~0.8 s of start-up, and the secrets
    # fetched before it would prove nothing here.
    arns = {"ANTHROPIC_API_KEY": moto.secret_arns["ANTHROPIC_API_KEY"]}
    script = render_user_data(h.settings(arns, fetch_attempts=2, fetch_backoff_seconds=1))
    extra = {endpoint_env: dead, "AWS_MAX_ATTEMPTS": "1"}
    endpoint = dead if endpoint_env == "AWS_ENDPOINT_URL" else moto.endpoint
    result = sandbox.run(script, endpoint, **extra)
    assert result.returncode != 0
    log = (sandbox.root / "var/log/user-data.log").read_text()
    assert line in log
    assert "boot FAILED" in log
    calls = [c for c in sandbox.calls("aws") if c["argv"][0] == service_prefix]
    assert len(calls) == 2
    assert not [c for c in sandbox.calls("docker") if c["argv"][0] == "run"]


@pytest.mark.slow
def test_a_container_that_never_answers_fails_the_boot(moto: h.Moto, sandbox: h.Sandbox) -> None:
    script = render_user_data(h.settings({"DB_PASSWORD": moto.secret_arns["DB_PASSWORD"]}))
    result = sandbox.run(script, moto.endpoint, STUB_HEALTH_FAIL="1", HUMANSA_READY_TIMEOUT="2")
    assert result.returncode != 0
    assert (
        "FATAL: container did not answer http://127.0.0.1:5001/health within 2s"
        in result.stdout + result.stderr
    )


def test_health_timer_restarts_after_consecutive_failures_with_back_off(sandbox: h.Sandbox) -> None:
    settings = realistic("production")
    check = sandbox.base / "health-check"
    check.write_text(render_file("health-check.sh.j2", settings))
    check.chmod(0o755)
    (sandbox.root / "run/humansa").mkdir(parents=True)
    (sandbox.state / "active").mkdir(parents=True, exist_ok=True)
    (sandbox.state / "active" / "humansa-ml.service").touch()
    env = sandbox.env("http://127.0.0.1:9", STUB_HEALTH_FAIL="1")

    def restarts() -> int:
        return len([c for c in sandbox.calls("systemctl") if c["argv"][0] == "restart"])

    outputs = []
    for _ in range(6):  # six failing checks in a row (the timer runs one a minute)
        done = subprocess.run([str(check)], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert restarts() == 1, "one restart after 3 failures; the next waits for the back-off"
    assert "failed (3/3)" in outputs[2] and "restarting" in outputs[2]
    state = (sandbox.root / "run/humansa/health.state").read_text().split()
    assert state[0] == "3" and state[2] == "120"
    env.pop("STUB_HEALTH_FAIL")
    subprocess.run([str(check)], env=env, check=True, capture_output=True)
    assert (sandbox.root / "run/humansa/health.state").read_text().split()[0] == "0"


# --- operator helper ------------------------------------------------------------------------


@pytest.mark.slow
def test_put_secret_reads_stdin_and_keeps_the_value_off_the_command_line(
    moto: h.Moto, sandbox: h.Sandbox
) -> None:
    value = "sk-test-not-a-real-key-from-stdin-41"
    env = sandbox.env(moto.endpoint, AWS_DEFAULT_REGION=h.REGION)
    done = subprocess.run(
        [str(REPO / "scripts/put_secret.sh"), "production", "DEEPSEEK_API_KEY"],
        input=value + "\n",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = moto.client("secretsmanager").get_secret_value(
        SecretId="/humansa/production/DEEPSEEK_API_KEY"
    )
    assert got["SecretString"] == value
    assert value not in sandbox.stub_log.read_text() + done.stdout + done.stderr
    moto.client("secretsmanager").put_secret_value(
        SecretId="/humansa/production/DEEPSEEK_API_KEY",
        SecretString=h.provider_values()["DEEPSEEK_API_KEY"],
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "secret_id", "creates"),
    [
        (
            "XAI_API_KEY",
            "/humansa/staging/XAI_API_KEY",
            "the Service stack creates it (make deploy ENV=staging first)",
        ),
        (
            "GHCR_TOKEN",
            "ecr-pullthroughcache/humansa/staging/ghcr-credential",
            "the Data stack creates it (npx cdk deploy -c env=staging Humansa-Staging-Data "
            "deploys only Network and Data)",
        ),
    ],
)
def test_put_secret_before_the_deploy_says_to_deploy_first(
    moto: h.Moto, sandbox: h.Sandbox, name: str, secret_id: str, creates: str
) -> None:
    """The provider secrets are the Service stack's, the GHCR token the Data stack's: none
    exists before that stack's first deploy."""
    done = subprocess.run(
        [str(REPO / "scripts/put_secret.sh"), "staging", name],
        input="test-not-a-real-key",
        env=sandbox.env(moto.endpoint, GHCR_USERNAME="alice"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"put_secret: {secret_id} does not exist in ap-east-1 yet: {creates}"
    )


def test_put_secret_stores_the_ghcr_token_as_ecr_pull_through_cache_json(
    moto: h.Moto, sandbox: h.Sandbox
) -> None:
    token = "ghcr-test-not-a-real-token-17"
    secret_id = "ecr-pullthroughcache/humansa/production/ghcr-credential"
    moto.client("secretsmanager").create_secret(Name=secret_id, SecretString="UNSET")
    env = sandbox.env(moto.endpoint, AWS_DEFAULT_REGION=h.REGION)
    refused = subprocess.run(
        [str(REPO / "scripts/put_secret.sh"), "production", "GHCR_TOKEN"],
        input=token,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "needs GHCR_USERNAME" in refused.stderr
    done = subprocess.run(
        [str(REPO / "scripts/put_secret.sh"), "production", "GHCR_TOKEN"],
        input=token,
        env={**env, "GHCR_USERNAME": "humansa-bot"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = moto.client("secretsmanager").get_secret_value(SecretId=secret_id)
    assert json.loads(got["SecretString"]) == {"username": "humansa-bot", "accessToken": token}
    assert token not in sandbox.stub_log.read_text() + done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prod", "OPENAI_API_KEY"], "ENV must be one of dev staging production"),
        (["production", "DB_PASSWORD"], "NAME must be one of"),
    ],
)
def test_put_secret_refuses_bad_names(args: list[str], message: str) -> None:
    done = subprocess.run(
        [str(REPO / "scripts/put_secret.sh"), *args],
        input="x",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and message in done.stderr


def test_put_secret_knows_the_same_names_as_the_cdk_side() -> None:
    text = (REPO / "scripts/put_secret.sh").read_text()
    names = re.search(r"^NAMES=\"([^\"]+)\"", text, re.M)
    assert names is not None
    assert names[1].split() == [*PROVIDER_SECRET_NAMES, "GHCR_TOKEN"]
    assert PLACEHOLDER_SECRET_VALUE in text


@pytest.mark.slow
def test_a_securestring_under_a_runbook_name_stops_the_boot_unread(
    moto: h.Moto, sandbox: h.Sandbox
) -> None:
    # GIVEN db_username replaced by a SecureString (a secret where the runbook expects a String)
    ssm = moto.client("ssm")
    name = h.PARAM_PATH + "db_username"
    ssm.put_parameter(Name=name, Value=h.PLANTED_SECURESTRING, Type="SecureString", Overwrite=True)
    try:
        script = render_user_data(h.settings({"DB_PASSWORD": moto.secret_arns["DB_PASSWORD"]}))
        result = sandbox.run(script, moto.endpoint)
    finally:
        ssm.put_parameter(
            Name=name, Value=h.PARAMETERS["db_username"], Type="String", Overwrite=True
        )
    # THEN the boot refuses it by name, never decrypts it, and writes no env file
    assert result.returncode != 0
    log = (sandbox.root / "var/log/user-data.log").read_text()
    assert f"parameter {name} is a SecureString" in log
    assert not (sandbox.root / "etc/humansa/humansa-ml.env").exists()
    assert_no_secret_in(log + sandbox.stub_log.read_text(), "the boot log")
    get = [c["argv"] for c in sandbox.calls("aws") if c["argv"][:2] == ["ssm", "get-parameters"]]
    assert get and all("--with-decryption" not in argv for argv in get)


@pytest.mark.slow
def test_a_missing_required_parameter_stops_the_boot_an_optional_one_does_not(
    moto: h.Moto, sandbox: h.Sandbox
) -> None:
    ssm = moto.client("ssm")
    arns = {"DB_PASSWORD": moto.secret_arns["DB_PASSWORD"]}
    ssm.delete_parameter(Name=h.PARAM_PATH + "asg_name")  # Service stack: created after the group
    try:
        assert sandbox.run(render_user_data(h.settings(arns)), moto.endpoint).returncode == 0
        env = (sandbox.root / "etc/humansa/humansa-ml.env").read_text()
        assert "ASG_NAME=" not in env and "DB_HOST=" in env
        ssm.delete_parameter(Name=h.PARAM_PATH + "db_host")
        failed = sandbox.run(render_user_data(h.settings(arns)), moto.endpoint)
        assert failed.returncode != 0
        assert f"required parameter(s) missing: {h.PARAM_PATH}db_host" in failed.stdout
    finally:
        for key in ("asg_name", "db_host"):
            ssm.put_parameter(
                Name=h.PARAM_PATH + key, Value=h.PARAMETERS[key], Type="String", Overwrite=True
            )
