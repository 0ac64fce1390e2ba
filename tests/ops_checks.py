"""Template checks for the monitoring, rotation and audit constructs.

Each takes a ``Template`` and the config it was built from, so the same checks run on the test
app (tests/ops_fixture.py) and, once wired, on the real ``Humansa-<Env>-*`` stacks.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match, Template

from config.monitoring import AuditConfig, MonitoringConfig

ELB = "AWS/ApplicationELB"
RDS = "AWS/RDS"
GIB = 1024**3
MIB = 1024**2

DASHBOARD_WIDGETS = (
    "Requests",
    "5xx responses",
    "Target response time p50 / p95 / p99",
    "Healthy / unhealthy hosts",
    "Fleet CPU busy %",
    "Fleet memory / disk used % (max of instances)",
    "RDS CPU % / connections",
    "RDS free storage (bytes)",
    "RDS freeable memory (bytes)",
    "Usage accounting (rows / batches per 5 min)",
    "Alarms",
)


def expected_alarms(
    config: MonitoringConfig, agent_namespace: str, *, with_database: bool = True
) -> list[dict[str, Any]]:
    """The alarms ServiceMonitoring must create: suffix, metric, threshold, comparison, missing."""
    t = config.thresholds
    rows: list[tuple[str, str, str, float, str, str]] = [
        ("Target5xxRate", ELB, "HTTPCode_Target_5XX_Count", t.target_5xx_rate_percent,
         "GreaterThanThreshold", "notBreaching"),
        ("Alb5xx", ELB, "HTTPCode_ELB_5XX_Count", t.alb_5xx_count,
         "GreaterThanOrEqualToThreshold", "notBreaching"),
        ("UnhealthyHosts", ELB, "UnHealthyHostCount", t.unhealthy_hosts,
         "GreaterThanOrEqualToThreshold", "notBreaching"),
        ("NoHealthyHosts", ELB, "HealthyHostCount", t.min_healthy_hosts,
         "LessThanThreshold", "breaching"),
        ("TargetLatencyP95", ELB, "TargetResponseTime", t.target_p95_latency_seconds,
         "GreaterThanThreshold", "notBreaching"),
        ("FleetCpu", agent_namespace, "cpu_usage_idle", t.fleet_cpu_percent,
         "GreaterThanThreshold", "missing"),
        ("FleetMemory", agent_namespace, "mem_used_percent", t.fleet_memory_percent,
         "GreaterThanThreshold", "missing"),
        ("FleetDisk", agent_namespace, "disk_used_percent", t.fleet_disk_percent,
         "GreaterThanThreshold", "missing"),
        ("UsageWriteErrors", agent_namespace, "mlserver_usage_write_errors_total", 0,
         "GreaterThanThreshold", "notBreaching"),
        ("UsageRowsQuarantined", agent_namespace, "mlserver_usage_rows_quarantined_total", 0,
         "GreaterThanThreshold", "notBreaching"),
        ("UsageRowsDropped", agent_namespace, "mlserver_usage_rows_dropped_total", 0,
         "GreaterThanThreshold", "notBreaching"),
        ("UsageWriterStuck", agent_namespace, "mlserver_usage_writer_stuck", 1,
         "GreaterThanOrEqualToThreshold", "notBreaching"),
    ]  # fmt: skip
    if with_database:
        rows += [
            ("RdsCpu", RDS, "CPUUtilization", t.rds_cpu_percent,
             "GreaterThanThreshold", "missing"),
            ("RdsFreeStorage", RDS, "FreeStorageSpace", t.rds_free_storage_gib * GIB,
             "LessThanThreshold", "missing"),
            ("RdsConnections", RDS, "DatabaseConnections", t.rds_connections,
             "GreaterThanThreshold", "missing"),
            ("RdsFreeableMemory", RDS, "FreeableMemory", t.rds_freeable_memory_mib * MIB,
             "LessThanThreshold", "missing"),
        ]  # fmt: skip
    return [
        {
            "suffix": suffix,
            "namespace": namespace,
            "metric_name": metric_name,
            "threshold": threshold,
            "comparison": comparison,
            "treat_missing_data": missing,
        }
        for suffix, namespace, metric_name, threshold, comparison, missing in rows
    ]


def only_resource(template: Template, resource_type: str, props: Any = None) -> tuple[str, Any]:
    """The logical ID and properties of the single resource of a type (matching ``props``)."""
    found = template.find_resources(
        resource_type, {"Properties": props} if props is not None else None
    )
    assert len(found) == 1, f"expected one {resource_type} matching {props}, found {len(found)}"
    ((logical_id, resource),) = found.items()
    return logical_id, resource.get("Properties", {})


def alarm_metrics(props: dict[str, Any]) -> set[tuple[Any, Any]]:
    """(namespace, metric name) pairs an alarm reads, for single-metric and math alarms."""
    if "MetricName" in props:
        return {(props["Namespace"], props["MetricName"])}
    pairs = set()
    for query in props.get("Metrics", []):
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            pairs.add((metric["Namespace"], metric["MetricName"]))
    return pairs


def check_alarm(
    template: Template, environment_title: str, topic_id: str, expected: dict[str, Any]
) -> dict[str, Any]:
    """Asserts one alarm: metric and namespace, threshold, comparison, missing data, actions."""
    name = f"Humansa-{environment_title}-{expected['suffix']}"
    _, props = only_resource(template, "AWS::CloudWatch::Alarm", {"AlarmName": name})
    assert (expected["namespace"], expected["metric_name"]) in alarm_metrics(props), name
    assert props["Threshold"] == expected["threshold"], name
    assert props["ComparisonOperator"] == expected["comparison"], name
    assert props["TreatMissingData"] == expected["treat_missing_data"], name
    assert props["AlarmActions"] == [{"Ref": topic_id}], name
    assert props["OKActions"] == [{"Ref": topic_id}], name
    assert "Check first" in props["AlarmDescription"], name
    return dict(props)


def alarm_topic(template: Template, alarm_email: str | None) -> str:
    """Asserts the encrypted, SSL-only alarm topic (and its e-mail subscription); returns its ID."""
    topic_id, topic = only_resource(template, "AWS::SNS::Topic")
    assert "KmsMasterKeyId" in topic
    template.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "Topics": [{"Ref": topic_id}],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            },
        },
    )
    subscriptions = template.find_resources(
        "AWS::SNS::Subscription", {"Properties": {"TopicArn": {"Ref": topic_id}}}
    )
    if alarm_email is None:
        assert subscriptions == {}
    else:
        assert [s["Properties"]["Endpoint"] for s in subscriptions.values()] == [alarm_email]
        assert [s["Properties"]["Protocol"] for s in subscriptions.values()] == ["email"]
    return topic_id


def dashboard_text(template: Template, environment_title: str) -> str:
    """The dashboard body's literal text (token parts left out)."""
    _, props = only_resource(
        template, "AWS::CloudWatch::Dashboard", {"DashboardName": f"Humansa-{environment_title}"}
    )
    body = props["DashboardBody"]
    if isinstance(body, dict):
        parts = body["Fn::Join"][1]
        return "".join(p if isinstance(p, str) else "<token>" for p in parts)
    return str(body)


