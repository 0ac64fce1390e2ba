"""The server image: a CDK Docker image asset, or GHCR through an ECR pull-through cache."""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import Fn, RemovalPolicy, SecretValue, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from components.acks import acknowledge
from components.boot import PLACEHOLDER_SECRET_VALUE
from config.model import Architecture, ImageConfig
from config.naming import (
    PULL_THROUGH_SECRET_PREFIX,
    ghcr_token_secret_name,
    legacy_ghcr_token_secret_name,
)

SERVER_DIR = Path(__file__).resolve().parent.parent / "ml_server"
_PLATFORMS = {
    "arm64": ecr_assets.Platform.LINUX_ARM64,
    "x86_64": ecr_assets.Platform.LINUX_AMD64,
}
GHCR_REGISTRY = "ghcr.io"

__all__ = [
    "PULL_THROUGH_SECRET_PREFIX",
    "GhcrToken",
    "ServerImage",
    "ghcr_cache_prefix",
    "ghcr_token_secret_name",
    "legacy_ghcr_token_secret_name",
]


def ghcr_cache_prefix(environment: str) -> str:
    """ECR repository prefix of the GHCR cache rule, ``humansa-<env>-ghcr``: one per
    environment, so three environments can share an account and region (a prefix is unique per
    registry). Until the token moved to the Data stack it was ``ghcr-humansa-<env>``: a rule's
    credential cannot change in place, so the moved rule needed a prefix of its own (docs/boot.md,
    "The GHCR token")."""
    return f"humansa-{environment}-ghcr"


class GhcrToken(Construct):
    """The GHCR credential of the ECR pull-through cache, created in the Data stack.

    It exists before any Service stack (any ``image.source``: a release deploys ``ghcr``
    whatever the config says), so the operator can put the token with ``make secrets ... NAME=
    GHCR_TOKEN`` before the first ``ghcr`` fleet boots; the release guard
    (``humansa_ops/preflight.py``) refuses to deploy ``ghcr`` while it holds its placeholder.
    Never read by instances (only ECR reads it).

    Attributes:
        secret: the ``Secret`` named ``ghcr_token_secret_name(environment)``.

    Args:
        environment: environment name.
        retain: keep the secret when the stack is deleted. Default false.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, environment: str, retain: bool = False
    ) -> None:
        super().__init__(scope, construct_id)
        self.secret = secretsmanager.Secret(
            self,
            "Secret",
            secret_name=ghcr_token_secret_name(environment),
            description=(
                "GHCR credential of the ECR pull-through cache: JSON "
                '{"username": "<github user>", "accessToken": "<PAT with read:packages>"}. '
                f"Set it with 'GHCR_USERNAME=<user> make secrets ENV={environment} "
                "NAME=GHCR_TOKEN'. Never read by instances."
            ),
            # Fixed public placeholder in the shape ECR expects; the operator replaces it.
            secret_string_value=SecretValue.unsafe_plain_text(
                json.dumps(
                    {"username": PLACEHOLDER_SECRET_VALUE, "accessToken": PLACEHOLDER_SECRET_VALUE}
                )
            ),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.secret,
            "AwsSolutions-SMG4",
            "GitHub token for the ECR pull-through cache: rotated at GitHub (PAT expiry), "
            "then put here by the operator; no rotation Lambda can mint a GitHub PAT.",
        )


class ServerImage(Construct):
    """Where instances pull the server image from.

    ``asset`` (default): a ``DockerImageAsset`` of ``ml_server/`` for the fleet's architecture,
    in the CDK bootstrap ECR repository. ``ghcr``: an ECR pull-through cache rule for
    ``ghcr.io`` whose upstream credential is the Data stack's ``GhcrToken`` (never read by
    instances); instances pull
    ``<account>.dkr.ecr.<region>.amazonaws.com/humansa-<env>-ghcr/<owner>/<name>:<tag>`` with
    their own role, and ECR fetches the image from GHCR on the first pull.

    Attributes:
        asset: the ``DockerImageAsset`` (``asset`` source), else None.
        cache_rule: the ``CfnPullThroughCacheRule`` (``ghcr`` source), else None.
        ghcr_token: the upstream credential secret (``ghcr`` source), else None.
        image_uri: full image reference with tag (token).
        registry: registry host for ``docker login`` with the instance role (token).

    Args:
        config: the ``image`` section.
        architecture: ``arm64`` or ``x86_64`` (the asset's platform; the GHCR image must be
            multi-platform).
        environment: environment name (names the cache prefix).
        ghcr_token: the Data stack's ``GhcrToken.secret``, the ``ghcr`` source's credential.
        tag: image tag for the ``ghcr`` source. Default: ``config.tag``.
        repository: GHCR ``owner/name`` of the ``ghcr`` source
            (``EnvironmentConfig.ghcr_repository``). Default: ``config.ghcr_repository``.

    Raises:
        ValueError: the ``ghcr`` source with no repository.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: ImageConfig,
        architecture: Architecture,
        environment: str,
        ghcr_token: secretsmanager.ISecret,
        tag: str | None = None,
        repository: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.source = config.source
        self.asset: ecr_assets.DockerImageAsset | None = None
        self.cache_rule: ecr.CfnPullThroughCacheRule | None = None
        self.ghcr_token: secretsmanager.ISecret | None = None
        if config.source == "asset":
            self.asset = ecr_assets.DockerImageAsset(
                self,
                "Asset",
                directory=str(SERVER_DIR),
                platform=_PLATFORMS[architecture],
                exclude=[
                    "tests",
                    "**/__pycache__",
                    "**/*.pyc",
                    ".pytest_cache",
                    "**/.pytest_cache",
                ],
                display_name="Humansa ML server",
            )
            self.image_uri = self.asset.image_uri
            self.registry = Fn.select(0, Fn.split("/", self.asset.image_uri))
            return

        repository = repository or config.ghcr_repository
        if repository is None:
            raise ValueError("image.source ghcr needs the GHCR owner/name (image.ghcr_repository)")
        self.prefix = ghcr_cache_prefix(environment)
        self.ghcr_token = ghcr_token
        self.cache_rule = ecr.CfnPullThroughCacheRule(
            self,
            "GhcrCache",
            ecr_repository_prefix=self.prefix,
            upstream_registry="github-container-registry",
            upstream_registry_url=GHCR_REGISTRY,
            credential_arn=self.ghcr_token.secret_arn,
        )
        stack = Stack.of(self)
        self.registry = f"{stack.account}.dkr.ecr.{stack.region}.{stack.url_suffix}"
        self.image_uri = f"{self.registry}/{self.prefix}/{repository}:{tag or config.tag}"

    def grant_pull(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` log in to ECR and pull the image (through the cache for ``ghcr``)."""
        if self.asset is not None:
            self.asset.repository.grant_pull(grantee)
            return
        stack = Stack.of(self)
        repositories = stack.format_arn(
            service="ecr", resource="repository", resource_name=f"{self.prefix}/*"
        )
        iam.Grant.add_to_principal(
            grantee=grantee, actions=["ecr:GetAuthorizationToken"], resource_arns=["*"]
        )
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=[
                "ecr:BatchCheckLayerAvailability",
                "ecr:GetDownloadUrlForLayer",
                "ecr:BatchGetImage",
                # The first pull of a cached image creates its repository and imports it.
                "ecr:BatchImportUpstreamImage",
                "ecr:CreateRepository",
            ],
            resource_arns=[repositories],
        )
