"""Placeholder Secrets Manager secrets for the provider API keys, filled by the operator."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, SecretValue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct, IConstruct

from components.acks import acknowledge
from components.boot import PLACEHOLDER_SECRET_VALUE, PROVIDER_SECRET_NAMES, SecretFile, secret_name


def cfn_secret_name(secret: IConstruct) -> str:
    """The ``Name`` a secret is created with (its L1 property, a plain string).

    ``Secret.secret_name`` is instead a token parsed from the ARN, with the random suffix.
    """
    cfn = secret.node.default_child
    assert isinstance(cfn, secretsmanager.CfnSecret)
    if not isinstance(cfn.name, str) or not cfn.name:
        raise ValueError(f"{secret.node.path}: the secret has no fixed name to fetch it by")
    return cfn.name


def construct_id(name: str) -> str:
    """Stable PascalCase construct ID of a secret name: ``OPENAI_API_KEY`` -> ``OpenaiApiKey``."""
    return "".join(part.capitalize() for part in name.split("_"))


class ProviderSecrets(Construct):
    """One secret per name in ``PROVIDER_SECRET_NAMES``, named ``/humansa/<env>/<NAME>``.

    Each starts as ``PLACEHOLDER_SECRET_VALUE`` (Secrets Manager refuses an empty string); the
    operator puts the real value with ``make secrets`` (docs/boot.md). CloudFormation writes
    the placeholder only when it creates the secret, so a later deploy keeps the operator's
    value.

    Attributes:
        secrets: NAME -> ``Secret``.

    Args:
        environment: environment name (``dev``, ``staging``, ``production``).
        retain: keep the secrets when the stack is deleted. Default false.
    """

    def __init__(
        self, scope: Construct, construct_id_: str, *, environment: str, retain: bool = False
    ) -> None:
        super().__init__(scope, construct_id_)
        self.secrets: dict[str, secretsmanager.Secret] = {}
        for name in PROVIDER_SECRET_NAMES:
            secret = secretsmanager.Secret(
                self,
                construct_id(name),
                secret_name=secret_name(environment, name),
                description=(
                    f"Humansa ML server {environment}: {name}. Set it with "
                    f"'make secrets ENV={environment} NAME={name}'; {PLACEHOLDER_SECRET_VALUE} "
                    "means not configured."
                ),
                # A fixed, public marker, not a secret: the operator replaces it.
                secret_string_value=SecretValue.unsafe_plain_text(PLACEHOLDER_SECRET_VALUE),
                removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
            )
            acknowledge(
                secret,
                "AwsSolutions-SMG4",
                "The admin API key: the operator rotates it with 'make secrets'; the servers "
                "read the refreshed file at each admin call, so no rotation Lambda applies."
                if name == "ADMIN_API_KEY"
                else "Third-party provider API key: it can only be rotated at the provider, then "
                "put here by the operator with 'make secrets'; no rotation Lambda applies.",
            )
            self.secrets[name] = secret

    def secret_files(self) -> dict[str, SecretFile]:
        """NAME -> ``SecretFile(<the secret's name>)`` for ``BootSettings.secret_files``.

        By name, not ARN: ~60 bytes shorter per secret in the user data (EC2 allows 16 KB);
        IAM authorizes the call on the secret's full ARN, which the grant names.
        """
        return {name: SecretFile(cfn_secret_name(s)) for name, s in self.secrets.items()}

    def grant_read(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` read every provider secret (and nothing else)."""
        for secret in self.secrets.values():
            secret.grant_read(grantee)
