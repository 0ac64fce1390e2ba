"""Service stack: image, ALB, fleet, log groups and the service SSM parameters."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from components.acks import acknowledge
from components.boot import BootSettings, SecretFile
from components.database import DB_PORT
from components.fleet import Fleet
from components.image import ServerImage
from components.load_balancer import LoadBalancer
from components.logs import ServiceLogs
from components.network import Network
from components.parameters import Parameters
from config.model import EnvironmentConfig
from stacks.data_stack import DataStack


class ServiceStack(Stack):
    """``Humansa-<Env>-Service``.

    Attributes:
        image: ``ServerImage`` (``.asset``, ``.image_uri``).
        logs: ``ServiceLogs`` (``.app``, ``.setup``).
        load_balancer: ``LoadBalancer`` (``.alb``, ``.listener``, ``.target_group``).
        fleet: ``Fleet`` (``.auto_scaling_group``, ``.role``, ``.launch_template``).
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
        self.image = ServerImage(self, "Image", architecture=config.fleet.architecture)
        self.logs = ServiceLogs(
            self, "Logs", environment=config.name, retain=config.termination_protection
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
            secret_files={"DB_PASSWORD": SecretFile(database.secret.secret_arn, "password")},
            app_log_group=self.logs.app.log_group_name,
            setup_log_group=self.logs.setup.log_group_name,
            container_port=config.service.container_port,
            health_path=config.service.health_path,
        )
        self.fleet = Fleet(
            self,
            "Fleet",
            config=config.fleet,
            vpc=network.vpc,
            subnets=network.app_subnets,
            boot=boot,
        )
        asg = self.fleet.auto_scaling_group
        self.load_balancer.target_group.add_target(asg)
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
                "ml_server_image_tag": image_tag or config.image.tag,
            },
        )

        # Grants: everything the boot script reads, and nothing else.
        role = self.fleet.role
        database.secret.grant_read(role)
        data.parameters.grant_read(role)
        # The boot script reads the whole path with GetParametersByPath (granted below), which
        # covers this stack's parameters too. A per-parameter grant on asg_name would make the
        # role policy depend on the ASG, which already waits for that policy: a cycle.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ssm:GetParametersByPath"],
                resources=[
                    self.format_arn(
                        service="ssm",
                        resource="parameter",
                        resource_name=config.parameter_path.strip("/"),
                    )
                ],
            )
        )
        self.image.grant_pull(role)
        self.logs.grant_write(role)
        acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken has no resource-level permissions; AWS requires '*'.",
        )
