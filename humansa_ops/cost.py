#!/usr/bin/env python3
"""Estimate the monthly AWS bill of each environment from a synthesized cloud assembly.

Reads ``cdk.out/manifest.json`` and every stack template it lists, groups the stacks by
environment (``Humansa-<Env>-<Layer>`` -> ``<Env>``), prices each billable resource from the
committed table ``humansa_ops/pricing/prices.yaml`` for the stack's region, and prints a table per
environment (or JSON, or a one-line summary). Everything it prints is an ESTIMATE: traffic
driven prices use the assumptions stated in the price table and are listed under each table.

Usage:
    python -m humansa_ops.cost [CDK_OUT] [--env NAME] [--region REGION] [--json | --summary]
        [--prices FILE]

Exit status: 0 on success, 2 when an input is wrong or the region has no price table. A valid
resource whose price key the table lacks is listed as "unpriced" (left out of the total).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from config import ConfigError, EnvironmentConfig, environment_names, load_environment
from config.naming import title as env_title

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRICES = Path(__file__).resolve().parent / "pricing" / "prices.yaml"
DEFAULT_REGION = "ap-east-1"
UNSOURCED = "unsourced"

# Resource types that cost nothing by themselves (or are priced through another resource).
FREE_TYPES: dict[str, str] = {
    "AWS::CDK::Metadata": "CDK metadata",
    "AWS::EC2::VPC": "no charge",
    "AWS::EC2::Subnet": "no charge",
    "AWS::EC2::RouteTable": "no charge",
    "AWS::EC2::Route": "no charge",
    "AWS::EC2::SubnetRouteTableAssociation": "no charge",
    "AWS::EC2::InternetGateway": "no charge",
    "AWS::EC2::VPCGatewayAttachment": "no charge",
    "AWS::EC2::EgressOnlyInternetGateway": "no charge",
    "AWS::EC2::VPCCidrBlock": "no charge",
    "AWS::EC2::SecurityGroup": "no charge",
    "AWS::EC2::SecurityGroupIngress": "no charge",
    "AWS::EC2::SecurityGroupEgress": "no charge",
    "AWS::EC2::NetworkAcl": "no charge",
    "AWS::EC2::NetworkAclEntry": "no charge",
    "AWS::EC2::SubnetNetworkAclAssociation": "no charge",
    "AWS::EC2::PrefixList": "no charge",
    "AWS::EC2::KeyPair": "no charge",
    "AWS::EC2::EIPAssociation": "the address is priced on its AWS::EC2::EIP",
    "AWS::EC2::LaunchTemplate": "priced through the instances that use it",
    "AWS::AutoScaling::LaunchConfiguration": "priced through the group that uses it",
    "AWS::AutoScaling::ScalingPolicy": "no charge",
    "AWS::AutoScaling::ScheduledAction": "no charge",
    "AWS::AutoScaling::LifecycleHook": "no charge",
    "AWS::AutoScaling::WarmPool": "no charge (warm instances not priced)",
    "AWS::ElasticLoadBalancingV2::Listener": "priced on the load balancer",
    "AWS::ElasticLoadBalancingV2::ListenerRule": "priced on the load balancer (LCU)",
    "AWS::ElasticLoadBalancingV2::ListenerCertificate": "priced on the load balancer",
    "AWS::ElasticLoadBalancingV2::TargetGroup": "no charge",
    "AWS::IAM::Role": "no charge",
    "AWS::IAM::Policy": "no charge",
    "AWS::IAM::ManagedPolicy": "no charge",
    "AWS::IAM::InstanceProfile": "no charge",
    "AWS::IAM::OIDCProvider": "no charge",
    "AWS::IAM::User": "no charge",
    "AWS::IAM::Group": "no charge",
    "AWS::RDS::DBSubnetGroup": "no charge",
    "AWS::RDS::DBParameterGroup": "no charge",
    "AWS::RDS::DBClusterParameterGroup": "no charge",
    "AWS::RDS::OptionGroup": "no charge",
    "AWS::SecretsManager::SecretTargetAttachment": "no charge",
    "AWS::SecretsManager::RotationSchedule": "no charge (rotation Lambda within free tier)",
    "AWS::SecretsManager::ResourcePolicy": "no charge",
    "AWS::KMS::Alias": "no charge",
    "AWS::SNS::Topic": "free tier: 1M publishes and 1,000 e-mail deliveries a month",
    "AWS::SNS::Subscription": "free tier",
    "AWS::SNS::TopicPolicy": "no charge",
    "AWS::S3::Bucket": "storage priced through the CloudTrail assumption; asset buckets hold MBs",
    "AWS::S3::BucketPolicy": "no charge",
    "AWS::Logs::MetricFilter": "no charge",
    "AWS::Logs::SubscriptionFilter": "no charge",
    "AWS::Logs::ResourcePolicy": "no charge",
    "AWS::Lambda::Function": "free tier: 1M requests, 400,000 GB-s (custom resources, rotation)",
    "AWS::Lambda::Permission": "no charge",
    "AWS::Lambda::LayerVersion": "no charge",
    "AWS::Lambda::Version": "no charge",
    "AWS::Lambda::Alias": "no charge",
    "AWS::Events::Rule": "no charge for AWS service events",
    "AWS::CloudFormation::WaitCondition": "no charge",
    "AWS::CloudFormation::WaitConditionHandle": "no charge",
    "AWS::ECR::PullThroughCacheRule": "no charge (cached image storage not priced)",
    "AWS::ECR::RegistryPolicy": "no charge",
    "AWS::ApplicationAutoScaling::ScalingPolicy": "no charge",
    "AWS::ApplicationAutoScaling::ScalableTarget": "no charge",
    "AWS::WAFv2::WebACLAssociation": "priced on the web ACL",
    "AWS::WAFv2::LoggingConfiguration": "log ingestion priced on the aws-waf-logs- group",
}


class CostError(Exception):
    """A wrong input: the message names the file, resource or setting and what is allowed."""


class PriceMissingError(CostError):
    """A known billable resource whose price key is not in the table for the region."""

    def __init__(self, *, resource_type: str, resource: str, key: str, region: str) -> None:
        self.resource_type = resource_type
        self.resource = resource
        self.key = key
        self.region = region
        super().__init__(
            f"no price for {resource_type} {resource} in {region}: price key {key!r} is not in "
            f"humansa_ops/pricing/prices.yaml regions.{region}; add it with its source and date"
        )


@dataclass(frozen=True)
class Price:
    """One row of the price table."""

    key: str
    usd: float
    unit: str
    source: str
    read: str
    note: str = ""

    @property
    def unsourced(self) -> bool:
        return self.source == UNSOURCED


@dataclass(frozen=True)
class LineItem:
    """One priced line: quantity x unit price = monthly USD."""

    stack: str
    resource: str
    resource_type: str
    what: str
    quantity: float
    unit: str
    unit_usd: float
    price_key: str

    @property
    def monthly_usd(self) -> float:
        return self.quantity * self.unit_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "resource": self.resource,
            "type": self.resource_type,
            "what": self.what,
            "quantity": self.quantity,
            "unit": self.unit,
            "unit_usd": self.unit_usd,
            "monthly_usd": round(self.monthly_usd, 4),
            "price_key": self.price_key,
        }


@dataclass
class Estimate:
    """The estimate of one environment."""

    name: str
    region: str
    stacks: list[str] = field(default_factory=list)
    items: list[LineItem] = field(default_factory=list)
    not_priced: list[str] = field(default_factory=list)
    free: dict[str, int] = field(default_factory=dict)
    unsourced: set[str] = field(default_factory=set)
    assumptions: dict[str, Any] = field(default_factory=dict)
    unpriced: list[str] = field(default_factory=list)
    assumptions_from: str = "default"

    @property
    def total_usd(self) -> float:
        return sum(item.monthly_usd for item in self.items)

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "total_usd": round(self.total_usd, 2),
            "estimate": True,
            "stacks": self.stacks,
            "items": [item.as_dict() for item in self.items],
            "not_priced": self.not_priced,
            "free": dict(sorted(self.free.items())),
            "unsourced_prices": sorted(self.unsourced),
            "unpriced": self.unpriced,
            "assumptions": self.assumptions,
            "assumptions_from": self.assumptions_from,
        }


class PriceTable:
    """The committed price table and its assumptions."""

    def __init__(self, path: Path) -> None:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CostError(f"cannot read the price table {path}: {exc.strerror}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
            raise CostError(
                f"{path}: expected a mapping with 'regions' (region -> price key -> row)"
            )
        self.path = path
        self.hours_per_month = float(data.get("hours_per_month", 730))
        self._regions: dict[str, dict[str, Price]] = {}
        for region, rows in data["regions"].items():
            parsed: dict[str, Price] = {}
            for key, row in (rows or {}).items():
                parsed[key] = _parse_price(path, region, key, row)
            self._regions[str(region)] = parsed
        assumptions = data.get("assumptions") or {}
        self._default_assumptions: dict[str, Any] = dict(assumptions.get("default") or {})
        self._env_assumptions: dict[str, dict[str, Any]] = {
            str(k).lower(): dict(v or {})
            for k, v in (assumptions.get("environments") or {}).items()
        }

    @property
    def regions(self) -> list[str]:
        return sorted(self._regions)

    @property
    def environments(self) -> list[str]:
        """The entries of ``assumptions.environments`` (lower case)."""
        return sorted(self._env_assumptions)

    def assumptions_for(self, env: str) -> dict[str, Any]:
        """The defaults with the entry ``env`` of ``assumptions.environments`` over them."""
        merged = dict(self._default_assumptions)
        merged.update(self._env_assumptions.get(env.lower(), {}))
        return merged

    def assumptions_of(self, config: EnvironmentConfig) -> tuple[dict[str, Any], str]:
        """An environment's assumptions and where they come from (docs/cost.md, Assumptions).

        ``cost.assumptions_like`` in its config names the entry; else its own entry; else, for
        a personal environment ``<base>-<person>``, its base's; else the defaults. Its own
        ``cost.assumptions`` go over that.
        """
        shown = f"config/{config.name}.yaml"
        like = config.cost.assumptions_like
        base = config.name.split("-", 1)[0]
        if like is not None:
            if like.lower() not in self._env_assumptions:
                raise CostError(
                    f"{shown}: cost.assumptions_like={like}: humansa_ops/pricing/prices.yaml "
                    f"has assumptions for {', '.join(sorted(self._env_assumptions))} "
                    "(or leave it out)"
                )
            entry, basis = like.lower(), f"{like.lower()} ({shown} cost.assumptions_like)"
        elif config.name in self._env_assumptions:
            entry, basis = config.name, config.name
        elif base != config.name and base in self._env_assumptions:
            entry, basis = base, f"{base} ({config.name} is a personal environment of {base})"
        else:
            entry, basis = "", "default"
        merged = self.assumptions_for(entry) if entry else dict(self._default_assumptions)
        own = dict(config.cost.assumptions)
        allowed = sorted(
            k for k, v in self._default_assumptions.items() if isinstance(v, int | float)
        )
        for key in own:
            if key not in allowed:
                raise CostError(
                    f"{shown}: cost.assumptions.{key} is not a traffic assumption "
                    f"(allowed: {', '.join(allowed)})"
                )
        merged.update(own)
        if own:
            basis += f", own: {', '.join(sorted(own))}"
        return merged, basis

    def get(self, region: str, key: str, *, resource_type: str, resource: str) -> Price:
        if region not in self._regions:
            raise CostError(
                f"{resource_type} {resource}: region {region!r} has no price table in "
                f"{self.path.name}; regions priced: {', '.join(self.regions)}"
            )
        try:
            return self._regions[region][key]
        except KeyError:
            raise PriceMissingError(
                resource_type=resource_type, resource=resource, key=key, region=region
            ) from None


def _parse_price(path: Path, region: str, key: str, row: Any) -> Price:
    where = f"{path.name}: regions.{region}.{key}"
    if not isinstance(row, dict):
        raise CostError(f"{where}: expected a mapping with usd, unit, source, read")
    missing = [name for name in ("usd", "unit", "source", "read") if name not in row]
    if missing:
        raise CostError(f"{where}: missing {', '.join(missing)} (every price needs its source)")
    usd = row["usd"]
    if isinstance(usd, bool) or not isinstance(usd, int | float) or usd < 0:
        raise CostError(f"{where}.usd: expected a number >= 0, got {usd!r}")
    source = str(row["source"])
    if source != UNSOURCED and not source.startswith("https://"):
        raise CostError(f"{where}.source: expected an https:// URL or 'unsourced', got {source!r}")
    if source == UNSOURCED and not row.get("note"):
        raise CostError(f"{where}: an unsourced price needs a note saying where it comes from")
    return Price(
        key=key,
        usd=float(usd),
        unit=str(row["unit"]),
        source=source,
        read=str(row["read"]),
        note=str(row.get("note", "")),
    )


# --------------------------------------------------------------------------- cloud assembly


@dataclass(frozen=True)
class StackTemplate:
    name: str
    region: str
    template: dict[str, Any]
    account: str = ""


def environment_of(stack_name: str) -> str:
    """``Humansa-Dev-Network`` -> ``Dev``; ``Humansa-CI`` -> ``CI``; otherwise the name."""
    parts = stack_name.split("-")
    return parts[1] if len(parts) >= 2 and parts[1] else stack_name


def read_assembly(cdk_out: Path) -> list[StackTemplate]:
    manifest_path = cdk_out / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CostError(
            f"{manifest_path} not found: run `make synth` first (or pass the cdk.out folder)"
        ) from None
    except json.JSONDecodeError as exc:
        raise CostError(f"{manifest_path}: not valid JSON ({exc.msg})") from exc
    stacks: list[StackTemplate] = []
    for artifact_id, artifact in (manifest.get("artifacts") or {}).items():
        kind = artifact.get("type")
        props = artifact.get("properties") or {}
        if kind == "cdk:cloud-assembly":
            stacks.extend(read_assembly(cdk_out / str(props["directoryName"])))
            continue
        if kind != "aws:cloudformation:stack":
            continue
        name = str(props.get("stackName") or artifact_id)
        template_path = cdk_out / str(props["templateFile"])
        try:
            template = json.loads(template_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CostError(
                f"{template_path} (stack {name}) is listed in the manifest but missing"
            ) from None
        environment = str(artifact.get("environment", ""))
        stacks.append(
            StackTemplate(name, _region_of(environment), template, _account_of(environment))
        )
    return stacks


def _account_of(environment: str) -> str:
    match = re.fullmatch(r"aws://([^/]+)/[^/]+", environment)
    return match.group(1) if match else ""


# CloudWatch's always-free tier (not a 12-month trial) includes 3 dashboards per account
# (up to 50 metrics each): https://aws.amazon.com/cloudwatch/pricing/
FREE_DASHBOARDS_PER_ACCOUNT = 3


def _accounts_within_free_dashboards(stacks: list[StackTemplate]) -> set[str]:
    """Accounts whose dashboards in this assembly all fit the always-free allowance."""
    counts: dict[str, int] = {}
    for stack in stacks:
        resources = stack.template.get("Resources") or {}
        count = sum(1 for r in resources.values() if r.get("Type") == "AWS::CloudWatch::Dashboard")
        counts[stack.account] = counts.get(stack.account, 0) + count
    return {acct for acct, n in counts.items() if acct and n <= FREE_DASHBOARDS_PER_ACCOUNT}


def _region_of(environment: str) -> str:
    match = re.fullmatch(r"aws://[^/]+/([a-z0-9-]+)", environment)
    if not match or match.group(1) == "unknown-region":
        return DEFAULT_REGION
    return match.group(1)


# --------------------------------------------------------------------------- pricing


class _Pricer:
    """Prices the resources of the stacks of one environment."""

    def __init__(
        self, table: PriceTable, estimate: Estimate, *, free_dashboards: bool = False
    ) -> None:
        self.table = table
        self.free_dashboards = free_dashboards
        self.est = estimate
        self.a = estimate.assumptions
        self.hours = table.hours_per_month
        self.stack = ""
        self.resources: dict[str, Any] = {}
        self.params: dict[str, Any] = {}

    # helpers -----------------------------------------------------------------------------
    def price(self, key: str, rtype: str, lid: str) -> Price:
        found = self.table.get(self.est.region, key, resource_type=rtype, resource=self._name(lid))
        if found.unsourced:
            self.est.unsourced.add(key)
        return found

    def add(
        self,
        rtype: str,
        lid: str,
        what: str,
        qty: float,
        unit: str,
        key: str,
        factor: float = 1.0,
        key_label: str | None = None,
    ) -> None:
        try:
            found = self.price(key, rtype, lid)
        except PriceMissingError as exc:  # a valid type the table lacks: say so, never fail
            self.est.unpriced.append(f"{exc.resource_type} {exc.resource} ({exc.key})")
            return
        self.est.items.append(
            LineItem(self.stack, lid, rtype, what, qty, unit, found.usd * factor, key_label or key)
        )

    def _name(self, lid: str) -> str:
        return f"{self.stack}/{lid}"

    def number(self, value: Any, rtype: str, lid: str, field_name: str) -> float:
        if isinstance(value, dict) and set(value) == {"Ref"}:
            param = self.params.get(str(value["Ref"]))
            if isinstance(param, dict) and "Default" in param:
                value = param["Default"]
        if isinstance(value, bool):
            raise CostError(f"{rtype} {self._name(lid)}: {field_name} must be a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise CostError(
            f"{rtype} {self._name(lid)}: {field_name} is {value!r}; the estimator needs a literal "
            "number (or a parameter with a Default)"
        )

    def target(self, value: Any) -> str | None:
        """Logical ID a Ref/GetAtt points at, if it is a resource of this template."""
        if isinstance(value, dict):
            if "Ref" in value:
                name = str(value["Ref"])
            elif "Fn::GetAtt" in value:
                att = value["Fn::GetAtt"]
                name = str(att[0] if isinstance(att, list) else str(att).split(".")[0])
            else:
                return None
            return name if name in self.resources else None
        return None

    def props(self, lid: str) -> dict[str, Any]:
        props = self.resources[lid].get("Properties") or {}
        return props if isinstance(props, dict) else {}

    # entry ---------------------------------------------------------------------------------
    def price_stack(self, stack: StackTemplate) -> None:
        self.stack = stack.name
        self.resources = stack.template.get("Resources") or {}
        self.params = stack.template.get("Parameters") or {}
        eip_targets = self._eip_instance_targets()
        log_overrides = self._log_group_overrides()
        for lid, res in self.resources.items():
            rtype = str(res.get("Type", ""))
            props = self.props(lid)
            handler = _HANDLERS.get(rtype)
            if handler is not None:
                handler(self, rtype, lid, props, eip_targets, log_overrides)
            elif rtype in FREE_TYPES or rtype.startswith("Custom::"):
                self.est.free[rtype] = self.est.free.get(rtype, 0) + 1
            else:
                self.est.not_priced.append(f"{rtype} ({self._name(lid)})")

    def _eip_instance_targets(self) -> set[str]:
        targets: set[str] = set()
        for lid, res in self.resources.items():
            if res.get("Type") in ("AWS::EC2::EIP", "AWS::EC2::EIPAssociation"):
                found = self.target(self.props(lid).get("InstanceId"))
                if found:
                    targets.add(found)
        return targets

    def _log_group_overrides(self) -> dict[str, tuple[float, str, str]]:
        """Log groups fed by a flow log or a trail: (GB/month, price key, label)."""
        out: dict[str, tuple[float, str, str]] = {}
        for lid, res in self.resources.items():
            props = self.props(lid)
            if res.get("Type") == "AWS::EC2::FlowLog":
                dest = props.get("LogDestinationType", "cloud-watch-logs")
                group = self.target(props.get("LogGroupName")) or self.target(
                    props.get("LogDestination")
                )
                if dest == "cloud-watch-logs" and group:
                    out[group] = (
                        float(self.a["flow_log_gb_per_month"]),
                        "logs.vended.gb",
                        "flow log",
                    )
            elif res.get("Type") == "AWS::CloudTrail::Trail":
                group = self.target(props.get("CloudWatchLogsLogGroupArn"))
                if group:
                    gb = float(self.a["cloudtrail_logs_gb_per_month"])
                    out[group] = (gb, "logs.ingest.gb", "CloudTrail delivery")
        return out

    def public_ip(self, subnet_ids: Any, interfaces: Any) -> bool:
        for nic in interfaces or []:
            if isinstance(nic, dict) and str(nic.get("AssociatePublicIpAddress")).lower() == "true":
                return True
        ids = subnet_ids if isinstance(subnet_ids, list) else [subnet_ids]
        for sid in ids:
            subnet = self.target(sid)
            if subnet and str(self.props(subnet).get("MapPublicIpOnLaunch")).lower() == "true":
                return True
        return False

    def volumes(self, mappings: Any) -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        for mapping in mappings or []:
            ebs = mapping.get("Ebs") if isinstance(mapping, dict) else None
            if isinstance(ebs, dict):
                size = ebs.get("VolumeSize", self.a["root_volume_gb"])
                out.append((float(size), str(ebs.get("VolumeType", self.a["root_volume_type"]))))
        if not out:
            out.append((float(self.a["root_volume_gb"]), str(self.a["root_volume_type"])))
        return out


def _price_alb(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    kind = str(props.get("Type", "application"))
    if kind not in ("application", "network"):
        p.est.not_priced.append(f"{rtype} type {kind} ({p._name(lid)})")
        return
    short = "alb" if kind == "application" else "nlb"
    label = "ALB" if kind == "application" else "NLB"
    p.add(rtype, lid, f"{label} {lid} hours", p.hours, "h", f"elb.{short}.hour")
    lcu = float(p.a["alb_lcu_per_hour"])
    p.add(
        rtype,
        lid,
        f"{label} {lid} capacity units ({lcu:g} LCU average)",
        lcu * p.hours,
        "LCU-h",
        f"elb.{short}.lcu_hour",
    )
    if str(props.get("Scheme", "internet-facing")) != "internal":
        subnets = props.get("Subnets") or props.get("SubnetMappings") or []
        if not isinstance(subnets, list) or not subnets:
            raise CostError(f"{rtype} {p._name(lid)}: Subnets must be a list to count its AZs")
        p.add(
            rtype,
            lid,
            f"{label} {lid} public IPv4, one per AZ ({len(subnets)})",
            len(subnets) * p.hours,
            "IP-h",
            "ipv4.hour",
        )


def _price_instances(
    p: _Pricer,
    rtype: str,
    lid: str,
    what: str,
    itype: str,
    count: float,
    spot: float,
    discount: float,
) -> None:
    key = f"ec2.instance.{itype}.hour"
    on_demand = count - spot
    if on_demand:
        p.add(
            rtype,
            lid,
            f"EC2 {itype} on-demand x{on_demand:g} ({what})",
            on_demand * p.hours,
            "instance-h",
            key,
        )
    if spot:
        p.add(
            rtype,
            lid,
            f"EC2 {itype} spot x{spot:g} ({what}, {discount:.0%} below on-demand)",
            spot * p.hours,
            "instance-h",
            key,
            factor=1 - discount,
            key_label=f"{key} x (1 - {discount:g})",
        )


def _price_volumes(
    p: _Pricer, rtype: str, lid: str, what: str, count: float, volumes: list[tuple[float, str]]
) -> None:
    for size, vtype in volumes:
        if count:
            p.add(
                rtype,
                lid,
                f"EBS {vtype} {size:g} GiB x{count:g} ({what})",
                size * count,
                "GB-month",
                f"ebs.{vtype}.gb_month",
            )


def _price_asg(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    capacity = props.get("DesiredCapacity", props.get("MinSize"))
    if capacity is None:
        raise CostError(f"{rtype} {p._name(lid)}: neither DesiredCapacity nor MinSize is set")
    count = p.number(capacity, rtype, lid, "DesiredCapacity/MinSize")
    mixed = props.get("MixedInstancesPolicy")
    overrides: list[str] = []
    spot = 0.0
    if isinstance(mixed, dict):
        lt_block = mixed.get("LaunchTemplate") or {}
        spec = lt_block.get("LaunchTemplateSpecification") or {}
        overrides = [
            str(o["InstanceType"])
            for o in lt_block.get("Overrides") or []
            if isinstance(o, dict) and "InstanceType" in o
        ]
        dist = mixed.get("InstancesDistribution") or {}
        base = p.number(dist.get("OnDemandBaseCapacity", 0), rtype, lid, "OnDemandBaseCapacity")
        pct = p.number(
            dist.get("OnDemandPercentageAboveBaseCapacity", 100),
            rtype,
            lid,
            "OnDemandPercentageAboveBaseCapacity",
        )
        above = max(count - base, 0.0)
        on_demand = min(count, base) + math.ceil(above * pct / 100)
        spot = count - on_demand
    else:
        spec = props.get("LaunchTemplate") or {}
    data, interfaces = _launch_data(p, rtype, lid, props, spec)
    itype = overrides[0] if overrides else str(data.get("InstanceType", ""))
    if not itype:
        raise CostError(f"{rtype} {p._name(lid)}: no InstanceType in its launch template/overrides")
    discounts = p.a.get("spot_discount") or {}
    discount = float(discounts.get(itype, p.a["spot_discount_default"]))
    _price_instances(p, rtype, lid, f"ASG {lid}", itype, count, spot, discount)
    _price_volumes(p, rtype, lid, f"ASG {lid}", count, p.volumes(data.get("BlockDeviceMappings")))
    if count and p.public_ip(props.get("VPCZoneIdentifier"), interfaces):
        p.add(
            rtype, lid, f"public IPv4 x{count:g} (ASG {lid})", count * p.hours, "IP-h", "ipv4.hour"
        )


def _launch_data(
    p: _Pricer, rtype: str, lid: str, props: dict[str, Any], spec: dict[str, Any]
) -> tuple[dict[str, Any], Any]:
    lc = p.target(props.get("LaunchConfigurationName"))
    if lc:
        lc_props = p.props(lc)
        nics = [{"AssociatePublicIpAddress": lc_props.get("AssociatePublicIpAddress")}]
        return lc_props, nics
    lt = p.target(spec.get("LaunchTemplateId")) or p.target(spec.get("LaunchTemplateName"))
    if not lt:
        raise CostError(
            f"{rtype} {p._name(lid)}: its launch template must be a resource of the same template "
            "(LaunchTemplateId: Ref/GetAtt)"
        )
    data = p.props(lt).get("LaunchTemplateData") or {}
    return data, data.get("NetworkInterfaces")


def _price_instance(
    p: _Pricer, rtype: str, lid: str, props: dict[str, Any], eip_targets: set[str], *_: Any
) -> None:
    itype = str(props.get("InstanceType", ""))
    if not itype:
        raise CostError(f"{rtype} {p._name(lid)}: InstanceType must be a literal")
    what = f"instance {lid}"
    _price_instances(p, rtype, lid, what, itype, 1, 0, 0.0)
    _price_volumes(p, rtype, lid, what, 1, p.volumes(props.get("BlockDeviceMappings")))
    if lid not in eip_targets and p.public_ip(
        props.get("SubnetId"), props.get("NetworkInterfaces")
    ):
        p.add(rtype, lid, f"public IPv4 ({what})", p.hours, "IP-h", "ipv4.hour")


def _price_nat(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    p.add(rtype, lid, f"NAT gateway {lid} hours", p.hours, "h", "nat_gateway.hour")
    if not any(i.resource_type == rtype and i.price_key == "nat_gateway.gb" for i in p.est.items):
        gb = float(p.a["nat_gateway_gb_per_month"])
        p.add(
            rtype,
            lid,
            f"NAT gateway data processed ({gb:g} GB/month, all gateways)",
            gb,
            "GB",
            "nat_gateway.gb",
        )
    private = str(props.get("ConnectivityType", "public")) == "private"
    allocation = props.get("AllocationId")
    if not private and allocation is not None and p.target(allocation) is None:
        p.add(
            rtype,
            lid,
            f"public IPv4 (NAT gateway {lid}, address outside the template)",
            p.hours,
            "IP-h",
            "ipv4.hour",
        )


def _price_eip(p: _Pricer, rtype: str, lid: str, *_: Any) -> None:
    p.add(rtype, lid, f"public IPv4 (Elastic IP {lid})", p.hours, "IP-h", "ipv4.hour")


def _price_endpoint(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    kind = str(props.get("VpcEndpointType", "Gateway"))
    if kind == "Gateway":
        p.est.free[f"{rtype} (Gateway)"] = p.est.free.get(f"{rtype} (Gateway)", 0) + 1
        return
    if kind != "Interface":
        p.est.not_priced.append(f"{rtype} type {kind} ({p._name(lid)})")
        return
    subnets = props.get("SubnetIds") or []
    if not isinstance(subnets, list) or not subnets:
        raise CostError(
            f"{rtype} {p._name(lid)}: SubnetIds must be a list (one billed hour per AZ)"
        )
    service = _service_name(props.get("ServiceName"))
    p.add(
        rtype,
        lid,
        f"interface endpoint {service} x{len(subnets)} AZ",
        len(subnets) * p.hours,
        "endpoint-AZ-h",
        "vpce.interface.hour",
    )
    if not any(i.price_key == "vpce.interface.gb" for i in p.est.items):
        gb = float(p.a["interface_endpoint_gb_per_month"])
        p.add(
            rtype,
            lid,
            f"interface endpoints data processed ({gb:g} GB/month, all)",
            gb,
            "GB",
            "vpce.interface.gb",
        )


def _service_name(value: Any) -> str:
    """``com.amazonaws.<region>.ssm`` (literal or Fn::Join) -> ``ssm``."""
    if isinstance(value, str):
        return value.split(".", 3)[-1] if value.count(".") >= 3 else value
    if isinstance(value, dict) and isinstance(value.get("Fn::Join"), list):
        parts = value["Fn::Join"][1]
        if isinstance(parts, list) and parts and isinstance(parts[-1], str):
            return parts[-1].lstrip(".")
    return "service"


def _price_rds(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    engine = str(props.get("Engine", "")).lower()
    klass = str(props.get("DBInstanceClass", ""))
    if not engine or not klass:
        raise CostError(f"{rtype} {p._name(lid)}: Engine and DBInstanceClass must be literals")
    multi = str(props.get("MultiAZ", "false")).lower() == "true"
    copies = 2 if multi else 1
    label = "Multi-AZ" if multi else "Single-AZ"
    p.add(
        rtype,
        lid,
        f"RDS {engine} {klass} {label} (x{copies} instance)",
        copies * p.hours,
        "instance-h",
        f"rds.{engine}.{klass}.hour",
    )
    if props.get("AllocatedStorage") is not None:
        size = p.number(props["AllocatedStorage"], rtype, lid, "AllocatedStorage")
        stype = str(props.get("StorageType", "gp2"))
        p.add(
            rtype,
            lid,
            f"RDS storage {stype} {size:g} GB {label} (x{copies})",
            size * copies,
            "GB-month",
            f"rds.storage.{stype}.gb_month",
        )
    backup = float(p.a["rds_backup_gb_beyond_free"])
    if backup:
        p.add(
            rtype,
            lid,
            f"RDS backup storage beyond the free allocation ({backup:g} GB)",
            backup,
            "GB-month",
            "rds.backup.gb_month",
        )
    if str(props.get("ManageMasterUserPassword", "false")).lower() == "true":
        p.add(
            rtype,
            lid,
            f"RDS-managed master password secret ({lid})",
            1,
            "secret-month",
            "secretsmanager.secret_month",
        )


def _price_alarm(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    metrics = props.get("Metrics")
    count = len([m for m in metrics if isinstance(m, dict) and "MetricStat" in m]) if metrics else 1
    period = props.get("Period")
    if period is None and metrics:
        periods = [
            m["MetricStat"].get("Period", 60)
            for m in metrics
            if isinstance(m, dict) and "MetricStat" in m
        ]
        period = min(periods) if periods else 60
    high = period is not None and p.number(period, rtype, lid, "Period") < 60
    key = "cloudwatch.alarm.high_resolution_month" if high else "cloudwatch.alarm.standard_month"
    p.add(
        rtype,
        lid,
        f"alarm {lid} ({max(count, 1)} metric{'s' if count > 1 else ''})",
        max(count, 1),
        "alarm-metric-month",
        key,
    )


def _price_composite(p: _Pricer, rtype: str, lid: str, *_: Any) -> None:
    p.add(
        rtype, lid, f"composite alarm {lid}", 1, "alarm-month", "cloudwatch.alarm.composite_month"
    )


def _price_dashboard(p: _Pricer, rtype: str, lid: str, *_: Any) -> None:
    if p.free_dashboards:
        # Every dashboard of the account fits the always-free allowance; which one would be
        # billed first is undefined, so none is (a 4th dashboard turns this off for all).
        p.add(
            rtype,
            lid,
            f"dashboard {lid} (always-free: <= {FREE_DASHBOARDS_PER_ACCOUNT} per account)",
            1,
            "dashboard-month",
            "cloudwatch.dashboard_month",
            factor=0.0,
        )
        return
    p.add(rtype, lid, f"dashboard {lid}", 1, "dashboard-month", "cloudwatch.dashboard_month")


def _price_log_group(
    p: _Pricer,
    rtype: str,
    lid: str,
    props: dict[str, Any],
    _e: Any,
    overrides: dict[str, tuple[float, str, str]],
) -> None:
    gb, key, label = overrides.get(
        lid, (float(p.a["log_group_ingest_gb_per_month"]), "logs.ingest.gb", "assumed")
    )
    p.add(rtype, lid, f"log group {lid} ingestion ({gb:g} GB/month, {label})", gb, "GB", key)
    retention = props.get("RetentionInDays")
    max_months = float(p.a["log_storage_max_months"])
    months = (
        max_months
        if retention is None
        else min(p.number(retention, rtype, lid, "RetentionInDays") / 30.4, max_months)
    )
    p.add(
        rtype,
        lid,
        f"log group {lid} storage ({months:.1f} months kept, uncompressed)",
        gb * months,
        "GB-month",
        "logs.storage.gb_month",
    )


def _price_flow_log(
    p: _Pricer,
    rtype: str,
    lid: str,
    props: dict[str, Any],
    _e: Any,
    overrides: dict[str, tuple[float, str, str]],
) -> None:
    dest = str(props.get("LogDestinationType", "cloud-watch-logs"))
    group = p.target(props.get("LogGroupName")) or p.target(props.get("LogDestination"))
    if dest == "cloud-watch-logs" and group in overrides:
        return  # priced on its log group
    gb = float(p.a["flow_log_gb_per_month"])
    if dest == "cloud-watch-logs":
        p.add(
            rtype, lid, f"flow log {lid} vended logs ({gb:g} GB/month)", gb, "GB", "logs.vended.gb"
        )
    elif dest == "s3":
        p.add(
            rtype,
            lid,
            f"flow log {lid} vended logs to S3 ({gb:g} GB/month)",
            gb,
            "GB",
            "logs.vended_s3.gb",
        )
    else:
        p.est.not_priced.append(f"{rtype} to {dest} ({p._name(lid)})")


def _price_trail(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    gb = float(p.a["cloudtrail_s3_stored_gb"])
    p.add(
        rtype,
        lid,
        f"trail {lid} log files in S3 ({gb:g} GB kept; management events free)",
        gb,
        "GB-month",
        "s3.standard.gb_month",
    )
    # Management events (the first copy) are free; only data-event selectors cost per event.
    data_selectors = [sel for sel in props.get("EventSelectors", []) if sel.get("DataResources")]
    if data_selectors or props.get("AdvancedEventSelectors"):
        p.est.not_priced.append(
            f"CloudTrail data events selected on {p._name(lid)} (volume unknown)"
        )


def _price_secret(p: _Pricer, rtype: str, lid: str, *_: Any) -> None:
    p.add(rtype, lid, f"secret {lid}", 1, "secret-month", "secretsmanager.secret_month")


def _price_key(p: _Pricer, rtype: str, lid: str, *_: Any) -> None:
    p.add(rtype, lid, f"KMS key {lid}", 1, "key-month", "kms.key_month")


def _price_parameter(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    if str(props.get("Tier", "Standard")) == "Advanced":
        p.add(
            rtype,
            lid,
            f"advanced parameter {lid}",
            1,
            "parameter-month",
            "ssm.advanced_parameter_month",
        )
    else:
        p.est.free[rtype] = p.est.free.get(rtype, 0) + 1


def _price_web_acl(p: _Pricer, rtype: str, lid: str, props: dict[str, Any], *_: Any) -> None:
    p.add(rtype, lid, f"WAF web ACL {lid}", 1, "web-ACL-month", "waf.web_acl_month")
    rules = props.get("Rules") or []
    if rules:
        p.add(rtype, lid, f"WAF rules of {lid}", len(rules), "rule-month", "waf.rule_month")
    p.est.not_priced.append(
        f"WAF requests inspected by {p._name(lid)} ($0.60/million, volume unknown)"
    )


_HANDLERS: dict[str, Any] = {
    "AWS::ElasticLoadBalancingV2::LoadBalancer": _price_alb,
    "AWS::AutoScaling::AutoScalingGroup": _price_asg,
    "AWS::EC2::Instance": _price_instance,
    "AWS::EC2::NatGateway": _price_nat,
    "AWS::EC2::EIP": _price_eip,
    "AWS::EC2::VPCEndpoint": _price_endpoint,
    "AWS::RDS::DBInstance": _price_rds,
    "AWS::CloudWatch::Alarm": _price_alarm,
    "AWS::CloudWatch::CompositeAlarm": _price_composite,
    "AWS::CloudWatch::Dashboard": _price_dashboard,
    "AWS::Logs::LogGroup": _price_log_group,
    "AWS::EC2::FlowLog": _price_flow_log,
    "AWS::CloudTrail::Trail": _price_trail,
    "AWS::SecretsManager::Secret": _price_secret,
    "AWS::KMS::Key": _price_key,
    "AWS::SSM::Parameter": _price_parameter,
    "AWS::WAFv2::WebACL": _price_web_acl,
}

PRICED_TYPES = frozenset(_HANDLERS)


def estimate(
    cdk_out: Path, table: PriceTable, *, env: str | None = None, region: str | None = None
) -> dict[str, Estimate]:
    """Estimate every environment of the assembly (or only ``env``), keyed by environment."""
    stacks = read_assembly(cdk_out)
    free_dashboard_accounts = _accounts_within_free_dashboards(stacks)
    by_env: dict[str, list[StackTemplate]] = {}
    for stack in stacks:
        by_env.setdefault(environment_of(stack.name), []).append(stack)
    if env is not None:
        # The config file name (dev-alice) or the stacks' label (DevAlice): config/naming.py.
        key = env.replace("-", "").lower()
        wanted = {name: s for name, s in by_env.items() if name.lower() == key}
        known = environment_names()
        if not wanted and key not in {"ci", *(n.replace("-", "") for n in known)}:
            raise CostError(
                f"--env {env}: no config/{env}.yaml; known environments: {', '.join(known)}"
            )
        if not wanted:
            raise CostError(
                f"--env {env}: no such environment; found: {', '.join(sorted(by_env))}"
                f" (make synth ENV={env} first)"
            )
        by_env = wanted
    result: dict[str, Estimate] = {}
    for name, env_stacks in by_env.items():
        regions = sorted({region or s.region for s in env_stacks})
        assumptions, basis = _assumptions(table, name)
        est = Estimate(
            name=name, region=regions[0], assumptions=assumptions, assumptions_from=basis
        )
        for stack in env_stacks:
            est.stacks.append(stack.name)
            est.region = region or stack.region  # each stack is priced at its own region
            free = stack.account in free_dashboard_accounts
            _Pricer(table, est, free_dashboards=free).price_stack(stack)
        est.region = ", ".join(regions)
        result[name] = est
    return result


def _assumptions(table: PriceTable, label: str) -> tuple[dict[str, Any], str]:
    """The assumptions of the environment whose stacks are ``Humansa-<label>-*``: from its
    config/<name>.yaml when one has that title, else by the label (CI, an old assembly)."""
    names = [n for n in environment_names() if env_title(n) == label]
    if not names:
        basis = label.lower() if label.lower() in table.environments else "default"
        return table.assumptions_for(label), basis
    try:
        config = load_environment(names[0])
    except ConfigError as exc:
        raise CostError(str(exc)) from None
    return table.assumptions_of(config)


# --------------------------------------------------------------------------- output

_ASSUMPTION_LABELS = {
    "alb_lcu_per_hour": "ALB capacity units (LCU) each hour",
    "nat_gateway_gb_per_month": "GB/month through NAT gateways",
    "interface_endpoint_gb_per_month": "GB/month through interface endpoints",
    "log_group_ingest_gb_per_month": "GB/month ingested per log group",
    "flow_log_gb_per_month": "GB/month of VPC flow logs",
    "cloudtrail_s3_stored_gb": "GB of trail logs kept in S3",
    "rds_backup_gb_beyond_free": "GB of RDS backups beyond the free allocation",
}


def render_table(estimates: Mapping[str, Estimate], table: PriceTable) -> str:
    lines: list[str] = []
    for est in estimates.values():
        lines.append(
            f"{est.name} ({est.region}): ESTIMATED monthly cost in USD, "
            f"{table.hours_per_month:g} hours/month, on-demand list prices, no free tier except "
            f"CloudWatch's always-free {FREE_DASHBOARDS_PER_ACCOUNT} dashboards per account"
        )
        lines.append(f"  {'what':<64} {'quantity':>10} {'unit':<18} {'unit USD':>9} {'monthly':>9}")
        for item in sorted(est.items, key=lambda i: -i.monthly_usd):
            what = item.what if len(item.what) <= 64 else item.what[:63] + "~"
            lines.append(
                f"  {what:<64} {item.quantity:>10,.2f} {item.unit:<18} {item.unit_usd:>9.5f} "
                f"{item.monthly_usd:>9.2f}"
            )
        lines.append(
            f"  {'TOTAL (estimate, USD/month)':<64} {'':>10} {'':<18} {'':>9} {est.total_usd:>9.2f}"
        )
        used = {k: v for k, v in est.assumptions.items() if k in _ASSUMPTION_LABELS}
        lines.append(
            f"  assumptions ({est.assumptions_from}): "
            + "; ".join(f"{v:g} {_ASSUMPTION_LABELS[k]}" for k, v in used.items())
        )
        spot = est.assumptions.get("spot_discount") or {}
        lines.append(
            f"  spot discount: {float(est.assumptions['spot_discount_default']):.0%} default"
            + "".join(f", {t} {float(d):.0%}" for t, d in spot.items())
        )
        if est.free:
            lines.append(
                "  free or priced elsewhere: "
                + ", ".join(f"{t} x{n}" for t, n in sorted(est.free.items()))
            )
        if est.not_priced:
            lines.append("  NOT PRICED (unknown billable types): " + ", ".join(est.not_priced))
        if est.unpriced:
            lines.append(
                "  unpriced (no row in humansa_ops/pricing/prices.yaml for the region; the total "
                "leaves them out): " + ", ".join(est.unpriced)
            )
        if est.unsourced:
            lines.append(
                "  WARNING: unsourced prices used (see humansa_ops/pricing/prices.yaml notes): "
                + ", ".join(sorted(est.unsourced))
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_summary(estimates: Mapping[str, Estimate]) -> str:
    lines = []
    for est in estimates.values():
        extra = []
        if est.unsourced:
            extra.append(f"{len(est.unsourced)} unsourced prices")
        if est.not_priced:
            extra.append(f"{len(est.not_priced)} resources not priced")
        if est.unpriced:
            extra.append(f"{len(est.unpriced)} unpriced")
        tail = f"; {', '.join(extra)}" if extra else ""
        lines.append(
            f"cost estimate: {est.name} ~${est.total_usd:,.2f}/month ({est.region}{tail}) "
            "- details: make cost"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "cdk_out",
        nargs="?",
        default="cdk.out",
        type=Path,
        help="cloud assembly folder (default: cdk.out)",
    )
    parser.add_argument("--env", help="only this environment (e.g. dev), case-insensitive")
    parser.add_argument("--region", help="price every stack at this region (e.g. us-east-1)")
    parser.add_argument("--prices", type=Path, default=DEFAULT_PRICES, help="price table YAML")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="machine-readable output")
    mode.add_argument("--summary", action="store_true", help="one line per environment")
    args = parser.parse_args(argv)
    try:
        table = PriceTable(args.prices)
        estimates = estimate(args.cdk_out, table, env=args.env, region=args.region)
    except CostError as exc:
        print(f"cost: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({name: est.as_dict() for name, est in estimates.items()}, indent=2))
    elif args.summary:
        sys.stdout.write(render_summary(estimates))
    else:
        sys.stdout.write(render_table(estimates, table))
    return 0


def iter_items(estimates: Mapping[str, Estimate]) -> Iterator[LineItem]:
    """All line items of all environments (for tests and other scripts)."""
    for est in estimates.values():
        yield from est.items


if __name__ == "__main__":
    sys.exit(main())
