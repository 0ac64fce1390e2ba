"""Data stack: RDS PostgreSQL, its secret and the database SSM parameters."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack, Token
from constructs import Construct

from components.database import DB_NAME, DB_USERNAME, Database
from components.network import Network
from components.parameters import Parameters
from config.model import EnvironmentConfig


class DataStack(Stack):
    """``Humansa-<Env>-Data``.

    Attributes:
        database: the ``Database`` component (``.instance``, ``.secret``, ``.security_group``).
        parameters: ``db_host``, ``db_port``, ``db_username``, ``db_name`` under
            ``/humansa/<env>/`` (the password stays in the secret).

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
        endpoint = self.database.instance.instance_endpoint
        self.parameters = Parameters(
            self,
            "Parameters",
            path=config.parameter_path,
            values={
                "db_host": endpoint.hostname,
                "db_port": Token.as_string(endpoint.port),
                "db_username": DB_USERNAME,
                "db_name": DB_NAME,
            },
        )
