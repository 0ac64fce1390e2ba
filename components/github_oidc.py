"""GitHub Actions OpenID Connect federation: the provider, a deploy role, a read-only diff role."""

from __future__ import annotations

import re

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from constructs import Construct

from components.acks import arn_partition

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
GITHUB_OIDC_AUDIENCE = "sts.amazonaws.com"

#: owner/name as GitHub allows them: owner 1-39 of [A-Za-z0-9-], repository 1-100 of [A-Za-z0-9._-].
_REPOSITORY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
_QUALIFIER = re.compile(r"^[A-Za-z0-9_-]{1,10}$")

#: The CDK bootstrap roles a deployment uses (`cdk bootstrap` names them
#: cdk-<qualifier>-<kind>-<account>-<region>).
DEPLOY_BOOTSTRAP_ROLES = (
    "deploy-role",
    "file-publishing-role",
    "image-publishing-role",
    "lookup-role",
)
#: The diff role assumes none: the lookup role is ReadOnlyAccess on the whole account, and
#: `cdk diff --method=template` needs only the stacks' templates (DIFF_READ_ACTIONS).
DIFF_BOOTSTRAP_ROLES: tuple[str, ...] = ()

#: Longest deploy-role session. The OIDC session must outlast the release job's worst case:
#: image build plus a production deploy that fails at the end and rolls back
#: (docs/infrastructure.md, "Deploy role session"); the chained bootstrap-role sessions
#: (at most 1 h each) are renewed by the CDK CLI from it.
DEPLOY_SESSION_HOURS = 4

#: The environments' GHCR token secrets (config/naming.py ``ghcr_token_secret_name``), whose
#: metadata the release guard reads with the deploy role.
GHCR_TOKEN_SECRET_PATTERN = "ecr-pullthroughcache/humansa/*"  # noqa: S105 - a name pattern

#: What `cdk diff --method=template` may read itself when it cannot use the lookup role.
DIFF_READ_ACTIONS = (
    "cloudformation:DescribeStacks",
    "cloudformation:GetTemplate",
    "cloudformation:ListStackResources",
)


def validate_github_repository(value: str, *, setting: str = "github.repository") -> str:
    """Return ``value`` if it is a GitHub ``owner/name``; raise ValueError naming the setting."""
    if not isinstance(value, str) or not _REPOSITORY.match(value) or value.endswith((".git",)):
        raise ValueError(
            f"{setting}: {value!r} is not a GitHub repository; expected 'owner/name' "
            "(owner: letters, digits, '-'; name: letters, digits, '.', '_', '-'; no '.git', "
            "no URL), spelled exactly as on GitHub"
        )
    if value.split("/", 1)[1] in {".", ".."}:
        raise ValueError(f"{setting}: {value!r} has an invalid repository name")
    return value


