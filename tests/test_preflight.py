"""`make preflight`: the real script against moto (ThreadedMotoServer on 127.0.0.1) with the
conflicts of a half-cleaned account planted, and the production TLS guard before any AWS call."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from humansa_ops import preflight

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "preflight"
REGION = "ap-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def moto_env() -> Iterator[dict[str, str]]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto's backends live in this process: start every test from an empty account.
    urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"), timeout=10
    ).close()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        yield env
    finally:
        server.stop()


def _session(env: dict[str, str]) -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    )


def _client(env: dict[str, str], service: str) -> Any:
    return _session(env).client(service, endpoint_url=env["AWS_ENDPOINT_URL"])


def _run(
    env: dict[str, str], *args: str, config_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    extra = {"HUMANSA_CONFIG_DIR": str(config_dir)} if config_dir else {}
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=ROOT,
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _rows(stdout: str) -> dict[str, list[tuple[str, str]]]:
    """check name -> [(status, detail)] from the printed table."""
    rows: dict[str, list[tuple[str, str]]] = {}
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("check "))
    status_at = lines[header].index("status")
    detail_at = lines[header].index("detail")
    for line in lines[header + 2 :]:
        if not line.strip() or line[0].isdigit():
            break
        name = line[:status_at].strip()
        rows.setdefault(name, []).append(
            (line[status_at:detail_at].strip(), line[detail_at:].strip())
        )
    return rows


def _statuses(rows: dict[str, list[tuple[str, str]]], name: str) -> set[str]:
    return {status for status, _ in rows[name]}


def _staging_with(tmp_path: Path, **fleet: object) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    for name in ("staging.yaml", "account.yaml"):
        shutil.copy(ROOT / "config" / name, folder / name)
    data = yaml.safe_load((folder / "staging.yaml").read_text())
    data["fleet"].update(fleet)
    (folder / "staging.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_clean_account_only_region_and_unanswerable_checks(moto_env: dict[str, str]) -> None:
    """GIVEN a bootstrapped account with nothing of ours THEN every fixed-name and quota check
    passes, the region check reports what moto says of ap-east-1 (opt-in, not enabled), and what
    the API cannot answer is "not checked", not ok."""
    _client(moto_env, "ssm").put_parameter(
        Name="/cdk-bootstrap/hnb659fds/version", Value="33", Type="String"
    )
    result = _run(moto_env, "--env", "staging")
    rows = _rows(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    blockers = {name for name, found in rows.items() if any(s == "BLOCKER" for s, _ in found)}
    assert blockers == {"region enabled"}, result.stdout
    assert "not-opted-in" in rows["region enabled"][0][1]
    assert _statuses(rows, "cdk bootstrap") == {"ok"}
    for itype in ("t4g.small", "t4g.medium", "c6g.medium", "m6g.medium"):
        assert _statuses(rows, f"EC2 {itype}") == {"ok"}
    # moto implements orderable options only for aurora-postgresql and neptune.
    assert rows["RDS db.t4g.micro"] == [
        (
            "not checked",
            "moto/AWS lacks orderable options for postgres (empty answer for the engine itself)",
        )
    ]
    assert _statuses(rows, "instance-refresh update policy") == {"not checked"}
    assert _statuses(rows, "rotation transform") == {"not checked"}
    for name in (
        "IAM role humansa-github-actions-role",
        "GitHub OIDC provider",
        "parameters /humansa/staging/",
        "secrets /humansa/staging/",
        "log groups",
        "quota Elastic IPs",
        "quota VPCs",
    ):
        assert _statuses(rows, name) == {"ok"}, (name, result.stdout)
    assert "1 blocker(s), 0 warning(s), 3 not checked" in result.stdout


def test_planted_conflicts_are_blockers(moto_env: dict[str, str], tmp_path: Path) -> None:
    """GIVEN the leftovers of the old runbook and a full EIP quota THEN each is one row."""
    ssm = _client(moto_env, "ssm")
    ssm.put_parameter(Name="/cdk-bootstrap/hnb659fds/version", Value="5", Type="String")
    ssm.put_parameter(Name="/humansa/staging/db_host", Value="old.example", Type="String")
    ssm.put_parameter(Name="/humansa/staging/db_password", Value="hunter2", Type="SecureString")
    iam = _client(moto_env, "iam")
    iam.create_role(RoleName="humansa-github-actions-role", AssumeRolePolicyDocument="{}")
    iam.create_open_id_connect_provider(
        Url="https://token.actions.githubusercontent.com",
        ClientIDList=["sts.amazonaws.com"],
        ThumbprintList=["6938fd4d98bab03faadb97b34396831e3780aea1"],
    )
    _client(moto_env, "secretsmanager").create_secret(
        Name="/humansa/staging/OPENAI_API_KEY", SecretString="sk-old"
    )
    _client(moto_env, "logs").create_log_group(logGroupName="/aws/ec2/humansa-ml/staging")
    ec2 = _client(moto_env, "ec2")
    for _ in range(5):  # moto's EIP limit (vpc-max-elastic-ips) is 5
        ec2.allocate_address(Domain="vpc")
    config = _staging_with(tmp_path, instance_types=["t4g.medium", "c7gn.medium"])

    result = _run(moto_env, "--env", "staging", config_dir=config)
    rows = _rows(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    blockers = {name for name, found in rows.items() if any(s == "BLOCKER" for s, _ in found)}
    assert blockers == {
        "region enabled",
        "cdk bootstrap",
        "EC2 c7gn.medium",
        "IAM role humansa-github-actions-role",
        "GitHub OIDC provider",
        "parameters /humansa/staging/",
        "secrets /humansa/staging/",
        "log groups",
        "quota Elastic IPs",
    }, result.stdout
    assert "ap-east-1a, ap-east-1b" in rows["EC2 c7gn.medium"][0][1]
    assert _statuses(rows, "EC2 t4g.medium") == {"ok"}
    assert "existing_oidc_provider_arn" in rows["GitHub OIDC provider"][0][1]
    params = dict((s, d) for s, d in rows["parameters /humansa/staging/"])
    assert "/humansa/staging/db_host" in params["BLOCKER"]
    assert "SecureString: /humansa/staging/db_password" in params["warning"]
    assert "need 1 (vpc.nat=single-gateway), 5 of 5 used" in rows["quota Elastic IPs"][0][1]
    assert "version 5 < 6" in rows["cdk bootstrap"][0][1]
    assert _statuses(rows, "RDS db.t4g.micro") == {"not checked"}


class _Listener:
    """A TCP port that records whether anything connected (an 'AWS endpoint' nobody may call)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.mark.parametrize("args", [("--env", "production"), ("--env", "production", "--tls-only")])
