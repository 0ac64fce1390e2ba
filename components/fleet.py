"""The Auto Scaling group that runs the server container on Amazon Linux 2023."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from components.acks import acknowledge
from components.ami import recorded_image
from components.boot import BootSettings, lifecycle_heartbeat_seconds, render_user_data
from config.model import FleetConfig, RolloutConfig, ScalingConfig

_CPU = {"arm64": ec2.AmazonLinuxCpuType.ARM_64, "x86_64": ec2.AmazonLinuxCpuType.X86_64}


class Fleet(Construct):
    """Launch template + ASG in the app subnets.

    IMDSv2 only with hop limit 1 (the container cannot reach the instance role), encrypted gp3
    root volume, no SSH key (Session Manager instead), ELB health checks with a grace period.
    With ``config.spot`` a mixed-instances policy (on-demand base, spot above it over several
    types of the architecture, price-capacity-optimized, capacity rebalance). Rollout: the
    CloudFormation instance-refresh update policy (min healthy 100 %, max healthy 200 %, skip
    matching, the given alarms, bake time, warm-up); the group's default instance warm-up is
    the same, so scaling metrics ignore instances that are still booting.

    Launch hook: with ``boot.lifecycle_hook_name`` set, the group (named
    ``boot.auto_scaling_group_name``) holds every new instance in ``Pending:Wait`` until its
    boot completes the hook: CONTINUE after the local health path answered, ABANDON on a fatal
    boot; the default result is ABANDON and the heartbeat covers the boot budget
    (``lifecycle_heartbeat_seconds``). The group registers an instance with its target group only
    after the hook, so the target group and the refresh alarms never see a booting instance.

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
        rollout: the ``rollout`` section.
        refresh_alarm_names: CloudWatch alarms that fail an instance refresh (at most 10).
            Names, not objects: the alarms watch this group, so they are created after it;
            the stack adds the dependency on the real alarms.
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
        rollout: RolloutConfig,
        refresh_alarm_names: Sequence[str],
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Humansa ML server instances",
        )
        # Session Manager (instead of SSH) needs only these; AmazonSSMManagedInstanceCore would
        # also grant ssm:GetParameter(s) on every parameter of the account.
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="SessionManager",
                actions=[
                    "ssm:UpdateInstanceInformation",
                    "ssmmessages:CreateControlChannel",
                    "ssmmessages:CreateDataChannel",
                    "ssmmessages:OpenControlChannel",
                    "ssmmessages:OpenDataChannel",
                ],
                resources=["*"],
            )
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
            machine_image=recorded_image(Stack.of(self).region, config.architecture),
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
        if len(refresh_alarm_names) > 10:
            raise ValueError("Fleet: an instance refresh takes at most 10 alarms")
        refresh_alarms = [
            cloudwatch.Alarm.from_alarm_name(self, f"RefreshAlarm{index}", name)
            for index, name in enumerate(refresh_alarm_names)
        ]
        warmup = Duration.seconds(rollout.instance_warmup_seconds)
        update_policy = autoscaling.UpdatePolicy.instance_refresh(
            strategy=autoscaling.InstanceRefreshStrategy.ROLLING,
            min_healthy_percentage=100,
            max_healthy_percentage=200,
            skip_matching=True,
            alarms=refresh_alarms,
            bake_time=Duration.minutes(rollout.bake_time_minutes),
            instance_warmup=warmup,
            checkpoint_percentages=list(rollout.checkpoint_percentages) or None,
            checkpoint_delay=(
                Duration.minutes(rollout.checkpoint_delay_minutes)
                if rollout.checkpoint_percentages
                else None
            ),
        )
        mixed: autoscaling.MixedInstancesPolicy | None = None
        if config.spot:
            mixed = autoscaling.MixedInstancesPolicy(
                launch_template=self.launch_template,
                launch_template_overrides=[
                    autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
                    for t in config.all_instance_types
                ],
                instances_distribution=autoscaling.InstancesDistribution(
                    on_demand_base_capacity=config.on_demand_base_capacity,
                    on_demand_percentage_above_base_capacity=(
                        config.on_demand_percentage_above_base
                    ),
                    on_demand_allocation_strategy=autoscaling.OnDemandAllocationStrategy.PRIORITIZED,
                    spot_allocation_strategy=(
                        autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED
                    ),
                ),
            )
        self.auto_scaling_group = autoscaling.AutoScalingGroup(
            self,
            "Group",
            vpc=vpc,
            vpc_subnets=subnets,
            launch_template=None if mixed else self.launch_template,
            mixed_instances_policy=mixed,
            capacity_rebalance=True if config.spot else None,
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
            default_instance_warmup=warmup,
            update_policy=update_policy,
        )
        if bool(boot.lifecycle_hook_name) != bool(boot.auto_scaling_group_name):
            raise ValueError("Fleet: boot.lifecycle_hook_name needs boot.auto_scaling_group_name")
        if boot.lifecycle_hook_name:
            cfn_group = self.auto_scaling_group.node.default_child
            assert isinstance(cfn_group, autoscaling.CfnAutoScalingGroup)
            cfn_group.auto_scaling_group_name = boot.auto_scaling_group_name
            # On the group itself (not a separate LifecycleHook resource), so even the first
            # instances, launched while CloudFormation creates the group, wait for their boot.
            cfn_group.lifecycle_hook_specification_list = [
                autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty(
                    lifecycle_hook_name=boot.lifecycle_hook_name,
                    lifecycle_transition="autoscaling:EC2_INSTANCE_LAUNCHING",
                    default_result="ABANDON",
                    heartbeat_timeout=lifecycle_heartbeat_seconds(boot),
                )
            ]
        if config.desired_capacity != config.min_capacity:
            acknowledge(
                self.auto_scaling_group,
                "Annotation::@aws-cdk/aws-autoscaling:desiredCapacitySet",
                "fleet.desired_capacity is set on purpose in config; each deploy resets it.",
            )
        if mixed is not None:
            acknowledge(
                self.auto_scaling_group,
                "AwsSolutions::AwsSolutions-EC26",
                "cdk-nag cannot follow the launch template inside a MixedInstancesPolicy (the "
                "rule errors); that template's only volume is an encrypted gp3 root volume, "
                "asserted by tests/test_fleet_wiring.py.",
            )
        acknowledge(
            self.auto_scaling_group,
            "AwsSolutions-AS3",
            "Scaling events are visible in the ASG activity history and CloudWatch; SNS "
            "notifications arrive with the alarms work.",
        )

    def add_target_tracking(self, config: ScalingConfig) -> None:
        """Scale between the group's bounds on ALB requests per target and on CPU.

        Call after the group is attached to its target group. Each policy scales out when
        its metric is above target and in only when both are below (EC2 Auto Scaling's rule
        for several target-tracking policies). The warm-up is the group's default instance
        warm-up (``rollout.instance_warmup_seconds``).
        """
        if not config.enabled:
            return
        group = self.auto_scaling_group
        group.scale_on_request_count(
            "RequestsPerTarget",
            target_requests_per_minute=config.requests_per_target_per_minute,
        )
        group.scale_on_cpu_utilization(
            "Cpu",
            target_utilization_percent=config.cpu_target_percent,
        )
