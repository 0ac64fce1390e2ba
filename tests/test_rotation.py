"""DatabaseSecretRotation: the schedule in the template, and the stack in moto's CloudFormation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import boto3
import pytest
from aws_cdk import App, SecretValue, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from moto.server import ThreadedMotoServer
from pydantic import ValidationError

from components.rotation import DatabaseSecretRotation
from config.monitoring import RotationConfig
from tests.ops_checks import check_rotation
from tests.ops_fixture import ROTATION, ops_app


def test_rotation_schedule() -> None:
    check_rotation(ops_app().data, ROTATION.database_secret_days)


def test_default_period_is_30_days() -> None:
    assert RotationConfig().database_secret_days == 30


@pytest.mark.parametrize("days", [0, 1001])
def test_period_out_of_range_is_named(days: int) -> None:
    with pytest.raises(ValidationError, match="database_secret_days"):
        RotationConfig(database_secret_days=days)


def test_database_without_generated_secret_is_refused() -> None:
    app = App()
    stack = Stack(app, "NoSecret")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1)
    database = rds.DatabaseInstance(
        stack,
        "Database",
        engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16_9),
        vpc=vpc,
        credentials=rds.Credentials.from_password(
            "humansa", SecretValue.unsafe_plain_text("not-a-real-password")
        ),
    )
    with pytest.raises(ValueError, match="no generated secret"):
        DatabaseSecretRotation(
            stack, "SecretRotation", database=database, vpc=vpc, config=RotationConfig()
        )
    with pytest.raises(ValueError, match=r"rotation\.enabled is false"):
        DatabaseSecretRotation(
            stack,
            "DisabledRotation",
            database=database,
            vpc=vpc,
            config=RotationConfig(enabled=False),
        )


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing-not-a-real-key",
        aws_secret_access_key="testing-not-a-real-secret",
    )


def _create(cloudformation: Any, name: str, template: Mapping[str, Any]) -> dict[str, Any]:
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=json.dumps(template),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    for _ in range(100):
        stack: dict[str, Any] = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        time.sleep(0.1)
    raise AssertionError(f"{name} still in progress")


@pytest.mark.slow
def test_data_stack_with_rotation_creates_in_moto(moto_endpoint: str) -> None:
    """GIVEN moto's CloudFormation WHEN the data stack with the hosted rotation is created
    THEN it completes (moto ignores the transform and skips the RotationSchedule, so the schedule
    itself is asserted on the template above) and the rotation security group exists."""
    app = ops_app()
    _client(moto_endpoint, "ssm").put_parameter(
        Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String"
    )
    cloudformation = _client(moto_endpoint, "cloudformation")
    assert _create(cloudformation, "OpsNetwork", app.network.to_json())["StackStatus"] == (
        "CREATE_COMPLETE"
    )
    data = app.data.to_json()
    assert data["Transform"] == "AWS::SecretsManager-2024-09-16"
    stack = _create(cloudformation, "OpsData", data)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")

    groups = _client(moto_endpoint, "ec2").describe_security_groups()["SecurityGroups"]
    rotation = [g for g in groups if g["Description"] == "Database secret rotation function"]
    assert len(rotation) == 1
    database_group = next(
        g for g in groups if g["Description"] == "Security group for Database database"
    )
    sources = [
        pair["GroupId"]
        for permission in database_group["IpPermissions"]
        for pair in permission.get("UserIdGroupPairs", [])
    ]
    assert rotation[0]["GroupId"] in sources
    instances = _client(moto_endpoint, "rds").describe_db_instances()["DBInstances"]
    assert [i["Engine"] for i in instances] == ["postgres"]
