"""Service stack: image, ALB, fleet, provider secrets, logs, alarms and dashboard, parameters."""

from __future__ import annotations

from typing import Any

from aws_cdk import ArnFormat, CfnOutput, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from components.acks import acknowledge, arn_partition
from components.boot import (
    LAUNCH_HOOK_NAME,
    METRICS_NAMESPACE_PREFIX,
    RUNBOOK_PARAMETER_NAMES,
    BootSettings,
    SecretFile,
)
from components.database import DB_PORT
from components.fleet import Fleet
from components.image import ServerImage
from components.load_balancer import LoadBalancer, server_keep_alive_seconds
from components.logs import ServiceLogs
from components.monitoring import ServiceMonitoring
from components.network import Network
from components.parameters import Parameters
from components.secrets import ProviderSecrets, cfn_secret_name
from config import naming
from config.model import EnvironmentConfig
from stacks.data_stack import DataStack

REFRESH_ALARMS = ("Target5xxRate", "UnhealthyHosts")
"""``ServiceMonitoring`` alarms that fail an instance refresh (and roll the stack back)."""


def alarm_name(config: EnvironmentConfig, alarm_id: str) -> str:
    """The name ``ServiceMonitoring`` gives an alarm: ``Humansa-<Env>-<AlarmId>``."""
    return f"{naming.alarm_prefix(config.name)}-{alarm_id}"


def group_name(config: EnvironmentConfig) -> str:
    """The Auto Scaling group's fixed name, ``humansa-<env>-fleet`` (the boot completes its
    launch hook by name, and the instance role's grant names it)."""
    return f"humansa-{config.name}-fleet"


