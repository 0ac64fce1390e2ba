"""``make keys`` / ``make usage``: the deployed path (stack output + Secrets Manager, answered by
moto on 127.0.0.1) and the local path, each against a real server with a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres, free_port
from ml_server.tests.server_proc import REPO_ROOT, ServerProcess, provider_env

pytestmark = pytest.mark.slow

ADMIN_KEY = "hsa-test-cli-admin-key-not-real-99"
REGION = "ap-east-1"  # config/staging.yaml's region
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # moto's fake credentials
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
TEMPLATE = {
    "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
    "Outputs": {"ServiceUrl": {"Value": "URL"}},
}


@pytest.fixture(scope="module")
def cli_server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    env = {**TEST_SETTINGS, **pg.env(), **provider_env(fake.url), "ADMIN_API_KEY": ADMIN_KEY}
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _aws(moto_url: str) -> dict[str, str]:
    return {**AWS_ENV, "AWS_ENDPOINT_URL": moto_url}


def _seed(moto_url: str, server_url: str, admin_key: str) -> None:
    kw = {"region_name": REGION, "endpoint_url": moto_url, **_creds()}
    template = json.loads(json.dumps(TEMPLATE).replace('"URL"', json.dumps(server_url)))
    cfn = boto3.client("cloudformation", **kw)
    cfn.create_stack(StackName="Humansa-Staging-Service", TemplateBody=json.dumps(template))
    sm = boto3.client("secretsmanager", **kw)
    sm.create_secret(Name="/humansa/staging/ADMIN_API_KEY", SecretString=admin_key)


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": AWS_ENV["AWS_SESSION_TOKEN"],
    }


def _make(target: str, args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``make -s TARGET ARGS=... [ENV=...]`` with only the given AWS settings and admin key."""
    env = dict(env)
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "ADMIN_API_KEY"
    }
    cmd = ["make", "-s", "-C", str(REPO_ROOT), target, f"ARGS={args}"]
    if "ENV" in env:
        cmd.append(f"ENV={env.pop('ENV')}")
    return subprocess.run(
        cmd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_make_keys_against_a_deployed_environment(cli_server: ServerProcess, moto_url: str) -> None:
    _seed(moto_url, cli_server.url, ADMIN_KEY)
    env = {**_aws(moto_url), "ENV": "staging"}
    created = _make(
        "keys", "create --name deployed-team --owner ops --models openai/* --rpm 5", env
    )
    assert created.returncode == 0, created.stderr
    assert "shown only once" in created.stdout
    secret = created.stdout.strip().rsplit(" ", 1)[-1]
    assert secret.startswith("hsk-")
    info = json.loads(created.stdout[: created.stdout.index("Key (shown")])
    key_id = info["id"]
    assert (info["owner"], info["rpm"], info["allowed_models"]) == ("ops", 5, ["openai/*"])

    listed = _make("keys", "list", env)
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if "deployed-team" in x)
    assert line.split()[0] == str(key_id) and "openai/*" in line and secret not in listed.stdout

    updated = _make("keys", f"update {key_id} --tpm 900 --models none", env)
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["tpm"] == 900
    assert json.loads(updated.stdout)["allowed_models"] == []
    assert _make("keys", f"revoke {key_id}", env).returncode == 0

    usage = _make("usage", f"--key {key_id}", env)
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith("Usage ")

    # The audit log names the caller's AWS identity (moto's STS answer).
    audit = httpx.get(
        cli_server.url + "/admin/audit",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=20,
    ).json()["data"]
    mine = [e for e in audit if e["target"] == f"key:{key_id}"]
    assert len(mine) == 3 and all(e["actor"].startswith("arn:aws:") for e in mine)

    # A secret still at the CDK placeholder: a clear error, not a 401.
    kw = {"region_name": REGION, "endpoint_url": moto_url, **_creds()}
    boto3.client("secretsmanager", **kw).put_secret_value(
        SecretId="/humansa/staging/ADMIN_API_KEY", SecretString="UNSET"
    )
    unset = _make("keys", "list", env)
    assert unset.returncode != 0
    assert "make secrets ENV=staging NAME=ADMIN_API_KEY" in unset.stderr
    missing = _make("keys", "list", {**_aws(moto_url), "ENV": "dev"})
    assert missing.returncode != 0 and "Humansa-Dev-Service" in missing.stderr


def test_make_keys_locally(cli_server: ServerProcess) -> None:
    env = {"HUMANSA_URL": cli_server.url, "ADMIN_API_KEY": ADMIN_KEY}
    created = _make("keys", "create --name local-team --budget-daily 2.5", env)
    assert created.returncode == 0, created.stderr
    assert '"budget_daily_usd": 2.5' in created.stdout
    wrong = _make("keys", "list", {**env, "ADMIN_API_KEY": "hsa-wrong"})
    assert wrong.returncode != 0 and "HTTP 401" in wrong.stderr
    bad = _make("keys", "create --name x --rpm -4", env)
    assert bad.returncode != 0 and "rpm" in bad.stderr


def test_make_keys_errors_name_the_option(cli_server: ServerProcess) -> None:
    """Bad options: an error naming the option and what is allowed, no traceback, no key made."""
    env = {"HUMANSA_URL": cli_server.url, "ADMIN_API_KEY": ADMIN_KEY}
    cases = [
        ("keys", "create --name bad-rpm --rpm abc", "--rpm", "whole number"),
        ("keys", "create --name bad-days --expires-in-days 1e308", "--expires-in-days", "36500"),
        ("keys", "create --name bad-past --expires-in-days -1", "--expires-in-days", "above 0"),
        ("keys", "create --name bad-nan --budget-daily nan", "--budget-daily", "USD"),
        ("keys", "create --name bad-huge --budget-monthly 1e308", "--budget-monthly", "1000000000"),
        ("keys", "create --name bad-models --models ''", "--models", "glob"),
        ("keys", "create --name bad-zone --expires-at 2030-01-01", "--expires-at", "timezone"),
        (
            "keys",
            "create --name bad-then --expires-at 2020-01-01T00:00:00Z",
            "--expires-at",
            "past",
        ),
        ("usage", "--start yesterday", "--start", "YYYY-MM-DD"),
        ("keys", "show 99999999999", "id", "2147483647"),
    ]
    problems = []
    for target, args, option, allowed in cases:
        r = _make(target, args, env)
        if (
            r.returncode == 0
            or "Traceback" in r.stderr
            or not (option in r.stderr and allowed in r.stderr)
        ):
            problems.append((args, r.returncode, r.stderr.strip().splitlines()[-2:]))
    assert not problems, "\n".join(map(str, problems))
    listed = _make("keys", "list --all", env).stdout
    assert "bad-" not in listed, listed
    closed = f"http://127.0.0.1:{free_port()}"
    down = _make("keys", "list", {**env, "HUMANSA_URL": closed})
    assert down.returncode != 0 and "Traceback" not in down.stderr
    assert f"cannot reach the admin API at {closed}" in down.stderr and "make serve" in down.stderr

    ok = _make(
        "keys", "create --name ok-team --models 'claude-*' --rpm 10 --expires-in-days 30", env
    )
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout[: ok.stdout.index("Key (shown")])
    assert info["allowed_models"] == ["claude-*"] and info["rpm"] == 10
    assert info["expires_at"].endswith("Z") and "." not in info["expires_at"]  # whole seconds
    assert _make("keys", f"update {info['id']} --expires-in-days 7", env).returncode == 0
