"""ServiceMonitoring: topic, alarms, dashboard (GIVEN the ops test app, THEN its template...)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aws_cdk import App, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk.assertions import Template
from prometheus_client import Gauge
from pydantic import ValidationError

from components.boot import METRICS_PORT
from components.monitoring import ServiceMonitoring
from config.monitoring import AlarmThresholds, MonitoringConfig
from ml_server.metrics import Metrics
from tests import boot_harness as h
from tests.conftest import Synth
from tests.ops_checks import (
    alarm_topic,
    check_alarm,
    check_dashboard,
    dashboard_text,
    expected_alarms,
)
from tests.ops_fixture import AGENT_NAMESPACE, ENVIRONMENT, MONITORING, ops_app

TITLE = ENVIRONMENT.capitalize()


@pytest.fixture(scope="module")
def service() -> Template:
    return ops_app().service


@pytest.mark.parametrize(
    "expected", expected_alarms(MONITORING, AGENT_NAMESPACE), ids=lambda e: e["suffix"]
)
def test_alarm(service: Template, expected: dict[str, object]) -> None:
    topic_id = alarm_topic(service, MONITORING.alarm_email)
    check_alarm(service, TITLE, topic_id, expected)


def test_no_other_alarms(service: Template) -> None:
    names = {
        r["Properties"]["AlarmName"]
        for r in service.find_resources("AWS::CloudWatch::Alarm").values()
    }
    assert names == {
        f"Humansa-{TITLE}-{e['suffix']}" for e in expected_alarms(MONITORING, AGENT_NAMESPACE)
    }


def test_config_values_reach_the_template(service: Template) -> None:
    # The fixture sets non-default values; the defaults would be 30 s and 80.
    check_alarm(
        service,
        TITLE,
        alarm_topic(service, MONITORING.alarm_email),
        {
            "suffix": "TargetLatencyP95",
            "namespace": "AWS/ApplicationELB",
            "metric_name": "TargetResponseTime",
            "threshold": 45,
            "comparison": "GreaterThanThreshold",
            "treat_missing_data": "notBreaching",
        },
    )
    _, props = next(
        iter(
            service.find_resources(
                "AWS::CloudWatch::Alarm",
                {"Properties": {"AlarmName": f"Humansa-{TITLE}-RdsConnections"}},
            ).items()
        )
    )
    assert props["Properties"]["Threshold"] == 60


def test_latency_alarm_uses_p95(service: Template) -> None:
    service.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {"AlarmName": f"Humansa-{TITLE}-TargetLatencyP95", "ExtendedStatistic": "p95"},
    )


def test_target_5xx_rate_ignores_low_traffic(service: Template) -> None:
    found = service.find_resources(
        "AWS::CloudWatch::Alarm", {"Properties": {"AlarmName": f"Humansa-{TITLE}-Target5xxRate"}}
    )
    (alarm,) = found.values()
    expressions = [m["Expression"] for m in alarm["Properties"]["Metrics"] if "Expression" in m]
    minimum = MONITORING.thresholds.target_5xx_min_requests
    assert expressions == [f"IF(requests >= {minimum}, 100 * FILL(errors, 0) / requests, 0)"]


def test_agent_alarms_use_the_auto_scaling_group_dimension(service: Template) -> None:
    for suffix in ("FleetMemory", "FleetDisk"):
        service.has_resource_properties(
            "AWS::CloudWatch::Alarm",
            {
                "AlarmName": f"Humansa-{TITLE}-{suffix}",
                "Namespace": AGENT_NAMESPACE,
                "Statistic": "Maximum",
                "Dimensions": [
                    {"Name": "AutoScalingGroupName", "Value": {"Ref": _asg_id(service)}}
                ],
            },
        )


def _asg_id(template: Template) -> str:
    (logical_id,) = template.find_resources("AWS::AutoScaling::AutoScalingGroup")
    return str(logical_id)


def test_topic_key_lets_cloudwatch_publish(service: Template) -> None:
    (key,) = service.find_resources("AWS::KMS::Key").values()
    assert key["Properties"]["EnableKeyRotation"] is True
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    cloudwatch = [
        s for s in statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert len(cloudwatch) == 1
    assert set(cloudwatch[0]["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}


def test_dashboard(service: Template) -> None:
    check_dashboard(service, TITLE)


def test_public_alarm_attributes() -> None:
    monitoring = ops_app().monitoring
    assert monitoring.target_5xx_alarm is monitoring.alarms["Target5xxRate"]
    assert monitoring.unhealthy_hosts_alarm is monitoring.alarms["UnhealthyHosts"]
    assert monitoring.topic.node.id == "Topic"


def test_without_database_and_email() -> None:
    """GIVEN no database and no e-mail THEN no RDS alarm, widget or subscription."""
    app = App()
    stack = Stack(app, "NoDb")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    alb = elbv2.ApplicationLoadBalancer(stack, "Alb", vpc=vpc)
    asg = autoscaling.AutoScalingGroup(
        stack,
        "Fleet",
        vpc=vpc,
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
        instance_type=ec2.InstanceType("t3.small"),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(),
    )
    target_group = alb.add_listener("Http", port=80).add_targets(
        "Ml", port=5001, protocol=elbv2.ApplicationProtocol.HTTP, targets=[asg]
    )
    config = MonitoringConfig()
    ServiceMonitoring(
        stack,
        "Monitoring",
        environment="dev",
        load_balancer=alb,
        target_group=target_group,
        auto_scaling_group=asg,
        database=None,
        config=config,
        agent_namespace="humansa-ml/dev",
    )
    template = Template.from_stack(stack)
    topic_id = alarm_topic(template, None)
    expected = expected_alarms(config, "humansa-ml/dev", with_database=False)
    for alarm in expected:
        check_alarm(template, "Dev", topic_id, alarm)
    template.resource_count_is("AWS::CloudWatch::Alarm", len(expected))
    assert "RDS" not in dashboard_text(template, "Dev")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"environment": "Prod"}, "environment 'Prod'"),
        ({"agent_namespace": "AWS/EC2"}, "agent_namespace 'AWS/EC2'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, str], message: str) -> None:
    app = App()
    stack = Stack(app, "Bad")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    alb = elbv2.ApplicationLoadBalancer(stack, "Alb", vpc=vpc)
    asg = autoscaling.AutoScalingGroup(
        stack,
        "Fleet",
        vpc=vpc,
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
        instance_type=ec2.InstanceType("t3.small"),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(),
    )
    target_group = alb.add_listener("Http", port=80).add_targets(
        "Ml", port=5001, protocol=elbv2.ApplicationProtocol.HTTP, targets=[asg]
    )
    arguments = {"environment": "dev", "agent_namespace": "humansa-ml/dev", **kwargs}
    with pytest.raises(ValueError, match=message):
        ServiceMonitoring(
            stack,
            "Monitoring",
            environment=arguments["environment"],
            load_balancer=alb,
            target_group=target_group,
            auto_scaling_group=asg,
            database=None,
            config=MonitoringConfig(),
            agent_namespace=arguments["agent_namespace"],
        )


def test_config_defaults() -> None:
    t = MonitoringConfig().thresholds
    assert (t.target_p95_latency_seconds, t.unhealthy_hosts, t.fleet_cpu_percent) == (30, 1, 80)
    assert MonitoringConfig().alarm_email is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"alarm_email": "not-an-address"}, "monitoring.alarm_email"),
        ({"thresholds": {"fleet_cpu_percent": 120}}, "fleet_cpu_percent"),
        ({"thresholds": {"unknown": 1}}, "unknown"),
        ({"dashboard": True}, "dashboard"),
    ],
)
def test_config_rejects(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MonitoringConfig.model_validate(data)


def test_thresholds_are_frozen() -> None:
    with pytest.raises(ValidationError):
        AlarmThresholds().fleet_cpu_percent = 1  # type: ignore[misc]


def test_templates_pass_cfn_lint() -> None:
    """The ops test app's templates (alarms, dashboard) lint clean."""
    templates = sorted(str(p) for p in Path(ops_app().templates_dir).glob("*.template.json"))
    assert len(templates) == 3  # network, data, service (trail and rotation: real stacks)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), *templates],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("env", ["dev", "staging", "production"])
