"""Data stack: RDS PostgreSQL, its secret (rotated on a schedule) and the database SSM
parameters."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack, Token
from constructs import Construct

from components.acks import acknowledge
from components.database import DB_NAME, DB_PORT, Database
from components.db_bootstrap import APP_USERNAME, DatabaseAppUser
from components.image import GhcrToken
from components.network import Network
from components.parameters import Parameters
from components.rotation import AppUserSecretRotation, DatabaseSecretRotation
from config.model import EnvironmentConfig


class DataStack(Stack):
    """``Humansa-<Env>-Data``.

    Attributes:
        database: the ``Database`` component (``.instance``, ``.secret``, ``.security_group``).
        rotation: the ``DatabaseSecretRotation`` (``rotation.enabled``, the default), else None.
            Its function runs in the fleet's ``App`` subnets, which reach the Secrets Manager
            API through the environment's NAT (gateway or instance) or, with ``vpc.nat: none``,
            through the ``secretsmanager`` interface endpoint there.
        app_user: the ``DatabaseAppUser`` (``.secret``: the server's login, ``humansa_app``).
        app_rotation: the app secret's ``AppUserSecretRotation`` (alternating users), else None.
        parameters: ``db_host``, ``db_port``, ``db_username``, ``db_name`` under
            ``/humansa/<env>/`` (the password stays in the secret).
        ghcr_token: the ``GhcrToken`` (``.secret``): the GHCR credential of the Service stack's
            pull-through cache, here so it exists before the first ``ghcr`` fleet boots.

    Args:
        config: the environment.
        network: the environment's ``Network`` component.
        **kwargs: passed to ``Stack``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: Network,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.database = Database(
            self,
            "Database",
            config=config.database,
            vpc=network.vpc,
            subnets=network.data_subnets,
            environment=config.name,
        )
        # The server's own login (components/db_bootstrap.py): the fleet reads only its secret.
        self.app_user = DatabaseAppUser(
            self,
            "AppUser",
            instance=self.database.instance,
            vpc=network.vpc,
            subnets=network.app_subnets,
            database_name=DB_NAME,
            port=DB_PORT,
            environment=config.name,
            retain=config.database.deletion_protection,
        )
        # The Service stack imported the master secret's ARN before it read the app secret; keep
        # that export so a deployed Service stack still resolves it while Data updates first
        # (CloudFormation refuses to delete an export in use). Remove in a later release.
        self.export_value(self.database.secret.secret_arn)
        self.rotation: DatabaseSecretRotation | None = None
        self.app_rotation: AppUserSecretRotation | None = None
        if config.rotation.enabled:
            self.app_rotation = AppUserSecretRotation(
                self,
                "AppSecretRotation",
                secret=self.app_user.secret,
                master_secret=self.database.secret,
                database=self.database.instance,
                vpc=network.vpc,
                vpc_subnets=network.app_subnets,
                config=config.rotation,
                port=DB_PORT,
            )
            # The first rotation clones a user that must exist.
            self.app_rotation.schedule.node.add_dependency(self.app_user.resource)
            self.rotation = DatabaseSecretRotation(
                self,
                "SecretRotation",
                database=self.database.instance,
                vpc=network.vpc,
                vpc_subnets=network.app_subnets,
                config=config.rotation,
                port=DB_PORT,
            )
        else:
            for secret in (self.database.generated_secret, self.app_user.generated_secret):
                acknowledge(
                    secret,
                    "AwsSolutions-SMG4",
                    f"rotation.enabled is false in config/{config.name}.yaml: the database "
                    "passwords are not rotated on a schedule in this environment.",
                )
        # Before any Service stack: `make secrets ... NAME=GHCR_TOKEN` works after this stack
        # alone, and the release guard refuses a ghcr deploy while it holds the placeholder.
        self.ghcr_token = GhcrToken(
            self, "GhcrToken", environment=config.name, retain=config.termination_protection
        )
        endpoint = self.database.instance.instance_endpoint
        self.parameters = Parameters(
            self,
            "Parameters",
            path=config.parameter_path,
            values={
                "db_host": endpoint.hostname,
                "db_port": Token.as_string(endpoint.port),
                "db_username": APP_USERNAME,
                "db_name": DB_NAME,
            },
        )
