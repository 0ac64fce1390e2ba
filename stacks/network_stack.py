"""Network stack: the VPC and everything that only depends on it."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from constructs import Construct

from components.network import Network
from config.model import EnvironmentConfig


class NetworkStack(Stack):
    """``Humansa-<Env>-Network``.

    Attributes:
        network: the ``Network`` component (``.vpc``, ``.app_subnets``, ``.data_subnets``,
            ``.public_subnets``).

    Args:
        config: the environment.
        **kwargs: passed to ``Stack`` (``env``, ``stack_name``, ``termination_protection``...).
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.network = Network(
            self, "Network", config=config.vpc, retain_logs=config.termination_protection
        )