def check_dashboard(template: Template, environment_title: str) -> None:
    text = dashboard_text(template, environment_title)
    for title in DASHBOARD_WIDGETS:
        assert f'"title":{json.dumps(title)}' in text, title
    assert "not exported to CloudWatch yet" in text


def check_rotation(template: Template, days: int) -> None:
    """Asserts the hosted single-user rotation every ``days`` and its network path to the DB."""
    # One transform however many hosted rotations (CDK writes it as a one-item list then).
    transform = template.to_json().get("Transform")
    assert transform in ("AWS::SecretsManager-2024-09-16", ["AWS::SecretsManager-2024-09-16"])
    single = {"HostedRotationLambda": {"RotationType": "PostgreSQLSingleUser"}}
    _, schedule = only_resource(template, "AWS::SecretsManager::RotationSchedule", single)
    assert schedule["RotationRules"] == {"ScheduleExpression": f"rate({days} days)"}
    assert schedule["RotateImmediatelyOnUpdate"] is False
    hosted = schedule["HostedRotationLambda"]
    # the master secret's attachment (the app secret has its own, rotated by alternating users)
    attachment_id = schedule["SecretId"]["Ref"]
    attachment = template.to_json()["Resources"][attachment_id]
    assert attachment["Type"] == "AWS::SecretsManager::SecretTargetAttachment"
    assert attachment["Properties"]["TargetType"] == "AWS::RDS::DBInstance"
    sg_ref = hosted["VpcSecurityGroupIds"]
    sg_id = sg_ref["Fn::GetAtt"][0]
    template.has_resource_properties(
        "AWS::EC2::SecurityGroup", {"GroupDescription": "Database secret rotation function"}
    )
    assert sg_id in template.find_resources("AWS::EC2::SecurityGroup")
    template.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress",
        {"SourceSecurityGroupId": {"Fn::GetAtt": [sg_id, "GroupId"]}, "IpProtocol": "tcp"},
    )


def check_trail(template: Template, config: AuditConfig) -> None:
    """Asserts the trail settings and its bucket's protection and lifecycle."""
    _, trail = only_resource(template, "AWS::CloudTrail::Trail")
    assert trail["IsMultiRegionTrail"] is True
    assert trail["EnableLogFileValidation"] is True
    assert trail["IncludeGlobalServiceEvents"] is True
    assert trail["IsLogging"] is True
    assert trail["EventSelectors"] == [{"IncludeManagementEvents": True, "ReadWriteType": "All"}]
    bucket_id = trail["S3BucketName"]["Ref"]
    bucket = template.to_json()["Resources"][bucket_id]["Properties"]
    assert bucket["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        ]
    }
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "DestinationBucketName" in bucket["LoggingConfiguration"]
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    expected_transitions = []
    if config.transition_to_infrequent_access_days is not None:
        expected_transitions.append(
            {
                "StorageClass": "STANDARD_IA",
                "TransitionInDays": config.transition_to_infrequent_access_days,
            }
        )
    if config.transition_to_glacier_days is not None:
        expected_transitions.append(
            {"StorageClass": "GLACIER", "TransitionInDays": config.transition_to_glacier_days}
        )
    assert rule.get("Transitions", []) == expected_transitions
    assert rule.get("ExpirationInDays") == config.expiration_days
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": bucket_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        ),
                        Match.object_like(
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "cloudtrail.amazonaws.com"},
                                "Action": "s3:PutObject",
                            }
                        ),
                    ]
                )
            },
        },
    )
    if config.cloudwatch_logs:
        log_group_id = trail["CloudWatchLogsLogGroupArn"]["Fn::GetAtt"][0]
        template.has_resource(
            "AWS::Logs::LogGroup",
            {"Properties": {"RetentionInDays": config.cloudwatch_logs_retention_days}},
        )
        assert log_group_id in template.find_resources("AWS::Logs::LogGroup")
    else:
        assert "CloudWatchLogsLogGroupArn" not in trail
