"""The figures README.md and docs/*.md take from code or config equal their source of truth.

``CHECKS`` is a table of (document, regular expression, source): each expression must match the
document at least once (a reworded sentence fails here rather than going unchecked), and every
match's groups must equal what the source reads from the session's synthesized templates, the
configuration models or the code constants. No figure is copied into this file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from components import boot
from components.boot import BootSettings
from components.github_oidc import DEPLOY_SESSION_HOURS
from components.load_balancer import DEREGISTRATION_DELAY_SECONDS
from config import naming
from config.model import ServiceConfig
from config.monitoring import AlarmThresholds, AuditConfig, RotationConfig
from humansa_ops import feature_flags
from humansa_ops.cost import DEFAULT_PRICES, PriceTable
from ml_server.app import USAGE_FLUSH_AT_EXIT_SECONDS
from ml_server.config import Settings
from tests.conftest import ENVIRONMENTS, ROOT, Synth
from tests.test_boot_script import realistic


class Facts:
    """What the sources say, read from the session's synth."""

    def __init__(self, synth: Synth) -> None:
        self.synth = synth

    def resources(self, env: str, kind: str, rtype: str) -> list[dict[str, Any]]:
        resources = self.synth.template_json(env, kind)["Resources"].values()
        return [r for r in resources if r["Type"] == rtype]

    def one(self, env: str, kind: str, rtype: str) -> dict[str, Any]:
        (found,) = self.resources(env, kind, rtype)
        return found

    def group(self, env: str) -> dict[str, Any]:
        return self.one(env, "Service", "AWS::AutoScaling::AutoScalingGroup")

    def refresh(self, env: str) -> dict[str, Any]:
        prefs: dict[str, Any] = self.group(env)["UpdatePolicy"]["AutoScalingInstanceRefresh"]
        return dict(prefs["Preferences"])

    def hook(self, env: str) -> dict[str, Any]:
        (hook,) = self.group(env)["Properties"]["LifecycleHookSpecificationList"]
        return dict(hook)

    def target_group_attribute(self, env: str, key: str) -> str:
        tg = self.one(env, "Service", "AWS::ElasticLoadBalancingV2::TargetGroup")
        attrs = tg["Properties"]["TargetGroupAttributes"]
        return str(next(a["Value"] for a in attrs if a["Key"] == key))

    def alb_attribute(self, env: str, key: str) -> str:
        alb = self.one(env, "Service", "AWS::ElasticLoadBalancingV2::LoadBalancer")
        attrs = alb["Properties"]["LoadBalancerAttributes"]
        return str(next(a["Value"] for a in attrs if a["Key"] == key))

    def log_retention(self, env: str, name: str) -> int:
        for group in self.resources(env, "Service", "AWS::Logs::LogGroup"):
            if group["Properties"].get("LogGroupName") == name:
                return int(group["Properties"]["RetentionInDays"])
        raise AssertionError(f"no log group {name}")

    def database(self, env: str) -> dict[str, Any]:
        return dict(self.one(env, "Data", "AWS::RDS::DBInstance")["Properties"])

    def ci_count(self, rtype: str) -> int:
        return sum(1 for r in self.synth.ci.to_json()["Resources"].values() if r["Type"] == rtype)


Source = Callable[[Facts], tuple[object, ...]]


@dataclass(frozen=True)
class Check:
    doc: str
    pattern: str
    source: Source


def _s(*values: object) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


def _each_env(read: Callable[[Facts, str], object]) -> Source:
    return lambda f: tuple(read(f, env) for env in ENVIRONMENTS)


def _drain() -> int:
    return int(Settings.model_fields["drain_seconds"].default)


def _boot(field: str) -> int:
    value: int = getattr(BootSettings, field)  # a dataclass field's default
    return value


def _heartbeat_parts(f: Facts) -> tuple[object, ...]:
    return (
        boot.LAUNCH_TO_USER_DATA_SECONDS,
        _boot("boot_budget_seconds"),
        f.hook("production")["HeartbeatTimeout"],
    )


def _fleet_sizes(f: Facts, env: str) -> str:
    props = f.group(env)["Properties"]
    desired = f.synth.configs[env].fleet.desired_capacity
    return f"{props['MinSize']}/{desired}/{props['MaxSize']}"


