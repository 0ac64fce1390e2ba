"""One small app for the monitoring tests (synthesized once per session).

It stands in for the foundation's stacks: a VPC, an ALB with a target group and an Auto Scaling
group, a PostgreSQL instance in a second stack (so the alarms use cross-stack references).
(Rotation and audit are tested on the real Data and CI stacks of the shared synth.)
cdk-nag runs on all of it; the stand-in resources' findings are
acknowledged here, so whatever is left would come from our constructs (synth raises on any).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from aws_cdk import Acknowledgment, App, Stack, Validations
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_rds as rds
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks

from components.monitoring import ServiceMonitoring
from config.monitoring import AlarmThresholds, MonitoringConfig

ENVIRONMENT = "staging"
AGENT_NAMESPACE = f"humansa-ml/{ENVIRONMENT}"
# Non-default values, so the tests prove the config reaches the template.
MONITORING = MonitoringConfig(
    alarm_email="ops@example.com",
    thresholds=AlarmThresholds(target_p95_latency_seconds=45, rds_connections=60),
)


def _acknowledge(scope: Stack, *findings: tuple[str, str]) -> None:
    for finding_id, reason in findings:
        Validations.of(scope).acknowledge(Acknowledgment(id=finding_id, reason=reason))


STAND_IN = "Test stand-in for a foundation resource; the foundation's own stack handles this."


@dataclass(frozen=True)
class OpsApp:
    templates_dir: str
    network: Template
    service: Template
    data: Template
    monitoring: ServiceMonitoring


@cache
def ops_app() -> OpsApp:
    """Synthesizes the app once (about 5 s) and returns its templates."""
    # The foundation's launch template, not the legacy launch configuration (cfn-lint W3697).
    app = App(
        context={"@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig": True}
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))

    network = Stack(app, "OpsNetwork")
    vpc = ec2.Vpc(network, "Vpc", max_azs=2, nat_gateways=1)

    data = Stack(app, "OpsData")
    database = rds.DatabaseInstance(
        data,
        "Database",
        engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16_9),
        instance_type=ec2.InstanceType("t4g.micro"),
        vpc=vpc,
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        credentials=rds.Credentials.from_generated_secret("humansa"),
        storage_encrypted=True,
    )

    service = Stack(app, "OpsService")
    alb = elbv2.ApplicationLoadBalancer(service, "Alb", vpc=vpc, internet_facing=True)
    asg = autoscaling.AutoScalingGroup(
        service,
        "Fleet",
        vpc=vpc,
        instance_type=ec2.InstanceType("t4g.small"),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(
            cpu_type=ec2.AmazonLinuxCpuType.ARM_64
        ),
        require_imdsv2=True,
    )
    listener = alb.add_listener("Http", port=80)
    target_group = listener.add_targets(
        "Ml", port=5001, protocol=elbv2.ApplicationProtocol.HTTP, targets=[asg]
    )
    monitoring = ServiceMonitoring(
        service,
        "Monitoring",
        environment=ENVIRONMENT,
        load_balancer=alb,
        target_group=target_group,
        auto_scaling_group=asg,
        database=database,
        config=MONITORING,
        agent_namespace=AGENT_NAMESPACE,
    )

    _acknowledge(network, ("AwsSolutions-VPC7", STAND_IN))
    _acknowledge(
        service,
        ("AwsSolutions-ELB2", STAND_IN),
        ("AwsSolutions-EC23", STAND_IN),
        ("AwsSolutions-AS3", STAND_IN),
        ("AwsSolutions-EC26", STAND_IN),
    )
    _acknowledge(
        data,
        ("AwsSolutions-RDS3", STAND_IN),
        ("AwsSolutions-RDS10", STAND_IN),
        ("AwsSolutions-RDS11", STAND_IN),
        ("AwsSolutions-SMG4", STAND_IN),
    )
    # Runs cdk-nag: raises ValidationFailed on any unacknowledged finding.
    assembly = app.synth()
    return OpsApp(
        templates_dir=assembly.directory,
        network=Template.from_stack(network),
        service=Template.from_stack(service),
        data=Template.from_stack(data),
        monitoring=monitoring,
    )
