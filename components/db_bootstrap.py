"""The server's own database login (not the RDS master), made by a custom resource in the VPC.

The fleet reads only the app secret; the master secret is read by this construct's function (at
deploy) and by the rotation functions. Secrets Manager's alternating-users rotation
(``components/rotation.py``, ``AppUserSecretRotation``) needs the first user to exist and a master
secret to clone it with (AWS Secrets Manager User Guide, "Lambda function rotation strategies":
"You create the first user, and during the first rotation, the rotation function clones it").
The handler (``db_bootstrap_handler/index.py``) creates that user and its clone idempotently.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from components.acks import acknowledge

APP_USERNAME = "humansa_app"
HANDLER_DIR = Path(__file__).resolve().parent / "db_bootstrap_handler"
# Bump to run the handler again on the next deploy (its code is part of the asset hash too).
HANDLER_REVISION = "1"


class DatabaseAppUser(Construct):
    """The app secret and the custom resource that creates its user in the database.

    Args:
        instance: the database instance; its generated secret is the master secret.
        vpc: the database's VPC.
        subnets: where the function runs: they must reach the Secrets Manager API (NAT or the
            ``secretsmanager`` interface endpoint) and the database.
        database_name: the database the server uses.
        port: the database port (literal, for the ingress rule).
        environment: environment name, used in the secret's name.
        retain: keep the app secret when the stack is deleted (production).

    Attributes:
        secret: the app secret attached to the instance (``username``, ``password``, ``host``,
            ``port``, ``dbname``, ``engine``, ``masterarn``): what the fleet reads and what the
            multi-user rotation rotates.
        function: the handler function (an ``ec2.IConnectable``).
        resource: the ``Custom::HumansaDbAppUser`` resource.

    Raises:
        FileNotFoundError: the handler's ``vendor/`` folder (pg8000) is missing: ``make install``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        instance: rds.DatabaseInstance,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        database_name: str,
        port: int,
        environment: str,
        retain: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        if instance.secret is None:
            raise ValueError("DatabaseAppUser: the instance has no generated master secret")
        if not (HANDLER_DIR / "vendor" / "pg8000").is_dir():
            raise FileNotFoundError(
                f"{HANDLER_DIR.name}/vendor is missing: run `make install` (it vendors pg8000 "
                "for the database app-user function; synth then stays offline)"
            )
        master = instance.secret
        generated = rds.DatabaseSecret(
            self,
            "Secret",
            username=APP_USERNAME,
            dbname=database_name,
            master_secret=master,
            secret_name=f"humansa/{environment}/db-app",
        )
        generated.apply_removal_policy(RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        self.generated_secret = generated
        self.secret: secretsmanager.ISecret = generated.attach(instance)

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Database app-user function",
            allow_all_outbound=True,  # Secrets Manager API over HTTPS and the database port
        )
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.THREE_MONTHS if retain else logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description="Creates the server's own database user (not the master) and its clone",
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="index.handler",
            code=lambda_.Code.from_asset(
                str(HANDLER_DIR), exclude=["__pycache__", "*.pyc", ".installed"]
            ),
            timeout=Duration.minutes(2),
            memory_size=256,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            log_group=log_group,
            reserved_concurrent_executions=1,
        )
        master.grant_read(self.function)
        self.secret.grant_read(self.function)
        instance.connections.allow_from(
            self.security_group, ec2.Port.tcp(port), "Database app-user function"
        )
        self.resource = CustomResource(
            self,
            "Resource",
            service_token=self.function.function_arn,
            resource_type="Custom::HumansaDbAppUser",
            properties={
                "MasterSecretArn": master.secret_arn,
                "AppSecretArn": self.secret.secret_arn,
                "AppUsername": APP_USERNAME,
                "DatabaseName": database_name,
                "Revision": HANDLER_REVISION,
            },
        )
        self.resource.node.add_dependency(instance)
        role = self.function.role
        assert role is not None
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
            "The app-user function writes only its own log group; CDK attaches the basic "
            "execution policy to every function.",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaVPCAccessExecutionRole]",
            "The app-user function runs in the VPC (it reaches the database); Lambda needs "
            "the ENI actions of AWS's VPC access policy, which have no resource scope.",
        )