class ServiceStack(Stack):
    """``Humansa-<Env>-Service``.

    Attributes:
        image: ``ServerImage`` (``.asset`` or ``.cache_rule``, ``.image_uri``).
        provider_secrets: ``ProviderSecrets`` (``.secrets``: NAME -> placeholder secret).
        logs: ``ServiceLogs`` (``.app``, ``.setup``).
        load_balancer: ``LoadBalancer`` (``.alb``, ``.listener``, ``.target_group``).
        fleet: ``Fleet`` (``.auto_scaling_group``, ``.role``, ``.launch_template``).
        monitoring: ``ServiceMonitoring`` (``.topic``, ``.alarms``, ``.dashboard``).
        parameters: ``alb_dns_name``, ``asg_name``, ``ml_tg_arn``, ``vpc_id``,
            ``ml_server_image_tag`` under ``/humansa/<env>/``.

    Args:
        config: the environment.
        network: the environment's ``Network`` component.
        data: the environment's ``DataStack``.
        image_tag: release tag for ``ml_server_image_tag``. Default: ``config.image.tag``.
        **kwargs: passed to ``Stack``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: Network,
        data: DataStack,
        image_tag: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        database = data.database
        tag = image_tag or config.image.tag
        self.image = ServerImage(
            self,
            "Image",
            config=config.image,
            architecture=config.fleet.architecture,
            environment=config.name,
            ghcr_token=data.ghcr_token.secret,
            tag=tag,
            repository=config.ghcr_repository,
        )
        self.logs = ServiceLogs(
            self, "Logs", environment=config.name, retain=config.termination_protection
        )
        self.provider_secrets = ProviderSecrets(
            self, "ProviderSecrets", environment=config.name, retain=config.termination_protection
        )
        self.load_balancer = LoadBalancer(
            self,
            "LoadBalancer",
            config=config.service,
            vpc=network.vpc,
            subnets=network.public_subnets,
            environment=config.name,
        )
        boot = BootSettings(
            environment=config.name,
            region=config.region,
            parameter_path=config.parameter_path,
            image_uri=self.image.image_uri,
            registry=self.image.registry,
            secret_files={
                "DB_PASSWORD": SecretFile(
                    cfn_secret_name(data.app_user.generated_secret), "password"
                ),
                **self.provider_secrets.secret_files(),
            },
            app_log_group=self.logs.app.log_group_name,
            setup_log_group=self.logs.setup.log_group_name,
            container_port=config.service.container_port,
            health_path=config.service.health_path,
            keep_alive_seconds=server_keep_alive_seconds(config.service),
            auto_scaling_group_name=group_name(config),
            lifecycle_hook_name=LAUNCH_HOOK_NAME,
            # Only the ALB, inside the VPC, may set X-Forwarded-For (the CIDR the VPC is
            # created with, components/network.py).
            forwarded_allow_ips=config.vpc.cidr,
        )
        self.fleet = Fleet(
            self,
            "Fleet",
            config=config.fleet,
            vpc=network.vpc,
            subnets=network.app_subnets,
            boot=boot,
            rollout=config.rollout,
            refresh_alarm_names=[alarm_name(config, a) for a in REFRESH_ALARMS],
        )
        asg = self.fleet.auto_scaling_group
        self.load_balancer.target_group.add_target(asg)
        self.fleet.add_target_tracking(config.scaling)
        self.monitoring = ServiceMonitoring(
            self,
            "Monitoring",
            environment=config.name,
            load_balancer=self.load_balancer.alb,
            target_group=self.load_balancer.target_group,
            auto_scaling_group=asg,
            database=database.instance,
            config=config.monitoring,
            agent_namespace=METRICS_NAMESPACE_PREFIX + config.name,
        )
        # The refresh names its alarms (they watch this group, so they come after it); the
        # group waits for them, so an update that adds an alarm creates it before refreshing.
        for alarm_id in REFRESH_ALARMS:
            asg.node.add_dependency(self.monitoring.alarms[alarm_id])
        # Security groups: ALB -> instances on the container port (added by add_target above),
        # instances -> database on 5432.
        # The rule is created through an import scoped to this stack: a rule in the Data stack
        # would point back at the fleet and make the two stacks depend on each other.
        database_sg = ec2.SecurityGroup.from_security_group_id(
            self,
            "DatabaseSecurityGroup",
            database.security_group.security_group_id,
            allow_all_outbound=False,
            mutable=True,
        )
        database_sg.add_ingress_rule(
            self.fleet.security_group, ec2.Port.tcp(DB_PORT), "Fleet to PostgreSQL"
        )

        self.parameters = Parameters(
            self,
            "Parameters",
            path=config.parameter_path,
            values={
                "alb_dns_name": self.load_balancer.alb.load_balancer_dns_name,
                "asg_name": asg.auto_scaling_group_name,
                "ml_tg_arn": self.load_balancer.target_group.target_group_arn,
                "vpc_id": network.vpc.vpc_id,
                "ml_server_image_tag": tag,
            },
        )

        # Grants: everything the boot script and the CloudWatch agent need, and nothing else
        # (docs/boot.md): the DB secret and the provider secrets by ARN, the parameter path,
        # the two log groups, metrics in the agent's namespace, the image.
        role = self.fleet.role
        data.app_user.secret.grant_read(role)  # the app's login; never the master secret
        self.provider_secrets.grant_read(role)
        # The boot reads the runbook's parameters by name (GetParameters, no decryption); IAM
        # authorizes each name as arn:...:parameter/<name without its leading slash>. ARNs from
        # names, not the parameter objects: a grant on asg_name would make the role policy
        # depend on the group, which already waits for that policy (a cycle).
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="RunbookParameters",
                actions=["ssm:GetParameters"],
                resources=[
                    self.format_arn(
                        service="ssm",
                        resource="parameter",
                        resource_name=f"{config.parameter_path.strip('/')}/{name}",
                    )
                    for name in RUNBOOK_PARAMETER_NAMES
                ],
            )
        )
        # The launch hook, on this group only. Its ARN holds a UUID assigned at creation
        # (autoScalingGroup:<uuid>:autoScalingGroupName/<name>), hence the one wildcard.
        group_arn = self.format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{group_name(config)}",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="CompleteLaunchHook",
                actions=["autoscaling:CompleteLifecycleAction"],
                resources=[group_arn],
            )
        )
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::arn:{arn_partition(self)}:autoscaling:"
            f"{config.region}:{config.account}:autoScalingGroup:*:autoScalingGroupName/"
            f"{group_name(config)}]",
            "A group's ARN carries a UUID assigned when it is created; the name pins the grant "
            "to this environment's group.",
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={
                    "StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE_PREFIX + config.name}
                },
            )
        )
        # The agent resolves ${aws:AutoScalingGroupName} from the instance's tags.
        role.add_to_principal_policy(
            iam.PolicyStatement(actions=["ec2:DescribeTags"], resources=["*"])
        )
        self.image.grant_pull(role)
        if self.image.cache_rule is not None:
            acknowledge(
                role,
                f"AwsSolutions-IAM5[Resource::arn:{arn_partition(self)}:ecr:"
                f"{config.region}:{config.account}:repository/{self.image.prefix}/*]",
                "Pull-through cache repositories are created on the first pull under the "
                "environment's cache prefix; their names are only known as prefix/*.",
            )
        self.logs.grant_write(role)
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "No resource-level permissions exist for ecr:GetAuthorizationToken, "
            "ec2:DescribeTags, cloudwatch:PutMetricData (limited to the agent's namespace by a "
            "condition) and the Session Manager channel actions (ssm:UpdateInstanceInformation, "
            "ssmmessages:*Channel); AWS requires '*'.",
        )
        self._add_outputs(config, tag)

    def _add_outputs(self, config: EnvironmentConfig, tag: str) -> None:
        """What an operator looks for after a deploy (``make status`` reads these)."""
        alb = self.load_balancer.alb
        scheme = "https" if config.service.certificate_arn else "http"
        host = config.service.domain_name or alb.load_balancer_dns_name
        outputs = {
            naming.OUTPUT_SERVICE_URL: (f"{scheme}://{host}", "The service's base URL"),
            naming.OUTPUT_DASHBOARD_URL: (
                naming.dashboard_url(config.region, self.monitoring.dashboard.dashboard_name),
                "CloudWatch dashboard",
            ),
            naming.OUTPUT_APP_LOG_GROUP: (self.logs.app.log_group_name, "Server log group"),
            naming.OUTPUT_SETUP_LOG_GROUP: (self.logs.setup.log_group_name, "Boot log group"),
            naming.OUTPUT_ASG_NAME: (
                self.fleet.auto_scaling_group.auto_scaling_group_name,
                "Auto Scaling group",
            ),
            naming.OUTPUT_TARGET_GROUP_ARN: (
                self.load_balancer.target_group.target_group_arn,
                "ALB target group",
            ),
            naming.OUTPUT_IMAGE_URI: (self.image.image_uri, "Image the instances run"),
            naming.OUTPUT_IMAGE_TAG: (tag, "Release tag recorded in ml_server_image_tag"),
            naming.OUTPUT_IMAGE_SOURCE: (self.image.source, "image.source (asset or ghcr)"),
        }
        for key, (value, description) in outputs.items():
            CfnOutput(self, key, value=value, description=description)
