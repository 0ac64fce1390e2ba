"""The CloudFormation execution policy and the permissions boundary (bootstrap/*.json), as IAM
evaluates them (tests/iam_contract.py): every resource of the app's own templates can be
created, an IAM user or a role without the boundary cannot, and what the app's roles are
granted stays inside the boundary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Synth
from tests.iam_contract import Call, Templates, Unresolvable, evaluate

ACCOUNT = "992382528744"
REGION = "ap-east-1"
BOUNDARY_ARN = f"arn:aws:iam::{ACCOUNT}:policy/humansa-permissions-boundary"


def policy(name: str) -> list[dict[str, Any]]:
    """The statements of bootstrap/<name>.json with the account filled in (as the script does)."""
    text = (ROOT / "bootstrap" / f"{name}.json").read_text().replace("${ACCOUNT}", ACCOUNT)
    return list(json.loads(text)["Statement"])


EXECUTION = policy("execution-policy")
BOUNDARY = policy("permissions-boundary")

#: What CloudFormation calls to create each resource type the app uses (the "create" handler's
#: required permissions in the CloudFormation resource type schemas, the first call shown).
#: A type missing here fails the test: add it and, if needed, its service to the policy.
CREATE_ACTIONS: dict[str, tuple[str, ...]] = {
    "AWS::AutoScaling::AutoScalingGroup": ("autoscaling:CreateAutoScalingGroup",),
    "AWS::AutoScaling::ScalingPolicy": ("autoscaling:PutScalingPolicy",),
    "AWS::AutoScaling::LifecycleHook": ("autoscaling:PutLifecycleHook",),
    "AWS::CloudTrail::Trail": ("cloudtrail:CreateTrail", "cloudtrail:StartLogging"),
    "AWS::CloudWatch::Alarm": ("cloudwatch:PutMetricAlarm",),
    "AWS::CloudWatch::Dashboard": ("cloudwatch:PutDashboard",),
    "AWS::EC2::EIP": ("ec2:AllocateAddress",),
    "AWS::EC2::FlowLog": ("ec2:CreateFlowLogs",),
    "AWS::EC2::Instance": ("ec2:RunInstances",),
    "AWS::EC2::InternetGateway": ("ec2:CreateInternetGateway",),
    "AWS::EC2::LaunchTemplate": ("ec2:CreateLaunchTemplate",),
    "AWS::EC2::NatGateway": ("ec2:CreateNatGateway",),
    "AWS::EC2::Route": ("ec2:CreateRoute",),
    "AWS::EC2::RouteTable": ("ec2:CreateRouteTable",),
    "AWS::EC2::SecurityGroup": ("ec2:CreateSecurityGroup",),
    "AWS::EC2::SecurityGroupEgress": ("ec2:AuthorizeSecurityGroupEgress",),
    "AWS::EC2::SecurityGroupIngress": ("ec2:AuthorizeSecurityGroupIngress",),
    "AWS::EC2::Subnet": ("ec2:CreateSubnet",),
    "AWS::EC2::SubnetRouteTableAssociation": ("ec2:AssociateRouteTable",),
    "AWS::EC2::VPC": ("ec2:CreateVpc",),
    "AWS::EC2::VPCEndpoint": ("ec2:CreateVpcEndpoint",),
    "AWS::EC2::VPCGatewayAttachment": ("ec2:AttachInternetGateway",),
    "AWS::ECR::PullThroughCacheRule": ("ecr:CreatePullThroughCacheRule",),
    "AWS::ElasticLoadBalancingV2::Listener": ("elasticloadbalancing:CreateListener",),
    "AWS::ElasticLoadBalancingV2::ListenerRule": ("elasticloadbalancing:CreateRule",),
    "AWS::ElasticLoadBalancingV2::LoadBalancer": ("elasticloadbalancing:CreateLoadBalancer",),
    "AWS::ElasticLoadBalancingV2::TargetGroup": ("elasticloadbalancing:CreateTargetGroup",),
    "AWS::IAM::InstanceProfile": ("iam:CreateInstanceProfile", "iam:AddRoleToInstanceProfile"),
    "AWS::IAM::OIDCProvider": ("iam:CreateOpenIDConnectProvider",),
    "AWS::KMS::Key": ("kms:CreateKey",),
    "AWS::Lambda::Function": ("lambda:CreateFunction", "iam:PassRole"),
    "AWS::Logs::LogGroup": ("logs:CreateLogGroup",),
    "AWS::Logs::MetricFilter": ("logs:PutMetricFilter",),
    "AWS::RDS::DBInstance": ("rds:CreateDBInstance",),
    "AWS::RDS::DBParameterGroup": ("rds:CreateDBParameterGroup",),
    "AWS::RDS::DBSubnetGroup": ("rds:CreateDBSubnetGroup",),
    "AWS::S3::Bucket": ("s3:CreateBucket",),
    "AWS::S3::BucketPolicy": ("s3:PutBucketPolicy",),
    "AWS::SNS::Subscription": ("sns:Subscribe",),
    "AWS::SNS::Topic": ("sns:CreateTopic",),
    "AWS::SNS::TopicPolicy": ("sns:SetTopicAttributes",),
    "AWS::SSM::Parameter": ("ssm:PutParameter",),
    "AWS::SecretsManager::ResourcePolicy": ("secretsmanager:PutResourcePolicy",),
    "AWS::SecretsManager::RotationSchedule": ("secretsmanager:RotateSecret",),
    "AWS::SecretsManager::Secret": ("secretsmanager:CreateSecret",),
    "AWS::SecretsManager::SecretTargetAttachment": ("secretsmanager:PutSecretValue",),
    "AWS::WAFv2::LoggingConfiguration": ("wafv2:PutLoggingConfiguration",),
    "AWS::WAFv2::WebACL": ("wafv2:CreateWebACL",),
    "AWS::WAFv2::WebACLAssociation": ("wafv2:AssociateWebACL",),
    "AWS::IAM::User": ("iam:CreateUser",),
    "AWS::DynamoDB::Table": ("dynamodb:CreateTable",),
}
NOT_CREATED = {"AWS::CDK::Metadata"}


def _templates(synth: Synth) -> Templates:
    data = {
        p.name.removesuffix(".template.json"): json.loads(p.read_text())
        for p in synth.template_files()
    }
    return Templates(data, REGION, ACCOUNT, lambda stack, lid, props: f"secret-{lid}")


def _resolve(t: Templates, stack: str, value: Any) -> Any:
    try:
        return t.resolve(value, stack)
    except Unresolvable:
        return None


def calls_for_resource(t: Templates, stack: str, lid: str, res: dict[str, Any]) -> list[Call]:
    """The calls CloudFormation makes, as the execution role, to create one resource."""
    kind, props = res["Type"], res.get("Properties", {})
    src = f"{stack}/{lid} ({kind})"
    if kind == "AWS::IAM::Role":
        name = _resolve(t, stack, props.get("RoleName")) or f"{stack}-{lid}-GENERATED"
        arn = f"arn:aws:iam::{ACCOUNT}:role/{name}"
        boundary = _resolve(t, stack, props.get("PermissionsBoundary"))
        context = {"iam:PermissionsBoundary": boundary} if boundary else {}
        calls = [Call("iam:CreateRole", arn, context, src)]
        calls += [Call("iam:PutRolePolicy", arn, context, src) for _ in props.get("Policies", [])]
        return calls
    if kind == "AWS::IAM::Policy":
        calls = []
        for role in props.get("Roles", []):
            role_res = t.resources(stack)[role["Ref"]]
            role_props = role_res.get("Properties", {})
            name = _resolve(t, stack, role_props.get("RoleName")) or f"{stack}-{role['Ref']}-X"
            boundary = _resolve(t, stack, role_props.get("PermissionsBoundary"))
            context = {"iam:PermissionsBoundary": boundary} if boundary else {}
            calls.append(
                Call("iam:PutRolePolicy", f"arn:aws:iam::{ACCOUNT}:role/{name}", context, src)
            )
        return calls
    if kind.startswith("Custom::"):
        return [Call("lambda:InvokeFunction", "*", {}, src)]
    if kind not in CREATE_ACTIONS:
        raise AssertionError(f"{src}: add {kind} to CREATE_ACTIONS (and the policy if needed)")
    return [Call(action, "*", {}, src) for action in CREATE_ACTIONS[kind]]


def refused(template: dict[str, Any], stack: str = "Humansa-Dev-Service") -> list[str]:
    t = Templates({stack: template}, REGION, ACCOUNT, lambda *_: "secret")
    out = []
    for lid, res in template["Resources"].items():
        for call in calls_for_resource(t, stack, lid, res):
            decision = evaluate(EXECUTION, call)
            if not decision.allowed:
                out.append(f"{call}: {decision.reason}")
    return out


def test_the_apps_own_templates_are_deployable(synth: Synth) -> None:
    t = _templates(synth)
    denied = []
    for stack in t.templates:
        for lid, res in t.resources(stack).items():
            if res["Type"] in NOT_CREATED:
                continue
            for call in calls_for_resource(t, stack, lid, res):
                decision = evaluate(EXECUTION, call)
                if not decision.allowed:
                    denied.append(f"{call}: {decision.reason}")
    assert denied == []


def test_every_app_role_carries_the_boundary(synth: Synth) -> None:
    t = _templates(synth)
    missing = [
        f"{stack}/{lid}"
        for stack in t.templates
        for lid, res in t.resources(stack).items()
        if res["Type"] == "AWS::IAM::Role"
        and _resolve(t, stack, res["Properties"].get("PermissionsBoundary")) != BOUNDARY_ARN
    ]
    assert missing == []


def test_an_iam_user_is_refused_by_an_explicit_deny() -> None:
    template = {"Resources": {"Backdoor": {"Type": "AWS::IAM::User", "Properties": {}}}}
    (reason,) = refused(template)
    assert "iam:CreateUser" in reason and "explicit Deny" in reason and "NoUsersGroups" in reason


def test_access_keys_and_policy_edits_are_refused() -> None:
    for action in (
        "iam:CreateAccessKey",
        "iam:CreatePolicyVersion",
        "iam:AddUserToGroup",
        "iam:DeleteRolePermissionsBoundary",
        "organizations:LeaveOrganization",
    ):
        decision = evaluate(EXECUTION, Call(action, "*", {}, "test"))
        assert not decision.allowed and "explicit Deny" in decision.reason, action


def _role(boundary: str | None, name: str = "Humansa-Dev-Service-Escalate") -> dict[str, Any]:
    props: dict[str, Any] = {"RoleName": name, "AssumeRolePolicyDocument": {}}
    if boundary is not None:
        props["PermissionsBoundary"] = boundary
    return {"Resources": {"Role": {"Type": "AWS::IAM::Role", "Properties": props}}}


def test_a_role_without_the_boundary_is_refused() -> None:
    (reason,) = refused(_role(None))
    assert "iam:CreateRole" in reason and "RolesCarryTheBoundary" in reason
    (reason,) = refused(_role(f"arn:aws:iam::{ACCOUNT}:policy/AdministratorAccess"))
    assert "RolesCarryTheBoundary" in reason
    assert refused(_role(BOUNDARY_ARN)) == []


def test_a_service_outside_the_policy_is_implicitly_denied() -> None:
    template = {"Resources": {"Table": {"Type": "AWS::DynamoDB::Table", "Properties": {}}}}
    (reason,) = refused(template)
    assert "dynamodb:CreateTable" in reason and "implicit deny" in reason


def test_what_app_roles_are_granted_stays_inside_the_boundary(synth: Synth) -> None:
    t = _templates(synth)
    outside = set()
    for stack in t.templates:
        for res in t.resources(stack).values():
            docs = []
            if res["Type"] == "AWS::IAM::Policy":
                docs.append(res["Properties"]["PolicyDocument"])
            if res["Type"] == "AWS::IAM::Role":
                docs += [p["PolicyDocument"] for p in res["Properties"].get("Policies", [])]
            for doc in docs:
                for stmt in doc["Statement"]:
                    if stmt["Effect"] != "Allow":
                        continue
                    actions = (
                        stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                    )
                    for action in actions:
                        if not evaluate(BOUNDARY, Call(action, "*", {}, stack)).allowed:
                            outside.add(f"{stack}: {action}")
    assert sorted(outside) == []


def test_the_boundary_refuses_any_iam_action() -> None:
    for action in ("iam:CreateUser", "iam:PassRole", "iam:AttachRolePolicy"):
        assert not evaluate(BOUNDARY, Call(action, "*", {}, "test")).allowed


@pytest.mark.parametrize("name", ["execution-policy", "permissions-boundary"])
def test_policies_fit_iam_size_limit(name: str) -> None:
    # A customer managed policy may hold 6,144 characters, whitespace not counted.
    text = (ROOT / "bootstrap" / f"{name}.json").read_text()
    assert len("".join(text.split())) <= 6144
    assert Path(ROOT / "scripts" / "bootstrap.sh").stat().st_mode & 0o111