def test_production_without_certificate_refused_before_any_aws_call(args: tuple[str, ...]) -> None:
    listener = _Listener()
    env = {
        "PATH": os.environ["PATH"],
        "AWS_ENDPOINT_URL": listener.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    try:
        result = _run(env, *args)
    finally:
        listener.close()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("config/production.yaml: service.certificate_arn is not set")
    assert "bearer keys" in line and "aws acm request-certificate" in line
    assert "service.allow_plain_http" in line
    assert result.stdout == ""
    assert listener.connections == 0


def test_written_reason_lifts_the_refusal(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    data = yaml.safe_load((ROOT / "config" / "production.yaml").read_text())
    data["service"]["allow_plain_http"] = "internal pilot behind the office VPN until 2027-01"
    (folder / "production.yaml").write_text(yaml.safe_dump(data))
    result = _run(
        {"PATH": os.environ["PATH"]}, "--env", "production", "--tls-only", config_dir=folder
    )
    assert result.returncode == 0, result.stderr
    data["service"]["allow_plain_http"] = "because"
    (folder / "production.yaml").write_text(yaml.safe_dump(data))
    result = _run(
        {"PATH": os.environ["PATH"]}, "--env", "production", "--tls-only", config_dir=folder
    )
    assert result.returncode == 2
    assert "service.allow_plain_http" in result.stderr and "20 characters" in result.stderr


def test_dev_and_staging_may_stay_on_http() -> None:
    for env in ("dev", "staging"):
        result = _run({"PATH": os.environ["PATH"]}, "--env", env, "--tls-only")
        assert result.returncode == 0, result.stderr


def test_make_deploy_runs_the_guard_before_cdk() -> None:
    result = subprocess.run(
        ["make", "-n", "deploy", "ENV=production"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    guard = next(
        i
        for i, line in enumerate(lines)
        if line.strip() == "scripts/preflight --env production --deploy-guards"
    )
    deploy = next(i for i, line in enumerate(lines) if " deploy --all " in line)
    assert guard < deploy


def test_make_release_deploy_guards_the_ghcr_source() -> None:
    result = subprocess.run(
        ["make", "-n", "release-deploy", "ENV=staging", "VERSION=1.2.3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    guard = next(
        i
        for i, line in enumerate(lines)
        if "scripts/preflight --env staging --deploy-guards --image-source ghcr" in line
    )
    deploy = next(i for i, line in enumerate(lines) if " deploy --all " in line)
    assert guard < deploy


def test_the_deploy_guard_refuses_ghcr_until_the_token_is_put(moto_env: dict[str, str]) -> None:
    """GIVEN a ghcr deploy of staging: no secret, then the placeholder CloudFormation writes,
    then a token put with `make secrets` (a second version)."""
    name = "ecr-pullthroughcache/humansa/staging/ghcr-credential"
    put = "`GHCR_USERNAME=<github user> make secrets ENV=staging NAME=GHCR_TOKEN`"
    args = ("--env", "staging", "--deploy-guards", "--image-source", "ghcr")
    missing = _run(moto_env, *args)
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"deploy refused: {name} does not exist in ap-east-1 yet, so the fleet could not pull "
        "ghcr.io/humansa/humansa-ml-server: create it with `npx cdk deploy -c env=staging "
        f"Humansa-Staging-Data` (Network and Data only), then put the token with {put}"
    ]
    sm = _client(moto_env, "secretsmanager")
    sm.create_secret(
        Name=name, SecretString=json.dumps({"username": "UNSET", "accessToken": "UNSET"})
    )
    placeholder = _run(moto_env, *args)
    assert placeholder.returncode == 2
    assert placeholder.stderr.splitlines() == [
        f"deploy refused: {name} still holds its placeholder, so the fleet could not pull "
        f"ghcr.io/humansa/humansa-ml-server: put the token first with {put}"
    ]
    sm.put_secret_value(
        SecretId=name, SecretString=json.dumps({"username": "bot", "accessToken": "t-not-real"})
    )
    assert _run(moto_env, *args).returncode == 0
    # The asset source (staging's image.source) needs no token and makes no AWS call.
    offline = {"PATH": os.environ["PATH"], "AWS_EC2_METADATA_DISABLED": "true"}
    assert _run(offline, "--env", "staging", "--deploy-guards").returncode == 0


def test_cli_bootstrap_version_matches_the_pinned_cli() -> None:
    template = ROOT / "node_modules/aws-cdk/lib/api/bootstrap/bootstrap-template.yaml"
    text = template.read_text()
    block = text[text.index("  CdkBootstrapVersion:") :]
    value = block.split("Value:", 1)[1].split("\n", 1)[0].strip().strip("'\"")
    assert int(value) == preflight.CLI_BOOTSTRAP_VERSION


def test_make_ami_moves_the_record_to_the_latest(moto_env: dict[str, str], tmp_path: Path) -> None:
    """GIVEN a record older than the public parameter (moto serves AWS's copied values) THEN
    `scripts/ami.py` rewrites exactly the changed IDs and says a fleet refresh follows."""
    record = tmp_path / "amis.json"
    latest = _client(moto_env, "ssm").get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64"
    )["Parameter"]["Value"]
    x86 = _client(moto_env, "ssm").get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"
    )["Parameter"]["Value"]
    record.write_text(json.dumps({"ap-east-1": {"arm64": "ami-00000000000000001", "x86_64": x86}}))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ami.py"), "--file", str(record)],
        cwd=ROOT,
        env=moto_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"ap-east-1 arm64: ami-00000000000000001 -> {latest}" in result.stdout
    assert "x86_64" not in result.stdout.split("Commit")[0]
    assert "refreshes every fleet" in result.stdout
    assert json.loads(record.read_text())["ap-east-1"] == {"arm64": latest, "x86_64": x86}


def test_make_ami_offline_explains_and_keeps_the_record(tmp_path: Path) -> None:
    record = tmp_path / "amis.json"
    original = (ROOT / "config" / "amis.json").read_text()
    record.write_text(original)
    listener = _Listener()
    env = {"PATH": os.environ["PATH"], "AWS_ENDPOINT_URL": listener.url, "HOME": str(tmp_path)}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "ami.py"), "--file", str(record)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        listener.close()
    assert result.returncode == 2
    assert "needs AWS credentials" in result.stderr and "unchanged" in result.stderr
    assert record.read_text() == original
