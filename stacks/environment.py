"""One environment's stacks: ``Humansa-<Env>-Network|Data|Service``."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Environment, Tags
from constructs import Construct

from config.model import EnvironmentConfig
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack
from stacks.service_stack import ServiceStack


@dataclass(frozen=True)
class EnvironmentStacks:
    """The three stacks of one environment."""

    network: NetworkStack
    data: DataStack
    service: ServiceStack


def add_environment(
    scope: Construct, config: EnvironmentConfig, *, image_tag: str | None = None
) -> EnvironmentStacks:
    """Add the Network, Data and Service stacks of ``config`` to ``scope`` (the App).

    Args:
        scope: the CDK app.
        config: the environment.
        image_tag: overrides ``config.image.tag`` for ``ml_server_image_tag``. Default: none.
    """
    env = Environment(account=config.account, region=config.region)
    prefix = f"Humansa-{config.title}"
    network = NetworkStack(
        scope,
        f"{prefix}-Network",
        config=config,
        env=env,
        termination_protection=config.termination_protection,
        description=f"Humansa ML server {config.name}: VPC, subnets, NAT, endpoints, flow logs",
    )
    data = DataStack(
        scope,
        f"{prefix}-Data",
        config=config,
        network=network.network,
        env=env,
        termination_protection=config.termination_protection,
        description=f"Humansa ML server {config.name}: PostgreSQL, its secret, DB parameters",
    )
    service = ServiceStack(
        scope,
        f"{prefix}-Service",
        config=config,
        network=network.network,
        data=data,
        image_tag=image_tag,
        env=env,
        description=f"Humansa ML server {config.name}: image, ALB, Auto Scaling fleet, logs",
    )
    for stack in (network, data, service):
        Tags.of(stack).add("Project", "humansa-ml-server")
        Tags.of(stack).add("Environment", config.name)
    return EnvironmentStacks(network=network, data=data, service=service)
