"""Account-level CI stack: GitHub OIDC federation for the release and pull-request workflows."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from components.github_oidc import GitHubOidc, validate_github_repository


class CiStack(cdk.Stack):
    """The GitHub OIDC provider, the deploy role and the read-only diff role (deployed once).

    Args:
        scope: Parent construct (the app).
        construct_id: Stack ID, e.g. ``Humansa-CI``.
        github_repository: ``owner/name`` of the GitHub repository allowed to assume the roles
            (config ``github.repository``).
        env: Account and region; must be concrete (the role ARNs name them).
        bootstrap_qualifier: Qualifier given to ``cdk bootstrap``. Default ``hnb659fds``.
        existing_oidc_provider_arn: Reuse a GitHub OIDC provider already in the account instead
            of creating one (IAM allows a single provider per URL). Default: create it.
        **kwargs: Passed to ``cdk.Stack`` (description, termination_protection, tags...).
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
        **kwargs: Any,
    ) -> None:
        validate_github_repository(github_repository)
        if not env.account or not env.region or cdk.Token.is_unresolved(env.account):
            raise ValueError(
                f"{construct_id}: env needs a concrete account and region (got account="
                f"{env.account!r}, region={env.region!r}); the bootstrap role ARNs name both"
            )
        kwargs.setdefault(
            "description", f"GitHub Actions OIDC roles for {github_repository} (deploy, diff)"
        )
        super().__init__(scope, construct_id, env=env, **kwargs)

        self.github = GitHubOidc(
            self,
            "GitHubOidc",
            github_repository=github_repository,
            bootstrap_qualifier=bootstrap_qualifier,
            existing_provider_arn=existing_oidc_provider_arn,
        )
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
