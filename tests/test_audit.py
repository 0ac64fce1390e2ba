"""AuditTrail: the account trail, its bucket and lifecycle, optional CloudWatch Logs."""

from __future__ import annotations

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template
from pydantic import ValidationError

from components.audit import AuditTrail
from config.monitoring import AuditConfig
from tests.ops_checks import check_trail
from tests.ops_fixture import AUDIT, ops_app


def test_trail_from_fixture_config() -> None:
    check_trail(ops_app().account, AUDIT)


def test_trail_with_defaults_and_no_cloudwatch_logs() -> None:
    app = App()
    stack = Stack(app, "Account")
    config = AuditConfig()
    AuditTrail(stack, "AuditTrail", config=config)
    template = Template.from_stack(stack)
    check_trail(template, config)
    template.resource_count_is("AWS::Logs::LogGroup", 0)


def test_trail_without_transitions_or_expiry() -> None:
    app = App()
    stack = Stack(app, "Account")
    config = AuditConfig(
        transition_to_infrequent_access_days=None,
        transition_to_glacier_days=None,
        expiration_days=None,
    )
    AuditTrail(stack, "AuditTrail", config=config)
    check_trail(Template.from_stack(stack), config)


def test_disabled_config_is_refused() -> None:
    with pytest.raises(ValueError, match=r"audit\.enabled is false"):
        AuditTrail(Stack(App(), "Account"), "AuditTrail", config=AuditConfig(enabled=False))


def test_defaults() -> None:
    config = AuditConfig()
    assert (config.enabled, config.cloudwatch_logs) == (True, False)
    assert (
        config.transition_to_infrequent_access_days,
        config.transition_to_glacier_days,
        config.expiration_days,
    ) == (30, 90, 365)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"transition_to_infrequent_access_days": 10}, "transition_to_infrequent_access_days"),
        ({"transition_to_glacier_days": 40}, r"audit\.transition_to_glacier_days \(40\)"),
        ({"expiration_days": 60}, r"audit\.expiration_days \(60\) must be greater"),
        ({"cloudwatch_logs_retention_days": 10}, "cloudwatch_logs_retention_days: 10"),
        ({"trail_name": "x"}, "trail_name"),
    ],
)
def test_config_rejects(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuditConfig.model_validate(data)


@pytest.mark.parametrize("days", [1, 90, 400, 3653])
def test_every_allowed_retention_synthesizes(days: int) -> None:
    app = App()
    stack = Stack(app, "Account")
    AuditTrail(
        stack,
        "AuditTrail",
        config=AuditConfig(cloudwatch_logs=True, cloudwatch_logs_retention_days=days),
    )
    Template.from_stack(stack).has_resource_properties(
        "AWS::Logs::LogGroup", {"RetentionInDays": days}
    )
