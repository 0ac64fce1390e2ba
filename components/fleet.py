"""The Auto Scaling group that runs the server container on Amazon Linux 2023."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from components.acks import acknowledge
from components.boot import BootSettings, render_user_data
from config.model import FleetConfig

_CPU = {"arm64": ec2.AmazonLinuxCpuType.ARM_64, "x86_64": ec2.AmazonLinuxCpuType.X86_64}


class Fleet(Construct):
    """Launch template + ASG in the app subnets.

    IMDSv2 only with hop limit 1 (the container cannot reach the instance role), encrypted gp3
    root volume, no SSH key (Session Manager instead), ELB health checks with a grace period.

    Attributes:
        auto_scaling_group: the ``AutoScalingGroup``.
        launch_template: the ``LaunchTemplate``.
        role: the instance role (grants are added by the stack).
        security_group: the instances' security group.

    Args:
        config: the ``fleet`` section.
        vpc: the environment VPC.
        subnets: where instances run (the ``App`` subnets).
        boot: settings for the rendered boot script.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FleetConfig,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        boot: BootSettings,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Humansa ML server instances",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")
            ],
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
            "AmazonSSMManagedInstanceCore]",
            "AWS-maintained Session Manager policy: replaces SSH (no key pair, no port 22) and "
            "tracks the SSM agent's needs as AWS changes them.",
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Humansa ML server instances: container port from the ALB only",
            allow_all_outbound=True,
        )
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=ec2.MachineImage.latest_amazon_linux2023(
                cpu_type=_CPU[config.architecture]
            ),
            instance_type=ec2.InstanceType(config.instance_type),
            role=self.role,
            security_group=self.security_group,
            user_data=ec2.UserData.custom(render_user_data(boot)),
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        config.root_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        self.auto_scaling_group = autoscaling.AutoScalingGroup(
            self,
            "Group",
            vpc=vpc,
            vpc_subnets=subnets,
            launch_template=self.launch_template,
            min_capacity=config.min_capacity,
            # Left unset when equal to min so a deploy does not reset a scaled-out group.
            desired_capacity=(
                config.desired_capacity if config.desired_capacity != config.min_capacity else None
            ),
            max_capacity=config.max_capacity,
            health_checks=autoscaling.HealthChecks.with_additional_checks(
                additional_types=[autoscaling.AdditionalHealthCheckType.ELB],
                grace_period=Duration.seconds(config.health_check_grace_seconds),
            ),
        )
        if config.desired_capacity != config.min_capacity:
            acknowledge(
                self.auto_scaling_group,
                "Annotation::@aws-cdk/aws-autoscaling:desiredCapacitySet",
                "fleet.desired_capacity is set on purpose in config; each deploy resets it.",
            )
        acknowledge(
            self.auto_scaling_group,
            "AwsSolutions-AS3",
            "Scaling events are visible in the ASG activity history and CloudWatch; SNS "
            "notifications arrive with the alarms work.",
        )
