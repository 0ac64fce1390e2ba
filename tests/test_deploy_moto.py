"""The real deploy path against moto: ``make bootstrap``, ``make release-deploy`` of release A,
of release B, then ``make rollback TO=A``, each running the pinned CDK CLI on the real
templates, against the patched moto of tests/moto_emulator.py (a named stand-in for AWS) on
127.0.0.1, with ``DEPLOY_METHOD=direct`` (moto's change sets leave a new stack without outputs
or exports). After the rollback the Service stack is release A's again: its template, the image
tag in SSM, the launch template's user data and the group's size.

Slow (bootstrap + three synths and deploys, about 5 minutes on 2 cores): skipped by ``make
test``; ``make deploy-test`` runs it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from config import load_environment
from humansa_ops.rollback import INSTALL_INPUTS
from tests.project_copy import commit, copy_project, git

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("HUMANSA_DEPLOY_TEST") != "1",
        reason="about 5 minutes: `make deploy-test` runs it (HUMANSA_DEPLOY_TEST=1)",
    ),
]

REGION = "ap-east-1"
ACCOUNT = load_environment("dev").account
SERVICE = "Humansa-Dev-Service"


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    from tests.moto_emulator import start

    with pytest.MonkeyPatch.context() as patch:
        # The CLI sends no moto account header: every request is in the config's account.
        patch.setenv("MOTO_ACCOUNT_ID", ACCOUNT)
        server = start(0)
        _, port = server.get_host_and_port()
        _reset(port)  # a fresh account, whatever ran in this process before
        try:
            yield port
        finally:
            _reset(port)
            server.stop()


def _reset(port: int) -> None:
    reset = urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Release A (tag release-1.0.0) and, on main after it, release B: the dev group may grow
    to 3 instances instead of 2."""
    root = tmp_path_factory.mktemp("deploy") / "repo"
    root.mkdir()
    copy_project(root)
    git(root, "tag", "release-1.0.0")
    dev = root / "config" / "dev.yaml"
    text = dev.read_text(encoding="utf-8")
    assert "  max_capacity: 2\n" in text
    dev.write_text(text.replace("  max_capacity: 2\n", "  max_capacity: 3\n"), encoding="utf-8")
    commit(root, "dev: at most 3 instances")
    # .venv and node_modules are links to this checkout's: `make` must not reinstall them.
    for name in INSTALL_INPUTS:
        os.utime(root / name, (0, 0))
    return root


