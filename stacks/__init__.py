"""Stacks per environment: they compose components and wire grants in one place."""

from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack
from stacks.service_stack import ServiceStack

__all__ = ["DataStack", "NetworkStack", "ServiceStack"]
