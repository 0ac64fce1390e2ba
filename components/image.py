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
from components.boot import GHCR_TOKEN_SECRET_NAME, PLACEHOLDER_SECRET_VALUE
from config.model import Architecture, ImageConfig

SERVER_DIR = Path(__file__).resolve().parent.parent / "ml_server"
_PLATFORMS = {
    "arm64": ecr_assets.Platform.LINUX_ARM64,
    "x86_64": ecr_assets.Platform.LINUX_AMD64,
}
GHCR_REGISTRY = "ghcr.io"
PULL_THROUGH_SECRET_PREFIX = "ecr-pullthroughcache/"  # noqa: S105 - a name prefix
"""AWS requires this name prefix on a pull-through cache rule's upstream credential secret."""


def ghcr_cache_prefix(environment: str) -> str:
    """ECR repository prefix of the GHCR cache rule: one per environment, so three environments
    can share an account and region (a prefix is unique per registry)."""
    return f"ghcr-humansa-{environment}"


def ghcr_token_secret_name(environment: str) -> str:
    """``ecr-pullthroughcache/humansa/<env>/GHCR_TOKEN``."""
    return f"{PULL_THROUGH_SECRET_PREFIX}humansa/{environment}/{GHCR_TOKEN_SECRET_NAME}"


class ServerImage(Construct):
    """Where instances pull the server image from.

    ``asset`` (default): a ``DockerImageAsset`` of ``ml_server/`` for the fleet's architecture,
    in the CDK bootstrap ECR repository. ``ghcr``: an ECR pull-through cache rule for
    ``ghcr.io`` whose upstream credential is the GHCR token secret (a placeholder the operator
    fills; never read by instances); instances pull
    ``<account>.dkr.ecr.<region>.amazonaws.com/ghcr-humansa-<env>/<owner>/<name>:<tag>`` with
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
        environment: environment name (names the cache prefix and the token secret).
        tag: image tag for the ``ghcr`` source. Default: ``config.tag``.
        retain: keep the token secret when the stack is deleted. Default false.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: ImageConfig,
        architecture: Architecture,
        environment: str,
        tag: str | None = None,
        retain: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        self.source = config.source
        self.asset: ecr_assets.DockerImageAsset | None = None
        self.cache_rule: ecr.CfnPullThroughCacheRule | None = None
        self.ghcr_token: secretsmanager.Secret | None = None
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

        self.prefix = ghcr_cache_prefix(environment)
        self.ghcr_token = secretsmanager.Secret(
            self,
            "GhcrToken",
            secret_name=ghcr_token_secret_name(environment),
            description=(
                "GHCR credential of the ECR pull-through cache: JSON "
                '{"username": "<github user>", "accessToken": "<PAT with read:packages>"}. '
                "Never read by instances."
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
            self.ghcr_token,
            "AwsSolutions-SMG4",
            "GitHub token for the ECR pull-through cache: rotated at GitHub (PAT expiry), "
            "then put here by the operator; no rotation Lambda can mint a GitHub PAT.",
        )
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
        self.image_uri = (
            f"{self.registry}/{self.prefix}/{config.ghcr_repository}:{tag or config.tag}"
        )

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