def _rollout_row(f: Facts, env: str) -> str:
    prefs = f.refresh(env)
    checkpoints = prefs.get("CheckpointPercentages")
    shown = (
        " then ".join(f"{p} %" for p in checkpoints)
        + f", {prefs['CheckpointDelay'] // 60} min pause"
        if checkpoints
        else "none"
    )
    return f"{prefs['InstanceWarmup']} s / {prefs['BakeTime'] // 60} min / {shown}"


def _alarm_count(f: Facts) -> tuple[object, ...]:
    counts = {len(f.resources(env, "Service", "AWS::CloudWatch::Alarm")) for env in ENVIRONMENTS}
    assert len(counts) == 1, f"environments differ in their alarm count: {counts}"
    return (counts.pop(),)


CHECKS: list[Check] = [
    # docs/ml-server.md: the drain table and the settings table
    Check(
        "docs/ml-server.md",
        r"\| server drain \| `DRAIN_SECONDS` \| (\d+) s \|",
        lambda f: (_drain(),),
    ),
    Check(
        "docs/ml-server.md",
        r"\| usage flush after the drain \| [^|]+\| ≤ (\d+) s \|",
        lambda f: (int(USAGE_FLUSH_AT_EXIT_SECONDS),),
    ),
    Check(
        "docs/ml-server.md",
        r"\| ALB deregistration delay \| [^|]+\| (\d+) s \|",
        lambda f: (f.target_group_attribute("production", "deregistration_delay.timeout_seconds"),),
    ),
    Check(
        "docs/ml-server.md",
        r"\| Docker stop grace \(SIGTERM → SIGKILL\) \| [^|]+\| (\d+) s \|",
        lambda f: (_boot("drain_seconds"),),
    ),
    Check(
        "docs/ml-server.md",
        r"\| systemd stop timeout \| [^|]+\| (\d+) s \|",
        lambda f: (_stop_timeout(),),
    ),
    Check("docs/ml-server.md", r"\| `DRAIN_SECONDS` \| (\d+) \|", lambda f: (_drain(),)),
    # docs/releasing.md: the rollout timing model
    Check(
        "docs/releasing.md",
        r"\| fleet at rest \(desired\) \| (\d+) \| (\d+) \| (\d+) \|",
        _each_env(lambda f, env: f.synth.configs[env].fleet.desired_capacity),
    ),
    Check(
        "docs/releasing.md",
        r"\| instance warm-up \| (\d+) s \| (\d+) s \| (\d+) s \|",
        _each_env(lambda f, env: f.refresh(env)["InstanceWarmup"]),
    ),
    Check(
        "docs/releasing.md",
        r"\| bake time \(alarms watched\) \| (\d+) min \| (\d+) min \| (\d+) min \|",
        _each_env(lambda f, env: f.refresh(env)["BakeTime"] // 60),
    ),
    Check(
        "docs/releasing.md",
        r"min healthy (\d+) %, max healthy (\d+) %",
        lambda f: (
            f.refresh("production")["MinHealthyPercentage"],
            f.refresh("production")["MaxHealthyPercentage"],
        ),
    ),
    Check(
        "docs/releasing.md",
        r"\(the (\d+) s deregistration delay, during which",
        lambda f: (f.target_group_attribute("production", "deregistration_delay.timeout_seconds"),),
    ),
    Check(
        "docs/releasing.md",
        r"a rollout cuts no stream shorter than (\d+) minutes",
        lambda f: (DEREGISTRATION_DELAY_SECONDS // 60,),
    ),
    # docs/ml-server.md: the order of deregistration, termination and the drain
    Check(
        "docs/ml-server.md",
        r"The delay ends when the last request finishes, at most (\d+) s later",
        lambda f: (f.target_group_attribute("production", "deregistration_delay.timeout_seconds"),),
    ),
    Check(
        "docs/ml-server.md",
        r"\*\*A rollout cuts no stream shorter than (\d+) minutes\*\* \((\d+) s from the start",
        lambda f: (DEREGISTRATION_DELAY_SECONDS // 60, DEREGISTRATION_DELAY_SECONDS),
    ),
    Check(
        "docs/ml-server.md",
        r"writes the queued usage rows \(≤ (\d+) s\)",
        lambda f: (int(USAGE_FLUSH_AT_EXIT_SECONDS),),
    ),
    Check(
        "docs/ml-server.md",
        r"The drain \((\d+) s, below the delay\)",
        lambda f: (_drain(),),
    ),
    Check(
        "docs/ml-server.md",
        r"there a stream shorter than (\d+) s is not cut either",
        lambda f: (_drain(),),
    ),
    Check(
        "docs/releasing.md",
        r"health-check grace period \((\d+) s\)",
        lambda f: (f.group("production")["Properties"]["HealthCheckGracePeriod"],),
    ),
    Check(
        "docs/releasing.md",
        r"the boot's own (\d+) s readiness wait",
        lambda f: (_boot("ready_timeout_seconds"),),
    ),
    Check(
        "docs/releasing.md",
        r"checkpoints \(`\[(\d+), (\d+)\]`\) turn that into a canary: half the fleet,"
        r" a (\d+)-minute",
        lambda f: (
            *f.refresh("production")["CheckpointPercentages"],
            f.refresh("production")["CheckpointDelay"] // 60,
        ),
    ),
    # docs/boot.md: the lifecycle heartbeat
    Check(
        "docs/boot.md",
        r"(\d+) s launch → user data\s+\(`LAUNCH_TO_USER_DATA_SECONDS`\) \+ (\d+) s boot budget"
        r"[^*]+\*\*(\d+) s\*\*",
        _heartbeat_parts,
    ),
    Check(
        "docs/boot.md",
        r"abandoned after (\d+) s",
        lambda f: (f.hook("production")["HeartbeatTimeout"],),
    ),
    # docs/infrastructure.md: the configuration table and the architecture map
    Check(
        "docs/infrastructure.md",
        r"\| fleet \(t4g\.small, arm64\) min/desired/max \| ([\d/]+) \| ([\d/]+) \| ([\d/]+) \|",
        _each_env(_fleet_sizes),
    ),
    Check(
        "docs/infrastructure.md",
        r"\| rollout warm-up / bake / checkpoints \| ([^|]+?) \| ([^|]+?) \| ([^|]+?) \|",
        _each_env(_rollout_row),
    ),
    Check(
        "docs/infrastructure.md",
        r"\| database \| (db\.[\w.]+), single-AZ, (\d+)-day backups \| (db\.[\w.]+), single-AZ, "
        r"(\d+) days \| (db\.[\w.]+), Multi-AZ, (\d+) days",
        lambda f: tuple(
            v
            for env in ENVIRONMENTS
            for v in (f.database(env)["DBInstanceClass"], f.database(env)["BackupRetentionPeriod"])
        ),
    ),
    Check(
        "docs/infrastructure.md",
        r"`/aws/ec2/humansa-ml/<env>` \((\d+) days\),"
        r" `/aws/ec2/humansa-ml/<env>/setup` \((\d+) days\)",
        lambda f: (
            f.log_retention("production", "/aws/ec2/humansa-ml/production"),
            f.log_retention("production", "/aws/ec2/humansa-ml/production/setup"),
        ),
    ),
    Check(
        "docs/infrastructure.md",
        r"target group on (\d+) with `GET /health`",
        lambda f: (
            f.one("production", "Service", "AWS::ElasticLoadBalancingV2::TargetGroup")[
                "Properties"
            ]["Port"],
        ),
    ),
    Check("docs/infrastructure.md", r"alarm topic \(KMS\), (\d+) alarms", _alarm_count),
    Check(
        "docs/infrastructure.md",
        r"the (\w+) `PROVIDER_SECRET_NAMES`",
        lambda f: (_word(len(boot.PROVIDER_SECRET_NAMES)),),
    ),
    Check(
        "docs/infrastructure.md",
        r"the DB secret and the (\w+) provider secrets",
        lambda f: (_word(len(boot.PROVIDER_SECRET_NAMES)),),
    ),
    Check(
        "docs/infrastructure.md",
        r"on the runbook's (\w+) names",
        lambda f: (_word(len(boot.RUNBOOK_PARAMETER_NAMES)),),
    ),
    Check(
        "docs/infrastructure.md",
        r"`service\.idle_timeout_seconds` \((\d+)\) sets the ALB attribute"
        r"[\s\S]+?`timeout_keep_alive`, (\d+)\)",
        lambda f: (
            f.alb_attribute("production", "idle_timeout.timeout_seconds"),
            _boot("keep_alive_seconds"),
        ),
    ),
    Check(
        "docs/infrastructure.md",
        r"`DEPLOY_SESSION_HOURS` = (\d+) h",
        lambda f: (DEPLOY_SESSION_HOURS,),
    ),
    Check(
        "docs/infrastructure.md",
        r"\| database secret rotation \(`rotation`\) \| every (\d+) days"
        r" \| every (\d+) days \| every (\d+) days \|",
        _each_env(lambda f, env: f.synth.configs[env].rotation.database_secret_days),
    ),
    # docs/operations.md: alarm thresholds by name, rotation, the trail
    Check("docs/operations.md", r"list prices\): (\d+) alarms read", _alarm_count),
    Check(
        "docs/operations.md",
        r"`rotation\.database_secret_days` days \(default (\d+);",
        lambda f: (RotationConfig.model_fields["database_secret_days"].default,),
    ),
    Check(
        "docs/operations.md",
        r"Standard-IA after (\d+) days, Glacier Flexible Retrieval after (\d+),"
        r" deletion after (\d+)",
        lambda f: tuple(
            AuditConfig.model_fields[k].default
            for k in (
                "transition_to_infrequent_access_days",
                "transition_to_glacier_days",
                "expiration_days",
            )
        ),
    ),
    Check(
        "docs/operations.md",
        r"where the (\d+) CIS metric filters",
        lambda f: (f.ci_count("AWS::Logs::MetricFilter"),),
    ),
    Check(
        "docs/operations.md",
        r"re-fetches the secret files\s+every (\d+) minutes",
        lambda f: (_timer_minutes(),),
    ),
    # the price table (humansa_ops/pricing/prices.yaml): `make prices` moving a price moves these
    Check(
        "docs/infrastructure.md",
        r"Cost: \+1 NAT gateway and its EIP, \*\*\+([\d.]+) USD/month\*\*",
        lambda f: (_money(_nat_gateway("ap-east-1")),),
    ),
    Check(
        "docs/cost.md",
        r"\| NAT gateway \+ its EIP \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
        lambda f: (
            _money(_nat_gateway("us-east-1")),
            _price("us-east-1", "nat_gateway.gb"),
            _money(_nat_gateway("ap-east-1")),
            _price("ap-east-1", "nat_gateway.gb"),
        ),
    ),
    Check(
        "docs/cost.md",
        r"\| NAT instance t4g\.nano \+ 8 GiB gp3 \+ public IPv4 \| ([\d.]+) \| 0 \| ([\d.]+) \|",
        lambda f: (_money(_nat_instance("us-east-1")), _money(_nat_instance("ap-east-1"))),
    ),
    Check(
        "docs/cost.md",
        r"cheaper at every traffic level, by ([\d.]+) USD/month\s+per AZ in us-east-1"
        r" \(([\d.]+) in",
        lambda f: tuple(
            _money(_nat_gateway(r) - _nat_instance(r)) for r in ("us-east-1", "ap-east-1")
        ),
    ),
    # docs/security.md: the account trail's alarms, retention, ALB logs, WAF logs
    Check(
        "docs/security.md",
        r"Cost: key \$1/month, (\d+) alarms \$([\d.]+)/month",
        lambda f: (
            f.ci_count("AWS::CloudWatch::Alarm"),
            _money(
                f.ci_count("AWS::CloudWatch::Alarm")
                * _price("ap-east-1", "cloudwatch.alarm.standard_month")
            ),
        ),
    ),
    Check(
        "docs/security.md",
        r"\(retention `audit\.cloudwatch_logs_retention_days`, (\d+) days\)",
        lambda f: (AuditConfig.model_fields["cloudwatch_logs_retention_days"].default,),
    ),
    Check(
        "docs/security.md",
        r"`service\.access_log_days` \((\d+)\)",
        lambda f: (ServiceConfig.model_fields["access_log_days"].default,),
    ),
    Check(
        "docs/security.md",
        r"`aws-waf-logs-humansa-<env>` \((\d+) days\)",
        lambda f: (f.log_retention("production", "aws-waf-logs-humansa-production"),),
    ),
    # docs/infrastructure.md, "CDK feature flags": the installed aws-cdk-lib's recommended list
    Check(
        "docs/infrastructure.md",
        r"pinned aws-cdk-lib \(([\d.]+): (\d+) flags, the\s+recommended-feature-flags\.json in its"
        r" bundle, what `cdk init` copies\), all but (\w+),",
        lambda f: (
            feature_flags.cdk_lib_version(),
            len(feature_flags.recommended()),
            _word(len(feature_flags.LEFT_OFF)),
        ),
    ),
    # README.md
    Check(
        "README.md",
        r"at most (\d+) characters\) and `make synth ENV=dev-alice`",
        lambda f: (naming.ENV_NAME_MAX,),
    ),
    Check(
        "README.md",
        r"The server listens on \*\*port (\d+)\*\*",
        lambda f: (_boot("container_port"),),
    ),
]

WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]


def _word(n: int) -> str:
    return WORDS[n] if n < len(WORDS) else str(n)


def _stop_timeout() -> int:
    settings = realistic("dev")
    unit = boot.render_file("humansa-ml.service.j2", settings)
    found = re.search(r"TimeoutStopSec=(\d+)", unit)
    assert found, unit
    return int(found[1])


def _timer_minutes() -> int:
    timer = (ROOT / "user_data" / "humansa-secrets-refresh.timer.j2").read_text(encoding="utf-8")
    found = re.search(r"OnUnitActiveSec=(\d+)min", timer)
    assert found, timer
    return int(found[1])


@cache
def _prices() -> PriceTable:
    return PriceTable(DEFAULT_PRICES)


def _price(region: str, key: str) -> float:
    return _prices().get(region, key, resource_type="doc", resource="figure").usd


def _monthly(region: str, key: str) -> float:
    return _price(region, key) * _prices().hours_per_month


def _nat_gateway(region: str) -> float:
    """A NAT gateway and its public IPv4 address, per month."""
    return _monthly(region, "nat_gateway.hour") + _monthly(region, "ipv4.hour")


def _nat_instance(region: str) -> float:
    """The dev NAT instance: t4g.nano, an 8 GiB gp3 root volume, a public IPv4 address."""
    volume = 8 * _price(region, "ebs.gp3.gb_month")
    return _monthly(region, "ec2.instance.t4g.nano.hour") + volume + _monthly(region, "ipv4.hour")


def _money(usd: float) -> str:
    return f"{usd:.2f}"


def _read(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: f"{Path(c.doc).name}:{c.pattern[:40]}")
def test_the_doc_figure_equals_its_source(check: Check, synth: Synth) -> None:
    matches = list(re.finditer(check.pattern, _read(check.doc)))
    assert matches, f"{check.doc} no longer says {check.pattern!r}: reword the check with the doc"
    expected = _s(*check.source(Facts(synth)))
    for match in matches:
        assert match.groups() == expected, (
            f"{check.doc}: {match[0]!r} says {match.groups()}, the source says {expected}"
        )


def test_the_settings_table_shows_the_code_defaults() -> None:
    text = _read("docs/ml-server.md")
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| ([\d.]+)(?: \| |[ (]|$)", text, re.MULTILINE)
    assert len(rows) >= 5, rows
    for name, value in rows:
        field = Settings.model_fields.get(name.lower())
        assert field is not None, f"docs/ml-server.md names {name}, which is not a setting"
        assert float(value) == float(field.default), (
            f"docs/ml-server.md: {name} default is {field.default} in ml_server/config.py, "
            f"the doc says {value}"
        )


def test_the_alarm_table_shows_the_threshold_defaults() -> None:
    text = _read("docs/operations.md")
    pairs = re.findall(r"`([a-z_0-9]+)` \*\*([\d.]+)", text)
    pairs += re.findall(r"≥ `(target_5xx_min_requests)` \((\d+)\)", text)
    assert len(pairs) >= 12, pairs
    for name, value in pairs:
        field = AlarmThresholds.model_fields.get(name)
        assert field is not None, f"docs/operations.md names {name}, not in AlarmThresholds"
        assert float(value) == float(field.default), (
            f"docs/operations.md: {name} is {field.default} in config/monitoring.py, "
            f"the doc says {value}"
        )


def test_a_wrong_figure_fails() -> None:
    # the mechanism itself: a doc saying 25 where the code says 600 is caught
    check = next(c for c in CHECKS if "server drain" in c.pattern)
    found = re.search(check.pattern, "| server drain | `DRAIN_SECONDS` | 25 s |")
    assert found and found.groups() != _s(_drain())
