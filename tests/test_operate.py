"""`make status|logs|shell` against moto (ThreadedMotoServer on 127.0.0.1), and the Service
stack outputs they read, on the shared synth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from config import load_environment, naming
from humansa_ops import operate
from tests.conftest import Synth

ENV = "dev"
CONFIG = load_environment(ENV)
REGION = CONFIG.region


def test_service_stack_has_the_operator_outputs(synth: Synth) -> None:
    outputs = synth.template_json("dev", "Service")["Outputs"]
    assert set(naming.SERVICE_OUTPUTS) <= set(outputs)
    assert outputs[naming.OUTPUT_APP_LOG_GROUP]["Value"] == _ref(synth, "App")
    assert outputs[naming.OUTPUT_SETUP_LOG_GROUP]["Value"] == _ref(synth, "Setup")
    assert outputs[naming.OUTPUT_IMAGE_SOURCE]["Value"] == "asset"
    url = json.dumps(outputs[naming.OUTPUT_SERVICE_URL]["Value"])
    assert "http://" in url and "DNSName" in url  # dev has no certificate: plain HTTP
    dashboard = json.dumps(outputs[naming.OUTPUT_DASHBOARD_URL]["Value"])
    assert f"{REGION}.console.aws.amazon.com/cloudwatch" in dashboard


def _ref(synth: Synth, log_group: str) -> Any:
    stack = synth.stacks["dev"].service
    child = stack.logs.app if log_group == "App" else stack.logs.setup
    return stack.resolve(child.node.default_child.ref)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws(moto_endpoint: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _credentials(monkeypatch, moto_endpoint)
        yield moto_endpoint


def _credentials(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    for key, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing-not-a-real-key",
        "AWS_SECRET_ACCESS_KEY": "testing-not-a-real-secret",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _client(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


@pytest.fixture(scope="module")
def deployed(aws: str) -> dict[str, str]:
    """What `make deploy ENV=dev` leaves behind, made with the AWS APIs moto implements."""
    ec2 = _client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.10.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.10.1.0/24")["Subnet"]
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName="dev-fleet", LaunchTemplateData={"ImageId": ami})
    asg_name = "Humansa-Dev-Service-FleetGroup-ABC"
    autoscaling = _client("autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=asg_name,
        LaunchTemplate={"LaunchTemplateName": "dev-fleet"},
        MinSize=1,
        MaxSize=2,
        DesiredCapacity=2,
        VPCZoneIdentifier=subnet["SubnetId"],
    )
    instances = [
        i["InstanceId"]
        for i in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg_name])[
            "AutoScalingGroups"
        ][0]["Instances"]
    ]
    elbv2 = _client("elbv2")
    target_group = elbv2.create_target_group(
        Name="dev-tg", Protocol="HTTP", Port=5001, VpcId=vpc, TargetType="instance"
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(
        TargetGroupArn=target_group, Targets=[{"Id": i, "Port": 5001} for i in instances]
    )
    logs = _client("logs")
    group = f"/aws/ec2/humansa-ml/{ENV}"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=instances[0])
    now = int(time.time() * 1000)
    logs.put_log_events(
        logGroupName=group,
        logStreamName=instances[0],
        logEvents=[
            {"timestamp": now - 2000, "message": "server started"},
            {"timestamp": now - 1000, "message": "GET /health 200"},
        ],
    )
    cloudwatch = _client("cloudwatch")
    for name in ("Humansa-Dev-Target5xxRate", "Humansa-Dev-UnhealthyHosts"):
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            MetricName="HTTPCode_Target_5XX_Count",
            Namespace="AWS/ApplicationELB",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanThreshold",
        )
    cloudwatch.set_alarm_state(
        AlarmName="Humansa-Dev-Target5xxRate", StateValue="ALARM", StateReason="5xx above 1"
    )
    _client("ssm").put_parameter(
        Name=f"/humansa/{ENV}/ml_server_image_tag", Value="1.2.3", Type="String"
    )
    ecr = _client("ecr")
    repository = "cdk-hnb659fds-container-assets-123456789012-ap-east-1"
    ecr.create_repository(repositoryName=repository)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": "sha256:" + "1" * 64},
        }
    )
    digest = ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag="abc123")[
        "image"
    ]["imageId"]["imageDigest"]
    image_uri = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/{repository}:abc123"
    outputs = {
        naming.OUTPUT_SERVICE_URL: "http://humansa-dev-alb.example.invalid",
        naming.OUTPUT_DASHBOARD_URL: naming.dashboard_url(REGION, "Humansa-Dev"),
        naming.OUTPUT_APP_LOG_GROUP: group,
        naming.OUTPUT_SETUP_LOG_GROUP: f"{group}/setup",
        naming.OUTPUT_ASG_NAME: asg_name,
        naming.OUTPUT_TARGET_GROUP_ARN: target_group,
        naming.OUTPUT_IMAGE_URI: image_uri,
        naming.OUTPUT_IMAGE_TAG: "1.2.3",
        naming.OUTPUT_IMAGE_SOURCE: "asset",
    }
    cfn = _client("cloudformation")
    for layer in ("Network", "Service"):
        template = {
            "Resources": {
                "Marker": {
                    "Type": "AWS::SSM::Parameter",
                    "Properties": {"Name": f"/test/{layer}", "Type": "String", "Value": "x"},
                }
            },
            "Outputs": {k: {"Value": v} for k, v in outputs.items()} if layer == "Service" else {},
        }
        cfn.create_stack(StackName=naming.stack_name(ENV, layer), TemplateBody=json.dumps(template))
    return {"digest": digest, "instance": instances[0], "asg": asg_name}


@pytest.mark.slow
def test_status_against_moto(deployed: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert operate.main(["status", "--env", ENV]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "Humansa-Dev-Network: CREATE_COMPLETE" in out
    assert "Humansa-Dev-Data: not deployed" in out
    assert "Humansa-Dev-Service: CREATE_COMPLETE" in out
    assert "UTC Humansa-Dev-Service CREATE_COMPLETE" in out  # its last events
    assert "ServiceUrl: http://humansa-dev-alb.example.invalid" in out
    assert f"Auto Scaling group {deployed['asg']}: desired 2 (min 1, max 2)" in out
    # moto 5.2.5 does not implement DescribeInstanceRefreshes: the output says so
    assert "Instance refresh: unknown - this endpoint does not implement" in out
    assert "Targets (2):" in out
    assert f"{deployed['instance']}:5001 " in out
    assert "release tag (/humansa/dev/ml_server_image_tag): 1.2.3" in out
    assert f"digest: {deployed['digest']}" in out
    assert "Alarms in ALARM (Humansa-Dev-*): 1" in out
    assert "Humansa-Dev-Target5xxRate since" in out and "5xx above 1" in out
    assert "UnhealthyHosts" not in out
    assert "warning: the credentials are for account 123456789012" in out


@pytest.mark.slow
def test_status_of_an_environment_not_deployed(
    aws: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert operate.main(["status", "--env", "staging"]) == 1
    err = capsys.readouterr().err
    # moto's account is not the config's: the line says where it looked, and what the config says
    assert err.strip().endswith(
        "make status: Humansa-Staging-Service is not deployed in ap-east-1/123456789012 "
        "(config/staging.yaml names account 992382528744): deploy it with "
        "`make deploy ENV=staging`"
    ), err


@pytest.mark.slow
def test_logs_and_follow(deployed: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert operate.main(["logs", "--env", ENV]) == 0
    lines = capsys.readouterr().out.splitlines()
    print("\n".join(lines))  # shown with -s: what `make logs ENV=dev` prints
    assert [line.split(" ", 3)[3] for line in lines] == ["server started", "GET /health 200"]
    assert all(f" {deployed['instance']} " in line for line in lines)
    # follow: a line written after the first poll is printed by a later one, once
    env = operate.Environment(CONFIG)
    events = operate.log_events(
        env, setup=False, since_minutes=5, follow=True, max_polls=2, poll_seconds=0.01
    )
    first = [next(events), next(events)]
    _client("logs").put_log_events(
        logGroupName=f"/aws/ec2/humansa-ml/{ENV}",
        logStreamName=deployed["instance"],
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "later"}],
    )
    rest = list(events)
    assert [line.rsplit(" ", 1)[-1] for line in first] == ["started", "200"]
    assert [line.rsplit(" ", 1)[-1] for line in rest] == ["later"]


@pytest.mark.slow
def test_shell_without_the_plugin_says_how_to_install_it(
    deployed: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert operate.main(["shell", "--env", ENV]) == 3
    err = capsys.readouterr().err
    assert "session-manager-plugin is not on PATH" in err
    assert "session-manager-working-with-install-plugin.html" in err
    # the session it would open: a healthy instance of the group
    assert operate.main(["shell", "--env", ENV, "--print-command"]) == 0
    printed = capsys.readouterr().out
    print(err + printed)  # shown with -s: what `make shell ENV=dev` prints
    command = printed.split()
    assert command[:5] == ["aws", "ssm", "start-session", "--target", command[4]]
    assert command[4].startswith("i-") and command[-1] == REGION


@pytest.mark.slow
def test_shell_runs_the_venvs_aws_cli_when_none_is_on_path(
    deployed: dict[str, str], aws: str, tmp_path: Path
) -> None:
    """`make shell` on a machine whose PATH has no `aws` (the pinned awscli is in the venv):
    the session starts with the venv's CLI, no FileNotFoundError traceback. moto has no
    StartSession, so the CLI's own error for that call ends it here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "session-manager-plugin"  # a stand-in: moto never gets that far
    plugin.write_text("#!/bin/sh\nexit 0\n")
    plugin.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", "humansa_ops.operate", "shell", "--env", ENV],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "AWS_MAX_ATTEMPTS": "1"},
        timeout=120,
        check=False,
    )
    print(result.stdout + result.stderr)  # shown with -s: what `make shell ENV=dev` prints
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("make shell: aws ssm start-session --target i-"), result.stdout
    assert "StartSession" in result.stderr  # the AWS CLI ran and called the API


