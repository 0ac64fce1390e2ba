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
from tests.iam_contract import Call, Templates, evaluate, instance_role_statements
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
    _, schedule = only_resource(data, "AWS::SecretsManager::RotationSchedule", SINGLE_USER)
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


SINGLE_USER = {"HostedRotationLambda": {"RotationType": "PostgreSQLSingleUser"}}


# --- the app secret: alternating users, the fleet's only database credential -----------------


def _by_type(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def _attachment_of(template: dict[str, Any], name: str) -> str:
    """Logical ID of the attachment of the secret named ``name``."""
    resources = template["Resources"]
    for lid, res in _by_type(template, "AWS::SecretsManager::SecretTargetAttachment").items():
        secret = resources[res["Properties"]["SecretId"]["Ref"]]
        if secret["Properties"]["Name"] == name:
            return lid
    raise AssertionError(f"no attachment of the secret {name}")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_app_secret_rotates_with_alternating_users(synth: Synth, env: str) -> None:
    """GIVEN rotation enabled WHEN synthesized THEN the app secret has a hosted multi-user rotation
    that logs in with the master secret, and runs only after the app user exists."""
    data = synth.template_json(env, "Data")
    app = _attachment_of(data, f"humansa/{env}/db-app")
    master = _attachment_of(data, f"humansa/{env}/db")
    schedules = [
        (lid, r)
        for lid, r in _by_type(data, "AWS::SecretsManager::RotationSchedule").items()
        if r["Properties"]["HostedRotationLambda"]["RotationType"] == "PostgreSQLMultiUser"
    ]
    assert len(schedules) == 1, schedules
    _, schedule = schedules[0]
    props = schedule["Properties"]
    assert props["SecretId"] == {"Ref": app}
    assert props["HostedRotationLambda"]["MasterSecretArn"] == {"Ref": master}
    assert props["RotateImmediatelyOnUpdate"] is False
    days = synth.configs[env].rotation.database_secret_days
    assert props["RotationRules"] == {"ScheduleExpression": f"rate({days} days)"}
    (user,) = _by_type(data, "Custom::HumansaDbAppUser")
    assert user in schedule["DependsOn"]
    # The app secret names the master (the rotation function reads "masterarn" from it).
    (secret,) = [
        r
        for r in _by_type(data, "AWS::SecretsManager::Secret").values()
        if r["Properties"]["Name"] == f"humansa/{env}/db-app"
    ]
    template = secret["Properties"]["GenerateSecretString"]["SecretStringTemplate"]
    assert "humansa_app" in json.dumps(template) and "masterarn" in json.dumps(template)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_app_user_resource_reads_both_secrets_in_the_vpc(synth: Synth, env: str) -> None:
    data = synth.template_json(env, "Data")
    ((_, user),) = _by_type(data, "Custom::HumansaDbAppUser").items()
    props = user["Properties"]
    assert props["AppUsername"] == "humansa_app" and props["DatabaseName"] == "humansa"
    assert props["MasterSecretArn"] == {"Ref": _attachment_of(data, f"humansa/{env}/db")}
    assert props["AppSecretArn"] == {"Ref": _attachment_of(data, f"humansa/{env}/db-app")}
    fn_id = props["ServiceToken"]["Fn::GetAtt"][0]
    fn = data["Resources"][fn_id]["Properties"]
    assert fn["Runtime"] == "python3.14" and fn["Handler"] == "index.handler"
    assert fn["VpcConfig"]["SubnetIds"] and fn["VpcConfig"]["SecurityGroupIds"]
    parameters = {
        r["Properties"]["Name"]: r["Properties"]["Value"]
        for r in _by_type(data, "AWS::SSM::Parameter").values()
    }
    assert parameters[f"/humansa/{env}/db_username"] == "humansa_app"
    # The master secret's ARN stays exported: a deployed Service stack (before this change)
    # imports it until its own update (CloudFormation refuses to delete an export in use).
    master = _attachment_of(data, f"humansa/{env}/db")
    assert {"Ref": master} in [o["Value"] for o in data["Outputs"].values()]


def _secret_arn(synth: Synth, env: str, name: str) -> str:
    cfg = synth.configs[env]
    return f"arn:aws:secretsmanager:{cfg.region}:{cfg.account}:secret:{name}-AbC123"


def _iam_templates(synth: Synth, env: str) -> tuple[Templates, str]:
    cfg = synth.configs[env]
    stacks = {
        kind: synth.stacks[env].__getattribute__(kind.lower()).stack_name
        for kind in ("Network", "Data", "Service")
    }

    def secret_arn(stack: str, logical: str, props: dict[str, Any]) -> str:
        return _secret_arn(synth, env, props["Name"])

    t = Templates(
        templates={n: synth.template_json(env, k) for k, n in stacks.items()},
        region=cfg.region,
        account=cfg.account,
        secret_arn=secret_arn,
    )
    return t, stacks["Service"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_fleet_reads_the_app_secret_and_never_the_master(synth: Synth, env: str) -> None:
    """The instance role, as IAM evaluates it (tests/iam_contract.py)."""
    t, service = _iam_templates(synth, env)
    statements = instance_role_statements(t, service)
    app = _secret_arn(synth, env, f"humansa/{env}/db-app")
    master = _secret_arn(synth, env, f"humansa/{env}/db")
    read = "secretsmanager:GetSecretValue"
    assert evaluate(statements, Call(read, app, {}, "boot")).allowed
    decision = evaluate(statements, Call(read, master, {}, "boot"))
    assert not decision.allowed, decision.reason
    assert not evaluate(statements, Call("secretsmanager:DescribeSecret", master, {}, "x")).allowed


def test_synth_without_the_vendored_driver_says_make_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import components.db_bootstrap as db_bootstrap

    monkeypatch.setattr(db_bootstrap, "HANDLER_DIR", tmp_path)
    stack = Stack(App(), "T", env=Environment(account="123456789012", region="ap-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=["ap-east-1a", "ap-east-1b"])
    db = rds.DatabaseInstance(
        stack,
        "Db",
        engine=rds.DatabaseInstanceEngine.POSTGRES,
        vpc=vpc,
        credentials=rds.Credentials.from_generated_secret("humansa"),
    )
    with pytest.raises(FileNotFoundError, match="run `make install`"):
        db_bootstrap.DatabaseAppUser(
            stack,
            "AppUser",
            instance=db,
            vpc=vpc,
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            database_name="humansa",
            port=5432,
            environment="test",
            retain=False,
        )
