"""Network stack: subnets, NAT mode, endpoints and flow logs per environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import App, Environment
from aws_cdk.assertions import Match, Template

from components.ami import recorded_ami_id
from config import load_environment
from stacks.network_stack import NetworkStack
from tests.conftest import Synth, cdk_context


@pytest.mark.parametrize("env", ["dev", "staging", "production"])
def test_three_subnet_tiers_in_two_azs(synth: Synth, env: str) -> None:
    template = synth.template(env, "Network")
    template.resource_count_is("AWS::EC2::Subnet", 6)
    for tier, subnet_type in (("Public", "Public"), ("App", "Private"), ("Data", "Isolated")):
        subnets = template.find_resources(
            "AWS::EC2::Subnet",
            {
                "Properties": {
                    "Tags": Match.array_with(
                        [
                            {"Key": "aws-cdk:subnet-name", "Value": tier},
                            {"Key": "aws-cdk:subnet-type", "Value": subnet_type},
                        ]
                    )
                }
            },
        )
        assert len(subnets) == 2, (env, tier)
    template.has_resource_properties(
        "AWS::EC2::Subnet",
        {"MapPublicIpOnLaunch": True, "AvailabilityZone": "ap-east-1a"},
    )
    template.has_resource_properties("AWS::EC2::VPC", {"CidrBlock": synth.configs[env].vpc.cidr})


def test_dev_uses_one_nat_instance_on_graviton(synth: Synth) -> None:
    template = synth.template("dev", "Network")
    template.resource_count_is("AWS::EC2::NatGateway", 0)
    template.resource_count_is("AWS::EC2::Instance", 1)
    template.has_resource_properties(
        "AWS::EC2::Instance",
        {
            "InstanceType": "t4g.nano",
            "SourceDestCheck": False,
            "ImageId": recorded_ami_id("ap-east-1", "arm64"),
            "BlockDeviceMappings": [
                {"DeviceName": "/dev/xvda", "Ebs": Match.object_like({"Encrypted": True})}
            ],
        },
    )
    # Private subnets route to the NAT instance, not to a gateway.
    template.has_resource_properties(
        "AWS::EC2::Route",
        {"DestinationCidrBlock": "0.0.0.0/0", "InstanceId": Match.any_value()},
    )
    # The NAT instance accepts traffic from inside the VPC only.
    template.has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {
            "SecurityGroupIngress": [
                Match.object_like({"CidrIp": synth.configs["dev"].vpc.cidr, "IpProtocol": "-1"})
            ]
        },
    )


@pytest.mark.parametrize("env", ["staging"])
def test_single_nat_gateway(synth: Synth, env: str) -> None:
    template = synth.template(env, "Network")
    template.resource_count_is("AWS::EC2::NatGateway", 1)
    template.resource_count_is("AWS::EC2::Instance", 0)


@pytest.mark.parametrize("env", ["dev", "staging", "production"])
def test_s3_gateway_endpoint_flow_logs_no_interface_endpoints(synth: Synth, env: str) -> None:
    template = synth.template(env, "Network")
    template.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "ServiceName": {"Fn::Join": ["", Match.array_with([".s3"])]},
            "VpcEndpointType": "Gateway",
        },
    )
    template.resource_count_is("AWS::EC2::VPCEndpoint", 1)
    template.has_resource_properties(
        "AWS::EC2::FlowLog", {"ResourceType": "VPC", "TrafficType": "REJECT"}
    )


def test_termination_protection_only_on_production_stateful_stacks(synth: Synth) -> None:
    for env, stacks in synth.stacks.items():
        assert stacks.network.termination_protection is (env == "production")
        assert stacks.data.termination_protection is (env == "production")
        assert stacks.service.termination_protection is False


def test_nat_none_puts_fleet_in_isolated_subnets_with_endpoints() -> None:
    config = load_environment("staging")
    config = config.model_copy(
        update={"vpc": config.vpc.model_copy(update={"nat": "none", "interface_endpoints": True})}
    )
    app = App(context=cdk_context())
    stack = NetworkStack(
        app,
        "NatNone",
        config=config,
        env=Environment(account=config.account, region=config.region),
    )
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::EC2::NatGateway", 0)
    template.resource_count_is("AWS::EC2::Instance", 0)
    app_subnets = template.find_resources(
        "AWS::EC2::Subnet",
        {
            "Properties": {
                "Tags": Match.array_with(
                    [
                        {"Key": "aws-cdk:subnet-name", "Value": "App"},
                        {"Key": "aws-cdk:subnet-type", "Value": "Isolated"},
                    ]
                )
            }
        },
    )
    assert len(app_subnets) == 2
    services = [
        ".ssm",
        ".ssmmessages",
        ".ec2messages",
        ".secretsmanager",
        ".ecr.api",
        ".ecr.dkr",
        ".logs",
        ".monitoring",
    ]
    for suffix in services:
        template.has_resource_properties(
            "AWS::EC2::VPCEndpoint",
            {
                "ServiceName": Match.string_like_regexp(rf"^com\.amazonaws\.ap-east-1\{suffix}$"),
                "VpcEndpointType": "Interface",
                "PrivateDnsEnabled": True,
            },
        )
    template.resource_count_is("AWS::EC2::VPCEndpoint", len(services) + 1)


def test_nat_instance_ami_is_recorded_and_not_resolved_at_deploy(synth: Synth) -> None:
    template = synth.template_json("dev", "Network")
    (nat,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::Instance"]
    assert nat["Properties"]["ImageId"] == recorded_ami_id("ap-east-1", "arm64")
    assert "ami-amazon-linux" not in json.dumps(template.get("Parameters", {}))


def test_production_egress_survives_one_az(synth: Synth) -> None:
    """GIVEN production THEN each AZ has its own NAT gateway and each App subnet routes to the
    gateway of its own AZ, so losing one AZ leaves the other AZ's instances their egress."""
    template = synth.template_json("production", "Network")
    resources = template["Resources"]
    gateways = {lid: r for lid, r in resources.items() if r["Type"] == "AWS::EC2::NatGateway"}
    assert len(gateways) == synth.configs["production"].vpc.max_azs == 2
    subnet_az = {
        lid: r["Properties"]["AvailabilityZone"]
        for lid, r in resources.items()
        if r["Type"] == "AWS::EC2::Subnet"
    }
    gateway_az = {lid: subnet_az[g["Properties"]["SubnetId"]["Ref"]] for lid, g in gateways.items()}
    assert sorted(gateway_az.values()) == ["ap-east-1a", "ap-east-1b"]
    tables = {
        r["Properties"]["RouteTableId"]["Ref"]: subnet_az[r["Properties"]["SubnetId"]["Ref"]]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::SubnetRouteTableAssociation"
        and "AppSubnet" in r["Properties"]["SubnetId"]["Ref"]
    }
    routes = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::Route" and r["Properties"]["RouteTableId"]["Ref"] in tables
    ]
    assert len(routes) == 2
    for route in routes:
        assert gateway_az[route["NatGatewayId"]["Ref"]] == tables[route["RouteTableId"]["Ref"]]


def test_dev_nat_instance_requires_imdsv2_retries_and_waits_for_the_route(synth: Synth) -> None:
    template = synth.template_json("dev", "Network")
    resources = template["Resources"]
    (nat,) = [r for r in resources.values() if r["Type"] == "AWS::EC2::Instance"]
    assert nat["Properties"]["MetadataOptions"] == {
        "HttpEndpoint": "enabled",
        "HttpPutResponseHopLimit": 1,
        "HttpTokens": "required",
    }
    user_data = nat["Properties"]["UserData"]["Fn::Base64"]
    assert "for attempt in $(seq 1 30)" in user_data and "FATAL" in user_data
    # Created only after every public subnet's default route to the internet gateway.
    public_routes = {
        k
        for k, r in resources.items()
        if r["Type"] == "AWS::EC2::Route" and "GatewayId" in r["Properties"] and "PublicSubnet" in k
    }
    assert len(public_routes) == 2
    assert public_routes <= set(nat.get("DependsOn", [])), nat.get("DependsOn")


def test_nat_instance_user_data_passes_shellcheck() -> None:
    from components.network import NAT_USER_DATA

    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [str(shellcheck), "-"], input=NAT_USER_DATA, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
