"""The operator commands' error paths (`make status|logs|shell|keys|secrets ENV=...`) against
moto on 127.0.0.1 with nothing deployed: each ends in one line naming the resource or setting and
the fix, never a traceback or a raw AWS error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from humansa_ops import aws_errors, operate
from ml_server.admin import cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"  # moto's account (config/dev.yaml names another: the line says which)


@pytest.fixture(scope="module")
def nothing_deployed() -> Iterator[str]:
    """A moto server process of its own (in-process moto servers share one state: another test
    module's stacks would be seen) with no stacks, and the credentials the commands use pointed
    at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from moto.server import main; main()"]
    server = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # up to 20 s on a busy machine; usually ~1 s
            try:
                httpx.get(f"{endpoint}/moto-api/data.json", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail(f"moto server on port {port} did not answer")
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
            yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


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
        f"make shell: Humansa-Dev-Service is not deployed in ap-east-1/{ACCOUNT} "
        "(config/dev.yaml names account 992382528744): deploy it with `make deploy ENV=dev`"
    )


@pytest.fixture
def no_credentials(nothing_deployed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to fall back on


@pytest.fixture
def iam_enforced(nothing_deployed: str) -> Iterator[dict[str, str]]:
    """moto checks credentials and IAM policies; yields the keys of a user with no policy."""
    iam = boto3.client("iam", region_name="us-east-1")
    key = iam.create_access_key(UserName=iam.create_user(UserName="no-policy")["User"]["UserName"])
    httpx.post(f"{nothing_deployed}/moto-api/reset-auth", content=b"0", timeout=10)
    try:
        yield {
            "AWS_ACCESS_KEY_ID": key["AccessKey"]["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["AccessKey"]["SecretAccessKey"],
        }
    finally:
        httpx.post(f"{nothing_deployed}/moto-api/reset-auth", content=b"inf", timeout=10)
        iam.delete_access_key(UserName="no-policy", AccessKeyId=key["AccessKey"]["AccessKeyId"])
        iam.delete_user(UserName="no-policy")


@pytest.mark.parametrize("command", ["status", "logs", "shell"])
def test_no_credentials_says_how_to_set_them(
    no_credentials: None, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert operate.main([command, "--env", "dev"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line == f"make {command}: no AWS credentials found: {aws_errors.CREDENTIALS_HINT}"


def test_keys_without_credentials_says_how_to_set_them(
    no_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--env", "dev", "keys", "list"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line == f"error: no AWS credentials found: {aws_errors.CREDENTIALS_HINT}"


def test_rejected_credentials_name_the_region_to_check(
    iam_enforced: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys AWS does not know (or an opt-in region not enabled): say both, in one line."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-unknown-access-key")
    assert operate.main(["status", "--env", "dev"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(
        "make status: AWS does not accept these credentials in ap-east-1 "
        "(InvalidClientTokenId on GetCallerIdentity): check them (set AWS_PROFILE"
    ), line
    assert line.endswith("aws account get-region-opt-status --region-name ap-east-1)"), line


def test_access_denied_names_the_call(
    iam_enforced: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in iam_enforced.items():
        monkeypatch.setenv(key, value)
    assert operate.main(["logs", "--env", "dev"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(
        "make logs: the credentials may not call DescribeStacks in ap-east-1 (AccessDenied: "
        f"User: arn:aws:iam::{ACCOUNT}:user/no-policy is not authorized to perform: "
        "cloudformation:DescribeStacks"
    ), line


def test_secrets_before_the_deploy_is_one_line(nothing_deployed: str) -> None:
    """`make secrets` before the stack exists: the line that says to deploy, without the AWS
    CLI's ResourceNotFoundException text above it."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "put_secret.sh"), "dev", "OPENAI_API_KEY"],
        input="sk-not-a-real-key",
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line == (
        "put_secret: /humansa/dev/OPENAI_API_KEY does not exist in ap-east-1 yet: the Service "
        "stack creates it (make deploy ENV=dev first)"
    )


def test_a_stack_that_was_never_created_is_named_as_such(
    nothing_deployed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deploy that stopped at the change set leaves the stack in REVIEW_IN_PROGRESS, with no
    outputs: say that (not "deployed before outputs were added")."""
    template = {"Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}
    boto3.client("cloudformation", region_name="ap-east-1").create_change_set(
        StackName="Humansa-Staging-Service",
        ChangeSetName="cdk-deploy-change-set",
        ChangeSetType="CREATE",
        TemplateBody=json.dumps(template),
    )
    expected = (
        "Humansa-Staging-Service was never created (REVIEW_IN_PROGRESS: a change set was made "
        "but not executed): make deploy ENV=staging"
    )
    assert operate.main(["status", "--env", "staging"]) == 1
    captured = capsys.readouterr()
    print(captured.out + captured.err)  # shown with -s: what `make status ENV=staging` prints
    assert "  Humansa-Staging-Service: REVIEW_IN_PROGRESS" in captured.out
    assert _one_line(captured.err) == f"make status: {expected}"
    assert operate.main(["logs", "--env", "staging"]) == 1
    assert _one_line(capsys.readouterr().err) == f"make logs: {expected}"
    assert cli.main(["--env", "staging", "keys", "list"]) == 1
    assert _one_line(capsys.readouterr().err) == f"error: {expected}"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            "ROLLBACK_COMPLETE",
            "Humansa-Dev-Service failed to create (ROLLBACK_COMPLETE; make status ENV=dev shows "
            "the events with the reason): fix that, then make deploy ENV=dev (the CDK CLI "
            "deletes a stack whose creation failed and creates it again)",
        ),
        (
            "CREATE_IN_PROGRESS",
            "Humansa-Dev-Service is still being created (CREATE_IN_PROGRESS): wait for the "
            "deploy (make status ENV=dev shows its events)",
        ),
        (
            "DELETE_FAILED",
            "Humansa-Dev-Service is being deleted or failed to delete (DELETE_FAILED; make "
            "status ENV=dev shows the events): finish the delete, then make deploy ENV=dev",
        ),
        ("UPDATE_ROLLBACK_COMPLETE", None),  # an update rolled back: the old outputs stand
        ("CREATE_COMPLETE", None),
    ],
)
def test_stack_states_without_outputs_are_named(status: str, expected: str | None) -> None:
    assert operate.stack_state_problem("Humansa-Dev-Service", status, "dev") == expected


def test_logs_of_a_missing_log_group_names_it(
    nothing_deployed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Service stack names a log group that is gone (deleted by hand): name it and the fix."""
    group = "/aws/ec2/humansa-ml/production"
    outputs = {"AppLogGroup": group, "SetupLogGroup": f"{group}/setup"}
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation", region_name="ap-east-1").create_stack(
        StackName="Humansa-Production-Service", TemplateBody=json.dumps(template)
    )
    assert operate.main(["logs", "--env", "production", "--setup"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line == (
        f"make logs: log group {group}/setup does not exist in ap-east-1: "
        "Humansa-Production-Service creates it (make deploy ENV=production)"
    ), line


def test_secrets_uses_the_venvs_aws_cli_when_none_is_on_path(nothing_deployed: str) -> None:
    """`make secrets` with no `aws` on PATH (the pinned awscli is in the venv, not activated)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "put_secret.sh"), "dev", "OPENAI_API_KEY"],
        input="sk-not-a-real-key",
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert _one_line(result.stderr).startswith(
        "put_secret: /humansa/dev/OPENAI_API_KEY does not exist in ap-east-1 yet"
    ), result.stderr