@pytest.mark.slow
def test_shell_without_any_aws_cli_says_how_to_get_it(
    deployed: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(operate, "VENV_BIN", tmp_path)
    (tmp_path / "session-manager-plugin").write_text("#!/bin/sh\nexit 0\n")  # a stand-in
    (tmp_path / "session-manager-plugin").chmod(0o755)
    assert operate.main(["shell", "--env", ENV]) == 3
    err = capsys.readouterr().err.strip()
    assert err == (
        "make shell: needs the AWS CLI (aws is neither on PATH nor in the venv): make install "
        "(the venv pins awscli), or install the AWS CLI"
    ), err


@pytest.mark.slow
def test_shell_refuses_an_instance_outside_the_group(
    deployed: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """INSTANCE=<typo or another environment's>: say so and list the group's instances, before
    a session is tried."""
    bogus = "i-0123456789abcdef0"
    assert operate.main(["shell", "--env", ENV, "--instance", bogus, "--print-command"]) == 1
    err = capsys.readouterr().err.strip()
    with capsys.disabled():  # shown with -s: `make shell ENV=dev INSTANCE=i-0123456789abcdef0`
        print(err)
    assert err.startswith(
        f"make shell: {bogus} is not an instance of {deployed['asg']} (its instances: "
    ), err
    assert deployed["instance"] in err and err.endswith("; make status ENV=dev)"), err
    ok = ["shell", "--env", ENV, "--instance", deployed["instance"], "--print-command"]
    assert operate.main(ok) == 0
    assert capsys.readouterr().out.split()[4] == deployed["instance"]


@pytest.mark.slow
def test_status_shows_the_rest_when_one_call_is_denied(
    deployed: dict[str, str],
    aws: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials that may not call DescribeTargetHealth: that section says so in one line, the
    others (image, alarms) are still shown, and the exit status is 1."""
    iam = _client("iam")
    iam.create_user(UserName="no-target-health")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {
                "Effect": "Deny",
                "Action": "elasticloadbalancing:DescribeTargetHealth",
                "Resource": "*",
            },
        ],
    }
    iam.put_user_policy(
        UserName="no-target-health", PolicyName="read", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName="no-target-health")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    httpx.post(f"{aws}/moto-api/reset-auth", content=b"0", timeout=10)
    try:
        code = operate.main(["status", "--env", ENV])
    finally:
        httpx.post(f"{aws}/moto-api/reset-auth", content=b"inf", timeout=10)
    captured = capsys.readouterr()
    print(captured.out + captured.err)
    assert code == 1
    assert "Targets: unavailable - the credentials may not call DescribeTargetHealth" in (
        captured.out
    )
    assert "Alarms in ALARM (Humansa-Dev-*): 1" in captured.out
    assert captured.err.strip() == "make status: 1 section(s) unavailable (see above)"
