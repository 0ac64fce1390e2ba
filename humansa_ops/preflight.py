#!/usr/bin/env python3
"""``make preflight ENV=<name>``: what would stop the first deploy, checked with credentials.

Prints one table of checks (``ok``, ``warning``, ``BLOCKER``, ``not checked``) and exits 1 when
any check is a blocker, 2 on a configuration problem. Before any AWS call it refuses a
``production`` without ``service.certificate_arn`` (unless ``service.allow_plain_http`` holds a
written reason): ``--tls-only`` runs only that guard. ``--deploy-guards`` (what ``make deploy``
calls first) runs that guard and, when the deploy's image source is ``ghcr`` (``image.source``,
or ``--image-source ghcr`` as ``make release-deploy`` passes), refuses while the GHCR token
secret is missing or still holds its placeholder: one line naming the command to run.

Checks: the region is enabled (ap-east-1 is opt-in), the CDK bootstrap is present and recent
enough, every instance type is offered in the configured AZs (EC2 and RDS with the pinned engine
version), the resources with fixed names do not exist outside our stacks (the GitHub roles and
OIDC provider, parameters and secrets under ``/humansa/<env>/``, the log groups), and the EIP and
VPC quotas leave room. What the API (or the emulator) cannot answer is reported as ``not
checked``, never as ``ok``.

Usage: ``scripts/preflight --env production [--tls-only | --deploy-guards [--image-source ghcr]]``
(or ``python -m humansa_ops.preflight``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent

from components.boot import RUNBOOK_PARAMETER_NAMES  # noqa: E402 (jinja2 only, no CDK)
from config import (  # noqa: E402
    CI_SELECTOR,
    AccountConfig,
    ConfigError,
    EnvironmentConfig,
    account_config_exists,
    config_dir,
    load_account,
    load_environment,
    naming,
)

OK = "ok"
WARNING = "warning"
BLOCKER = "BLOCKER"
NOT_CHECKED = "not checked"

#: The oldest bootstrap the synthesized stacks accept (manifest ``requiresBootstrapStackVersion``;
#: the lookup role used by ``cdk diff`` needs 8), and the version the pinned CLI deploys
#: (``node_modules/aws-cdk/lib/api/bootstrap/bootstrap-template.yaml``, checked by a test).
MIN_BOOTSTRAP_VERSION = 6
LOOKUP_BOOTSTRAP_VERSION = 8
CLI_BOOTSTRAP_VERSION = 33

DEPLOY_ROLE_NAME = "humansa-github-actions-role"
DIFF_ROLE_NAME = "humansa-github-diff-role"
OIDC_HOST = "token.actions.githubusercontent.com"
#: Parameters our Data and Service stacks create under /humansa/<env>/ (the runbook's nine).
OUR_PARAMETERS = RUNBOOK_PARAMETER_NAMES
NAT_INSTANCE_TYPE = "t4g.nano"
#: EC2 quota codes (Service Quotas): EC2-VPC Elastic IPs; VPCs per Region.
EIP_QUOTA = ("ec2", "L-0263D0A3")
VPC_QUOTA = ("vpc", "L-F678F1CE")
DEFAULT_EIP_QUOTA = 5
DEFAULT_VPC_QUOTA = 5
ACM_HINT = (
    "request one with `aws acm request-certificate --domain-name <host> --validation-method DNS "
    "--region {region}` (docs/operations.md, TLS), then set service.certificate_arn"
)


@dataclass(frozen=True)
class Check:
    """One row of the table."""

    name: str
    status: str
    detail: str


def config_file(name: str) -> str:
    """``config/<name>.yaml`` as the user would type it (relative to the working folder)."""
    path = config_dir() / f"{name}.yaml"
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def plain_http_refusal(cfg: EnvironmentConfig) -> str | None:
    """The one-line refusal for a production without a certificate, else None.

    Production (the environment named ``production``) must serve HTTPS: its clients send bearer
    keys and prompts. ``service.allow_plain_http`` with a written reason lifts the refusal.
    """
    if cfg.name != "production" or cfg.service.certificate_arn or cfg.service.allow_plain_http:
        return None
    return (
        f"{config_file(cfg.name)}: service.certificate_arn is not set, so {cfg.name} would serve "
        "bearer keys and prompts over plain HTTP; "
        + ACM_HINT.format(region=cfg.region)
        + " (or set service.allow_plain_http to a written reason)"
    )


def ghcr_token_refusal(cfg: EnvironmentConfig, session: Any) -> str | None:
    """The one-line refusal to deploy the ``ghcr`` image source, else None.

    The pull-through cache fetches the image from GHCR with the Data stack's token secret on an
    instance's first pull; while the secret is missing or holds the placeholder CloudFormation
    wrote, the new fleet cannot pull and the rollout fails. Decided from ``DescribeSecret``
    (metadata only: the token is never read here): the secret exists, is not scheduled for
    deletion, and has a version besides the one it was created with (``make secrets`` adds one;
    Secrets Manager keeps the labels AWSCURRENT and AWSPREVIOUS on the last two).
    """
    name = naming.ghcr_token_secret_name(cfg.name)
    image = f"ghcr.io/{cfg.ghcr_repository}"
    put = f"`GHCR_USERNAME=<github user> make secrets ENV={cfg.name} NAME=GHCR_TOKEN`"
    sm = session.client("secretsmanager", region_name=cfg.region)
    try:
        described = sm.describe_secret(SecretId=name)
    except Exception as exc:
        code = _error_code(exc)
        if code == "ResourceNotFoundException":
            data = naming.stack_name(cfg.name, "Data")
            return (
                f"{name} does not exist in {cfg.region} yet, so the fleet could not pull {image}: "
                f"create it with `npx cdk deploy -c env={cfg.name} {data}` (Network and Data "
                f"only), then put the token with {put}"
            )
        if code in {"AccessDeniedException", "AccessDenied"}:
            return (
                f"cannot check {name} (secretsmanager:DescribeSecret denied): deploy the account "
                "stack first (`make deploy ENV=ci` lets the deploy role describe it), or deploy "
                "with credentials that may"
            )
        raise
    if described.get("DeletedDate"):
        return (
            f"{name} is scheduled for deletion: `aws secretsmanager restore-secret --secret-id "
            f"{name} --region {cfg.region}`, then put the token with {put}"
        )
    if len(described.get("VersionIdsToStages") or {}) < 2:
        return (
            f"{name} still holds its placeholder, so the fleet could not pull {image}: put the "
            f"token first with {put}"
        )
    return None


def _format_table(checks: Iterable[Check]) -> str:
    rows = list(checks)
    width = max([len("check"), *(len(c.name) for c in rows)])
    swidth = max([len("status"), *(len(c.status) for c in rows)])
    lines = [f"{'check':<{width}}  {'status':<{swidth}}  detail"]
    lines.append(f"{'-' * width}  {'-' * swidth}  {'-' * 6}")
    lines += [f"{c.name:<{width}}  {c.status:<{swidth}}  {c.detail}" for c in rows]
    return "\n".join(lines)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _not_implemented(exc: Exception) -> bool:
    """The endpoint does not implement the call (moto answers 'NotImplemented' or a 501)."""
    code = _error_code(exc)
    status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"NotImplemented", "InvalidAction", "UnknownOperationException"} or (
        status == 501
    )


def configured_azs(cfg: EnvironmentConfig) -> list[str]:
    """The AZs the VPC uses: the first ``vpc.max_azs`` of the committed ``cdk.context.json``."""
    context = json.loads((_ROOT / "cdk.context.json").read_text(encoding="utf-8"))
    key = f"availability-zones:account={cfg.account}:region={cfg.region}"
    zones = context.get(key)
    if not isinstance(zones, list):
        raise ConfigError(
            f"cdk.context.json has no {key!r}: record the region's AZs there (see README)"
        )
    return [str(z) for z in zones[: cfg.vpc.max_azs]]


class Preflight:
    """The checks of one environment, with boto3 clients from ``session``.

    Args:
        cfg: the environment.
        account: the account-level config (``config/account.yaml``), or None.
        session: a ``boto3.Session``; clients honour ``AWS_ENDPOINT_URL`` (tests: moto).
    """

    def __init__(self, cfg: EnvironmentConfig, account: AccountConfig | None, session: Any):
        self.cfg = cfg
        self.account = account
        self.session = session
        self._ours: set[str] | None = None

    def client(self, service: str, region: str | None = None) -> Any:
        return self.session.client(service, region_name=region or self.cfg.region)

    def run(self) -> list[Check]:
        steps: list[Callable[[], list[Check]]] = [
            self.region_enabled,
            self.bootstrap,
            self.ec2_offerings,
            self.rds_orderable,
            self.cloudformation_features,
            self.github_identity,
            self.parameters,
            self.secrets,
            self.log_groups,
            self.quotas,
        ]
        checks: list[Check] = []
        for step in steps:
            try:
                checks += step()
            except Exception as exc:
                if _not_implemented(exc):
                    checks.append(
                        Check(step.__name__, NOT_CHECKED, f"the endpoint lacks this API: {exc}")
                    )
                else:
                    checks.append(Check(step.__name__, BLOCKER, f"check failed: {exc}"))
        return checks

    # --- ownership: a fixed-name resource inside one of our stacks is not a conflict --------

    def stack_names(self) -> list[str]:
        prefix = f"Humansa-{self.cfg.title}"
        return [f"{prefix}-Network", f"{prefix}-Data", f"{prefix}-Service", "Humansa-CI"]

    def ours(self) -> set[str]:
        """Physical IDs of every resource in this environment's stacks and Humansa-CI."""
        if self._ours is None:
            found: set[str] = set()
            cfn = self.client("cloudformation")
            for name in self.stack_names():
                try:
                    pages = cfn.get_paginator("list_stack_resources").paginate(StackName=name)
                    for page in pages:
                        for r in page.get("StackResourceSummaries", []):
                            if r.get("PhysicalResourceId"):
                                found.add(str(r["PhysicalResourceId"]))
                except Exception as exc:
                    if _error_code(exc) != "ValidationError":  # "Stack ... does not exist"
                        raise
            self._ours = found
        return self._ours

    # --- the checks ---------------------------------------------------------------------------

    def region_enabled(self) -> list[Check]:
        region = self.cfg.region
        # Asked from us-east-1: an endpoint of a region that is not enabled refuses the caller.
        ec2 = self.client("ec2", "us-east-1")
        regions = ec2.describe_regions(AllRegions=True, RegionNames=[region])["Regions"]
        status = regions[0].get("OptInStatus", "") if regions else "unknown"
        if status in {"opt-in-not-required", "opted-in"}:
            return [Check("region enabled", OK, f"{region}: {status}")]
        return [
            Check(
                "region enabled",
                BLOCKER,
                f"{region} is {status or 'not listed'}: enable it (Account > AWS Regions, or "
                f"`aws account enable-region --region-name {region}`) and wait until it is "
                "ENABLED",
            )
        ]

    def bootstrap(self) -> list[Check]:
        qualifier = self.account.bootstrap_qualifier if self.account else "hnb659fds"
        name = f"/cdk-bootstrap/{qualifier}/version"
        hint = f"run `cdk bootstrap aws://{self.cfg.account}/{self.cfg.region}`"
        try:
            value = self.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
        except Exception as exc:
            if _error_code(exc) != "ParameterNotFound":
                raise
            return [Check("cdk bootstrap", BLOCKER, f"{name} not found: not bootstrapped; {hint}")]
        version = int(value)
        if version < MIN_BOOTSTRAP_VERSION:
            return [
                Check(
                    "cdk bootstrap",
                    BLOCKER,
                    f"version {version} < {MIN_BOOTSTRAP_VERSION} that the stacks require; {hint}",
                )
            ]
        if version < CLI_BOOTSTRAP_VERSION:
            level = WARNING
            why = f"older than the pinned CLI's {CLI_BOOTSTRAP_VERSION}"
            if version < LOOKUP_BOOTSTRAP_VERSION:
                why += f"; `make diff` needs {LOOKUP_BOOTSTRAP_VERSION}"
            return [Check("cdk bootstrap", level, f"version {version}: {why}; {hint}")]
        return [Check("cdk bootstrap", OK, f"version {version} ({name})")]

    def ec2_offerings(self) -> list[Check]:
        azs = configured_azs(self.cfg)
        types = list(self.cfg.fleet.all_instance_types)
        if self.cfg.vpc.nat == "nat-instance":
            types.append(NAT_INSTANCE_TYPE)
        ec2 = self.client("ec2")
        offered: set[tuple[str, str]] = set()
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone",
            Filters=[
                {"Name": "instance-type", "Values": types},
                {"Name": "location", "Values": azs},
            ],
        )
        for page in pages:
            for o in page.get("InstanceTypeOfferings", []):
                offered.add((o["InstanceType"], o["Location"]))
        checks = []
        for itype in types:
            missing = [az for az in azs if (itype, az) not in offered]
            if missing:
                checks.append(
                    Check(
                        f"EC2 {itype}",
                        BLOCKER,
                        f"not offered in {', '.join(missing)} (config {config_file(self.cfg.name)}"
                        "; pick a type offered in every configured AZ)",
                    )
                )
            else:
                checks.append(Check(f"EC2 {itype}", OK, f"offered in {', '.join(azs)}"))
        return checks

    def rds_orderable(self) -> list[Check]:
        d = self.cfg.database
        rds = self.client("rds")
        name = f"RDS {d.instance_class}"
        options = rds.describe_orderable_db_instance_options(
            Engine="postgres", EngineVersion=d.engine_version, DBInstanceClass=d.instance_class
        ).get("OrderableDBInstanceOptions", [])
        if not options:
            anything = rds.describe_orderable_db_instance_options(
                Engine="postgres", MaxRecords=20
            ).get("OrderableDBInstanceOptions", [])
            if not anything:
                # AWS lists postgres options in every region; an empty answer means the endpoint
                # has no data (moto implements only aurora-postgresql and neptune).
                return [
                    Check(
                        name,
                        NOT_CHECKED,
                        "moto/AWS lacks orderable options for postgres (empty answer for the "
                        "engine itself)",
                    )
                ]
            return [
                Check(
                    name,
                    BLOCKER,
                    f"postgres {d.engine_version} on {d.instance_class} is not orderable in "
                    f"{self.cfg.region} (database.engine_version / database.instance_class)",
                )
            ]
        zones = {z["Name"] for o in options for z in o.get("AvailabilityZones", [])}
        missing = [az for az in configured_azs(self.cfg) if zones and az not in zones]
        if missing:
            return [Check(name, BLOCKER, f"not orderable in {', '.join(missing)}")]
        multi_az = any(o.get("MultiAZCapable") for o in options)
        if d.multi_az and not multi_az:
            return [Check(name, BLOCKER, "not Multi-AZ capable, but database.multi_az is true")]
        return [Check(name, OK, f"postgres {d.engine_version} orderable")]

    def cloudformation_features(self) -> list[Check]:
        reason = "AWS has no API that lists them per region; the first deploy is the test"
        return [
            Check(
                "instance-refresh update policy",
                NOT_CHECKED,
                f"moto/AWS lacks an API for UpdatePolicy support per region ({reason})",
            ),
            Check(
                "rotation transform",
                NOT_CHECKED,
                "moto/AWS lacks an API for the AWS::SecretsManager transform per region "
                f"({reason})",
            ),
        ]

    def github_identity(self) -> list[Check]:
        iam = self.client("iam")
        ours = self.ours()
        checks = []
        for role in (DEPLOY_ROLE_NAME, DIFF_ROLE_NAME):
            try:
                iam.get_role(RoleName=role)
            except Exception as exc:
                if _error_code(exc) != "NoSuchEntity":
                    raise
                checks.append(Check(f"IAM role {role}", OK, "free"))
                continue
            if role in ours:
                checks.append(Check(f"IAM role {role}", OK, "exists, managed by Humansa-CI"))
            else:
                checks.append(
                    Check(
                        f"IAM role {role}",
                        BLOCKER,
                        "exists outside Humansa-CI (the old runbook's?): delete it, or adopt it "
                        "with `cdk import` (docs/operations.md, Retained resources)",
                    )
                )
        providers = iam.list_open_id_connect_providers().get("OpenIDConnectProviderList", [])
        github = [p["Arn"] for p in providers if p["Arn"].endswith(f"/{OIDC_HOST}")]
        reuse = self.account.existing_oidc_provider_arn if self.account else None
        if reuse:
            status = OK if reuse in github else BLOCKER
            detail = "exists" if status == OK else "not found; remove the setting to create one"
            checks.append(
                Check("GitHub OIDC provider", status, f"existing_oidc_provider_arn {detail}")
            )
        elif github and not set(github) & ours:
            checks.append(
                Check(
                    "GitHub OIDC provider",
                    BLOCKER,
                    f"{github[0]} exists (IAM allows one per URL): set existing_oidc_provider_arn "
                    "in config/account.yaml",
                )
            )
        else:
            checks.append(Check("GitHub OIDC provider", OK, "managed by Humansa-CI or free"))
        return checks

    def parameters(self) -> list[Check]:
        path = self.cfg.parameter_path
        ssm = self.client("ssm")
        found: list[dict[str, Any]] = []
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=True):
            found += page.get("Parameters", [])
        ours = self.ours()
        checks = []
        conflicts = [
            p["Name"]
            for p in found
            if p["Name"].removeprefix(path) in OUR_PARAMETERS and p["Name"] not in ours
        ]
        if conflicts:
            checks.append(
                Check(
                    f"parameters {path}",
                    BLOCKER,
                    f"exist outside our stacks: {', '.join(sorted(conflicts))} (delete them; the "
                    "stacks create these names)",
                )
            )
        extra = sorted(
            p["Name"] for p in found if p["Name"].removeprefix(path) not in OUR_PARAMETERS
        )
        secure = sorted(p["Name"] for p in found if p.get("Type") == "SecureString")
        if extra:
            checks.append(
                Check(
                    f"parameters {path}",
                    WARNING,
                    f"not ours: {', '.join(extra)}"
                    + (f"; SecureString: {', '.join(secure)}" if secure else "")
                    + " (the old runbook's? secrets belong in Secrets Manager; delete them)",
                )
            )
        if not checks:
            checks.append(Check(f"parameters {path}", OK, f"{len(found)} found, all ours"))
        return checks

    def secrets(self) -> list[Check]:
        name = self.cfg.name
        sm = self.client("secretsmanager")
        ours = self.ours()
        conflicts = []
        for prefix in (f"/humansa/{name}/", f"humansa/{name}/"):
            for page in sm.get_paginator("list_secrets").paginate(
                Filters=[{"Key": "name", "Values": [prefix]}]
            ):
                for s in page.get("SecretList", []):
                    if not s["Name"].startswith(prefix):
                        continue
                    if s["ARN"] not in ours and s["Name"] not in ours:
                        conflicts.append(s["Name"])
        if conflicts:
            return [
                Check(
                    f"secrets /humansa/{name}/",
                    BLOCKER,
                    f"exist outside our stacks: {', '.join(sorted(conflicts))} (delete them, or "
                    "adopt with `cdk import`)",
                )
            ]
        return [Check(f"secrets /humansa/{name}/", OK, "none outside our stacks")]

    def log_groups(self) -> list[Check]:
        prefix = f"/aws/ec2/humansa-ml/{self.cfg.name}"
        logs = self.client("logs")
        ours = self.ours()
        wanted = {prefix, f"{prefix}/setup"}
        found = []
        for page in logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=prefix):
            found += [g["logGroupName"] for g in page.get("logGroups", [])]
        conflicts = sorted(n for n in found if n in wanted and n not in ours)
        if conflicts:
            return [
                Check(
                    "log groups",
                    BLOCKER,
                    f"exist outside our stacks: {', '.join(conflicts)} (a retained group of an "
                    "earlier deploy? `cdk import` it or delete it)",
                )
            ]
        return [Check("log groups", OK, f"{prefix}[/setup] free or ours")]

    def _quota(self, code: tuple[str, str], fallback: Callable[[], int | None]) -> tuple[int, str]:
        try:
            value = self.client("service-quotas").get_service_quota(
                ServiceCode=code[0], QuotaCode=code[1]
            )["Quota"]["Value"]
            return int(value), f"Service Quotas {code[0]}/{code[1]}"
        except Exception as exc:
            if _error_code(exc) not in {"NoSuchResourceException", "AccessDeniedException"}:
                raise
        value = fallback()
        if value is None:
            raise LookupError(f"no quota {code[0]}/{code[1]}")
        return value, "ec2 describe-account-attributes"

    def quotas(self) -> list[Check]:
        ec2 = self.client("ec2")

        def eip_attribute() -> int | None:
            attrs = ec2.describe_account_attributes(AttributeNames=["vpc-max-elastic-ips"])
            for a in attrs.get("AccountAttributes", []):
                return int(a["AttributeValues"][0]["AttributeValue"])
            return None

        nat = self.cfg.vpc.nat
        eips_needed = {"gateway-per-az": self.cfg.vpc.max_azs, "single-gateway": 1}.get(nat, 0)
        checks = []
        eip_quota, source = self._quota(EIP_QUOTA, eip_attribute)
        used = len(ec2.describe_addresses().get("Addresses", []))
        free = eip_quota - used
        status = OK if free >= eips_needed else BLOCKER
        checks.append(
            Check(
                "quota Elastic IPs",
                status,
                f"need {eips_needed} (vpc.nat={nat}), {used} of {eip_quota} used ({source})",
            )
        )
        vpc_quota, source = self._quota(VPC_QUOTA, lambda: DEFAULT_VPC_QUOTA)
        vpcs = ec2.describe_vpcs().get("Vpcs", [])
        used = len(vpcs)
        status = OK if vpc_quota - used >= 1 else BLOCKER
        checks.append(Check("quota VPCs", status, f"need 1, {used} of {vpc_quota} used ({source})"))
        return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/preflight.py", description=__doc__)
    parser.add_argument("--env", required=True, help="environment name (config/<env>.yaml)")
    parser.add_argument(
        "--tls-only", action="store_true", help="only the production TLS guard (no AWS call)"
    )
    parser.add_argument(
        "--deploy-guards",
        action="store_true",
        help="what make deploy checks first: the TLS guard and, for the ghcr image source, the "
        "GHCR token (an AWS call only then)",
    )
    parser.add_argument(
        "--image-source",
        choices=("asset", "ghcr"),
        help="the deploy's image source when it overrides image.source (-c image_source=)",
    )
    args = parser.parse_args(argv)
    if args.env == CI_SELECTOR:
        if args.tls_only or args.deploy_guards:
            return 0
        print("preflight: ENV=ci is the account stack; run it for an environment", file=sys.stderr)
        return 2
    try:
        cfg = load_environment(args.env)
        account = load_account() if account_config_exists() else None
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    refusal = plain_http_refusal(cfg)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    if args.tls_only:
        return 0
    import boto3  # only now: the guard above makes no AWS call

    if args.deploy_guards:
        if (args.image_source or cfg.image.source) != "ghcr":
            return 0
        ghcr_refusal = ghcr_token_refusal(cfg, boto3.Session())
        if ghcr_refusal:
            print(f"deploy refused: {ghcr_refusal}", file=sys.stderr)
            return 2
        return 0

    checks = Preflight(cfg, account, boto3.Session()).run()
    print(f"preflight {cfg.name} ({cfg.account}, {cfg.region})")
    print(_format_table(checks))
    blockers = sum(c.status == BLOCKER for c in checks)
    warnings = sum(c.status == WARNING for c in checks)
    unchecked = sum(c.status == NOT_CHECKED for c in checks)
    print(f"{blockers} blocker(s), {warnings} warning(s), {unchecked} not checked")
    return 1 if blockers else 0


if __name__ == "__main__":
    sys.exit(main())
