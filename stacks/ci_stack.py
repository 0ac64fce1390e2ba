"""Account-level CI stack: GitHub OIDC federation for the release and pull-request workflows,
and the account's CloudTrail trail."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from components.audit import AuditTrail
from components.github_oidc import GitHubOidc, validate_github_repository
from config.monitoring import AuditConfig


class CiStack(cdk.Stack):
    """The GitHub OIDC provider, the deploy and read-only diff roles, the trail (deployed once).

    Args:
        scope: Parent construct (the app).
        construct_id: Stack ID, e.g. ``Humansa-CI``.
        github_repository: ``owner/name`` of the GitHub repository allowed to assume the roles
            (config ``github.repository``).
        env: Account and region; must be concrete (the role ARNs name them).
        bootstrap_qualifier: Qualifier given to ``cdk bootstrap``. Default ``hnb659fds``.
        existing_oidc_provider_arn: Reuse a GitHub OIDC provider already in the account instead
            of creating one (IAM allows a single provider per URL). Default: create it.
        audit: The account's CloudTrail trail settings; None or ``enabled: false`` creates no
            trail. Default None.
        **kwargs: Passed to ``cdk.Stack`` (description, termination_protection, tags...).

    Attributes:
        github: The ``GitHubOidc`` construct (``deploy_role``, ``diff_role``, ``provider_arn``).
        audit: The ``AuditTrail`` (``trail``, ``bucket``...), or None without a trail.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        github_repository: str,
        env: cdk.Environment,
        bootstrap_qualifier: str = "hnb659fds",
        existing_oidc_provider_arn: str | None = None,
        audit: AuditConfig | None = None,
        **kwargs: Any,
    ) -> None:
        validate_github_repository(github_repository)
        if not env.account or not env.region or cdk.Token.is_unresolved(env.account):
            raise ValueError(
                f"{construct_id}: env needs a concrete account and region (got account="
                f"{env.account!r}, region={env.region!r}); the bootstrap role ARNs name both"
            )
        with_trail = audit is not None and audit.enabled
        kwargs.setdefault(
            "description",
            f"Humansa account level: GitHub Actions OIDC roles for {github_repository} "
            f"(deploy, diff){', CloudTrail trail' if with_trail else ''}",
        )
        super().__init__(scope, construct_id, env=env, **kwargs)

        self.github = GitHubOidc(
            self,
            "GitHubOidc",
            github_repository=github_repository,
            bootstrap_qualifier=bootstrap_qualifier,
            existing_provider_arn=existing_oidc_provider_arn,
        )
        self.audit: AuditTrail | None = None
        if audit is not None and with_trail:
            self.audit = AuditTrail(self, "AuditTrail", config=audit)
        cdk.CfnOutput(
            self,
            "DeployRoleArn",
            value=self.github.deploy_role.role_arn,
            description="GitHub repository variable AWS_DEPLOY_ROLE_ARN (release workflow)",
        )
        cdk.CfnOutput(
            self,
            "DiffRoleArn",
            value=self.github.diff_role.role_arn,
            description="GitHub repository variable AWS_DIFF_ROLE_ARN (pull-request diff workflow)",
        )
        cdk.CfnOutput(
            self,
            "OidcProviderArn",
            value=self.github.provider_arn,
            description="The GitHub Actions OIDC provider of this account",
        )
