"""The account trail in the real Humansa-CI stack (config/account.yaml), plus the AuditTrail
variants the committed config does not use (CloudWatch Logs delivery, no lifecycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Match, Template
from cdk_nag import AwsSolutionsChecks
from pydantic import ValidationError

from app import CI_STACK_NAME
from components.audit import CIS_ALARMS, CIS_NAMESPACE, LOG_GROUP_NAME, TRAIL_NAME, AuditTrail
from config import ConfigError, load_account
from config.monitoring import AuditConfig
from stacks.ci_stack import CiStack
from tests.conftest import ROOT, Synth
from tests.ops_checks import check_trail, only_resource
from tests.test_config import _config_dir


def test_trail_in_the_ci_stack_from_account_config(synth: Synth) -> None:
    assert synth.ci_stack.stack_name == CI_STACK_NAME
    assert synth.account.audit.enabled is True
    check_trail(synth.ci, synth.account.audit)
    check_audit_logs_and_alarms(synth.ci, synth.account.audit)


def check_audit_logs_and_alarms(template: Template, config: AuditConfig) -> None:
    """The trail's customer key, its encrypted log group and one CIS alarm per filter."""
    _, trail = only_resource(template, "AWS::CloudTrail::Trail")
    key_id = trail["KMSKeyId"]["Fn::GetAtt"][0]
    resources = template.to_json()["Resources"]
    key = resources[key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    statements = {s.get("Sid"): s for s in key["KeyPolicy"]["Statement"]}
    # With cdk.json's enablePartitionLiterals (the app's synth) the partition is a literal;
    # a bare App() (the variant below) still writes Ref AWS::Partition.
    literal = f"arn:aws:cloudtrail:ap-east-1:992382528744:trail/{TRAIL_NAME}"
    pseudo = {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                f":cloudtrail:ap-east-1:992382528744:trail/{TRAIL_NAME}",
            ],
        ]
    }
    encrypt = statements["CloudTrailEncryptLogs"]
    trail_arn = encrypt["Condition"]["StringEquals"]["aws:SourceArn"]
    assert trail_arn in (literal, pseudo), trail_arn
    assert encrypt["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
    assert encrypt["Action"] == "kms:GenerateDataKey*"
    assert encrypt["Condition"]["StringEquals"] == {"aws:SourceArn": trail_arn}
    assert "kms:EncryptionContext:aws:cloudtrail:arn" in encrypt["Condition"]["StringLike"]
    assert statements["CloudTrailDescribeKey"]["Condition"]["StringEquals"] == {
        "aws:SourceArn": trail_arn
    }
    template.has_resource_properties(
        "AWS::CloudTrail::Trail",
        {"TrailName": TRAIL_NAME, "CloudWatchLogsLogGroupArn": Match.any_value()},
    )
    template.has_resource_properties(
        "AWS::Logs::LogGroup",
        {
            "LogGroupName": LOG_GROUP_NAME,
            "RetentionInDays": config.cloudwatch_logs_retention_days,
            "KmsKeyId": {"Fn::GetAtt": [key_id, "Arn"]},
        },
    )
    logs_statement = statements["CloudWatchLogsEncryptTrailGroup"]
    assert logs_statement["Principal"] == {"Service": "logs.ap-east-1.amazonaws.com"}
    filters = template.find_resources("AWS::Logs::MetricFilter")
    patterns = {
        f["Properties"]["MetricTransformations"][0]["MetricName"]: f["Properties"]["FilterPattern"]
        for f in filters.values()
    }
    assert patterns == {a.name: a.pattern for a in CIS_ALARMS}
    _, topic = only_resource(template, "AWS::SNS::Topic")
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    assert len(alarms) == len(CIS_ALARMS) == 14
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert props["Namespace"] == CIS_NAMESPACE
        assert props["MetricName"] in patterns
        assert props["AlarmName"] == f"Humansa-Audit-{props['MetricName']}"
        assert props["Threshold"] == 1
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert [a["Ref"] for a in props["AlarmActions"]] == list(
            template.find_resources("AWS::SNS::Topic")
        )
    template.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Sid": "CloudWatchAlarmsPublish",
                                "Effect": "Allow",
                                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                                "Action": "sns:Publish",
                                "Condition": Match.object_like(
                                    {"StringEquals": {"aws:SourceAccount": "992382528744"}}
                                ),
                            }
                        )
                    ]
                )
            }
        },
    )
    assert statements["CloudWatchAlarmsUseTopicKey"]["Principal"] == {
        "Service": "cloudwatch.amazonaws.com"
    }


