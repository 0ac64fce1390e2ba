"""SSM String parameters under ``/humansa/<env>/`` (the seed's names)."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import aws_iam as iam
from aws_cdk import aws_ssm as ssm
from constructs import Construct


def _construct_id(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


class Parameters(Construct):
    """One ``ssm.StringParameter`` per entry, named ``<path><name>``.

    Attributes:
        parameters: name (e.g. ``db_host``) -> ``ssm.StringParameter``.

    Args:
        path: parameter path with trailing slash, e.g. ``/humansa/production/``.
        values: name -> value (values may be tokens).
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, path: str, values: Mapping[str, str]
    ) -> None:
        super().__init__(scope, construct_id)
        self.parameters: dict[str, ssm.StringParameter] = {}
        for name, value in values.items():
            self.parameters[name] = ssm.StringParameter(
                self,
                _construct_id(name),
                parameter_name=f"{path}{name}",
                string_value=value,
                description=f"Humansa {name} (managed by CDK)",
                tier=ssm.ParameterTier.STANDARD,
            )

    def grant_read(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` read each parameter."""
        for parameter in self.parameters.values():
            parameter.grant_read(grantee)