def test_topic_policy_lets_cloudwatch_alarms_publish(synth: Synth, env: str) -> None:
    """GIVEN the alarm topic of each environment THEN its policy (which replaces SNS's default
    policy) allows cloudwatch.amazonaws.com to publish, only for this account's alarms named
    Humansa-<Env>-*, and still denies every request without TLS."""
    config = synth.configs[env]
    template = synth.template(env, "Service")
    (policy,) = template.find_resources("AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    assert len(allows) == 1, statements
    allow = allows[0]
    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert allow["Action"] == "sns:Publish"
    assert allow["Condition"]["StringEquals"] == {"aws:SourceAccount": config.account}
    # enablePartitionLiterals (cdk.json): the partition is written in, not Ref AWS::Partition.
    assert allow["Condition"]["ArnLike"]["aws:SourceArn"] == (
        f"arn:aws:cloudwatch:{config.region}:{config.account}:"
        f"alarm:Humansa-{config.name.capitalize()}-*"
    )
    # Every alarm of the environment publishes to this topic and matches that prefix.
    for alarm in template.find_resources("AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmName"].startswith(f"Humansa-{config.name.capitalize()}-")
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert len(denies) == 1
    assert denies[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert denies[0]["Action"] == "sns:Publish"


# --- usage-writer alarms: the seam with the CloudWatch agent and the server --------------------


def _agent_and_scrape(synth: Synth, env: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The agent config and the Prometheus scrape config the synthesized boot writes, and the
    scrape config's path on the instance (``$CWA`` of the boot script)."""
    stacks = synth.stacks[env]
    templates = {
        st.stack_name: synth.template_json(env, kind)
        for kind, st in zip(
            ("Network", "Data", "Service"),
            (stacks.network, stacks.data, stacks.service),
            strict=True,
        )
    }
    script = h.synthesized_user_data(templates, stacks.service.stack_name, synth.configs[env])
    agent = json.loads(h.heredoc(script, "/humansa-ml.json"))
    scrape = yaml.safe_load(h.heredoc(script, "/prometheus.yaml"))
    (cwa,) = re.findall(r'^CWA="\$ROOT(\S+)"$', script, re.MULTILINE)
    (line,) = [x for x in script.splitlines() if x.startswith("write_file ") and "prometheus" in x]
    path = line.split('"')[1].replace("$CWA", cwa)
    return agent, scrape, path


def _server_gauges() -> dict[str, tuple[set[str], str]]:
    """Gauge name -> (label names, multiprocess mode) of the server's gauges."""
    metrics = Metrics()
    return {
        g._name: (set(g._labelnames), g._multiprocess_mode)
        for g in vars(metrics).values()
        if isinstance(g, Gauge)
    }


def _server_counters() -> dict[str, set[str]]:
    """Sample name -> label names of every counter the server exposes (ml_server/metrics.py)."""
    counters: dict[str, set[str]] = {}
    for family in Metrics().registry.collect():
        if family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counters[sample.name] = set(sample.labels)
    return counters


@pytest.mark.parametrize("env", ["dev", "staging", "production"])
def test_usage_alarms_read_exactly_what_the_agent_publishes(synth: Synth, env: str) -> None:
    """GIVEN the agent config in each environment's synthesized user data WHEN its Prometheus
    scrape turns the server's usage counters into EMF metrics THEN each usage alarm's namespace,
    metric name and dimensions are the ones those events carry, the counter exists on the
    server without labels of its own, and the alarm notifies the alarm topic."""
    agent, scrape, scrape_path = _agent_and_scrape(synth, env)
    prometheus = agent["logs"]["metrics_collected"]["prometheus"]
    assert prometheus["prometheus_config_path"] == scrape_path
    (job,) = scrape["scrape_configs"]
    (static,) = job["static_configs"]
    (target,) = static["targets"]
    assert target == f"127.0.0.1:{METRICS_PORT}"  # the port the unit publishes on loopback only
    # Prometheus labels every scraped series with job and instance.
    labels = {"job": job["job_name"], "instance": target}
    emf = prometheus["emf_processor"]
    (declaration,) = emf["metric_declaration"]
    joined = ";".join(labels[name] for name in declaration["source_labels"])
    assert re.search(declaration["label_matcher"], joined), "the declaration skips the job"

    template = synth.template(env, "Service")
    topic_id = alarm_topic(template, synth.configs[env].monitoring.alarm_email)
    counters = _server_counters()
    alarms = {
        props["AlarmName"]: props
        for props in (
            r["Properties"] for r in template.find_resources("AWS::CloudWatch::Alarm").values()
        )
        if str(props.get("MetricName", "")).startswith("mlserver_")
    }
    suffixes = {name.rsplit("-", 1)[1] for name in alarms}
    assert {"UsageWriteErrors", "UsageRowsQuarantined", "UsageWriterStuck"} <= suffixes, sorted(
        alarms
    )
    gauges = _server_gauges()
    for name, props in alarms.items():
        metric = props["MetricName"]
        assert props["Namespace"] == emf["metric_namespace"], name
        assert any(re.search(s, metric) for s in declaration["metric_selectors"]), name
        dimensions = {d["Name"]: d["Value"] for d in props["Dimensions"]}
        assert sorted(dimensions) in [sorted(d) for d in declaration["dimensions"]], name
        assert dimensions == {k: labels[k] for k in dimensions}, name
        assert props["AlarmActions"] == [{"Ref": topic_id}], name
        if metric in gauges:
            # A gauge is sent as it is: Maximum over the fleet. With several workers, one
            # series (no pid label) of the live workers only (tests/test_stuck_gauge.py).
            assert gauges[metric] == (set(), "livemax"), (name, metric)
            assert props["Statistic"] == "Maximum" and props["Threshold"] == 1, name
            assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold", name
            continue
        # A counter: the agent sends the delta of each scrape, so Sum counts new events.
        assert metric in counters and counters[metric] == set(), (name, metric)
        assert props["Statistic"] == "Sum" and props["Threshold"] == 0, name