def test_cis_filter_patterns_are_balanced() -> None:
    for alarm in CIS_ALARMS:
        text = alarm.pattern
        assert text.startswith("{ ") and text.endswith(" }"), alarm.name
        assert text.count("(") == text.count(")"), alarm.name
        assert text.count('"') % 2 == 0, alarm.name


def test_trail_without_cloudwatch_logs_has_no_alarms() -> None:
    stack = Stack(App(), "Account", env=cdk.Environment(account="992382528744", region="ap-east-1"))
    config = AuditConfig(cloudwatch_logs=False)
    trail = AuditTrail(stack, "AuditTrail", config=config)
    template = Template.from_stack(stack)
    check_trail(template, config)
    template.resource_count_is("AWS::Logs::LogGroup", 0)
    template.resource_count_is("AWS::CloudWatch::Alarm", 0)
    assert trail.topic is None
    template.has_resource_properties("AWS::CloudTrail::Trail", {"KMSKeyId": Match.any_value()})


def test_alarm_email_subscribes_to_the_audit_topic() -> None:
    stack = Stack(App(), "Account", env=cdk.Environment(account="992382528744", region="ap-east-1"))
    AuditTrail(stack, "AuditTrail", config=AuditConfig(alarm_email="sec@example.com"))
    Template.from_stack(stack).has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "sec@example.com"}
    )


def test_ci_stack_is_termination_protected(synth: Synth) -> None:
    assert synth.account.termination_protection is True
    assert synth.ci_stack.termination_protection is True


@pytest.fixture(scope="module")
def with_logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Template, Path, AuditConfig]:
    """A CI stack whose trail delivers to CloudWatch Logs, non-default lifecycle, cdk-nag on."""
    config = AuditConfig(
        cloudwatch_logs=True,
        cloudwatch_logs_retention_days=400,
        transition_to_infrequent_access_days=45,
        transition_to_glacier_days=120,
        expiration_days=400,
    )
    outdir = tmp_path_factory.mktemp("audit")
    app = App(outdir=str(outdir))
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    CiStack(
        app,
        "Humansa-CI",
        github_repository="octo-org/humansa-ml-server",
        env=cdk.Environment(account="992382528744", region="ap-east-1"),
        audit=config,
    )
    artifact = app.synth().get_stack_by_name("Humansa-CI")  # raises on a cdk-nag finding
    return Template.from_json(artifact.template), outdir / artifact.template_file, config


def test_trail_with_cloudwatch_logs(with_logs: tuple[Template, Path, AuditConfig]) -> None:
    template, _, config = with_logs
    check_trail(template, config)
    check_audit_logs_and_alarms(template, config)


def test_trail_with_cloudwatch_logs_is_cfn_lint_clean(
    with_logs: tuple[Template, Path, AuditConfig],
) -> None:
    _, path, _ = with_logs
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "cfn-lint"),
            "--config-file",
            str(ROOT / ".cfnlintrc.yaml"),
            "--format",
            "parseable",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr


def test_trail_without_transitions_or_expiry() -> None:
    stack = Stack(App(), "Account")
    config = AuditConfig(
        transition_to_infrequent_access_days=None,
        transition_to_glacier_days=None,
        expiration_days=None,
    )
    AuditTrail(stack, "AuditTrail", config=config)
    check_trail(Template.from_stack(stack), config)


