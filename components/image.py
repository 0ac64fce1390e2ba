"""The server image, built from ``ml_server/`` as a CDK Docker image asset."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Fn
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.model import Architecture

SERVER_DIR = Path(__file__).resolve().parent.parent / "ml_server"
_PLATFORMS = {
    "arm64": ecr_assets.Platform.LINUX_ARM64,
    "x86_64": ecr_assets.Platform.LINUX_AMD64,
}


class ServerImage(Construct):
    """Docker image asset of ``ml_server/`` for the fleet's architecture.

    Attributes:
        asset: the ``DockerImageAsset``.
        image_uri: full image reference (token).
        registry: registry host for ``docker login`` (token).

    Args:
        architecture: ``arm64`` or ``x86_64`` (must match the fleet's instances).
    """

    def __init__(self, scope: Construct, construct_id: str, *, architecture: Architecture) -> None:
        super().__init__(scope, construct_id)
        self.asset = ecr_assets.DockerImageAsset(
            self,
            "Asset",
            directory=str(SERVER_DIR),
            platform=_PLATFORMS[architecture],
            exclude=["tests", "**/__pycache__", "**/*.pyc", ".pytest_cache", "**/.pytest_cache"],
            display_name="Humansa ML server",
        )
        self.image_uri = self.asset.image_uri
        self.registry = Fn.select(0, Fn.split("/", self.asset.image_uri))

    def grant_pull(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` log in to ECR and pull the image."""
        self.asset.repository.grant_pull(grantee)
