"""Database secret rotation in the real Data stacks: schedule from config, a network path from
the rotation function to the Secrets Manager API and to the database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Environment, SecretValue, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from cdk_nag import AwsSolutionsChecks
from pydantic import ValidationError

from components.rotation import DatabaseSecretRotation
from config import ConfigError, load_environment
from config.monitoring import RotationConfig
from humansa_ops.synth_summary import acknowledgments
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack
from tests.conftest import ENVIRONMENTS, Synth, cdk_context
from tests.ops_checks import check_rotation, only_resource
from tests.test_config import _config_dir


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rotation_schedule_from_config(synth: Synth, env: str) -> None:
    days = synth.configs[env].rotation.database_secret_days
    assert days == 30  # the committed configs keep the default
    check_rotation(synth.template(env, "Data"), days)


def _exports(network: dict[str, Any]) -> dict[str, str]:
    """Export name -> logical ID of the resource it exports (``Ref``)."""
    return {
        output["Export"]["Name"]: output["Value"]["Ref"]
        for output in network.get("Outputs", {}).values()
        if "Export" in output and "Ref" in output["Value"]
    }


def _rotation_subnets(synth: Synth, env: str) -> list[str]:
    """Logical IDs (in the Network template) of the rotation function's subnets."""
    data = synth.template(env, "Data")
    _, schedule = only_resource(data, "AWS::SecretsManager::RotationSchedule")
    joined = schedule["HostedRotationLambda"]["VpcSubnetIds"]["Fn::Join"][1]
    imports = [part["Fn::ImportValue"] for part in joined if isinstance(part, dict)]
    exports = _exports(synth.template_json(env, "Network"))
    return [exports[name] for name in imports]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rotation_function_reaches_secrets_manager(synth: Synth, env: str) -> None:
    """GIVEN the environment's network WHEN the rotation function runs in its subnets THEN each
    subnet has a default route through the configured NAT (gateway or instance), or the VPC has a
    private-DNS Secrets Manager endpoint in those subnets (``vpc.nat: none``)."""
    config = synth.configs[env]
    network = synth.template_json(env, "Network")["Resources"]
    subnets = _rotation_subnets(synth, env)
    assert len(subnets) == config.vpc.max_azs
    for subnet in subnets:
        assert network[subnet]["Type"] == "AWS::EC2::Subnet"
        tags = {t["Key"]: t["Value"] for t in network[subnet]["Properties"]["Tags"]}
        assert tags["aws-cdk:subnet-name"] == "App"
    if config.vpc.nat == "none":
        endpoints = [
            r["Properties"]
            for r in network.values()
            if r["Type"] == "AWS::EC2::VPCEndpoint"
            and "secretsmanager" in str(r["Properties"]["ServiceName"])
        ]
        assert len(endpoints) == 1
        assert endpoints[0]["PrivateDnsEnabled"] is True
        assert {s["Ref"] for s in endpoints[0]["SubnetIds"]} == set(subnets)
        return
    target = "InstanceId" if config.vpc.nat == "nat-instance" else "NatGatewayId"
    for subnet in subnets:
        (table,) = [
            r["Properties"]["RouteTableId"]["Ref"]
            for r in network.values()
            if r["Type"] == "AWS::EC2::SubnetRouteTableAssociation"
            and r["Properties"]["SubnetId"] == {"Ref": subnet}
        ]
        defaults = [
            r["Properties"]
            for r in network.values()
            if r["Type"] == "AWS::EC2::Route"
            and r["Properties"]["RouteTableId"] == {"Ref": table}
            and r["Properties"].get("DestinationCidrBlock") == "0.0.0.0/0"
        ]
        assert len(defaults) == 1 and target in defaults[0], (env, subnet, defaults)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rotation_function_reaches_the_database_port_only(synth: Synth, env: str) -> None:
    template = synth.template(env, "Data")
    sg_id, _ = only_resource(
        template,
        "AWS::EC2::SecurityGroup",
        {"GroupDescription": "Database secret rotation function"},
    )
    template.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {
            "SourceSecurityGroupId": {"Fn::GetAtt": [sg_id, "GroupId"]},
            "IpProtocol": "tcp",
            "FromPort": 5432,
            "ToPort": 5432,
        },
    )


def test_dev_nat_instance_admits_the_vpc(synth: Synth) -> None:
    """The NAT instance forwards for the whole VPC CIDR, so the rotation function's traffic
    (from its own security group) is let in."""
    cidr = synth.configs["dev"].vpc.cidr
    synth.template("dev", "Network").has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {"SecurityGroupIngress": [{"CidrIp": cidr, "IpProtocol": "-1"}]},
    )


def test_disabled_rotation_acknowledges_the_finding(tmp_path: Path) -> None:
    """``rotation.enabled: false`` leaves the schedule out and acknowledges cdk-nag SMG4."""
    config = load_environment("staging").model_copy(
        update={"rotation": RotationConfig(enabled=False)}
    )
    app = App(context=cdk_context(), outdir=str(tmp_path))
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    env = Environment(account=config.account, region=config.region)
    network = NetworkStack(app, "Net", config=config, env=env)
    data = DataStack(app, "Data", config=config, network=network.network, env=env)
    assert data.rotation is None
    artifact = app.synth().get_stack_by_name("Data")  # raises on an unacknowledged finding
    assert "Transform" not in artifact.template
    types = {r["Type"] for r in artifact.template["Resources"].values()}
    assert "AWS::SecretsManager::RotationSchedule" not in types
    metadata = json.loads((tmp_path / "Data.metadata.json").read_text())
    assert "AwsSolutions-SMG4" in acknowledgments(metadata)
    assert "rotation.enabled is false in config/staging.yaml" in json.dumps(metadata)


def test_default_period_is_30_days() -> None:
    assert RotationConfig().database_secret_days == 30


@pytest.mark.parametrize(("days", "shown"), [(0, "0"), (1001, "1001")])
def test_period_out_of_range_is_one_line(
    days: int, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "HUMANSA_CONFIG_DIR", str(_config_dir(tmp_path, rotation__database_secret_days=days))
    )
    with pytest.raises(ConfigError, match=r"^config/production\.yaml: ") as caught:
        load_environment("production")
    assert f"rotation.database_secret_days={shown} is not allowed" in str(caught.value)
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
