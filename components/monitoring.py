"""Alarms, alarm topic and dashboard of one environment."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_rds as rds
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from components.boot import (
    METRICS_PORT,
    PROMETHEUS_JOB,
    USAGE_ALARM_METRICS,
    USAGE_GAUGE_METRICS,
    USAGE_STUCK_METRIC,
)
from config.monitoring import MonitoringConfig
from config.naming import alarm_prefix

_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_GIB = 1024**3
_MIB = 1024**2

GT = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
GTE = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
LT = cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD
Missing = cloudwatch.TreatMissingData


USAGE_METRIC_DIMENSIONS: dict[str, str] = {"job": PROMETHEUS_JOB}
"""Dimensions of the server's usage metrics: the agent's Prometheus ``job`` label only (one
fleet-wide series per metric; user_data/cloudwatch-agent.json.j2)."""

_USAGE_ALARMS: dict[str, tuple[str, str]] = {
    "mlserver_usage_write_errors_total": (
        "UsageWriteErrors",
        "The usage writer failed to write a batch to PostgreSQL (it retries; the rows wait in "
        "memory or the local spool). Check first: the server log for 'usage' errors, the "
        "database (RdsCpu, RdsConnections, a failover), /ready's writer details.",
    ),
    "mlserver_usage_rows_quarantined_total": (
        "UsageRowsQuarantined",
        "The database refused usage rows (value out of range, bad text, unknown key): they are "
        "kept in the usage_quarantine table with the reason, not billed. Check first: "
        "SELECT reason, count(*) FROM usage_quarantine GROUP BY 1.",
    ),
    "mlserver_usage_rows_dropped_total": (
        "UsageRowsDropped",
        "Usage rows were dropped (the in-memory queue and the local spool were full): this "
        "usage is lost. Check first: the UsageWriteErrors alarm and the database, then the "
        "spool size on the dashboard.",
    ),
}


@dataclass(frozen=True)
class _AlarmSpec:
    construct_id: str
    metric: cloudwatch.IMetric
    threshold: float
    comparison: cloudwatch.ComparisonOperator
    evaluation_periods: int
    datapoints_to_alarm: int
    treat_missing_data: cloudwatch.TreatMissingData
    description: str


class ServiceMonitoring(Construct):
    """SNS alarm topic, the environment's alarms and its CloudWatch dashboard.

    Alarm names are ``Humansa-<Env>-<Alarm>`` (stable: the instance refresh refers to them).

    Args:
        scope: Parent construct (the service stack).
        construct_id: Construct ID, e.g. ``"Monitoring"``.
        environment: Environment name (``dev``, ``staging``, ``production``); names the alarms
            and the dashboard ``Humansa-<Env>``.
        load_balancer: The service's ALB (ELB 5xx, request count).
        target_group: The service's target group (target 5xx, latency, host counts).
        auto_scaling_group: The fleet; its name is the ``AutoScalingGroupName`` dimension of the
            CloudWatch agent metrics.
        database: The RDS instance, possibly from another stack; None skips the RDS alarms and
            widgets.
        config: Thresholds and the optional alarm e-mail.
        agent_namespace: Namespace the CloudWatch agent publishes to (``humansa-ml/<env>``). The
            agent must aggregate by ``AutoScalingGroupName`` (``append_dimensions`` plus
            ``aggregation_dimensions: [["AutoScalingGroupName"]]``).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        environment: str,
        load_balancer: elbv2.ApplicationLoadBalancer,
        target_group: elbv2.ApplicationTargetGroup,
        auto_scaling_group: autoscaling.AutoScalingGroup,
        database: rds.DatabaseInstance | None,
        config: MonitoringConfig,
        agent_namespace: str,
    ) -> None:
        super().__init__(scope, construct_id)
        if not _ENVIRONMENT.match(environment):
            raise ValueError(
                f"ServiceMonitoring: environment {environment!r} must be lower-case letters, "
                "digits and '-', starting with a letter (at most 31 characters)"
            )
        if not agent_namespace or agent_namespace.startswith("AWS/"):
            raise ValueError(
                f"ServiceMonitoring: agent_namespace {agent_namespace!r} must be the CloudWatch "
                "agent's custom namespace (e.g. 'humansa-ml/dev'), not empty or 'AWS/...'"
            )
        self._prefix = alarm_prefix(environment)
        t = config.thresholds

        # CloudWatch cannot publish to a topic encrypted with the AWS-managed key (aws/sns): its
        # key policy cannot be extended to cloudwatch.amazonaws.com. Hence our own key.
        self.topic_key = kms.Key(
            self,
            "TopicKey",
            description=f"{self._prefix} alarm topic encryption",
            enable_key_rotation=True,
        )
        self.topic_key.grant(
            iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*"
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            display_name=f"{self._prefix} alarms",
            master_key=self.topic_key,
            enforce_ssl=True,
        )
        # A topic policy replaces SNS's default policy, and enforce_ssl's policy holds only a
        # Deny: without this Allow no alarm could publish ("Amazon SNS topic policies for
        # CloudWatch alarms"). Limited to this account's alarms of this environment.
        stack = Stack.of(self)
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name=f"{self._prefix}-*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                },
            )
        )
        if config.alarm_email is not None:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        action = cw_actions.SnsAction(self.topic)

        five_min = Duration.minutes(5)
        one_min = Duration.minutes(1)
        lb_metrics = load_balancer.metrics
        tg_metrics = target_group.metrics
        requests = lb_metrics.request_count(period=five_min)
        target_5xx = tg_metrics.http_code_target(
            elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=five_min
        )
        tg_requests = tg_metrics.request_count(period=five_min)
        elb_5xx = lb_metrics.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT, period=five_min)
        latency = {
            p: tg_metrics.target_response_time(statistic=p, period=five_min)
            for p in ("p50", "p95", "p99")
        }
        unhealthy = tg_metrics.unhealthy_host_count(statistic="Maximum", period=one_min)
        healthy = tg_metrics.healthy_host_count(statistic="Minimum", period=one_min)

        asg_dims = {"AutoScalingGroupName": auto_scaling_group.auto_scaling_group_name}

        def agent(metric_name: str, statistic: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=agent_namespace,
                metric_name=metric_name,
                dimensions_map=asg_dims,
                statistic=statistic,
                period=five_min,
            )

        cpu_busy = cloudwatch.MathExpression(
            expression="100 - idle",
            using_metrics={"idle": agent("cpu_usage_idle", "Average")},
            label="CPU busy % (fleet average)",
            period=five_min,
        )
        memory = agent("mem_used_percent", "Maximum")
        disk = agent("disk_used_percent", "Maximum")
        assert set(_USAGE_ALARMS) == set(USAGE_ALARM_METRICS), "an alarm per usage counter"
        # The CloudWatch agent's Prometheus scrape publishes each counter as the delta of
        # each scrape (once a minute): Sum over 5 min = rows or batches in that window.
        usage = {
            name: cloudwatch.Metric(
                namespace=agent_namespace,
                metric_name=name,
                dimensions_map=USAGE_METRIC_DIMENSIONS,
                statistic="Sum",
                period=five_min,
            )
            for name in USAGE_ALARM_METRICS
        }
        spool: list[cloudwatch.IMetric] = [
            cloudwatch.Metric(
                namespace=agent_namespace,
                metric_name=name,
                dimensions_map=USAGE_METRIC_DIMENSIONS,
                statistic="Maximum",
                period=five_min,
                label="Spool bytes (max of workers)",
            )
            for name in USAGE_GAUGE_METRICS
        ]
        # 1 while a worker's writer has rows waiting and no write for USAGE_STUCK_SECONDS
        # (ml_server/usage.py); the max of the live workers (an exited one no longer counts).
        stuck = cloudwatch.Metric(
            namespace=agent_namespace,
            metric_name=USAGE_STUCK_METRIC,
            dimensions_map=USAGE_METRIC_DIMENSIONS,
            statistic="Maximum",
            period=five_min,
        )
        target_5xx_rate = cloudwatch.MathExpression(
            expression=(
                f"IF(requests >= {t.target_5xx_min_requests}, 100 * FILL(errors, 0) / requests, 0)"
            ),
            using_metrics={"errors": target_5xx, "requests": tg_requests},
            label="Target 5xx % of requests",
            period=five_min,
        )

        specs = [
            _AlarmSpec(
                "Target5xxRate",
                target_5xx_rate,
                t.target_5xx_rate_percent,
                GT,
                1,
                1,
                Missing.NOT_BREACHING,
                f"More than {t.target_5xx_rate_percent}% of requests (at least "
                f"{t.target_5xx_min_requests} in 5 min) got a 5xx from the ML server. Check "
                "first: the server log group /aws/ec2/humansa-ml/<env> for provider errors or "
                "database errors; a running instance refresh (this alarm rolls it back). "
                "No data (no traffic) counts as OK.",
            ),
            _AlarmSpec(
                "Alb5xx",
                elb_5xx,
                t.alb_5xx_count,
                GTE,
                1,
                1,
                Missing.NOT_BREACHING,
                f"The load balancer itself answered {t.alb_5xx_count}+ 5xx in 5 min (502/503/504: "
                "no healthy target, target reset or idle timeout). Check first: healthy host "
                "count and the target group's health check; long LLM streams against the ALB "
                "idle timeout. ALB publishes this only when non-zero, so no data is OK.",
            ),
            _AlarmSpec(
                "UnhealthyHosts",
                unhealthy,
                t.unhealthy_hosts,
                GTE,
                2,
                2,
                Missing.NOT_BREACHING,
                f"{t.unhealthy_hosts}+ targets fail GET /health for 2 minutes. Check first: the "
                "instance's container unit (journalctl -u humansa-ml) and its setup log "
                "/aws/ec2/humansa-ml/<env>/setup. No data means no registered target; "
                "the NoHealthyHosts alarm covers that.",
            ),
            _AlarmSpec(
                "NoHealthyHosts",
                healthy,
                t.min_healthy_hosts,
                LT,
                2,
                2,
                Missing.BREACHING,
                f"Fewer than {t.min_healthy_hosts} healthy targets for 2 minutes: the service is "
                "down or degraded. Check first: the Auto Scaling group's activity history (spot "
                "interruption, failed launch) and the UnhealthyHosts alarm. No data means no "
                "target at all, so it counts as breaching.",
            ),
            _AlarmSpec(
                "TargetLatencyP95",
                latency["p95"],
                t.target_p95_latency_seconds,
                GT,
                3,
                3,
                Missing.NOT_BREACHING,
                f"p95 target response time above {t.target_p95_latency_seconds} s for 15 min. "
                "Check first: the upstream LLM provider's status and latency in the server log, "
                "then fleet CPU. No data (no traffic) is OK.",
            ),
            _AlarmSpec(
                "FleetCpu",
                cpu_busy,
                t.fleet_cpu_percent,
                GT,
                3,
                3,
                Missing.MISSING,
                f"Fleet average CPU above {t.fleet_cpu_percent}% for 15 min (CloudWatch agent). "
                "Check first: whether scaling reached its maximum capacity, then request rate. "
                "No data keeps the last state: the agent is silent during instance replacement.",
            ),
            _AlarmSpec(
                "FleetMemory",
                memory,
                t.fleet_memory_percent,
                GT,
                3,
                3,
                Missing.MISSING,
                f"An instance uses more than {t.fleet_memory_percent}% memory for 15 min. Check "
                "first: the container's memory (docker stats) and the number of server workers. "
                "No data keeps the last state (agent silent during replacement).",
            ),
            _AlarmSpec(
                "FleetDisk",
                disk,
                t.fleet_disk_percent,
                GT,
                2,
                2,
                Missing.MISSING,
                f"A filesystem of an instance is more than {t.fleet_disk_percent}% full. Check "
                "first: old Docker images (docker image prune) and /var/log. No data keeps the "
                "last state (agent silent during replacement).",
            ),
        ]
        specs += [
            _AlarmSpec(
                alarm_id,
                usage[name],
                0,
                GT,
                1,
                1,
                Missing.NOT_BREACHING,
                f"{description} Any in 5 min alarms. No data (no instance, or no scrape yet) "
                "counts as OK.",
            )
            for name, (alarm_id, description) in _USAGE_ALARMS.items()
        ]
        specs.append(
            _AlarmSpec(
                "UsageWriterStuck",
                stuck,
                1,
                GTE,
                2,
                2,
                Missing.NOT_BREACHING,
                "A usage writer has had rows waiting and written nothing for 10 minutes (its "
                "gauge stayed 1 in two 5-minute periods): accounting is stalled, rows pile up "
                "in memory and the spool. Check first: /ready's usage details on an instance "
                "(last_error), the UsageWriteErrors alarm and the database. No data (no "
                "instance, or no scrape yet) counts as OK.",
            )
        )
        if database is not None:
            specs += [
                _AlarmSpec(
                    "RdsCpu",
                    database.metric_cpu_utilization(period=five_min),
                    t.rds_cpu_percent,
                    GT,
                    3,
                    3,
                    Missing.MISSING,
                    f"RDS CPU above {t.rds_cpu_percent}% for 15 min. Check first: Performance "
                    "Insights / pg_stat_activity for long queries; CPU credits on a burstable "
                    "class. No data (instance stopped or rebooting) keeps the last state.",
                ),
                _AlarmSpec(
                    "RdsFreeStorage",
                    database.metric_free_storage_space(statistic="Minimum", period=five_min),
                    t.rds_free_storage_gib * _GIB,
                    LT,
                    1,
                    1,
                    Missing.MISSING,
                    f"RDS free storage below {t.rds_free_storage_gib} GiB. Check first: the usage "
                    "table's growth and the storage autoscaling limit; raise the allocated "
                    "storage before it reaches 0 (the database then stops accepting writes). "
                    "No data keeps the last state.",
                ),
                _AlarmSpec(
                    "RdsConnections",
                    database.metric_database_connections(statistic="Maximum", period=five_min),
                    t.rds_connections,
                    GT,
                    3,
                    3,
                    Missing.MISSING,
                    f"More than {t.rds_connections} database connections for 15 min. Check "
                    "first: the number of instances times the server's pool size, and "
                    "connections left idle in transaction. No data keeps the last state.",
                ),
                _AlarmSpec(
                    "RdsFreeableMemory",
                    database.metric_freeable_memory(statistic="Minimum", period=five_min),
                    t.rds_freeable_memory_mib * _MIB,
                    LT,
                    3,
                    3,
                    Missing.MISSING,
                    f"RDS freeable memory below {t.rds_freeable_memory_mib} MiB for 15 min. "
                    "Check first: the connection count (each costs memory) and the instance "
                    "class. No data keeps the last state.",
                ),
            ]

        self.alarms: dict[str, cloudwatch.Alarm] = {}
        for spec in specs:
            alarm = cloudwatch.Alarm(
                self,
                spec.construct_id,
                alarm_name=f"{self._prefix}-{spec.construct_id}",
                alarm_description=spec.description,
                metric=spec.metric,
                threshold=spec.threshold,
                comparison_operator=spec.comparison,
                evaluation_periods=spec.evaluation_periods,
                datapoints_to_alarm=spec.datapoints_to_alarm,
                treat_missing_data=spec.treat_missing_data,
            )
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
            self.alarms[spec.construct_id] = alarm
        self.target_5xx_alarm = self.alarms["Target5xxRate"]
        self.unhealthy_hosts_alarm = self.alarms["UnhealthyHosts"]
        self.no_healthy_hosts_alarm = self.alarms["NoHealthyHosts"]

        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=self._prefix,
            default_interval=Duration.hours(3),
        )

        def graph(
            title: str,
            left: list[cloudwatch.IMetric],
            unit: str | None = None,
            right: list[cloudwatch.IMetric] | None = None,
        ) -> cloudwatch.GraphWidget:
            return cloudwatch.GraphWidget(
                title=title,
                left=left,
                right=right,
                width=8,
                height=6,
                left_y_axis=cloudwatch.YAxisProps(label=unit, show_units=False) if unit else None,
            )

        self.dashboard.add_widgets(
            graph("Requests", [requests.with_(label="Requests / 5 min")]),
            graph(
                "5xx responses",
                [
                    target_5xx.with_(label="Target (server) 5xx"),
                    elb_5xx.with_(label="Load balancer 5xx"),
                ],
                right=[target_5xx_rate],
            ),
            graph(
                "Target response time p50 / p95 / p99",
                [m.with_(label=p) for p, m in latency.items()],
                unit="seconds",
            ),
        )
        self.dashboard.add_widgets(
            graph(
                "Healthy / unhealthy hosts",
                [healthy.with_(label="Healthy"), unhealthy.with_(label="Unhealthy")],
            ),
            graph("Fleet CPU busy %", [cpu_busy], unit="%"),
            graph(
                "Fleet memory / disk used % (max of instances)",
                [memory.with_(label="Memory"), disk.with_(label="Disk")],
                unit="%",
            ),
        )
        if database is not None:
            self.dashboard.add_widgets(
                graph(
                    "RDS CPU % / connections",
                    [database.metric_cpu_utilization(period=five_min)],
                    unit="%",
                    right=[database.metric_database_connections(period=five_min)],
                ),
                graph(
                    "RDS free storage (bytes)",
                    [database.metric_free_storage_space(statistic="Minimum", period=five_min)],
                ),
                graph(
                    "RDS freeable memory (bytes)",
                    [database.metric_freeable_memory(statistic="Minimum", period=five_min)],
                ),
            )
        self.dashboard.add_widgets(
            graph(
                "Usage accounting (rows / batches per 5 min)",
                [
                    *(m.with_(label=_USAGE_ALARMS[n][0]) for n, m in usage.items()),
                    stuck.with_(label="Writer stuck (1 = yes, any instance)"),
                ],
                right=spool,
            ),
            cloudwatch.AlarmStatusWidget(
                title="Alarms", alarms=list(self.alarms.values()), width=8, height=6
            ),
            cloudwatch.TextWidget(
                markdown=(
                    "### Server metrics\n"
                    "Only the usage writer's metrics reach CloudWatch (the agent scrapes them). "
                    "The rest (requests and latency per provider and model, tokens) are not "
                    "exported to CloudWatch yet. Read them on an instance: "
                    f"`curl 127.0.0.1:{METRICS_PORT}/metrics` in an SSM Session Manager shell "
                    "(docs/operations.md, Dashboard)."
                ),
                width=8,
                height=6,
            ),
        )
