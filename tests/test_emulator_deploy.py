"""Create every production stack in moto's CloudFormation from the synthesized templates.

Seeds what ``cdk bootstrap`` would provide (version parameter, asset bucket, image repository),
uploads the file assets the templates reference, answers Lambda-backed custom resources (moto
runs Lambdas only in Docker) and reads the created resources back.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.cloudformation import parsing
from moto.core.common_models import CloudFormationModel
from moto.secretsmanager.models import secretsmanager_backends
from moto.server import ThreadedMotoServer

from config import load_environment
from tests.conftest import Synth

REGION = "ap-east-1"
ACCOUNT = load_environment("production").account  # the templates name it literally
STACKS = ("Humansa-Production-Network", "Humansa-Production-Data", "Humansa-Production-Service")
CUSTOM_TYPES = ("AWS::CloudFormation::CustomResource",)


# Each emulated model subclasses CloudFormationModel directly: moto finds models with
# CloudFormationModel.__subclasses__(), which does not see grandchildren of a shared base.
class _EmulatedSecret(CloudFormationModel):
    """AWS::SecretsManager::Secret for moto's CloudFormation (moto 5.2.5 skips the type, so
    the Data stack's export of the secret ARN, imported by the Service stack, went missing)."""

    def __init__(self, arn: str) -> None:
        self.arn = arn

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::SecretsManager::Secret"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @property
    def physical_resource_id(self) -> str:
        return self.arn

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> _EmulatedSecret:
        properties = cloudformation_json["Properties"]
        generate = properties.get("GenerateSecretString", {})
        value = json.loads(generate.get("SecretStringTemplate", "{}"))
        if "GenerateStringKey" in generate:
            value[generate["GenerateStringKey"]] = f"emulated-{uuid.uuid4().hex}"
        # A fixed SecretString (the placeholders) is stored as the template gives it.
        secret_string = properties.get("SecretString", json.dumps(value))
        created = secretsmanager_backends[account_id][region_name].create_secret(
            name=properties.get("Name", resource_name),
            secret_string=secret_string,
            secret_binary=None,
            description=properties.get("Description"),
            tags=None,
            kms_key_id=None,
            client_request_token=None,
            replica_regions=[],
            force_overwrite=False,
        )
        return cls(json.loads(created)["ARN"])


class _EmulatedSecretAttachment(CloudFormationModel):
    """AWS::SecretsManager::SecretTargetAttachment: its Ref is the secret's ARN."""

    def __init__(self, arn: str) -> None:
        self.arn = arn

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::SecretsManager::SecretTargetAttachment"

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @property
    def physical_resource_id(self) -> str:
        return self.arn

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> _EmulatedSecretAttachment:
        return cls(str(cloudformation_json["Properties"]["SecretId"]))


class _EmulatedAlarm(CloudFormationModel):
    """AWS::CloudWatch::Alarm for moto's CloudFormation: moto 5.2.5 skips the type, so the
    dashboard's alarm widget (Fn::GetAtt Arn) found no resource. Its Ref is the name and its
    Arn is built the AWS way; the alarms themselves are asserted on the templates."""

    def __init__(self, name: str, arn: str) -> None:
        self.name = name
        self.arn = arn

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::CloudWatch::Alarm"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "AlarmName"

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "Arn"

    def get_cfn_attribute(self, attribute_name: str) -> str:
        return self.arn

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> _EmulatedAlarm:
        name = cloudformation_json["Properties"].get("AlarmName", resource_name)
        return cls(name, f"arn:aws:cloudwatch:{region_name}:{account_id}:alarm:{name}")


def _patch_moto_gaps() -> None:
    """Teach moto 5.2.5 two things real CloudFormation does; the templates stay untouched."""
    from moto.rds.models import DBParameterGroup
    from moto.ssm.models import Parameter

    # A Ref to AWS::RDS::DBParameterGroup must give the group name; moto's model has no
    # physical_resource_id, so the DB instance received moto's object and failed.
    if not hasattr(DBParameterGroup, "physical_resource_id"):
        DBParameterGroup.physical_resource_id = property(lambda group: group.name)  # type: ignore[attr-defined]

    # The secret and alarm models above register as CloudFormationModel subclasses.
    for cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
        cached.cache_clear()

    _patch_kms_key_tags()

    # Target tracking on ALB requests and the alarms read Fn::GetAtt TargetGroupFullName,
    # which moto's target group model cannot answer: "targetgroup/<name>/<id>" from its ARN.
    from moto.elbv2.models import FakeTargetGroup

    def target_group_attribute(group: Any, attribute_name: str) -> Any:
        if attribute_name == "TargetGroupFullName":
            return group.arn.split(":", 5)[5]
        from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

        raise UnformattedGetAttTemplateException()

    if not hasattr(FakeTargetGroup, "get_cfn_attribute"):
        FakeTargetGroup.get_cfn_attribute = target_group_attribute  # type: ignore[attr-defined]

    # AWS::SSM::Parameter Tags are a key/value map in CloudFormation; moto expects a list.
    original = Parameter.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    if getattr(original, "_humansa_patched", False):
        return

    def create(
        cls: Any, name: str, cloudformation_json: dict[str, Any], *args: Any, **kw: Any
    ) -> Any:
        tags = cloudformation_json.get("Properties", {}).get("Tags")
        if isinstance(tags, dict):
            properties = {**cloudformation_json["Properties"]}
            properties["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
            cloudformation_json = {**cloudformation_json, "Properties": properties}
        return original(cls, name, cloudformation_json, *args, **kw)

    create._humansa_patched = True  # type: ignore[attr-defined]
    Parameter.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign,assignment]


