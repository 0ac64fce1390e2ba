"""Scheduled rotation of the RDS database secret (single user, AWS-hosted rotation function).

Why the hosted rotation (``AWS::SecretsManager`` transform) and not
``DatabaseInstance.add_rotation_single_user``: the latter deploys the rotation function as an
``AWS::Serverless::Application`` from the Serverless Application Repository (SAM transform plus a
SAR application pinned by the CDK version), the former lets CloudFormation build the function from
the Secrets Manager rotation templates of the region. Both put a Lambda function in the VPC that
must reach the Secrets Manager API (NAT, NAT instance or a ``secretsmanager`` interface endpoint)
and the database port. See docs/operations.md for the moto finding.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from config.monitoring import RotationConfig


class DatabaseSecretRotation(Construct):
    """Rotates the database instance's generated secret every ``database_secret_days``.

    Puts ``Transform: AWS::SecretsManager-2024-09-16`` on the stack (deploy needs
    ``CAPABILITY_AUTO_EXPAND``, which the CDK CLI passes), an
    ``AWS::SecretsManager::RotationSchedule`` with ``HostedRotationLambda``
    (PostgreSQLSingleUser), a security group for the function and an ingress rule from it to the
    database port. The first rotation happens one period after
    deploy; changing the period does not rotate immediately.

    Args:
        scope: Parent construct (the stack that owns the database, normally the data stack).
        construct_id: Construct ID, e.g. ``"SecretRotation"``.
        database: The instance whose ``secret`` (RDS-generated, attached) is rotated.
        vpc: The database's VPC.
        vpc_subnets: Subnets of the rotation function. They need a route to the Secrets Manager
            API (NAT gateway / NAT instance) or a ``secretsmanager`` interface endpoint with
            private DNS. Default: the VPC's private subnets with egress.
        config: The rotation period.
        port: The database port, written literally into the ingress rule. Default: the
            instance's port (a ``Fn::GetAtt`` of its endpoint port).

    Instantiate it only when ``config.enabled`` is true.

    Attributes:
        schedule: The rotation schedule.
        hosted_rotation: The hosted rotation function (an ``ec2.IConnectable``).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        database: rds.DatabaseInstance,
        vpc: ec2.IVpc,
        config: RotationConfig,
        vpc_subnets: ec2.SubnetSelection | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if not config.enabled:
            raise ValueError(
                "DatabaseSecretRotation: rotation.enabled is false; do not create the rotation"
            )
        if database.secret is None:
            raise ValueError(
                "DatabaseSecretRotation: the database has no generated secret to rotate "
                "(create it with rds.Credentials.from_generated_secret)"
            )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Database secret rotation function",
            allow_all_outbound=True,  # Secrets Manager API over HTTPS and the database port
        )
        self.hosted_rotation = secretsmanager.HostedRotation.postgre_sql_single_user(
            vpc=vpc,
            vpc_subnets=vpc_subnets
            or ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[self.security_group],
        )
        self.schedule = secretsmanager.RotationSchedule(
            self,
            "Schedule",
            secret=database.secret,
            hosted_rotation=self.hosted_rotation,
            automatically_after=Duration.days(config.database_secret_days),
            rotate_immediately_on_update=False,
        )
        description = "Database secret rotation function"
        if port is None:
            database.connections.allow_default_port_from(self.security_group, description)
        else:
            database.connections.allow_from(self.security_group, ec2.Port.tcp(port), description)


class AppUserSecretRotation(Construct):
    """Rotates the app secret with Secrets Manager's alternating-users strategy (hosted function).

    Each rotation sets a new password on the user the secret does NOT name now
    (``humansa_app`` / ``humansa_app_clone``, logging in with the master secret) and then makes that
    user current; the previous credentials stay valid until the next rotation, so a client holding
    them keeps connecting (AWS Secrets Manager User Guide, "Lambda function rotation strategies",
    "Rotation strategy: alternating users"). The clone exists already (``DatabaseAppUser``).

    Args:
        secret: the app secret (its JSON carries ``masterarn``).
        master_secret: the instance's master secret, read by the rotation function only.
        database: the instance (for the ingress rule).
        vpc, vpc_subnets: where the function runs (as ``DatabaseSecretRotation``).
        config: the rotation period.
        port: the database port, written literally into the ingress rule.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        secret: secretsmanager.ISecret,
        master_secret: secretsmanager.ISecret,
        database: rds.DatabaseInstance,
        vpc: ec2.IVpc,
        vpc_subnets: ec2.SubnetSelection,
        config: RotationConfig,
        port: int,
    ) -> None:
        super().__init__(scope, construct_id)
        if not config.enabled:
            raise ValueError(
                "AppUserSecretRotation: rotation.enabled is false; do not create the rotation"
            )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Database app secret rotation function",
            allow_all_outbound=True,  # Secrets Manager API over HTTPS and the database port
        )
        self.hosted_rotation = secretsmanager.HostedRotation.postgre_sql_multi_user(
            master_secret=master_secret,
            vpc=vpc,
            vpc_subnets=vpc_subnets,
            security_groups=[self.security_group],
        )
        self.schedule = secretsmanager.RotationSchedule(
            self,
            "Schedule",
            secret=secret,
            hosted_rotation=self.hosted_rotation,
            automatically_after=Duration.days(config.database_secret_days),
            rotate_immediately_on_update=False,
        )
        database.connections.allow_from(
            self.security_group, ec2.Port.tcp(port), "Database app secret rotation function"
        )
