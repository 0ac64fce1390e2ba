"""The wired service stacks: provider secrets and the instance role, rollout, monitoring,
scaling, spot capacity, architecture, and the GHCR image source (GIVEN the real app)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from aws_cdk import App
from aws_cdk.assertions import Match, Template

from app import build_app
from components.ami import recorded_ami_id
from components.boot import (
    LAUNCH_HOOK_NAME,
    METRICS_NAMESPACE_PREFIX,
    PLACEHOLDER_SECRET_VALUE,
    PROVIDER_SECRET_NAMES,
    RUNBOOK_PARAMETER_NAMES,
    USER_DATA_LIMIT_BYTES,
    secret_name,
)
from components.image import ghcr_token_secret_name
from config import ConfigError, load_environment
from config.model import is_graviton
from stacks.service_stack import REFRESH_ALARMS
from tests import boot_harness as h
from tests import test_emulator_deploy as emu
from tests.conftest import ENVIRONMENTS, ROOT, Synth, cdk_context
from tests.ops_checks import (
    alarm_topic,
    check_alarm,
    check_dashboard,
    expected_alarms,
    only_resource,
)


def _title(env: str) -> str:
    return env.capitalize()


def _resources(template: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def _asg(template: Mapping[str, Any]) -> dict[str, Any]:
    (asg,) = _resources(template, "AWS::AutoScaling::AutoScalingGroup").values()
    return asg


def _role_statements(template: Mapping[str, Any]) -> list[dict[str, Any]]:
    (policy,) = _resources(template, "AWS::IAM::Policy").values()
    return list(policy["Properties"]["PolicyDocument"]["Statement"])


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


# --- provider secrets and the instance role -------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_provider_secret_placeholders(synth: Synth, env: str) -> None:
    template = synth.template_json(env, "Service")
    secrets = _resources(template, "AWS::SecretsManager::Secret")
    names = {r["Properties"]["Name"]: r["Properties"] for r in secrets.values()}
    assert set(names) == {secret_name(env, n) for n in PROVIDER_SECRET_NAMES}
    for props in names.values():
        assert props["SecretString"] == PLACEHOLDER_SECRET_VALUE
        assert "GenerateSecretString" not in props
    policy = "Retain" if env == "production" else "Delete"
    assert {r["DeletionPolicy"] for r in secrets.values()} == {policy}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_role_reads_exactly_the_boot_secrets(synth: Synth, env: str) -> None:
    template = synth.template_json(env, "Service")
    provider_ids = set(_resources(template, "AWS::SecretsManager::Secret"))
    read: list[Any] = []
    for statement in _role_statements(template):
        if "secretsmanager:GetSecretValue" in _actions(statement):
            assert set(_actions(statement)) == {
                "secretsmanager:GetSecretValue",
                "secretsmanager:DescribeSecret",
            }
            resource = statement["Resource"]
            read.extend(resource if isinstance(resource, list) else [resource])
    refs = sorted(r["Ref"] for r in read if "Ref" in r)
    imports = [r for r in read if "Fn::ImportValue" in r]
    assert refs == sorted(provider_ids)  # the ten placeholders, each once
    assert len(imports) == 1 and "SecretAttachment" in json.dumps(imports)  # the RDS secret
    assert len(read) == len(provider_ids) + 1
    assert "GHCR_TOKEN" not in json.dumps(_role_statements(template))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_role_scope(synth: Synth, env: str) -> None:
    template = synth.template_json(env, "Service")
    statements = _role_statements(template)
    by_action: dict[str, list[dict[str, Any]]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for action in _actions(statement):
            by_action.setdefault(action, []).append(statement)
    assert set(by_action) == {
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
        "ssm:GetParameters",
        "autoscaling:CompleteLifecycleAction",
        "cloudwatch:PutMetricData",
        "ec2:DescribeTags",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
        # Session Manager instead of SSH (no managed policy: it would read every parameter)
        "ssm:UpdateInstanceInformation",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
    }
    (params,) = by_action["ssm:GetParameters"]
    names = [json.dumps(r).split(":parameter/")[1].split('"')[0] for r in params["Resource"]]
    # minimizePolicies (cdk.json) may reorder the ARNs; IAM does not care about their order.
    assert sorted(names) == sorted(f"humansa/{env}/{n}" for n in RUNBOOK_PARAMETER_NAMES)
    (hook,) = by_action["autoscaling:CompleteLifecycleAction"]
    assert json.dumps(hook["Resource"]).endswith(
        f':autoScalingGroup:*:autoScalingGroupName/humansa-{env}-fleet"'
    )
    (metrics,) = by_action["cloudwatch:PutMetricData"]
    assert metrics["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE_PREFIX + env}
    }
    logs = json.dumps([s["Resource"] for s in by_action["logs:PutLogEvents"]])
    groups = _resources(template, "AWS::Logs::LogGroup")
    # The WAF's group (production) is written by AWS WAF, not by the fleet.
    groups = {
        k: v
        for k, v in groups.items()
        if not str(v["Properties"].get("LogGroupName", "")).startswith("aws-waf-logs-")
    }
    assert len(groups) == 2 and all(group_id in logs for group_id in groups)


def _concrete(part: Any, template: Mapping[str, Any], env: str) -> str:
    """A realistic, long value for one CloudFormation token in the user data."""
    if isinstance(part, str):
        return part
    resources = template["Resources"]
    arn_suffix = "-AbCdEf"
    if "Ref" in part:
        target = resources.get(part["Ref"])
        if part["Ref"] == "AWS::URLSuffix":
            return "amazonaws.com"
        if target and target["Type"] == "AWS::SecretsManager::Secret":
            name = target["Properties"]["Name"]
            return f"arn:aws:secretsmanager:ap-east-1:992382528744:secret:{name}{arn_suffix}"
        if target and target["Type"] == "AWS::Logs::LogGroup":
            return str(target["Properties"]["LogGroupName"])
    if "Fn::Select" in part:  # the registry: first "/" part of the image URI
        index, split = part["Fn::Select"]
        separator, source = split["Fn::Split"]
        return str(_concrete(source, template, env).split(separator)[index])
    if "Fn::Sub" in part:  # the asset image URI
        return str(part["Fn::Sub"]).replace("${AWS::URLSuffix}", "amazonaws.com")
    if "Fn::ImportValue" in part and "SecretAttachment" in json.dumps(part):
        return (
            "arn:aws:secretsmanager:ap-east-1:992382528744:secret:"
            f"HumansaProductionDataDatabaseSecret3B817195-{env}AbCdEfGhIjKl{arn_suffix}"
        )
    raise AssertionError(f"no concrete stand-in for user-data token {part}")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_user_data_with_real_arns_fits(synth: Synth, env: str) -> None:
    template = synth.template_json(env, "Service")
    (launch_template,) = _resources(template, "AWS::EC2::LaunchTemplate").values()
    joined = launch_template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    separator, parts = joined["Fn::Join"]
    script = separator.join(_concrete(p, template, env) for p in parts)
    assert "arn:aws:secretsmanager" not in script  # every secret by name
    size = len(script.encode())
    print(f"{env}: rendered user data with concrete ARNs: {size} bytes")
    assert size < USER_DATA_LIMIT_BYTES, size


def _user_data(synth: Synth, env: str) -> str:
    stacks = synth.stacks[env]
    templates = {
        st.stack_name: synth.template_json(env, kind)
        for kind, st in zip(
            ("Network", "Data", "Service"),
            (stacks.network, stacks.data, stacks.service),
            strict=True,
        )
    }
    return h.synthesized_user_data(templates, stacks.service.stack_name, synth.configs[env])


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_boot_fetches_each_secret_by_the_name_it_is_created_with(
    synth: Synth, env: str
) -> None:
    # GIVEN the synthesized user data and the secrets of the Data and Service templates
    created = {
        r["Properties"]["Name"]
        for kind in ("Data", "Service")
        for r in _resources(synth.template_json(env, kind), "AWS::SecretsManager::Secret").values()
    }
    # WHEN the rendered fetch-secrets script runs THEN each id it asks for is one of those names
    # (a name resolves to the ARN with its random suffix, which the role's grant names).
    fetch = h.heredoc(_user_data(synth, env), "/fetch-secrets")
    (prefix,) = re.findall(r"local id=\$\{2:-'([^']+)'\$1\}", fetch)
    (loop,) = re.findall(r"for n in ([A-Z0-9_ ]+); do fetch", fetch)
    ids = {prefix + n for n in loop.split()}
    ids |= set(re.findall(r"^  fetch [A-Z0-9_]+ '([^']+)'", fetch, re.MULTILINE))
    assert ids <= created - {ghcr_token_secret_name(env)}, ids - created
    providers = {secret_name(env, n) for n in PROVIDER_SECRET_NAMES}
    assert providers <= ids
    # plus exactly one database login: the app user's, never the master secret
    (db,) = ids - providers
    assert db.startswith(f"humansa/{env}/db") and db != f"humansa/{env}/db", db


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_server_trusts_x_forwarded_for_only_from_the_vpc(synth: Synth, env: str) -> None:
    # GIVEN the VPC of the Network template and the synthesized boot WHEN the boot writes the
    # env file THEN FORWARDED_ALLOW_IPS is the VPC's CIDR (the ALB's addresses), never "*".
    (vpc,) = _resources(synth.template_json(env, "Network"), "AWS::EC2::VPC").values()
    script = _user_data(synth, env)
    (value,) = re.findall(r"FORWARDED_ALLOW_IPS=('[^']*'|\S+)", script)
    assert value.strip("'") == vpc["Properties"]["CidrBlock"]


# --- rollout ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_launch_hook_holds_new_instances_until_their_boot_completes_it(
    synth: Synth, env: str
) -> None:
    # GIVEN the synthesized group WHEN an instance launches THEN it waits in Pending:Wait for
    # the boot (CONTINUE after /health, ABANDON on FATAL), ABANDON if the heartbeat expires.
    template = synth.template_json(env, "Service")
    (group,) = _resources(template, "AWS::AutoScaling::AutoScalingGroup").values()
    props = group["Properties"]
    assert props["AutoScalingGroupName"] == f"humansa-{env}-fleet"
    (hook,) = props["LifecycleHookSpecificationList"]
    assert hook["LifecycleHookName"] == LAUNCH_HOOK_NAME
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert hook["DefaultResult"] == "ABANDON"
    assert "NotificationTargetARN" not in hook  # the boot completes it, no notification
    # The heartbeat covers the boot's own budget (the script fails itself at that point) plus
    # the launch and the completion call; the boot script carries the same budget.
    user_data = json.dumps(_resources(template, "AWS::EC2::LaunchTemplate"))
    budget = int(user_data.split("BOOT_BUDGET=")[1].split("\\n")[0])
    assert hook["HeartbeatTimeout"] > budget + 60
    assert f"GROUP='humansa-{env}-fleet'" in user_data and f"HOOK='{LAUNCH_HOOK_NAME}'" in user_data
    # The UnhealthyHosts refresh alarm counts the targets of the group's own target group, into
    # which the group registers an instance only after the hook: a booting (or scaling-out)
    # instance is never one of them.
    (tg_ref,) = props["TargetGroupARNs"]
    alarms = [
        a["Properties"]
        for a in _resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "UnHealthyHostCount"
    ]
    assert alarms
    for alarm in alarms:
        (tg,) = [d["Value"] for d in alarm["Dimensions"] if d["Name"] == "TargetGroup"]
        assert tg == {"Fn::GetAtt": [tg_ref["Ref"], "TargetGroupFullName"]}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_instance_refresh_policy(synth: Synth, env: str) -> None:
    rollout = synth.configs[env].rollout
    template = synth.template_json(env, "Service")
    asg = _asg(template)
    refresh = asg["UpdatePolicy"]["AutoScalingInstanceRefresh"]
    assert refresh["Strategy"] == "Rolling"
    preferences = refresh["Preferences"]
    names = [f"Humansa-{_title(env)}-{a}" for a in REFRESH_ALARMS]
    expected: dict[str, Any] = {
        "MinHealthyPercentage": 100,
        "MaxHealthyPercentage": 200,
        "SkipMatching": True,
        "InstanceWarmup": rollout.instance_warmup_seconds,
        "BakeTime": rollout.bake_time_minutes * 60,
        "AlarmSpecification": {"Alarms": names},
    }
    if rollout.checkpoint_percentages:
        expected["CheckpointPercentages"] = list(rollout.checkpoint_percentages)
        expected["CheckpointDelay"] = rollout.checkpoint_delay_minutes * 60
    assert preferences == expected
    # The named alarms are this stack's, and the group is created after them.
    alarms = {
        r["Properties"]["AlarmName"]: k
        for k, r in _resources(template, "AWS::CloudWatch::Alarm").items()
    }
    assert {alarms[n] for n in names} <= set(asg["DependsOn"])
    assert asg["Properties"]["DefaultInstanceWarmup"] == rollout.instance_warmup_seconds
    assert asg["Properties"]["HealthCheckGracePeriod"] >= rollout.instance_warmup_seconds


def test_rollout_defaults_per_environment(synth: Synth) -> None:
    bake = {env: synth.configs[env].rollout.bake_time_minutes for env in ENVIRONMENTS}
    assert bake == {"dev": 5, "staging": 10, "production": 10}
    assert synth.configs["production"].rollout.checkpoint_percentages == (50, 100)
    assert not synth.configs["dev"].rollout.checkpoint_percentages


# --- monitoring on the real templates -----------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_alarms_on_the_service_stack(synth: Synth, env: str) -> None:
    config = synth.configs[env].monitoring
    template = synth.template(env, "Service")
    topic_id = alarm_topic(template, config.alarm_email)
    expected = expected_alarms(config, METRICS_NAMESPACE_PREFIX + env)
    for alarm in expected:
        check_alarm(template, _title(env), topic_id, alarm)
    template.resource_count_is("AWS::CloudWatch::Alarm", len(expected))
    # The RDS alarms read the Data stack's instance through a strong reference.
    _, rds = only_resource(
        template, "AWS::CloudWatch::Alarm", {"AlarmName": f"Humansa-{_title(env)}-RdsCpu"}
    )
    assert "Fn::ImportValue" in json.dumps(rds["Dimensions"])
    # Fleet alarms use the group's name as their only dimension.
    _, memory = only_resource(
        template, "AWS::CloudWatch::Alarm", {"AlarmName": f"Humansa-{_title(env)}-FleetMemory"}
    )
    (asg_id,) = _resources(
        synth.template_json(env, "Service"), "AWS::AutoScaling::AutoScalingGroup"
    )
    assert memory["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": {"Ref": asg_id}}]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dashboard_on_the_service_stack(synth: Synth, env: str) -> None:
    check_dashboard(synth.template(env, "Service"), _title(env))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_agent_config_aggregates_by_group_and_skips_tmpfs(synth: Synth, env: str) -> None:
    agent = json.loads(h.heredoc(_user_data(synth, env), "/humansa-ml.json"))
    assert agent["metrics"]["aggregation_dimensions"] == [["AutoScalingGroupName"]]
    # Only the mount point "/" (the agent's disk "resources"): tmpfs, devtmpfs and the
    # containers' overlay mounts are never "/", so FleetDisk never reads them.
    assert agent["metrics"]["metrics_collected"]["disk"]["resources"] == ["/"]


# --- scaling and capacity --------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_scaling_policies_and_bounds(synth: Synth, env: str) -> None:
    config = synth.configs[env]
    template = synth.template(env, "Service")
    asg = _asg(synth.template_json(env, "Service"))["Properties"]
    assert (asg["MinSize"], asg["MaxSize"]) == (
        str(config.fleet.min_capacity),
        str(config.fleet.max_capacity),
    )
    template.has_resource_properties(
        "AWS::AutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingConfiguration": {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "ALBRequestCountPerTarget",
                    "ResourceLabel": Match.any_value(),
                },
                "TargetValue": config.scaling.requests_per_target_per_minute,
            },
        },
    )
    template.has_resource_properties(
        "AWS::AutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingConfiguration": {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "ASGAverageCPUUtilization"
                },
                "TargetValue": config.scaling.cpu_target_percent,
            },
        },
    )
    template.resource_count_is("AWS::AutoScaling::ScalingPolicy", 2)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_capacity_mix(synth: Synth, env: str) -> None:
    fleet = synth.configs[env].fleet
    template = synth.template_json(env, "Service")
    asg = _asg(template)["Properties"]
    (launch_template_id,) = _resources(template, "AWS::EC2::LaunchTemplate")
    if not fleet.spot:
        assert "MixedInstancesPolicy" not in asg and "CapacityRebalance" not in asg
        assert asg["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": launch_template_id}
        return
    mixed = asg["MixedInstancesPolicy"]
    assert asg["CapacityRebalance"] is True
    assert "LaunchTemplate" not in asg
    assert mixed["LaunchTemplate"]["LaunchTemplateSpecification"]["LaunchTemplateId"] == {
        "Ref": launch_template_id
    }
    types = [o["InstanceType"] for o in mixed["LaunchTemplate"]["Overrides"]]
    assert types == list(fleet.all_instance_types) and len(types) >= 2
    assert all(is_graviton(t) for t in types)
    assert mixed["InstancesDistribution"] == {
        "OnDemandAllocationStrategy": "prioritized",
        "OnDemandBaseCapacity": fleet.on_demand_base_capacity,
        "OnDemandPercentageAboveBaseCapacity": fleet.on_demand_percentage_above_base,
        "SpotAllocationStrategy": "price-capacity-optimized",
    }


def test_capacity_defaults_per_environment(synth: Synth) -> None:
    fleets = {env: synth.configs[env].fleet for env in ENVIRONMENTS}
    assert (fleets["dev"].spot, fleets["dev"].on_demand_base_capacity) == (True, 0)
    assert fleets["dev"].on_demand_percentage_above_base == 0
    assert fleets["staging"].spot is True
    assert fleets["production"].spot is False and fleets["production"].min_capacity == 2


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_arm64_launch_template(synth: Synth, env: str) -> None:
    template = synth.template_json(env, "Service")
    (launch_template,) = _resources(template, "AWS::EC2::LaunchTemplate").values()
    data = launch_template["Properties"]["LaunchTemplateData"]
    assert is_graviton(data["InstanceType"])
    assert data["ImageId"] == recorded_ami_id("ap-east-1", "arm64")
    assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True


# --- an x86_64 fleet and the GHCR image source (their own synth) --------------------------

VARIANT_TAG = "release-9.9.9"


def _variant_dir(tmp: Path) -> Path:
    folder = tmp / "config"
    folder.mkdir()
    for env in ("dev", "staging"):
        shutil.copy(ROOT / "config" / f"{env}.yaml", folder / f"{env}.yaml")
    dev = yaml.safe_load((folder / "dev.yaml").read_text())
    dev["fleet"].update(
        architecture="x86_64", instance_type="t3.small", instance_types=["t3a.small", "m7i.large"]
    )
    (folder / "dev.yaml").write_text(yaml.safe_dump(dev))
    staging = yaml.safe_load((folder / "staging.yaml").read_text())
    staging["image"].update(source="ghcr", ghcr_repository="acme/humansa-ml-server")
    (folder / "staging.yaml").write_text(yaml.safe_dump(staging))
    return folder


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("variants")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HUMANSA_CONFIG_DIR", str(_variant_dir(tmp)))
        outdir = tmp / "cdk.out"
        app = App(
            outdir=str(outdir),
            context={**cdk_context(), "env": "dev,staging", "image_tag": VARIANT_TAG},
        )
        dev, staging = build_app(app)
        app.synth()  # raises on any unacknowledged cdk-nag finding
        yield {
            "outdir": outdir,
            "config_dir": tmp / "config",
            "dev": Template.from_stack(dev.service),
            "staging": Template.from_stack(staging.service),
        }


def test_x86_64_fleet_builds_an_amd64_image(variants: dict[str, Any]) -> None:
    assets = json.loads((variants["outdir"] / "Humansa-Dev-Service.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    assert image["source"]["platform"] == "linux/amd64"
    template = variants["dev"].to_json()
    (launch_template,) = _resources(template, "AWS::EC2::LaunchTemplate").values()
    data = launch_template["Properties"]["LaunchTemplateData"]
    assert data["InstanceType"] == "t3.small"
    assert data["ImageId"] == recorded_ami_id("ap-east-1", "x86_64")
    overrides = _asg(template)["Properties"]["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == ["t3.small", "t3a.small", "m7i.large"]


def test_ghcr_source_uses_the_pull_through_cache(variants: dict[str, Any]) -> None:
    template: Template = variants["staging"]
    data = template.to_json()
    # The token is the Data stack's (it exists before the first ghcr fleet boots).
    stored = json.loads((variants["outdir"] / "Humansa-Staging-Data.template.json").read_text())
    data_stack = Template.from_json(stored)
    token_id, token = only_resource(
        data_stack, "AWS::SecretsManager::Secret", {"Name": ghcr_token_secret_name("staging")}
    )
    assert token["Name"].startswith("ecr-pullthroughcache/")
    assert json.loads(token["SecretString"]) == {
        "username": PLACEHOLDER_SECRET_VALUE,
        "accessToken": PLACEHOLDER_SECRET_VALUE,
    }
    assert stored["Resources"][token_id]["DeletionPolicy"] == "Delete"  # staging: no retention
    (export,) = [
        o["Export"]["Name"] for o in stored["Outputs"].values() if o["Value"] == {"Ref": token_id}
    ]
    template.has_resource_properties(
        "AWS::ECR::PullThroughCacheRule",
        {
            "EcrRepositoryPrefix": "humansa-staging-ghcr",
            "UpstreamRegistry": "github-container-registry",
            "UpstreamRegistryUrl": "ghcr.io",
            "CredentialArn": {"Fn::ImportValue": export},
        },
    )
    assert _resources(data, "AWS::SecretsManager::Secret").keys() == {
        k
        for k, r in _resources(data, "AWS::SecretsManager::Secret").items()
        if r["Properties"]["Name"].startswith("/humansa/staging/")
    }, "the Service stack creates no GHCR token of its own"
    # No image asset; instances pull the cached image with the release tag.
    assert _resources(data, "AWS::ECR::Repository") == {}
    (launch_template,) = _resources(data, "AWS::EC2::LaunchTemplate").values()
    user_data = json.dumps(launch_template["Properties"]["LaunchTemplateData"]["UserData"])
    image = (
        '992382528744.dkr.ecr.ap-east-1.", {"Ref": "AWS::URLSuffix"}, '
        f'"/humansa-staging-ghcr/acme/humansa-ml-server:{VARIANT_TAG}'
    )
    assert image in user_data
    assert "cdk-hnb659fds-container-assets" not in user_data
    template.has_resource_properties(
        "AWS::SSM::Parameter",
        {"Name": "/humansa/staging/ml_server_image_tag", "Value": VARIANT_TAG},
    )
    # The role pulls and imports through the cache prefix only; it never reads the token.
    statements = _role_statements(data)
    (cache,) = [s for s in statements if "ecr:BatchImportUpstreamImage" in _actions(s)]
    assert set(_actions(cache)) == {
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
        "ecr:BatchImportUpstreamImage",
        "ecr:CreateRepository",
    }
    assert json.dumps(cache["Resource"]).endswith(':repository/humansa-staging-ghcr/*"')
    assert export not in json.dumps(statements)


def test_the_ghcr_token_exists_after_the_data_stack_alone_and_is_the_cache_rule_credential(
    variants: dict[str, Any], tmp_path: Path
) -> None:
    """GIVEN staging with image.source ghcr, WHEN only its Network and Data stacks are created
    (moto's CloudFormation), THEN the GHCR token secret exists with its placeholder, the
    release guard refuses with the command to run, `make secrets` can put the token, the guard
    then passes, and the Service stack's cache rule names that same secret (moto has no
    pull-through cache: its CredentialArn is resolved through the stacks' exports)."""
    from moto.server import ThreadedMotoServer

    from tests.iam_contract import Templates

    outdir = variants["outdir"]
    stacks = ("Humansa-Staging-Network", "Humansa-Staging-Data")
    name = ghcr_token_secret_name("staging")
    emu._patch_moto_gaps()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto's backends are process-wide: start from an empty account.
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310 - moto on 127.0.0.1
        emu._seed_bootstrap(endpoint, outdir, emu.ACCOUNT, stacks)
        cfn = emu._client(endpoint, "cloudformation")
        for stack in stacks:
            template = json.loads((outdir / f"{stack}.template.json").read_text())
            stack_id = cfn.create_stack(
                StackName=stack,
                TemplateBody=json.dumps(template),
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            )["StackId"]
            emu._answer_custom_resources(endpoint, stack_id, template)
            assert emu._wait(cfn, stack_id) == "CREATE_COMPLETE", stack
        sm = emu._client(endpoint, "secretsmanager")
        secret = sm.describe_secret(SecretId=name)
        assert json.loads(sm.get_secret_value(SecretId=name)["SecretString"]) == {
            "username": PLACEHOLDER_SECRET_VALUE,
            "accessToken": PLACEHOLDER_SECRET_VALUE,
        }
        # The operator's credentials: an IAM user's key in the stacks' account.
        iam = emu._client(endpoint, "iam")
        iam.create_user(UserName="operator")
        key = iam.create_access_key(UserName="operator")["AccessKey"]
        credentials = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        session = boto3.Session(
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            region_name=h.REGION,
        )
        from humansa_ops.preflight import ghcr_token_refusal

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AWS_ENDPOINT_URL", endpoint)
            cfg = load_environment("staging")
            assert ghcr_token_refusal(cfg, session) == (
                f"{name} still holds its placeholder, so the fleet could not pull "
                "ghcr.io/acme/humansa-ml-server: put the token first with "
                "`GHCR_USERNAME=<github user> make secrets ENV=staging NAME=GHCR_TOKEN`"
            )
            put = subprocess.run(
                [str(ROOT / "scripts/put_secret.sh"), "staging", "GHCR_TOKEN"],
                input="ghcr-test-not-a-real-token-3",
                env={
                    "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                    "HUMANSA_CONFIG_DIR": str(variants["config_dir"]),
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_CONFIG_FILE": str(tmp_path / "none"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                    "GHCR_USERNAME": "acme-bot",
                    **credentials,
                },
                capture_output=True,
                text=True,
                check=False,
            )
            assert put.returncode == 0, put.stderr
            assert json.loads(sm.get_secret_value(SecretId=name)["SecretString"]) == {
                "username": "acme-bot",
                "accessToken": "ghcr-test-not-a-real-token-3",
            }
            assert ghcr_token_refusal(cfg, session) is None

        # The Service stack's cache rule and the instance role, as CloudFormation resolves them.
        names = (*stacks, "Humansa-Staging-Service")
        templates = Templates(
            {n: json.loads((outdir / f"{n}.template.json").read_text()) for n in names},
            h.REGION,
            emu.ACCOUNT,
            lambda _stack, _id, props: sm.describe_secret(SecretId=props["Name"])["ARN"],
        )
        service = templates.resources("Humansa-Staging-Service")
        (rule,) = [r for r in service.values() if r["Type"] == "AWS::ECR::PullThroughCacheRule"]
        credential = rule["Properties"]["CredentialArn"]
        assert templates.resolve(credential, "Humansa-Staging-Service") == secret["ARN"]
        assert not [
            r
            for r in service.values()
            if r["Type"] == "AWS::SecretsManager::Secret"
            and "ghcr" in json.dumps(r["Properties"].get("Name", "")).lower()
        ], "the Service stack must not create a GHCR token of its own"
    finally:
        # moto's backends are process-wide: leave them empty for the next module.
        with contextlib.suppress(Exception):
            reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")  # noqa: S310
            urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310 - moto on 127.0.0.1
        server.stop()


# --- configuration errors ---------------------------------------------------------------


def _bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet: dict[str, Any], **top: Any) -> str:
    folder = tmp_path / "config"
    folder.mkdir()
    data = yaml.safe_load((ROOT / "config" / "production.yaml").read_text())
    data["fleet"].update(fleet)
    data.update(top)
    (folder / "production.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("HUMANSA_CONFIG_DIR", str(folder))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_environment("production")
    return str(caught.value)


def test_instance_types_must_match_the_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _bad(
        tmp_path, monkeypatch, {"spot": True, "instance_types": ["t4g.medium", "m7i.large"]}
    )
    assert message == (
        "config/production.yaml: fleet.instance_types=m7i.large is not a Graviton type but "
        "fleet.architecture=arm64 (use t4g, m7g, c7g, ... or set x86_64)"
    )


def test_x86_64_refuses_graviton_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _bad(tmp_path, monkeypatch, {"architecture": "x86_64"})
    assert message == (
        "config/production.yaml: fleet.instance_type=t4g.small is a Graviton type but "
        "fleet.architecture=x86_64 (set arm64 or pick an x86_64 type such as t3, m7i, c7i)"
    )


def test_grace_period_covers_the_warmup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _bad(tmp_path, monkeypatch, {"health_check_grace_seconds": 120})
    assert message.startswith(
        "config/production.yaml: fleet.health_check_grace_seconds=120 is below "
        "rollout.instance_warmup_seconds=180"
    )


def test_checkpoints_must_end_at_100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rollout = {"checkpoint_percentages": [50]}
    message = _bad(tmp_path, monkeypatch, {}, rollout=rollout)
    assert message == (
        "config/production.yaml: rollout.checkpoint_percentages=[50] must end at 100 "
        "(otherwise part of the fleet is never replaced)"
    )
