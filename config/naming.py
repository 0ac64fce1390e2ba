"""Names derived from an environment's name, in one place (stacks, outputs, log groups, ...).

Light on purpose (no CDK import): the operator tools in ``humansa_ops`` read it too.
"""

from __future__ import annotations

from typing import Final

#: ``CfnOutput`` keys of ``Humansa-<Env>-Service`` that ``make status|logs|shell`` read.
OUTPUT_SERVICE_URL: Final = "ServiceUrl"
OUTPUT_DASHBOARD_URL: Final = "DashboardUrl"
OUTPUT_APP_LOG_GROUP: Final = "AppLogGroup"
OUTPUT_SETUP_LOG_GROUP: Final = "SetupLogGroup"
OUTPUT_ASG_NAME: Final = "AutoScalingGroupName"
OUTPUT_TARGET_GROUP_ARN: Final = "TargetGroupArn"
OUTPUT_IMAGE_URI: Final = "ImageUri"
OUTPUT_IMAGE_TAG: Final = "ImageTag"
OUTPUT_IMAGE_SOURCE: Final = "ImageSource"
SERVICE_OUTPUTS: Final = (
    OUTPUT_SERVICE_URL,
    OUTPUT_DASHBOARD_URL,
    OUTPUT_APP_LOG_GROUP,
    OUTPUT_SETUP_LOG_GROUP,
    OUTPUT_ASG_NAME,
    OUTPUT_TARGET_GROUP_ARN,
    OUTPUT_IMAGE_URI,
    OUTPUT_IMAGE_TAG,
    OUTPUT_IMAGE_SOURCE,
)
LAYERS: Final = ("Network", "Data", "Service")


def title(name: str) -> str:
    """``dev-alice`` -> ``DevAlice`` (the stack and alarm name prefix part)."""
    return "".join(part.capitalize() for part in name.split("-"))


def stack_name(name: str, layer: str) -> str:
    """``Humansa-<Title>-<Layer>``, e.g. ``Humansa-Dev-Service``."""
    return f"Humansa-{title(name)}-{layer}"


def stack_names(name: str) -> list[str]:
    """The environment's stacks in deploy order."""
    return [stack_name(name, layer) for layer in LAYERS]


def dashboard_url(region: str, dashboard: str) -> str:
    """The CloudWatch console page of a dashboard."""
    return (
        f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
        f"#dashboards/dashboard/{dashboard}"
    )
