"""Pydantic models for one environment's configuration (``config/<env>.yaml``).

Every field documents its default. Unknown keys are rejected (``extra="forbid"``) so a typo
fails synth instead of being silently ignored. Checks that span several fields live in
:func:`cross_field_problems`, which reports them in the user's words.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from config.monitoring import AuditConfig, MonitoringConfig, RotationConfig

NatMode = Literal["gateway-per-az", "single-gateway", "nat-instance", "none"]
Architecture = Literal["x86_64", "arm64"]
ImageSource = Literal["asset", "ghcr"]

_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_DB_INSTANCE_CLASS = re.compile(r"^db\.[a-z][a-z0-9-]*\.[a-z0-9]+$")
_PG16_VERSION = re.compile(r"^16\.\d+$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$")
_ACCOUNT = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_CERT_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def _check_account(value: str) -> str:
    if not _ACCOUNT.match(value):
        raise ValueError("must be a 12-digit AWS account id (quote it in YAML)")
    return value


def _check_region(value: str) -> str:
    if not _REGION.match(value):
        raise ValueError("must be an AWS region such as ap-east-1")
    return value


def _check_repository(value: str) -> str:
    if not _REPOSITORY.match(value):
        raise ValueError("must be a GitHub owner/name such as acme/humansa-ml-server")
    return value


AccountId = Annotated[str, AfterValidator(_check_account)]
Region = Annotated[str, AfterValidator(_check_region)]
GithubRepository = Annotated[str, AfterValidator(_check_repository)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VpcConfig(_Section):
    """Network layout.

    Args:
        cidr: IPv4 CIDR of the VPC, a /16 to /22. Default ``10.0.0.0/16``.
        max_azs: availability zones to spread over, at least 2 (an ALB needs two). Default 2.
        nat: how private subnets reach the internet: ``gateway-per-az`` (one managed NAT gateway
            per AZ), ``single-gateway`` (one managed NAT gateway), ``nat-instance`` (one
            Amazon Linux 2023 t4g.nano NAT instance, the cheapest), ``none`` (no internet
            egress; the fleet lives in isolated subnets and reaches AWS through interface
            endpoints). Default ``single-gateway``.
        interface_endpoints: create interface endpoints (SSM, Secrets Manager, ECR, logs,
            monitoring) in the fleet's subnets. Required when ``nat`` is ``none``. Default false.
    """

    cidr: str = "10.0.0.0/16"
    max_azs: Annotated[int, Field(ge=2, le=6)] = 2
    nat: NatMode = "single-gateway"
    interface_endpoints: bool = False

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            network = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError("must be an IPv4 network such as 10.0.0.0/16") from exc
        if not 16 <= network.prefixlen <= 22:
            raise ValueError("must be a /16 to /22 network")
        return value


class DatabaseConfig(_Section):
    """RDS PostgreSQL instance.

    Args:
        instance_class: RDS instance class. Default ``db.t4g.micro``.
        allocated_storage_gib: initial gp3 storage, 20-65536 GiB. Default 20.
        max_allocated_storage_gib: storage autoscaling ceiling, at least the allocated size.
            Default 100.
        multi_az: standby in a second AZ. Default false.
        backup_retention_days: automated backup retention, 1-35 days. Default 7.
        deletion_protection: refuse to delete the instance. Default false.
        engine_version: pinned PostgreSQL 16 minor version. Default ``16.13``.
    """

    instance_class: str = "db.t4g.micro"
    allocated_storage_gib: Annotated[int, Field(ge=20, le=65536)] = 20
    max_allocated_storage_gib: Annotated[int, Field(ge=20, le=65536)] = 100
    multi_az: bool = False
    backup_retention_days: Annotated[int, Field(ge=1, le=35)] = 7
    deletion_protection: bool = False
    engine_version: str = "16.13"

    @field_validator("instance_class")
    @classmethod
    def _instance_class(cls, value: str) -> str:
        if not _DB_INSTANCE_CLASS.match(value):
            raise ValueError("must be an RDS instance class such as db.t4g.micro")
        return value

    @field_validator("engine_version")
    @classmethod
    def _engine_version(cls, value: str) -> str:
        if not _PG16_VERSION.match(value):
            raise ValueError("must be a pinned PostgreSQL 16 minor version such as 16.13")
        return value


class FleetConfig(_Section):
    """EC2 Auto Scaling group that runs the server container.

    Args:
        instance_type: EC2 instance type; must match ``architecture``. Default ``t4g.small``.
        architecture: ``arm64`` or ``x86_64``; picks the AMI and the image platform.
            Default ``arm64``.
        min_capacity: fewest instances. Default 1.
        desired_capacity: instances at deploy time, between min and max. Default 1.
        max_capacity: most instances. Default 2.
        root_volume_gib: encrypted gp3 root volume size, 8-1024 GiB. Default 20.
        health_check_grace_seconds: time after launch before ELB health checks count,
            60-3600 s; at least ``rollout.instance_warmup_seconds``. Default 300.
        spot: run the group with a mixed-instances policy: ``on_demand_base_capacity``
            on-demand instances, the rest split by ``on_demand_percentage_above_base``, spot
            allocation ``price-capacity-optimized`` over ``instance_types``, capacity
            rebalancing on. Default false (every instance on-demand, ``instance_type`` only).
        on_demand_base_capacity: on-demand instances before any spot (with ``spot``), at most
            ``max_capacity``. Default 0.
        on_demand_percentage_above_base: share of on-demand instances above the base, 0-100
            (0 = all spot). Default 0.
        instance_types: more instance types of the same architecture the spot allocation may
            choose (``instance_type`` always comes first). Default none.
    """

    instance_type: str = "t4g.small"
    architecture: Architecture = "arm64"
    min_capacity: Annotated[int, Field(ge=0, le=100)] = 1
    desired_capacity: Annotated[int, Field(ge=0, le=100)] = 1
    max_capacity: Annotated[int, Field(ge=1, le=100)] = 2
    root_volume_gib: Annotated[int, Field(ge=8, le=1024)] = 20
    health_check_grace_seconds: Annotated[int, Field(ge=60, le=3600)] = 300
    spot: bool = False
    on_demand_base_capacity: Annotated[int, Field(ge=0, le=100)] = 0
    on_demand_percentage_above_base: Annotated[int, Field(ge=0, le=100)] = 0
    instance_types: tuple[str, ...] = ()

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        if not _INSTANCE_TYPE.match(value):
            raise ValueError("must be an EC2 instance type such as t4g.small")
        return value

    @field_validator("instance_types")
    @classmethod
    def _instance_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _INSTANCE_TYPE.match(item):
                raise ValueError(f"{item!r} must be an EC2 instance type such as t4g.medium")
        if len(set(value)) != len(value):
            raise ValueError("must not repeat an instance type")
        if len(value) > 19:
            raise ValueError("allows at most 19 types (EC2 Auto Scaling takes 20 overrides)")
        return value

    @property
    def all_instance_types(self) -> tuple[str, ...]:
        """``instance_type`` followed by the other ``instance_types`` (no repeats)."""
        return (self.instance_type, *(t for t in self.instance_types if t != self.instance_type))


class RolloutConfig(_Section):
    """Instance refresh on every launch template change (CloudFormation update policy).

    Min healthy 100 % and max healthy 200 % are fixed: new instances start before old ones
    stop, so capacity never dips, also for a one-instance fleet.

    Args:
        instance_warmup_seconds: time after a new instance is InService before the refresh
            counts it and moves on (also the group's default warm-up for scaling metrics),
            30-1800 s. Covers the boot: dnf install of the CloudWatch agent, image pull,
            server start, two ALB health checks. Default 180.
        bake_time_minutes: minutes the refresh alarms keep watching after the last
            replacement before CloudFormation calls the update a success, 0-120. Default 10.
        checkpoint_percentages: pause when this share of the fleet is replaced (ascending,
            ending at 100), e.g. ``[50, 100]`` for a canary half. Default none.
        checkpoint_delay_minutes: pause length at each checkpoint, 0-120 (needs
            ``checkpoint_percentages``). Default 5.
    """

    instance_warmup_seconds: Annotated[int, Field(ge=30, le=1800)] = 180
    bake_time_minutes: Annotated[int, Field(ge=0, le=120)] = 10
    checkpoint_percentages: tuple[int, ...] = ()
    checkpoint_delay_minutes: Annotated[int, Field(ge=0, le=120)] = 5

    @field_validator("checkpoint_percentages")
    @classmethod
    def _checkpoints(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            return value
        if any(not 1 <= v <= 100 for v in value) or list(value) != sorted(set(value)):
            raise ValueError("must be strictly ascending percentages in 1..100")
        if value[-1] != 100:
            raise ValueError("must end at 100 (otherwise part of the fleet is never replaced)")
        return value


class ScalingConfig(_Section):
    """Target-tracking scaling between ``fleet.min_capacity`` and ``fleet.max_capacity``.

    Args:
        enabled: add the two target-tracking policies. Default true.
        requests_per_target_per_minute: ALB requests per instance per minute to aim for (LLM
            calls are long, so a small number). Default 600.
        cpu_target_percent: average CPU of the group to aim for, 10-90. Default 60.
    """

    enabled: bool = True
    requests_per_target_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] = 600
    cpu_target_percent: Annotated[int, Field(ge=10, le=90)] = 60


class ServiceConfig(_Section):
    """The load-balanced HTTP service.

    Args:
        container_port: port the server listens on inside the instance. Default 5001.
        health_path: health-check path (no auth, no dependencies). Default ``/health``.
        idle_timeout_seconds: ALB idle timeout, 120-4000 s (streamed LLM responses can pause
            for long). Default 300.
        certificate_arn: ACM certificate ARN; when set the ALB serves HTTPS on 443 and redirects
            HTTP to it. Default none (plain HTTP on 80).
        domain_name: public host name the certificate covers. Default none.
        allow_plain_http: a written reason (at least 20 characters) to deploy the
            ``production`` environment without ``certificate_arn``, i.e. serving bearer keys and
            prompts over plain HTTP. Without it ``make deploy`` / ``make preflight`` refuse a
            production without a certificate. Default none.
        deletion_protection: the ALB refuses deletion (production sets it). Default false.
        access_log_days: days the ALB access logs are kept in their S3 bucket. Default 90.
        waf: attach an AWS WAF web ACL with AWS managed rule groups (docs/security.md; priced
            by ``make cost``). Default false.
    """

    container_port: Annotated[int, Field(ge=1024, le=65535)] = 5001
    health_path: str = "/health"
    idle_timeout_seconds: Annotated[int, Field(ge=120, le=4000)] = 300
    certificate_arn: str | None = None
    domain_name: str | None = None
    allow_plain_http: str | None = None
    deletion_protection: bool = False
    access_log_days: Annotated[int, Field(ge=1, le=3650)] = 90
    waf: bool = False

    @field_validator("allow_plain_http")
    @classmethod
    def _allow_plain_http(cls, value: str | None) -> str | None:
        if value is not None and len(value.strip()) < 20:
            raise ValueError(
                "must be a written reason of at least 20 characters (why this environment may "
                "serve bearer keys over plain HTTP), or be left out"
            )
        return value

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, value: str) -> str:
        if not value.startswith("/") or " " in value:
            raise ValueError("must be an absolute URL path such as /health")
        return value

    @field_validator("certificate_arn")
    @classmethod
    def _certificate_arn(cls, value: str | None) -> str | None:
        if value is not None and not _CERT_ARN.match(value):
            raise ValueError("must be an ACM certificate ARN (arn:aws:acm:<region>:<account>:...)")
        return value

    @field_validator("domain_name")
    @classmethod
    def _domain_name(cls, value: str | None) -> str | None:
        if value is not None and not _DOMAIN.match(value):
            raise ValueError("must be a lower-case DNS name such as api.example.com")
        return value


# The image name .github/workflows/release.yml publishes under the repository owner.
RELEASE_IMAGE_NAME = "humansa-ml-server"


class ImageConfig(_Section):
    """Where the server image comes from.

    Args:
        source: ``asset`` (built from ``ml_server/`` by CDK and pushed to the bootstrap ECR
            repository) or ``ghcr`` (``ghcr.io/<ghcr_repository>:<tag>`` pulled through an ECR
            pull-through cache rule whose upstream credential is the GHCR token secret).
            Default ``asset``.
        tag: release tag recorded in the ``ml_server_image_tag`` parameter; ``-c image_tag=...``
            overrides it. Default ``latest``.
        ghcr_repository: GHCR ``owner/name`` for the ``ghcr`` source. Default: where the
            release workflow publishes, ``<owner of github.repository, lower case>/`` +
            ``RELEASE_IMAGE_NAME`` (``EnvironmentConfig.ghcr_repository``).
    """

    source: ImageSource = "asset"
    tag: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")] = "latest"
    ghcr_repository: GithubRepository | None = None


class CostConfig(_Section):
    """What ``make cost`` assumes about this environment's traffic (docs/cost.md, Assumptions).

    Args:
        assumptions_like: price with this entry of ``assumptions.environments`` in
            ``humansa_ops/pricing/prices.yaml`` (e.g. ``dev``). Default: the environment's own
            entry; a personal environment ``<base>-<person>`` without one takes its base's
            (``dev-alice`` -> ``dev``); else ``assumptions.default``.
        assumptions: this environment's own figures over those, e.g.
            ``{alb_lcu_per_hour: 0.1}`` (the names of ``assumptions.default``). Default none.
    """

    assumptions_like: str | None = None
    assumptions: dict[str, float] = Field(default_factory=dict)


class GithubConfig(_Section):
    """The GitHub repository that deploys this app.

    Args:
        repository: ``owner/name``. Default ``humansa/humansa-ml-server``.
    """

    repository: GithubRepository = "humansa/humansa-ml-server"


class EnvironmentConfig(_Section):
    """One deployment environment.

    Args:
        name: environment name, taken from the file name (``dev``, ``staging``, ...).
        account: 12-digit AWS account id (required).
        region: AWS region. Default ``ap-east-1``.
        termination_protection: protect the Network and Data stacks from deletion and retain
            log groups. Default false.
        vpc, database, fleet, service, image, github, rollout, scaling: the sections above,
            each with defaults.
        monitoring: alarms and dashboard (``config.monitoring.MonitoringConfig``).
        rotation: scheduled rotation of the database secret (``RotationConfig``). Default:
            enabled, every 30 days.
        cost: the traffic assumptions of ``make cost`` (``CostConfig``). Default: by name.
    """

    name: str
    account: AccountId
    region: Region = "ap-east-1"
    termination_protection: bool = False
    vpc: VpcConfig = VpcConfig()
    database: DatabaseConfig = DatabaseConfig()
    fleet: FleetConfig = FleetConfig()
    service: ServiceConfig = ServiceConfig()
    image: ImageConfig = ImageConfig()
    github: GithubConfig = GithubConfig()
    rollout: RolloutConfig = RolloutConfig()
    scaling: ScalingConfig = ScalingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    rotation: RotationConfig = RotationConfig()
    cost: CostConfig = CostConfig()

    @property
    def title(self) -> str:
        """``Production`` for ``production``: the environment part of stack names."""
        from config.naming import title

        return title(self.name)

    @property
    def ghcr_repository(self) -> str:
        """The GHCR ``owner/name`` the ``ghcr`` source pulls: ``image.ghcr_repository``, else
        where .github/workflows/release.yml pushes a release (``ghcr.io/<repository owner,
        lower case>/humansa-ml-server``; GHCR names are lower case)."""
        if self.image.ghcr_repository is not None:
            return self.image.ghcr_repository
        owner = self.github.repository.split("/", 1)[0].lower()
        return f"{owner}/{RELEASE_IMAGE_NAME}"

    @property
    def parameter_path(self) -> str:
        """SSM parameter path with trailing slash, e.g. ``/humansa/production/``."""
        from config.naming import parameter_path

        return parameter_path(self.name)


# --- Account level (config/account.yaml): the Humansa-CI stack -------------------------------

_QUALIFIER = re.compile(r"^[A-Za-z0-9_-]{1,10}$")
_OIDC_PROVIDER_ARN = re.compile(
    r"^arn:aws[a-z-]*:iam::\d{12}:oidc-provider/token\.actions\.githubusercontent\.com$"
)


class AccountConfig(_Section):
    """The account-level stack ``Humansa-CI`` (``config/account.yaml``; deployed once).

    Args:
        account: 12-digit AWS account id the stack goes to (required).
        region: region of the stack (the trail itself records every region). Default
            ``ap-east-1``.
        termination_protection: protect the stack (it holds the trail and the OIDC roles) from
            deletion. Default true.
        github: the repository whose workflows may assume the deploy and diff roles.
        bootstrap_qualifier: the ``cdk bootstrap`` qualifier whose roles the deploy role may
            assume. Default ``hnb659fds`` (the CDK default).
        existing_oidc_provider_arn: reuse the account's GitHub OIDC provider instead of creating
            one (IAM allows one per URL). Default none: create it.
        audit: the CloudTrail trail (``AuditConfig``). Default: enabled, no CloudWatch Logs.
    """

    account: AccountId
    region: Region = "ap-east-1"
    termination_protection: bool = True
    github: GithubConfig = GithubConfig()
    bootstrap_qualifier: str = "hnb659fds"
    existing_oidc_provider_arn: str | None = None
    audit: AuditConfig = AuditConfig()

    @field_validator("bootstrap_qualifier")
    @classmethod
    def _qualifier(cls, value: str) -> str:
        if not _QUALIFIER.match(value):
            raise ValueError("must be a cdk bootstrap qualifier: 1-10 letters, digits, _ or -")
        return value

    @field_validator("existing_oidc_provider_arn")
    @classmethod
    def _provider_arn(cls, value: str | None) -> str | None:
        if value is not None and not _OIDC_PROVIDER_ARN.match(value):
            raise ValueError(
                "must be arn:aws:iam::<account>:oidc-provider/token.actions.githubusercontent.com"
            )
        return value


_ARM_FAMILY = re.compile(r"^[a-z]+\d+g[a-z]*$")  # t4g, m7g, c7gn, r8g ...


def is_graviton(instance_type: str) -> bool:
    """True for arm64 (Graviton) instance types: t4g, m7g, c7gn, r8g, a1 ..."""
    family = instance_type.split(".", 1)[0]
    return bool(_ARM_FAMILY.match(family)) or family.startswith("a1")


def cross_field_problems(cfg: EnvironmentConfig) -> list[str]:
    """Checks that involve more than one field; each problem is ``key=value <why>``."""
    problems: list[str] = []
    f = cfg.fleet
    if f.min_capacity > f.max_capacity:
        problems.append(
            f"fleet.min_capacity={f.min_capacity} is above fleet.max_capacity={f.max_capacity}"
        )
    elif not f.min_capacity <= f.desired_capacity <= f.max_capacity:
        problems.append(
            f"fleet.desired_capacity={f.desired_capacity} is outside fleet.min_capacity="
            f"{f.min_capacity}..fleet.max_capacity={f.max_capacity}"
        )
    for field_name, types in (
        ("fleet.instance_type", (f.instance_type,)),
        ("fleet.instance_types", f.instance_types),
    ):
        for itype in types:
            is_arm = is_graviton(itype)
            if f.architecture == "arm64" and not is_arm:
                problems.append(
                    f"{field_name}={itype} is not a Graviton type but fleet.architecture=arm64 "
                    "(use t4g, m7g, c7g, ... or set x86_64)"
                )
            if f.architecture == "x86_64" and is_arm:
                problems.append(
                    f"{field_name}={itype} is a Graviton type but fleet.architecture=x86_64 "
                    "(set arm64 or pick an x86_64 type such as t3, m7i, c7i)"
                )
    if f.spot and f.on_demand_base_capacity > f.max_capacity:
        problems.append(
            f"fleet.on_demand_base_capacity={f.on_demand_base_capacity} is above "
            f"fleet.max_capacity={f.max_capacity}"
        )
    if f.health_check_grace_seconds < cfg.rollout.instance_warmup_seconds:
        problems.append(
            f"fleet.health_check_grace_seconds={f.health_check_grace_seconds} is below "
            f"rollout.instance_warmup_seconds={cfg.rollout.instance_warmup_seconds} (the ELB "
            "health check would replace an instance that is still booting)"
        )
    d = cfg.database
    if d.max_allocated_storage_gib < d.allocated_storage_gib:
        problems.append(
            f"database.max_allocated_storage_gib={d.max_allocated_storage_gib} is below "
            f"database.allocated_storage_gib={d.allocated_storage_gib}"
        )
    if cfg.vpc.nat == "none" and not cfg.vpc.interface_endpoints:
        problems.append(
            "vpc.interface_endpoints=false is not allowed with vpc.nat=none "
            "(instances without NAT reach SSM, ECR and Secrets Manager only through endpoints)"
        )
    if cfg.vpc.nat == "gateway-per-az" and cfg.vpc.max_azs > 3:
        problems.append(
            f"vpc.max_azs={cfg.vpc.max_azs} with vpc.nat=gateway-per-az creates "
            f"{cfg.vpc.max_azs} NAT gateways; allowed: max_azs 2-3 for gateway-per-az"
        )
    if cfg.service.domain_name and not cfg.service.certificate_arn:
        problems.append(
            f"service.domain_name={cfg.service.domain_name} needs service.certificate_arn "
            "(an ACM certificate for that name)"
        )
    if cfg.service.allow_plain_http and cfg.service.certificate_arn:
        problems.append(
            "service.allow_plain_http is set together with service.certificate_arn (HTTPS); "
            "remove service.allow_plain_http"
        )
    return problems
