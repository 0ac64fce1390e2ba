"""Record cdk-nag acknowledgments, each with its own reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Token, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` (e.g. ``AwsSolutions-IAM4[Policy::...]``) on ``scope`` and below."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))


def arn_partition(scope: IConstruct) -> str:
    """How cdk-nag writes the partition of an ARN the CDK formats for ``scope``'s stack:
    the literal (``aws``) when ``@aws-cdk/core:enablePartitionLiterals`` (cdk.json) gives the
    stack one, else ``<AWS::Partition>`` (the pseudo parameter, as in an app without the flag).
    """
    partition = Stack.of(scope).partition
    return "<AWS::Partition>" if Token.is_unresolved(partition) else partition
