"""VPC: public / application / data subnets, NAT per config, endpoints and flow logs."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from components.acks import acknowledge
from components.ami import recorded_image
from config.model import VpcConfig

PUBLIC = "Public"
APP = "App"
NAT_ROOT_VOLUME_GIB = 8  # the AL2023 AMI snapshot size
DATA = "Data"

# The NAT instance's setup (replaces CDK's default user data, which runs `yum install` once and
# gives up if the public route is not there yet). Bounded retries, then loud failure in the log.
NAT_SETUP_ATTEMPTS = 30
NAT_SETUP_BACKOFF_SECONDS = 10
NAT_USER_DATA = f"""#!/bin/bash
# Humansa dev NAT instance: forward and masquerade the VPC's traffic (iptables).
set -uo pipefail
log() {{ echo "humansa-nat: $*" | tee -a /var/log/humansa-nat.log; }}
for attempt in $(seq 1 {NAT_SETUP_ATTEMPTS}); do
  # The public route (to the internet gateway) may still be in the making: retry, bounded.
  if dnf install -y iptables-services; then break; fi
  log "package install failed (attempt $attempt/{NAT_SETUP_ATTEMPTS}); retrying"
  sleep {NAT_SETUP_BACKOFF_SECONDS}
done
rpm -q iptables-services >/dev/null || {{ log "FATAL: iptables-services not installed"; exit 1; }}
iface=$(ip -o route show default | awk '{{print $5; exit}}')
[ -n "$iface" ] || {{ log "FATAL: no default route"; exit 1; }}
echo "net.ipv4.ip_forward=1" > /etc/sysctl.d/90-humansa-nat.conf
sysctl -p /etc/sysctl.d/90-humansa-nat.conf
systemctl enable --now iptables
iptables -t nat -A POSTROUTING -o "$iface" -j MASQUERADE
iptables -F FORWARD
service iptables save
log "NAT ready on $iface"
"""

# Interface endpoints the fleet needs when it has no (or should not use) internet egress.
_INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
}


class Network(Construct):
    """The environment's VPC.

    Subnet groups: ``Public`` (ALB, NAT), ``App`` (the fleet; private with egress, or isolated
    when ``nat`` is ``none``) and ``Data`` (RDS, always isolated).

    Args:
        config: the ``vpc`` section.
        retain_logs: keep the flow-log group when the stack is deleted. Default false.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, config: VpcConfig, retain_logs: bool = False
    ) -> None:
        super().__init__(scope, construct_id)
        nat_provider: ec2.NatProvider | None = None
        nat_gateways = {"gateway-per-az": config.max_azs, "single-gateway": 1}.get(config.nat, 0)
        if config.nat == "nat-instance":
            # Our own fck-nat style NAT: AL2023 on Graviton, configured by CDK's default user
            # data (iptables masquerade); no third-party AMI.
            nat_provider = ec2.NatProvider.instance_v2(
                instance_type=ec2.InstanceType("t4g.nano"),
                machine_image=recorded_image(Stack.of(self).region, "arm64"),
                default_allowed_traffic=ec2.NatTrafficDirection.OUTBOUND_ONLY,
                user_data=ec2.UserData.custom(NAT_USER_DATA),
            )
            nat_gateways = 1
        app_type = (
            ec2.SubnetType.PRIVATE_ISOLATED
            if config.nat == "none"
            else ec2.SubnetType.PRIVATE_WITH_EGRESS
        )
        self.flow_log_group = logs.LogGroup(
            self,
            "FlowLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.RETAIN if retain_logs else RemovalPolicy.DESTROY,
        )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.cidr),
            max_azs=config.max_azs,
            nat_gateways=nat_gateways,
            nat_gateway_provider=nat_provider,
            restrict_default_security_group=True,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name=PUBLIC, subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                ec2.SubnetConfiguration(name=APP, subnet_type=app_type, cidr_mask=22),
                ec2.SubnetConfiguration(
                    name=DATA, subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                ),
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.S3,
                    subnets=[ec2.SubnetSelection(subnet_group_name=APP)],
                )
            },
            flow_logs={
                "FlowLog": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_log_group),
                    traffic_type=ec2.FlowLogTrafficType.REJECT,
                )
            },
        )
        self.nat_provider = nat_provider
        if isinstance(nat_provider, ec2.NatInstanceProviderV2):
            nat_provider.connections.allow_from(
                ec2.Peer.ipv4(config.cidr),
                ec2.Port.all_traffic(),
                "NAT for the VPC's private subnets",
            )
            for instance in self.vpc.node.find_all():
                if isinstance(instance, ec2.Instance):
                    # Start only once the public subnets route to the internet gateway.
                    for subnet in self.vpc.public_subnets:
                        instance.node.add_dependency(subnet.internet_connectivity_established)
                    # The provider exposes no block-device setting: encrypt the root volume here.
                    cfn_instance = instance.node.default_child
                    assert isinstance(cfn_instance, ec2.CfnInstance)
                    cfn_instance.metadata_options = ec2.CfnInstance.MetadataOptionsProperty(
                        http_tokens="required",
                        http_endpoint="enabled",
                        http_put_response_hop_limit=1,
                    )
                    cfn_instance.block_device_mappings = [
                        ec2.CfnInstance.BlockDeviceMappingProperty(
                            device_name="/dev/xvda",
                            ebs=ec2.CfnInstance.EbsProperty(
                                encrypted=True,
                                volume_type="gp3",
                                volume_size=NAT_ROOT_VOLUME_GIB,
                                delete_on_termination=True,
                            ),
                        )
                    ]
                    acknowledge(
                        instance,
                        "CloudFormation-Validate::W9010",
                        "The AMI ID is recorded on purpose (config/amis.json, changed by `make "
                        "ami`): a parameter resolved at each deploy would replace this instance "
                        "whenever AWS publishes a new AMI.",
                    )
                    acknowledge(
                        instance,
                        "AwsSolutions-EC28",
                        "NAT instance: basic 5-minute monitoring is enough for a dev egress box.",
                    )
                    acknowledge(
                        instance,
                        "AwsSolutions-EC29",
                        "NAT instance: replaceable by redeploying, holds no state, so no "
                        "termination protection or ASG.",
                    )
        self.app_subnets = ec2.SubnetSelection(subnet_group_name=APP)
        self.data_subnets = ec2.SubnetSelection(subnet_group_name=DATA)
        self.public_subnets = ec2.SubnetSelection(subnet_group_name=PUBLIC)
        if config.interface_endpoints:
            self.endpoint_security_group = ec2.SecurityGroup(
                self,
                "EndpointSecurityGroup",
                vpc=self.vpc,
                description="Interface endpoints: HTTPS from inside the VPC",
                allow_all_outbound=False,
            )
            self.endpoint_security_group.add_ingress_rule(
                ec2.Peer.ipv4(config.cidr), ec2.Port.tcp(443), "HTTPS from the VPC"
            )
            for endpoint_id, service in _INTERFACE_ENDPOINTS.items():
                self.vpc.add_interface_endpoint(
                    endpoint_id,
                    service=service,
                    subnets=self.app_subnets,
                    private_dns_enabled=True,
                    security_groups=[self.endpoint_security_group],
                    open=False,
                )
