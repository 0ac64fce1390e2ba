"""`make bootstrap ENV=dev` (scripts/bootstrap.sh), the real script, AWS CLI and CDK CLI against
moto (ThreadedMotoServer on 127.0.0.1), on a workstation with no region configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from config import load_environment

ROOT = Path(__file__).resolve().parent.parent
CONFIG = load_environment("dev")


@pytest.mark.slow
def test_bootstrap_takes_the_region_from_the_config(tmp_path: Path) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        # Credentials of the configured account (moto maps an assumed role's keys to its account).
        sts = boto3.client(
            "sts",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id="testing-not-a-real-key",
            aws_secret_access_key="testing-not-a-real-secret",
        )
        keys = sts.assume_role(
            RoleArn=f"arn:aws:iam::{CONFIG.account}:role/admin", RoleSessionName="bootstrap"
        )["Credentials"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID=keys["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=keys["SecretAccessKey"],
            AWS_SESSION_TOKEN=keys["SessionToken"],
            AWS_CONFIG_FILE=str(tmp_path / "none"),  # no region anywhere but config/dev.yaml
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the venv's aws
        )
        run = subprocess.run(
            ["scripts/bootstrap.sh", "dev"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        boundary = f"arn:aws:iam::{CONFIG.account}:policy/humansa-permissions-boundary"
        assert f"bootstrap: created {boundary}" in run.stdout
        cfn = boto3.client(
            "cloudformation",
            region_name=CONFIG.region,
            endpoint_url=endpoint,
            aws_access_key_id=keys["AccessKeyId"],
            aws_secret_access_key=keys["SecretAccessKey"],
            aws_session_token=keys["SessionToken"],
        )
        (stack,) = cfn.describe_stacks(StackName="CDKToolkit")["Stacks"]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
    finally:
        server.stop()
