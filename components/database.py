"""RDS PostgreSQL 16 in the isolated data subnets, credentials in Secrets Manager."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from components.acks import acknowledge
from config.model import DatabaseConfig

DB_NAME = "humansa"
DB_USERNAME = "humansa"
DB_PORT = 5432


class Database(Construct):
    """The PostgreSQL instance.

    Attributes:
        instance: the ``rds.DatabaseInstance``.
        secret: its generated credentials secret (JSON with ``username``, ``password``, ``host``).
        generated_secret: the ``DatabaseSecret`` construct behind ``secret`` (where cdk-nag's
            secret findings are acknowledged; ``secret`` is its attachment to the instance).

    Args:
        config: the ``database`` section.
        vpc: the environment VPC.
        subnets: where the instance lives (the isolated ``Data`` subnets).
        environment: environment name, used in the secret's name.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DatabaseConfig,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        environment: str,
    ) -> None:
        super().__init__(scope, construct_id)
        engine = rds.DatabaseInstanceEngine.postgres(
            version=rds.PostgresEngineVersion.of(config.engine_version, "16")
        )
        self.parameter_group = rds.ParameterGroup(
            self,
            "Parameters",
            engine=engine,
            description="Humansa PostgreSQL 16: TLS required",
            parameters={"rds.force_ssl": "1"},
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Humansa database: PostgreSQL from the fleet only",
            allow_all_outbound=False,
        )
        self.instance = rds.DatabaseInstance(
            self,
            "Instance",
            engine=engine,
            instance_type=ec2.InstanceType(config.instance_class.removeprefix("db.")),
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            port=DB_PORT,
            database_name=DB_NAME,
            credentials=rds.Credentials.from_generated_secret(
                DB_USERNAME, secret_name=f"humansa/{environment}/db"
            ),
            parameter_group=self.parameter_group,
            allocated_storage=config.allocated_storage_gib,
            max_allocated_storage=config.max_allocated_storage_gib,
            storage_type=rds.StorageType.GP3,
            storage_encrypted=True,
            multi_az=config.multi_az,
            backup_retention=Duration.days(config.backup_retention_days),
            deletion_protection=config.deletion_protection,
            removal_policy=(
                RemovalPolicy.SNAPSHOT if config.deletion_protection else RemovalPolicy.DESTROY
            ),
            publicly_accessible=False,
            auto_minor_version_upgrade=False,
            cloudwatch_logs_exports=["postgresql", "upgrade"],
            # RDS creates /aws/rds/instance/<id>/<log> itself, never expiring; CDK's
            # LogRetention resource sets the retention on the groups RDS made.
            cloudwatch_logs_retention=(
                logs.RetentionDays.THREE_MONTHS
                if config.deletion_protection
                else logs.RetentionDays.ONE_MONTH
            ),
            copy_tags_to_snapshot=True,
        )
        secret = self.instance.secret
        assert secret is not None  # from_generated_secret always creates one
        self.secret: secretsmanager.ISecret = secret

        self.generated_secret = self.instance.node.find_child("Secret")
        stack = Stack.of(self)
        for child in stack.node.children:
            if child.node.id.startswith("LogRetention"):  # CDK's singleton provider function
                acknowledge(
                    child,
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole]",
                    "CDK's LogRetention function (sets the RDS log groups' retention) writes only "
                    "its own logs with the basic execution policy; CDK offers no other role.",
                )
                acknowledge(
                    child,
                    "AwsSolutions-IAM5[Resource::*]",
                    "CDK's LogRetention function calls logs:PutRetentionPolicy / "
                    "DeleteRetentionPolicy on groups RDS names after the generated instance id, "
                    "so CDK grants them on '*'.",
                )
        if config.deletion_protection:
            # The final snapshot keeps the data; without its password the restore needs a reset
            # through the console. Keep the secret with it (RemovalPolicy.SNAPSHOT does not).
            assert isinstance(self.generated_secret, secretsmanager.Secret)
            self.generated_secret.apply_removal_policy(RemovalPolicy.RETAIN)
        acknowledge(
            self.instance,
            "AwsSolutions-RDS11",
            "Default port 5432 kept: the database is only reachable from the fleet's security "
            "group in isolated subnets, so a non-standard port adds no protection.",
        )
        if not config.multi_az:
            acknowledge(
                self.instance,
                "AwsSolutions-RDS3",
                f"Single-AZ by config in {environment} (cost); production is Multi-AZ.",
            )
        if not config.deletion_protection:
            acknowledge(
                self.instance,
                "AwsSolutions-RDS10",
                f"No deletion protection in {environment} so the environment can be torn "
                "down; production enables it.",
            )
