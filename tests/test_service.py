"""Service stack: ALB, target group, fleet launch template, security groups, logs, parameters."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
from aws_cdk import App, Environment, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Match, Template

from app import build_app
from components.ami import recorded_ami_id
from components.load_balancer import LoadBalancer
from config import load_environment
from humansa_ops import synth_summary
from tests.conftest import ENVIRONMENTS, ROOT, Synth, cdk_context


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_alb_and_target_group(synth: Synth, env: str) -> None:
    template = synth.template(env, "Service")
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        {
            "Scheme": "internet-facing",
            "Type": "application",
            "LoadBalancerAttributes": Match.array_with(
                [
                    {"Key": "idle_timeout.timeout_seconds", "Value": "300"},
                    {"Key": "routing.http.drop_invalid_header_fields.enabled", "Value": "true"},
                ]
            ),
        },
    )
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::TargetGroup",
        {
            "Port": 5001,
            "Protocol": "HTTP",
            "TargetType": "instance",
            "HealthCheckPath": "/health",
            "HealthCheckPort": "5001",
            "Matcher": {"HttpCode": "200"},
        },
    )
    # No certificate configured: plain HTTP on 80 forwarding to the target group.
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {
            "Port": 80,
            "Protocol": "HTTP",
            "DefaultActions": [Match.object_like({"Type": "forward"})],
        },
    )
    template.resource_count_is("AWS::ElasticLoadBalancingV2::Listener", 1)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_launch_template_hardening(synth: Synth, env: str) -> None:
    fleet = synth.configs[env].fleet
    template = synth.template(env, "Service")
    template.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {
            "LaunchTemplateData": Match.object_like(
                {
                    "InstanceType": fleet.instance_type,
                    "ImageId": recorded_ami_id("ap-east-1", "arm64"),
                    "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
                    "BlockDeviceMappings": [
                        {
                            "DeviceName": "/dev/xvda",
                            "Ebs": {
                                "Encrypted": True,
                                "VolumeType": "gp3",
                                "VolumeSize": fleet.root_volume_gib,
                                "DeleteOnTermination": True,
                            },
                        }
                    ],
                    "KeyName": Match.absent(),
                    "UserData": Match.any_value(),
                }
            )
        },
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_auto_scaling_group(synth: Synth, env: str) -> None:
    fleet = synth.configs[env].fleet
    template = synth.template(env, "Service")
    template.has_resource_properties(
        "AWS::AutoScaling::AutoScalingGroup",
        {
            "MinSize": str(fleet.min_capacity),
            "MaxSize": str(fleet.max_capacity),
            "HealthCheckType": "ELB",
            "HealthCheckGracePeriod": fleet.health_check_grace_seconds,
            "TargetGroupARNs": [{"Ref": Match.any_value()}],
            "VPCZoneIdentifier": Match.array_with(
                [{"Fn::ImportValue": Match.string_like_regexp("AppSubnet")}]
            ),
        },
    )


def test_instance_role_has_session_manager_and_no_admin(synth: Synth) -> None:
    template = synth.template("production", "Service")
    roles = template.find_resources(
        "AWS::IAM::Role", {"Properties": {"Description": "Humansa ML server instances"}}
    )
    assert len(roles) == 1
    # No managed policy: AmazonSSMManagedInstanceCore would allow reading every SSM parameter.
    assert "ManagedPolicyArns" not in next(iter(roles.values()))["Properties"]
    template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Sid": "SessionManager",
                                "Action": Match.array_with(
                                    [
                                        "ssm:UpdateInstanceInformation",
                                        "ssmmessages:CreateControlChannel",
                                        "ssmmessages:OpenDataChannel",
                                    ]
                                ),
                                "Resource": "*",
                            }
                        )
                    ]
                )
            }
        },
    )
    policy = json.dumps(synth.template_json("production", "Service"))
    for action in (
        "secretsmanager:GetSecretValue",
        "ssm:GetParameters",
        "ecr:BatchGetImage",
        "logs:PutLogEvents",
    ):
        assert action in policy
    assert '"Action": "*"' not in policy


def _rules(template: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::EC2::SecurityGroup":
            rules.extend(props.get("SecurityGroupIngress", []))
        elif resource["Type"] == "AWS::EC2::SecurityGroupIngress":
            rules.append(props)
    return rules


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_security_group_rules(synth: Synth, env: str) -> None:
    template = synth.template(env, "Service")
    # Internet -> ALB on 80 only.
    template.has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {
            "GroupDescription": Match.string_like_regexp("Humansa ALB"),
            "SecurityGroupIngress": [
                Match.object_like({"CidrIp": "0.0.0.0/0", "FromPort": 80, "ToPort": 80})
            ],
        },
    )
    # ALB -> instances on 5001 only.
    template.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {
            "IpProtocol": "tcp",
            "FromPort": 5001,
            "ToPort": 5001,
            "GroupId": {"Fn::GetAtt": [Match.string_like_regexp("FleetSecurityGroup"), "GroupId"]},
            "SourceSecurityGroupId": {
                "Fn::GetAtt": [Match.string_like_regexp("LoadBalancerSecurityGroup"), "GroupId"]
            },
        },
    )
    # Instances -> database on 5432 only.
    template.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {
            "IpProtocol": "tcp",
            "FromPort": 5432,
            "ToPort": 5432,
            "GroupId": {"Fn::ImportValue": Match.string_like_regexp("DatabaseSecurityGroup")},
            "SourceSecurityGroupId": {
                "Fn::GetAtt": [Match.string_like_regexp("FleetSecurityGroup"), "GroupId"]
            },
        },
    )
    rules = _rules(synth.template_json(env, "Service"))
    assert sorted((r["FromPort"], r["ToPort"]) for r in rules) == [
        (80, 80),
        (5001, 5001),
        (5432, 5432),
    ]


def test_nothing_open_on_port_22(synth: Synth) -> None:
    for path in synth.template_files():
        for rule in _rules(json.loads(path.read_text())):
            if rule.get("IpProtocol") == "-1":
                assert "CidrIp" in rule and rule["CidrIp"] != "0.0.0.0/0", path.name
                continue
            assert not rule["FromPort"] <= 22 <= rule["ToPort"], (path.name, rule)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_log_groups(synth: Synth, env: str) -> None:
    template = synth.template(env, "Service")
    policy = "Retain" if env == "production" else "Delete"
    for name, days in ((f"/aws/ec2/humansa-ml/{env}", 30), (f"/aws/ec2/humansa-ml/{env}/setup", 7)):
        template.has_resource(
            "AWS::Logs::LogGroup",
            {
                "DeletionPolicy": policy,
                "Properties": {"LogGroupName": name, "RetentionInDays": days},
            },
        )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_service_parameters(synth: Synth, env: str) -> None:
    template = synth.template(env, "Service")
    values: dict[str, Any] = {
        "alb_dns_name": {"Fn::GetAtt": [Match.any_value(), "DNSName"]},
        "asg_name": {"Ref": Match.string_like_regexp("FleetGroupASG")},
        "ml_tg_arn": {"Ref": Match.string_like_regexp("LoadBalancerTargetGroup")},
        "vpc_id": {"Fn::ImportValue": Match.string_like_regexp("Vpc")},
        "ml_server_image_tag": "latest",
    }
    for name, value in values.items():
        template.has_resource_properties(
            "AWS::SSM::Parameter",
            {"Name": f"/humansa/{env}/{name}", "Type": "String", "Value": value},
        )
    template.resource_count_is("AWS::SSM::Parameter", len(values))


def test_user_data_boots_the_asset_image(synth: Synth) -> None:
    template = synth.template_json("dev", "Service")
    (launch_template,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"
    ]
    user_data = json.dumps(launch_template["Properties"]["LaunchTemplateData"]["UserData"])
    assert "cdk-hnb659fds-container-assets-992382528744-ap-east-1" in user_data
    assert "docker pull" in user_data
    assert "PARAM_PATH='/humansa/dev/'" in user_data
    assert "fetch DB_PASSWORD " in user_data


def test_image_asset_matches_architecture(synth: Synth) -> None:
    assets = json.loads((synth.outdir / "Humansa-Dev-Service.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    assert image["source"]["platform"] == "linux/arm64"
    assert image["source"]["directory"].startswith("asset.")
    copied = synth.outdir / image["source"]["directory"]
    assert (copied / "Dockerfile").exists()
    assert not list(copied.rglob("__pycache__")) and not (copied / "tests").exists()


def test_image_tag_context_overrides_config(tmp_path: Any) -> None:
    app = App(
        outdir=str(tmp_path),
        context={**cdk_context(), "env": "dev", "image_tag": "release-1.2.3"},
    )
    (dev,) = build_app(app)
    Template.from_stack(dev.service).has_resource_properties(
        "AWS::SSM::Parameter",
        {"Name": "/humansa/dev/ml_server_image_tag", "Value": "release-1.2.3"},
    )


def test_metrics_are_not_reachable_through_the_alb(synth: Synth) -> None:
    for env in ("dev", "production"):
        synth.template(env, "Service").has_resource_properties(
            "AWS::ElasticLoadBalancingV2::ListenerRule",
            {
                "Priority": 1,
                "Conditions": [
                    {
                        "Field": "path-pattern",
                        "PathPatternConfig": {"Values": ["/metrics", "/metrics/*"]},
                    }
                ],
                "Actions": [
                    Match.object_like(
                        {
                            "Type": "fixed-response",
                            "FixedResponseConfig": Match.object_like({"StatusCode": "404"}),
                        }
                    )
                ],
            },
        )


def test_synth_summary_says_which_environments_serve_plain_http(synth: Synth) -> None:
    """GIVEN the configs (no certificate anywhere) THEN the synth summary warns loudly for
    production and notes dev and staging, and still succeeds (a fresh clone can synthesize)."""
    result = subprocess.run(
        [sys.executable, "-m", "humansa_ops.synth_summary", str(synth.outdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.splitlines()
    (production,) = [line for line in lines if "Humansa-Production-Service" in line and ":" in line]
    assert production.startswith("WARNING: Humansa-Production-Service would serve bearer keys")
    assert "PLAIN HTTP (port 80)" in production and "service.allow_plain_http" in production
    for env in ("Dev", "Staging"):
        (note,) = [line for line in lines if line.startswith(f"note: Humansa-{env}-Service")]
        assert "plain HTTP on port 80 (allowed outside production" in note


def test_certificate_gives_https_and_http_only_redirects() -> None:
    """GIVEN service.certificate_arn THEN 443 serves HTTPS with the certificate and a modern
    policy, and 80 answers only with a permanent redirect to 443 (no forward on HTTP)."""
    config = load_environment("production")
    service = config.service.model_copy(
        update={"certificate_arn": "arn:aws:acm:ap-east-1:992382528744:certificate/abc-123"}
    )
    app = App(context=cdk_context())
    stack = Stack(app, "Tls", env=Environment(account=config.account, region=config.region))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    LoadBalancer(
        stack,
        "LoadBalancer",
        config=service,
        vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
        environment="production",
    )
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::ElasticLoadBalancingV2::Listener", 2)
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {
            "Port": 443,
            "Protocol": "HTTPS",
            "Certificates": [{"CertificateArn": service.certificate_arn}],
            "SslPolicy": Match.string_like_regexp("TLS13"),
            "DefaultActions": [Match.object_like({"Type": "forward"})],
        },
    )
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {
            "Port": 80,
            "Protocol": "HTTP",
            "DefaultActions": [
                {
                    "Type": "redirect",
                    "RedirectConfig": {
                        "Port": "443",
                        "Protocol": "HTTPS",
                        "StatusCode": "HTTP_301",
                    },
                }
            ],
        },
    )
    assert synth_summary.plain_http_listeners(dict(template.to_json())) == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_server_keep_alive_outlasts_alb_idle_timeout(
    synth: Synth, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN the synthesized ALB and launch template THEN the keep-alive the boot hands the
    server, read by the server's own settings and passed to uvicorn, is longer than the ALB's
    idle timeout (else the target closes a connection the ALB reuses: a 502), and both come from
    service.idle_timeout_seconds."""
    import signal

    import uvicorn

    from ml_server import __main__ as server_main
    from ml_server.config import load_settings

    template = synth.template_json(env, "Service")
    (alb,) = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer"
    ]
    attributes = {a["Key"]: a["Value"] for a in alb["Properties"]["LoadBalancerAttributes"]}
    idle = int(attributes["idle_timeout.timeout_seconds"])
    assert idle == synth.configs[env].service.idle_timeout_seconds
    (launch_template,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"
    ]
    user_data = json.dumps(launch_template["Properties"]["LaunchTemplateData"]["UserData"])
    (value,) = set(re.findall(r"-e KEEP_ALIVE_SECONDS=(\d+) ", user_data))

    monkeypatch.setenv("KEEP_ALIVE_SECONDS", value)
    settings = load_settings(secrets_dir="/nonexistent")
    captured: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(kwargs))
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    server_main.cmd_serve(settings, local=False)
    assert captured["timeout_keep_alive"] == int(value)
    assert captured["timeout_keep_alive"] > idle


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_fleet_ami_is_the_recorded_one(synth: Synth, env: str) -> None:
    """GIVEN config/amis.json THEN the launch template names that AMI literally: no SSM
    parameter re-resolved at each deploy, so only `make ami` (a reviewed diff) refreshes the
    fleet."""
    config = synth.configs[env]
    template = synth.template_json(env, "Service")
    (launch_template,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"
    ]
    image = launch_template["Properties"]["LaunchTemplateData"]["ImageId"]
    assert image == recorded_ami_id(config.region, config.fleet.architecture)
    for stack in ("Network", "Data", "Service"):
        parameters = synth.template_json(env, stack).get("Parameters", {})
        assert not [
            name for name, p in parameters.items() if "ami-amazon-linux" in str(p.get("Default"))
        ], (env, stack)
