"""Record cdk-nag acknowledgments, each with its own reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` (e.g. ``AwsSolutions-IAM4[Policy::...]``) on ``scope`` and below."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))
