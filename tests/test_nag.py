"""cdk-nag AwsSolutions: no unacknowledged finding, and every acknowledgment is reasoned."""

from __future__ import annotations

import json
from typing import Any

from humansa_ops.synth_summary import ACK_TYPE, acknowledgments
from humansa_ops.synth_summary import main as summary_main
from tests.conftest import Synth

SERVICE = {
    "AwsSolutions-AS3",
    "AwsSolutions-EC23",
    "AwsSolutions-IAM5",
    "AwsSolutions-S1",  # the ALB access-log bucket (a log bucket)
    "AwsSolutions-SMG4",  # provider API key placeholders (rotated at the provider)
}
# cdk-nag's EC26 cannot follow the launch template inside a MixedInstancesPolicy (spot fleets).
SERVICE_SPOT = SERVICE | {"AwsSolutions-EC26"}
# Data's SMG4 is the GHCR token only (rotated at GitHub); the database secrets rotate on a
# schedule (rotation.enabled, the default).
# IAM4/IAM5: CDK's LogRetention function (RDS log group retention).
LOG_RETENTION = {"AwsSolutions-IAM4", "AwsSolutions-IAM5"}
GHCR_TOKEN = {"AwsSolutions-SMG4"}
DATA_UNPROTECTED = (
    LOG_RETENTION
    | GHCR_TOKEN
    | {
        "AwsSolutions-RDS3",
        "AwsSolutions-RDS10",
        "AwsSolutions-RDS11",
    }
)
EXPECTED = {
    "Humansa-Dev-Network": {"AwsSolutions-EC28", "AwsSolutions-EC29"},
    "Humansa-Dev-Data": DATA_UNPROTECTED,
    "Humansa-Dev-Service": SERVICE_SPOT,
    "Humansa-Staging-Network": set(),
    "Humansa-Staging-Data": DATA_UNPROTECTED,
    "Humansa-Staging-Service": SERVICE_SPOT,
    "Humansa-Production-Network": set(),
    "Humansa-Production-Data": LOG_RETENTION | GHCR_TOKEN | {"AwsSolutions-RDS11"},
    "Humansa-Production-Service": SERVICE,
    "Humansa-CI": {"AwsSolutions-IAM5"},
}


def _metadata(synth: Synth, stack: str) -> dict[str, Any]:
    return dict(json.loads((synth.outdir / f"{stack}.metadata.json").read_text()))


def test_no_unacknowledged_findings(synth: Synth) -> None:
    assert synth.validation_error is None, synth.validation_error
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    violations = [v for plugin in report["pluginReports"] for v in plugin["violations"]]
    assert violations == []


def test_acknowledged_rules_per_stack(synth: Synth) -> None:
    found = {stack: set(acknowledgments(_metadata(synth, stack))) for stack in EXPECTED}
    assert found == EXPECTED


def test_every_acknowledgment_has_a_specific_reason(synth: Synth) -> None:
    reasons: list[str] = []
    for stack in EXPECTED:
        for entries in _metadata(synth, stack).values():
            for entry in entries:
                if entry["type"] == ACK_TYPE:
                    reasons.extend(entry["data"].values())
    assert reasons
    for reason in reasons:
        assert len(reason) >= 40, reason


def test_summary_prints_each_stack(synth: Synth, capsys: Any) -> None:
    assert summary_main(["synth_summary.py", str(synth.outdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    transport = ("WARNING:", "note:")  # the plain-HTTP lines (tests/test_service.py)
    rows = {
        line.split()[0]: line.split()[1:4] for line in lines[1:] if not line.startswith(transport)
    }
    assert set(rows) == set(EXPECTED)
    # RDS11 + LogRetention IAM4, IAM5 + the app-user function IAM4 (basic, VPC access) + the
    # GHCR token's SMG4
    assert rows["Humansa-Production-Data"][1:] == ["6", "0"]
    # the diff role's stack ARNs + the deploy role's DescribeSecret on the GHCR tokens (IAM5)
    assert rows["Humansa-CI"][1:] == ["2", "0"]
    # 4 foundation + the launch hook's group ARN (IAM5) + 11 secrets (10 provider, the admin
    # key: SMG4) + EC26 of the spot group
    assert rows["Humansa-Dev-Service"][1:] == ["17", "0"]
    assert all(int(resources) > 5 for resources, _, _ in rows.values())