def test_disabled_audit_leaves_the_trail_out() -> None:
    stack = CiStack(
        App(),
        "Humansa-CI",
        github_repository="octo-org/humansa-ml-server",
        env=cdk.Environment(account="992382528744", region="ap-east-1"),
        audit=AuditConfig(enabled=False),
    )
    assert stack.audit is None
    Template.from_stack(stack).resource_count_is("AWS::CloudTrail::Trail", 0)
    with pytest.raises(ValueError, match=r"audit\.enabled is false"):
        AuditTrail(Stack(App(), "Account"), "AuditTrail", config=AuditConfig(enabled=False))


def test_defaults() -> None:
    config = AuditConfig()
    assert (config.enabled, config.cloudwatch_logs, config.alarm_email) == (True, True, None)
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
        ({"alarm_email": "not-mail"}, r"audit\.alarm_email: 'not-mail' is not an e-mail"),
    ],
)
def test_config_rejects(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuditConfig.model_validate(data)


@pytest.mark.parametrize("days", [1, 90, 400, 3653])
def test_every_allowed_retention_synthesizes(days: int) -> None:
    stack = Stack(App(), "Account")
    AuditTrail(
        stack,
        "AuditTrail",
        config=AuditConfig(cloudwatch_logs=True, cloudwatch_logs_retention_days=days),
    )
    Template.from_stack(stack).has_resource_properties(
        "AWS::Logs::LogGroup", {"RetentionInDays": days}
    )


def _account_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """config/ copied to tmp_path with ``changes`` applied to account.yaml."""
    import yaml

    monkeypatch.chdir(tmp_path)
    folder = _config_dir(tmp_path)
    data = yaml.safe_load((folder / "account.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    (folder / "account.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("HUMANSA_CONFIG_DIR", str(folder))


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {"audit__cloudwatch_logs_retention_days": 10},
            "config/account.yaml: audit.cloudwatch_logs_retention_days: 10 is not a CloudWatch "
            "Logs retention; allowed: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, "
            "731, 1096, 1827, 2192, 2557, 2922, 3288, 3653",
        ),
        (
            {"audit__expiration_days": 60},
            "config/account.yaml: audit.expiration_days (60) must be greater than "
            "audit.transition_to_glacier_days (90)",
        ),
        (
            {"audit__trail": "x"},
            "config/account.yaml: audit.trail is not a known setting (allowed: enabled, "
            "cloudwatch_logs, cloudwatch_logs_retention_days, transition_to_infrequent_access_days"
            ", transition_to_glacier_days, expiration_days, alarm_email)",
        ),
        ({"account": None}, "config/account.yaml: account is required"),
        (
            {"github__repository": "octo/other"},
            "config/dev.yaml: github.repository=humansa/humansa-ml-server differs from "
            "github.repository=octo/other in config/account.yaml (one repository deploys "
            "account 992382528744)",
        ),
        (
            {"bootstrap_qualifier": "not a qualifier"},
            "config/account.yaml: bootstrap_qualifier=not a qualifier must be a cdk bootstrap "
            "qualifier: 1-10 letters, digits, _ or -",
        ),
    ],
)
def test_account_config_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], line: str
) -> None:
    _account_dir(tmp_path, monkeypatch, **changes)
    with pytest.raises(ConfigError) as caught:
        load_account()
    assert str(caught.value) == line


def test_missing_account_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _account_dir(tmp_path, monkeypatch)
    (tmp_path / "config" / "account.yaml").unlink()
    with pytest.raises(ConfigError, match=r"^config/account\.yaml not found: the account-level"):
        load_account()


def test_committed_account_config() -> None:
    config = load_account()
    assert (config.account, config.region) == ("992382528744", "ap-east-1")
    assert config.audit == AuditConfig()  # the committed file spells out the defaults