class GitHubOidc(Construct):
    """The GitHub OIDC provider and the two roles GitHub Actions may assume.

    The deploy role is trusted only for jobs of ``github_repository`` that run in the
    ``deploy_environments`` GitHub environments (token ``sub`` =
    ``repo:<owner/name>:environment:<name>``) and may only assume the CDK bootstrap
    roles (deploy, file publishing, image publishing, lookup) of this account and region, so what
    it can change is exactly what `cdk deploy` can change, through CloudFormation; besides, it
    may describe (never read) the GHCR token secrets, for the release guard.

    The diff role is trusted only for pull-request jobs of the same repository (``sub`` =
    ``repo:<owner/name>:pull_request``). It may read the ``Humansa-*`` CloudFormation stacks and
    templates, which is what ``cdk diff --method=template`` needs; it cannot assume the lookup
    role (ReadOnlyAccess on the whole account), create change sets or write anything.

    Args:
        scope: Parent construct.
        construct_id: Construct ID.
        github_repository: ``owner/name`` of the repository, spelled as on GitHub (the ``sub``
            claim is compared case-sensitively).
        bootstrap_qualifier: Qualifier given to ``cdk bootstrap``. Default ``hnb659fds``.
        deploy_role_name: Name of the deploy role. Default ``humansa-github-actions-role`` (the
            name in the seed runbook).
        diff_role_name: Name of the diff role. Default ``humansa-github-diff-role``.
        deploy_environments: GitHub environments whose jobs may deploy (release.yml deploys
            staging, then production). Default ``("staging", "production")``.
        stack_name_pattern: CloudFormation stack names the diff role may read. Default
            ``Humansa-*``.
        existing_provider_arn: ARN of a GitHub OIDC provider that already exists in the account
            (IAM allows one per URL). Default: create the provider here.
        max_session_duration: Longest session of either role. Default: 4 hours for the deploy
            role (``DEPLOY_SESSION_HOURS``), 1 hour for the diff role.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        github_repository: str,
        bootstrap_qualifier: str = "hnb659fds",
        deploy_role_name: str = "humansa-github-actions-role",
        diff_role_name: str = "humansa-github-diff-role",
        deploy_environments: tuple[str, ...] = ("staging", "production"),
        stack_name_pattern: str = "Humansa-*",
        existing_provider_arn: str | None = None,
        max_session_duration: cdk.Duration | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        validate_github_repository(github_repository)
        if not _QUALIFIER.match(bootstrap_qualifier):
            raise ValueError(
                f"bootstrap_qualifier: {bootstrap_qualifier!r} is not a CDK bootstrap qualifier "
                "(1-10 letters, digits, '-' or '_'; the default is 'hnb659fds')"
            )
        if not deploy_environments:
            raise ValueError("deploy_environments: name at least one GitHub environment")
        for deploy_environment in deploy_environments:
            if not re.match(r"^[A-Za-z0-9._-]{1,255}$", deploy_environment):
                raise ValueError(
                    f"deploy_environments: {deploy_environment!r} is not a GitHub environment name"
                )
        stack = cdk.Stack.of(self)
        self.github_repository = github_repository
        self.bootstrap_qualifier = bootstrap_qualifier
        session = max_session_duration or cdk.Duration.hours(1)

        if existing_provider_arn:
            self.provider_arn = existing_provider_arn
        else:
            provider = iam.OidcProviderNative(
                self,
                "Provider",
                url=f"https://{GITHUB_OIDC_HOST}",
                client_ids=[GITHUB_OIDC_AUDIENCE],
            )
            self.provider_arn = provider.oidc_provider_arn

        # StringEquals with a list matches any one of them (IAM: multiple values of one key).
        self.deploy_subjects = [
            f"repo:{github_repository}:environment:{name}" for name in deploy_environments
        ]
        self.diff_subject = f"repo:{github_repository}:pull_request"

        self.deploy_role = iam.Role(
            self,
            "DeployRole",
            role_name=deploy_role_name,
            description=f"GitHub Actions deploys of {github_repository} "
            f"(environments {', '.join(deploy_environments)}): may only assume the CDK "
            "bootstrap roles and describe the GHCR token secrets",
            assumed_by=self._github_principal(
                self.deploy_subjects[0] if len(self.deploy_subjects) == 1 else self.deploy_subjects
            ),
            max_session_duration=max_session_duration or cdk.Duration.hours(DEPLOY_SESSION_HOURS),
        )
        self.deploy_role.add_to_policy(
            iam.PolicyStatement(
                sid="AssumeCdkBootstrapRoles",
                actions=["sts:AssumeRole"],
                resources=[self.bootstrap_role_arn(kind) for kind in DEPLOY_BOOTSTRAP_ROLES],
            )
        )

        # The release guard (humansa_ops/preflight.py) reads the GHCR token secrets' metadata
        # (versions, deletion date), never their value, before it deploys the ghcr source.
        ghcr_tokens = stack.format_arn(
            service="secretsmanager",
            region="*",
            resource="secret",
            resource_name=f"{GHCR_TOKEN_SECRET_PATTERN}",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        self.deploy_role.add_to_policy(
            iam.PolicyStatement(
                sid="DescribeGhcrTokens",
                actions=["secretsmanager:DescribeSecret"],
                resources=[ghcr_tokens],
            )
        )
        cdk.Validations.of(self.deploy_role).acknowledge(
            cdk.Acknowledgment(
                id=f"AwsSolutions::AwsSolutions-IAM5[Resource::arn:{arn_partition(self)}:secretsmanager:"
                f"*:{stack.account}:secret:{GHCR_TOKEN_SECRET_PATTERN}]",
                reason="DescribeSecret (metadata, never the value) on the environments' GHCR "
                "token secrets: one per environment, in the environment's region, with a "
                "random ARN suffix.",
            )
        )

        self.diff_role = iam.Role(
            self,
            "DiffRole",
            role_name=diff_role_name,
            description=f"GitHub Actions pull-request diffs of {github_repository}: read-only",
            assumed_by=self._github_principal(self.diff_subject),
            max_session_duration=session,
        )
        self.diff_role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadStacksAndTemplates",
                actions=list(DIFF_READ_ACTIONS),
                resources=[
                    stack.format_arn(
                        service="cloudformation",
                        resource="stack",
                        resource_name=f"{stack_name_pattern}/*",
                        arn_format=cdk.ArnFormat.SLASH_RESOURCE_NAME,
                    )
                ],
            )
        )
        self.diff_role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadBootstrapVersion",
                actions=["ssm:GetParameter"],
                resources=[
                    stack.format_arn(
                        service="ssm",
                        resource="parameter",
                        resource_name=f"cdk-bootstrap/{bootstrap_qualifier}/version",
                        arn_format=cdk.ArnFormat.SLASH_RESOURCE_NAME,
                    )
                ],
            )
        )

        # The one wildcard: stack ARNs end in a generated stack ID (stack/<name>/<uuid>), and the
        # pattern covers every stack of the app; the actions are Describe/Get/List only.
        cdk.Validations.of(self.diff_role).acknowledge(
            cdk.Acknowledgment(
                id=f"AwsSolutions::AwsSolutions-IAM5[Resource::arn:{arn_partition(self)}:cloudformation:"
                f"{stack.region}:{stack.account}:stack/{stack_name_pattern}/*]",
                reason="Read-only (DescribeStacks, GetTemplate, ListStackResources) on the app's "
                "stacks; a stack ARN ends in a generated ID, so it needs the trailing wildcard.",
            )
        )

    def bootstrap_role_arn(self, kind: str) -> str:
        """ARN of the bootstrap role ``cdk-<qualifier>-<kind>-<account>-<region>``."""
        stack = cdk.Stack.of(self)
        return stack.format_arn(
            service="iam",
            region="",
            resource="role",
            resource_name=f"cdk-{self.bootstrap_qualifier}-{kind}-{stack.account}-{stack.region}",
            arn_format=cdk.ArnFormat.SLASH_RESOURCE_NAME,
        )

    def _github_principal(self, subject: str | list[str]) -> iam.WebIdentityPrincipal:
        return iam.WebIdentityPrincipal(
            self.provider_arn,
            conditions={
                "StringEquals": {
                    f"{GITHUB_OIDC_HOST}:aud": GITHUB_OIDC_AUDIENCE,
                    f"{GITHUB_OIDC_HOST}:sub": subject,
                }
            },
        )
