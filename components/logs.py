"""The seed's CloudWatch log groups for the server and its boot script."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from config.naming import log_group


class ServiceLogs(Construct):
    """``/aws/ec2/humansa-ml/<env>`` (30 days) and ``/aws/ec2/humansa-ml/<env>/setup`` (7 days).

    Args:
        environment: environment name.
        retain: keep the groups when the stack is deleted. Default false.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, environment: str, retain: bool = False
    ) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY
        self.app = logs.LogGroup(
            self,
            "App",
            log_group_name=log_group(environment),
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=removal,
        )
        self.setup = logs.LogGroup(
            self,
            "Setup",
            log_group_name=log_group(environment, setup=True),
            retention=logs.RetentionDays.ONE_WEEK,
            removal_policy=removal,
        )

    def grant_write(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` create streams and put events in both groups."""
        self.app.grant_write(grantee)
        self.setup.grant_write(grantee)