def _patch_kms_key_tags() -> None:
    """AWS::KMS::Key Tags are Key/Value in CloudFormation; moto's model passes them to the KMS
    API's TagKey/TagValue shape and fails (the alarm topic's key)."""
    from moto.kms.models import Key

    original = Key.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    if getattr(original, "_humansa_patched", False):
        return

    def create(
        cls: Any, name: str, cloudformation_json: dict[str, Any], *args: Any, **kw: Any
    ) -> Any:
        tags = cloudformation_json.get("Properties", {}).get("Tags")
        if tags:
            properties = {**cloudformation_json["Properties"]}
            properties["Tags"] = [{"TagKey": t["Key"], "TagValue": t["Value"]} for t in tags]
            cloudformation_json = {**cloudformation_json, "Properties": properties}
        return original(cls, name, cloudformation_json, *args, **kw)

    create._humansa_patched = True  # type: ignore[attr-defined]
    Key.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign,assignment]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    _patch_moto_gaps()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _client(endpoint: str, service: str) -> Any:
    """A boto3 client talking to moto as the production config's account."""
    client = boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing-not-a-real-key",
        aws_secret_access_key="testing-not-a-real-secret",
    )

    def _as_account(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = ACCOUNT

    client.meta.events.register("before-sign.*.*", _as_account)
    return client


def _zip_directory(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _seed_bootstrap(
    endpoint: str, outdir: Path, account: str, stacks: tuple[str, ...] = STACKS
) -> None:
    """What ``cdk bootstrap`` provides, and the file assets of ``stacks`` in ``outdir``."""
    _client(endpoint, "ssm").put_parameter(
        Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String"
    )
    bucket = f"cdk-hnb659fds-assets-{account}-{REGION}"
    s3 = _client(endpoint, "s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    _client(endpoint, "ecr").create_repository(
        repositoryName=f"cdk-hnb659fds-container-assets-{account}-{REGION}"
    )
    for stack in stacks:
        assets = json.loads((outdir / f"{stack}.assets.json").read_text())
        for file_asset in assets.get("files", {}).values():
            source = outdir / file_asset["source"]["path"]
            if source.suffix == ".json":  # the template itself; passed as TemplateBody
                continue
            for destination in file_asset["destinations"].values():
                body = _zip_directory(source) if source.is_dir() else source.read_bytes()
                s3.put_object(Bucket=bucket, Key=destination["objectKey"], Body=body)


def _answer_custom_resources(endpoint: str, stack_id: str, template: dict[str, Any]) -> int:
    answered = 0
    for logical_id, resource in template["Resources"].items():
        kind = resource["Type"]
        if kind.startswith("Custom::") or kind in CUSTOM_TYPES:
            body = json.dumps(
                {
                    "Status": "SUCCESS",
                    "StackId": stack_id,
                    "LogicalResourceId": logical_id,
                    "PhysicalResourceId": f"{logical_id}-emulated",
                    "Data": {},
                }
            ).encode()
            url = f"{endpoint}/cloudformation_{REGION}/cfnresponse?stack={stack_id}"
            request = urllib.request.Request(url, data=body, method="PUT")  # noqa: S310
            request.add_header("Content-Type", "application/json")
            request.add_header("x-moto-account-id", ACCOUNT)
            # moto takes the region of a request without a signature from the user agent.
            request.add_header("User-Agent", f"humansa-tests region/{REGION}")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    assert response.status == 200
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"{logical_id}: {exc.read()!r}") from exc
            answered += 1
    return answered


def _wait(cfn: Any, stack_id: str) -> str:
    status = "CREATE_IN_PROGRESS"
    for _ in range(100):
        status = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"]
        if status != "CREATE_IN_PROGRESS":
            break
        time.sleep(0.1)
    return str(status)


@pytest.fixture(scope="module")
def deployed(endpoint: str, synth: Synth) -> dict[str, int]:
    account = _client(endpoint, "sts").get_caller_identity()["Account"]
    assert account == ACCOUNT
    _seed_bootstrap(endpoint, synth.outdir, account)
    # The AL2023 AMI parameter the launch templates resolve ships with moto; check, don't seed.
    ssm = _client(endpoint, "ssm")
    ssm.get_parameter(Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64")
    cfn = _client(endpoint, "cloudformation")
    answered: dict[str, int] = {}
    for stack in STACKS:
        template = json.loads((synth.outdir / f"{stack}.template.json").read_text())
        stack_id = cfn.create_stack(
            StackName=stack,
            TemplateBody=json.dumps(template),
            # AUTO_EXPAND: the Data stack's Secrets Manager transform (hosted rotation); moto
            # ignores the transform and skips AWS::SecretsManager::RotationSchedule.
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )["StackId"]
        answered[stack] = _answer_custom_resources(endpoint, stack_id, template)
        assert _wait(cfn, stack_id) == "CREATE_COMPLETE", stack
    return answered


def test_every_production_stack_is_created(endpoint: str, deployed: dict[str, int]) -> None:
    cfn = _client(endpoint, "cloudformation")
    statuses = {s["StackName"]: s["StackStatus"] for s in cfn.describe_stacks()["Stacks"]}
    assert statuses == dict.fromkeys(STACKS, "CREATE_COMPLETE")
    # The VPC's restrict-default-security-group custom resource was answered.
    assert deployed["Humansa-Production-Network"] == 1


def test_parameters_read_back(endpoint: str, deployed: dict[str, int]) -> None:
    ssm = _client(endpoint, "ssm")
    pages = ssm.get_paginator("get_parameters_by_path").paginate(
        Path="/humansa/production/", Recursive=True
    )
    values = {p["Name"].rsplit("/", 1)[1]: p["Value"] for page in pages for p in page["Parameters"]}
    assert sorted(values) == sorted(
        [
            "alb_dns_name",
            "asg_name",
            "db_host",
            "db_name",
            "db_port",
            "db_username",
            "ml_server_image_tag",
            "ml_tg_arn",
            "vpc_id",
        ]
    )
    assert values["db_name"] == "humansa" and values["db_username"] == "humansa_app"
    assert values["ml_server_image_tag"] == "latest"
    assert values["vpc_id"].startswith("vpc-")
    elb = _client(endpoint, "elbv2")
    (alb,) = elb.describe_load_balancers()["LoadBalancers"]
    assert values["alb_dns_name"] == alb["DNSName"]
    assert alb["Scheme"] == "internet-facing"
    (group,) = elb.describe_target_groups(TargetGroupArns=[values["ml_tg_arn"]])["TargetGroups"]
    assert (group["Port"], group["Protocol"], group["HealthCheckPath"]) == (5001, "HTTP", "/health")
    autoscaling = _client(endpoint, "autoscaling")
    (asg,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[values["asg_name"]])[
        "AutoScalingGroups"
    ]
    assert (asg["MinSize"], asg["MaxSize"], asg["HealthCheckType"]) == (2, 6, "ELB")
    assert asg["TargetGroupARNs"] == [values["ml_tg_arn"]]
    rds = _client(endpoint, "rds")
    (db,) = rds.describe_db_instances()["DBInstances"]
    assert db["Engine"] == "postgres" and db["EngineVersion"] == "16.13"
    assert db["MultiAZ"] is True and db["StorageEncrypted"] is True
    # moto's CloudFormation drops DeletionProtection; tests/test_data.py asserts it on the template.
    assert values["db_host"] == db["Endpoint"]["Address"]


def test_rotation_function_reaches_the_database(endpoint: str, deployed: dict[str, int]) -> None:
    """The rotation function's security group exists and may connect to the database."""
    groups = _client(endpoint, "ec2").describe_security_groups()["SecurityGroups"]
    (rotation,) = [g for g in groups if g["Description"] == "Database secret rotation function"]
    (database,) = [
        g for g in groups if g["Description"] == "Humansa database: PostgreSQL from the fleet only"
    ]
    sources = [
        pair["GroupId"]
        for permission in database["IpPermissions"]
        for pair in permission.get("UserIdGroupPairs", [])
    ]
    assert rotation["GroupId"] in sources


def test_ci_stack_is_created(endpoint: str, synth: Synth, deployed: dict[str, int]) -> None:
    """The account-level stack too (moto skips the OIDC provider and the trail: both are
    asserted on the template in tests/test_ci_stack.py and tests/test_audit.py)."""
    cfn = _client(endpoint, "cloudformation")
    template = json.loads((synth.outdir / "Humansa-CI.template.json").read_text())
    stack_id = cfn.create_stack(
        StackName="Humansa-CI",
        TemplateBody=json.dumps(template),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )["StackId"]
    assert _wait(cfn, stack_id) == "CREATE_COMPLETE"
    roles = {r["RoleName"]: r for r in _client(endpoint, "iam").list_roles()["Roles"]}
    repository = synth.account.github.repository
    deploy_subjects = [
        f"repo:{repository}:environment:staging",
        f"repo:{repository}:environment:production",
    ]
    subjects: tuple[tuple[str, str | list[str]], ...] = (
        ("humansa-github-actions-role", deploy_subjects),
        ("humansa-github-diff-role", f"repo:{repository}:pull_request"),
    )
    for name, subject in subjects:
        (statement,) = roles[name]["AssumeRolePolicyDocument"]["Statement"]
        condition = statement["Condition"]["StringEquals"]
        assert condition["token.actions.githubusercontent.com:sub"] == subject