def _env(port: int) -> dict[str, str]:
    drop = ("AWS_", "CDK_", "MOTO_", "HUMANSA_DEPLOY_TEST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        AWS_ENDPOINT_URL=f"http://localhost:{port}",  # localhost: see tests/moto_emulator.py
        AWS_ACCESS_KEY_ID="testing-not-a-real-key",
        AWS_SECRET_ACCESS_KEY="testing-not-a-real-secret",
        CDK_DISABLE_CLI_TELEMETRY="true",
        DEPLOY_METHOD="direct",
        APPROVAL="never",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    return env


def _make(repo: Path, port: int, *args: str, stdin: str | None = None, **env: str) -> str:
    return _run(repo, port, ["make", *args], stdin=stdin, **env)


def _run(repo: Path, port: int, cmd: list[str], *, stdin: str | None = None, **env: str) -> str:
    done = subprocess.run(
        cmd,
        cwd=repo,
        env={**_env(port), **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def _client(port: int, service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing-not-a-real-key",
        aws_secret_access_key="testing-not-a-real-secret",
    )


def _deployed(port: int) -> dict[str, Any]:
    """What is deployed: the Service stack's template and outputs, the image tag parameter,
    the launch template's latest user data, the group's bounds."""
    cfn = _client(port, "cloudformation")
    (stack,) = cfn.describe_stacks(StackName=SERVICE)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    body = cfn.get_template(StackName=SERVICE)["TemplateBody"]
    template = body if isinstance(body, dict) else json.loads(body)
    tag = _client(port, "ssm").get_parameter(Name="/humansa/dev/ml_server_image_tag")
    autoscaling = _client(port, "autoscaling")
    (group,) = autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["AutoScalingGroupName"]]
    )["AutoScalingGroups"]
    launch = (
        group.get("LaunchTemplate")
        or group["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
    )
    ec2 = _client(port, "ec2")
    (version,) = ec2.describe_launch_template_versions(
        LaunchTemplateId=launch["LaunchTemplateId"], Versions=["$Latest"]
    )["LaunchTemplateVersions"]
    return {
        "status": stack["StackStatus"],
        "template": template,
        "image_tag_output": outputs["ImageTag"],
        "image_tag_parameter": tag["Parameter"]["Value"],
        "user_data": base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode(),
        "launch_template_version": version["VersionNumber"],
        "max_size": group["MaxSize"],
    }


def test_release_deploy_then_rollback_restores_release_a(repo: Path, moto_port: int) -> None:
    # GIVEN the bootstrapped account and release A deployed from its tag
    _make(repo, moto_port, "bootstrap", "ENV=dev")
    git(repo, "checkout", "-q", "release-1.0.0")
    # The first ghcr release is refused until the pull-through credential holds a token
    # (humansa_ops/preflight.py); the Data stack creates it, so the operator deploys Network and
    # Data, puts the token, then releases (docs/releasing.md).
    with pytest.raises(AssertionError, match=r"deploy refused: .*ghcr-credential does not exist"):
        _make(repo, moto_port, "release-deploy", "ENV=dev", "VERSION=1.0.0")
    cdk = ["node_modules/.bin/cdk", "deploy", "--no-notices", "--require-approval", "never"]
    _run(repo, moto_port, [*cdk, "--method=direct", "-c", "env=dev", "Humansa-Dev-Data"])
    _make(
        repo,
        moto_port,
        "secrets",
        "ENV=dev",
        "NAME=GHCR_TOKEN",
        stdin="ghp-test-not-a-real-token\n",
        GHCR_USERNAME="release-bot",
    )
    out = _make(repo, moto_port, "release-deploy", "ENV=dev", "VERSION=1.0.0")
    assert "--method=direct" in out and "-c image_source=ghcr -c image_tag=1.0.0" in out
    a = _deployed(moto_port)
    assert a["status"] == "CREATE_COMPLETE"
    assert (a["image_tag_output"], a["image_tag_parameter"], a["max_size"]) == ("1.0.0", "1.0.0", 2)
    assert "humansa-ml-server:1.0.0'" in a["user_data"]

    # AND release B deployed over it from main
    git(repo, "checkout", "-q", "main")
    _make(repo, moto_port, "release-deploy", "ENV=dev", "VERSION=1.1.0")
    b = _deployed(moto_port)
    assert (b["image_tag_parameter"], b["max_size"]) == ("1.1.0", 3)
    assert b["user_data"] != a["user_data"] and b["template"] != a["template"]

    # WHEN make rollback ENV=dev TO=1.0.0 (from main's checkout)
    out = _make(repo, moto_port, "rollback", "ENV=dev", "TO=1.0.0")
    assert "rollback: dev -> release 1.0.0 (commit " in out
    assert "make release-deploy ENV=dev VERSION=1.0.0 APPROVAL=never DEPLOY_METHOD=direct" in out
    # the release's checkout used the linked tools as they are (no npm ci / pip through them)
    assert "npm ci" not in out and "pip install" not in out

    # THEN what is deployed is release A's again
    rolled = _deployed(moto_port)
    assert rolled["status"] == "UPDATE_COMPLETE"
    assert rolled["template"] == a["template"]
    assert (rolled["image_tag_output"], rolled["image_tag_parameter"]) == ("1.0.0", "1.0.0")
    assert rolled["user_data"] == a["user_data"]
    assert rolled["launch_template_version"] > b["launch_template_version"]
    assert rolled["max_size"] == 2
