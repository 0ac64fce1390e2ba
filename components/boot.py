"""Instance boot script: renders the user data from the Jinja2 templates in ``user_data/``.

The rendered script holds configuration only (names, ARNs, CloudFormation references); every
secret is fetched on the instance with the instance role and lands in a tmpfs file. Values are
shell-quoted by the ``sh`` filter, so CDK token strings stay one word until CloudFormation
replaces them at deploy time.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jinja2

from config.naming import is_env_name

TEMPLATE_DIR: Final = Path(__file__).parent.parent / "user_data"

ENVIRONMENTS: Final = ("dev", "staging", "production")

PROVIDER_SECRET_NAMES: Final[tuple[str, ...]] = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "DEEPSEEK_API_KEY",
    "GOOGLE_API_KEY",
    "XAI_API_KEY",
    "AZURE_INFERENCE_ENDPOINT",
    "AZURE_INFERENCE_CREDENTIAL",
    "WEBSHARE_PROXY_USERNAME",
    "WEBSHARE_PROXY_PASSWORD",
    "MEM0_API_KEY",
    "ADMIN_API_KEY",  # the admin API's bearer key (ml_server/admin/routes.py)
)
"""Provider secrets, each a Secrets Manager secret named ``/humansa/<env>/<NAME>``."""

GHCR_TOKEN_SECRET_NAME: Final = "GHCR_TOKEN"  # noqa: S105 - a name, not a value
"""Upstream credential of the ECR pull-through cache rule; never fetched by instances."""

PLACEHOLDER_SECRET_VALUE: Final = "UNSET"  # noqa: S105 - a public marker
"""Value the CDK gives a provider secret before the operator fills it (Secrets Manager refuses
an empty SecretString). The boot writes an empty file for it: "provider not configured"."""

RUNBOOK_PARAMETER_NAMES: Final[tuple[str, ...]] = (
    "alb_dns_name",
    "asg_name",
    "ml_tg_arn",
    "vpc_id",
    "db_host",
    "db_port",
    "db_username",
    "db_name",
    "ml_server_image_tag",
)
"""The runbook's SSM String parameters under ``/humansa/<env>/``, the only ones the boot reads."""

REQUIRED_PARAMETER_NAMES: Final[tuple[str, ...]] = ("db_host", "db_port", "db_username", "db_name")
"""Written by the Data stack, so present before any instance boots; the Service stack's own
parameters (``asg_name`` ...) are created after the group and may be missing on its first boot."""

LAUNCH_HOOK_NAME: Final = "humansa-launch"
"""The group's ``autoscaling:EC2_INSTANCE_LAUNCHING`` hook, completed by the boot."""

LAUNCH_TO_USER_DATA_SECONDS: Final = 120
"""Allowance from the launch (the hook's clock starts) to cloud-init running the user data."""

AWS_CALL_SECONDS: Final = 10
"""Allowance for one AWS CLI call in the heartbeat arithmetic (start-up ~1 s, a few retries)."""

METRICS_NAMESPACE_PREFIX: Final = "humansa-ml/"
"""CloudWatch agent metrics land in ``humansa-ml/<env>`` (see docs/boot.md)."""

METRICS_PORT: Final = 9101
"""The server's Prometheus port (``METRICS_PORT``), published on the instance's 127.0.0.1 only."""

PROMETHEUS_JOB: Final = "humansa-ml"
"""Job name of the agent's scrape: the ``job`` label, the one dimension of the usage metrics."""

USAGE_ALARM_METRICS: Final[tuple[str, ...]] = (
    "mlserver_usage_write_errors_total",
    "mlserver_usage_rows_quarantined_total",
    "mlserver_usage_rows_dropped_total",
)
"""Server counters (ml_server/metrics.py) the agent publishes per scrape as deltas; alarmed."""

USAGE_GAUGE_METRICS: Final[tuple[str, ...]] = ("mlserver_usage_spool_bytes",)
"""Server gauges the agent publishes as they are (dashboard)."""

USAGE_STUCK_METRIC: Final = "mlserver_usage_writer_stuck"
"""The server's stuck-writer gauge (1/0, the max of the live workers): published as it is;
alarmed (UsageWriterStuck)."""

USAGE_SPOOL_DIR: Final = "/var/lib/humansa/usage-spool"
"""Host folder of the server's usage spool (0700, the container uid): survives a container
restart and an instance reboot."""

CONTAINER_USAGE_SPOOL_DIR: Final = "/tmp/humansa/usage-spool"  # noqa: S108 - a bind mount
"""Where the spool folder is mounted in the container (``USAGE_SPOOL_DIR`` there): under the
image's LOCAL_DATA_DIR, a path every container root can create a mount point in."""

SECRETS_DIR: Final = "/run/humansa/secrets"
CONTAINER_SECRETS_DIR: Final = "/run/secrets/humansa"
ENV_FILE: Final = "/etc/humansa/humansa-ml.env"
CONTAINER_NAME: Final = "humansa-ml"

USER_DATA_LIMIT_BYTES: Final = 16 * 1024
HEALTH_FAILURE_THRESHOLD: Final = 3
"""Consecutive failed health checks (one a minute) before the timer restarts the unit."""

_TOKEN = re.compile(r"\$\{Token\[[^\]\s]+\]\}")
_SAFE_UNIT_VALUE = re.compile(r"[A-Za-z0-9._:/@+=,-]+")
_SECRET_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_JSON_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEALTH_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
_PARAMETER_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")


def secret_name(environment: str, name: str) -> str:
    """Secrets Manager name of a provider secret: ``/humansa/<env>/<NAME>``."""
    return f"/humansa/{environment}/{name}"


@dataclass(frozen=True)
class SecretFile:
    """One secret file the boot writes into the secrets folder.

    Args:
        secret_id: the secret's name (``/humansa/<env>/OPENAI_API_KEY``) or ARN (may be a CDK
            token string). A name is shorter in the user data; IAM still authorizes the call
            on the secret's full ARN (docs/boot.md). A name must not end in a hyphen and six
            characters (Secrets Manager would read it as a partial ARN).
        json_key: key to extract from a JSON SecretString (the RDS secret's ``password``);
            ``None`` writes the whole value.
    """

    secret_id: str
    json_key: str | None = None


@dataclass(frozen=True)
class BootSettings:
    """Everything the boot script needs; no secret values.

    Args:
        environment: ``dev``, ``staging`` or ``production``.
        region: AWS region, e.g. ``ap-east-1``.
        parameter_path: SSM path of the runbook's parameters, ``/humansa/<env>/``.
        image_uri: full image reference with tag (may contain CDK tokens).
        registry: registry host for ``docker login`` with the instance role (ECR); empty skips
            the login.
        secret_files: file name in the secrets folder -> source secret.
        app_log_group: application log group, ``/aws/ec2/humansa-ml/<env>``.
        setup_log_group: boot log group, ``/aws/ec2/humansa-ml/<env>/setup``.
        container_port: port the server listens on and the host publishes. Default 5001.
        health_path: local readiness and health-check path. Default ``/health``.
        container_uid: uid of the image's non-root user; owns the secret files. Default 10001.
        drain_seconds: ``docker stop -t``: seconds from SIGTERM to SIGKILL. Covers the server's
            DRAIN_SECONDS (600) plus its usage flush (at most 4 s); the unit's stop timeout
            (drain_seconds + 30) exceeds it. Default 610.
        fetch_attempts: bounded attempts for every SSM / Secrets Manager / ECR call. Default 5.
        fetch_backoff_seconds: first back-off, doubled each retry. Default 2.
        keep_alive_seconds: the server's HTTP keep-alive (``KEEP_ALIVE_SECONDS``), longer than
            the ALB idle timeout. Default 305 (the ALB's 300 + 5).
        parameter_names: String parameters read by name (``GetParameters``, no decryption)
            into the env file, at most 10 (one call). Default ``RUNBOOK_PARAMETER_NAMES``.
        required_parameters: names whose absence stops the boot. Default
            ``REQUIRED_PARAMETER_NAMES``.
        auto_scaling_group_name: the group whose launch hook the boot completes; empty (the
            default) with ``lifecycle_hook_name`` empty: no hook.
        lifecycle_hook_name: the group's launch hook. Default empty.
        ready_timeout_seconds: how long the boot waits for the local health path. Default 300.
        boot_budget_seconds: seconds from the script's start by which the container must
            answer, else the boot is FATAL (ABANDON). Default 600.
        forwarded_allow_ips: peers whose ``X-Forwarded-For`` the server trusts
            (``FORWARDED_ALLOW_IPS``): comma-separated addresses or CIDRs, or a CDK token. On
            the instances the VPC CIDR (only the ALB, inside the VPC, sets the header). Default
            ``127.0.0.1`` (no proxy trusted).
    """

    environment: str
    region: str
    parameter_path: str
    image_uri: str
    registry: str
    secret_files: Mapping[str, SecretFile]
    app_log_group: str
    setup_log_group: str
    container_port: int = 5001
    health_path: str = "/health"
    container_uid: int = 10001
    drain_seconds: int = 610
    fetch_attempts: int = 5
    fetch_backoff_seconds: int = 2
    keep_alive_seconds: int = 305
    parameter_names: tuple[str, ...] = RUNBOOK_PARAMETER_NAMES
    required_parameters: tuple[str, ...] = REQUIRED_PARAMETER_NAMES
    auto_scaling_group_name: str = ""
    lifecycle_hook_name: str = ""
    ready_timeout_seconds: int = 300
    boot_budget_seconds: int = 600
    forwarded_allow_ips: str = "127.0.0.1"


def lifecycle_heartbeat_seconds(settings: BootSettings) -> int:
    """Heartbeat timeout of the launch hook: the boot's worst case that still succeeds.

    launch -> user data (``LAUNCH_TO_USER_DATA_SECONDS``) + the boot budget (the script fails
    itself after ``boot_budget_seconds``) + completing the hook (``fetch_attempts`` calls of
    ``AWS_CALL_SECONDS`` with back-off ``fetch_backoff_seconds`` x 1, 2 ... between them).
    A boot that overruns it gets the default result, ABANDON, as a failed one does.
    """
    attempts, backoff = settings.fetch_attempts, settings.fetch_backoff_seconds
    completion = attempts * AWS_CALL_SECONDS + backoff * (attempts - 1) * attempts // 2
    return LAUNCH_TO_USER_DATA_SECONDS + settings.boot_budget_seconds + completion


def _is_token(value: str) -> bool:
    return bool(_TOKEN.search(value))


def _sh(value: object) -> str:
    """Quote a value as one shell word (single quotes; CDK tokens stay intact)."""
    text = str(value)
    if "\n" in text or "\x00" in text:
        raise ValueError(f"value {text!r} contains a newline or NUL; it cannot go in user data")
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"BootSettings.{name} must be an integer in {low}..{high}, got {value!r}")


def _check_unit_value(name: str, value: str, *, allow_empty: bool = False) -> None:
    """Values written into systemd units and JSON: a token or a plain safe string."""
    if not isinstance(value, str):
        raise ValueError(f"BootSettings.{name} must be a string, got {value!r}")
    if value == "" and allow_empty:
        return
    plain = _TOKEN.sub("x", value)
    if not _SAFE_UNIT_VALUE.fullmatch(plain):
        raise ValueError(
            f"BootSettings.{name} must be non-empty and use only letters, digits and "
            f"._:/@+=,- (or CDK tokens), got {value!r}"
        )


def _check_forwarded(value: str) -> None:
    if isinstance(value, str) and _TOKEN.fullmatch(value):
        return
    try:
        nets = [ipaddress.ip_network(part, strict=False) for part in str(value).split(",")]
    except ValueError:
        nets = []
    if not nets:
        raise ValueError(
            "BootSettings.forwarded_allow_ips must be comma-separated IP addresses or CIDRs "
            f"(the VPC CIDR, e.g. 10.0.0.0/16) or a CDK token, never '*'; got {value!r}"
        )


def validate(settings: BootSettings) -> None:
    """Raise ValueError naming the field when a setting cannot be rendered safely."""
    if not is_env_name(settings.environment):  # any validated name (config/naming.py)
        raise ValueError(
            f"BootSettings.environment must be an environment name such as "
            f"{', '.join(ENVIRONMENTS)} or dev-alice, got {settings.environment!r}"
        )
    _check_unit_value("region", settings.region)
    if not _is_token(settings.parameter_path) and not (
        settings.parameter_path.startswith("/") and settings.parameter_path.endswith("/")
    ):
        raise ValueError(
            "BootSettings.parameter_path must start and end with '/' "
            f"(e.g. /humansa/{settings.environment}/), got {settings.parameter_path!r}"
        )
    _check_unit_value("parameter_path", settings.parameter_path)
    _check_unit_value("image_uri", settings.image_uri)
    _check_unit_value("registry", settings.registry, allow_empty=True)
    _check_unit_value("app_log_group", settings.app_log_group)
    _check_unit_value("setup_log_group", settings.setup_log_group)
    if not _HEALTH_PATH.fullmatch(settings.health_path):
        raise ValueError(
            "BootSettings.health_path must be a path like /health (letters, digits, ._/-), "
            f"got {settings.health_path!r}"
        )
    _check_int("container_port", settings.container_port, 1, 65535)
    _check_int("container_uid", settings.container_uid, 1, 2**31 - 1)
    _check_int("drain_seconds", settings.drain_seconds, 0, 3600)
    _check_int("fetch_attempts", settings.fetch_attempts, 1, 20)
    _check_int("fetch_backoff_seconds", settings.fetch_backoff_seconds, 0, 300)
    _check_int("keep_alive_seconds", settings.keep_alive_seconds, 1, 4100)
    _check_int("ready_timeout_seconds", settings.ready_timeout_seconds, 1, 3600)
    _check_int("boot_budget_seconds", settings.boot_budget_seconds, 60, 6000)
    if settings.ready_timeout_seconds > settings.boot_budget_seconds:
        raise ValueError(
            f"BootSettings.ready_timeout_seconds ({settings.ready_timeout_seconds}) exceeds "
            f"boot_budget_seconds ({settings.boot_budget_seconds})"
        )
    _check_forwarded(settings.forwarded_allow_ips)
    names = settings.parameter_names
    if not 1 <= len(names) <= 10 or len(set(names)) != len(names):
        raise ValueError(
            "BootSettings.parameter_names must hold 1..10 distinct names (one GetParameters "
            f"call), got {list(names)!r}"
        )
    for name in (*names, *settings.required_parameters):
        if not _PARAMETER_NAME.fullmatch(name):
            raise ValueError(
                f"BootSettings.parameter_names: {name!r} must be a lower-case name "
                "(a-z, 0-9, _) like db_host"
            )
    missing = [n for n in settings.required_parameters if n not in names]
    if missing:
        raise ValueError(f"BootSettings.required_parameters {missing!r} are not in parameter_names")
    if bool(settings.auto_scaling_group_name) != bool(settings.lifecycle_hook_name):
        raise ValueError(
            "BootSettings.auto_scaling_group_name and lifecycle_hook_name go together "
            f"(got {settings.auto_scaling_group_name!r} and {settings.lifecycle_hook_name!r})"
        )
    _check_unit_value("auto_scaling_group_name", settings.auto_scaling_group_name, allow_empty=True)
    _check_unit_value("lifecycle_hook_name", settings.lifecycle_hook_name, allow_empty=True)
    for name, source in settings.secret_files.items():
        if not _SECRET_NAME.fullmatch(name):
            raise ValueError(
                f"BootSettings.secret_files key {name!r} must be an upper-case variable name "
                "(A-Z, 0-9, _), as the server's settings read it"
            )
        if not isinstance(source, SecretFile):
            raise ValueError(f"BootSettings.secret_files[{name!r}] must be a SecretFile")
        _check_unit_value(f"secret_files[{name!r}].secret_id", source.secret_id)
        if not source.secret_id.startswith("arn:") and _ARN_SUFFIX.search(source.secret_id):
            raise ValueError(
                f"BootSettings.secret_files[{name!r}].secret_id {source.secret_id!r} ends in a "
                "hyphen and six characters: Secrets Manager would take it for a partial ARN; "
                "give the full ARN or a name without that ending"
            )
        if source.json_key is not None and not _JSON_KEY.fullmatch(source.json_key):
            raise ValueError(
                f"BootSettings.secret_files[{name!r}].json_key must match "
                f"{_JSON_KEY.pattern}, got {source.json_key!r}"
            )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - shell and systemd text, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # bash's ${#array[@]} would open a default Jinja comment
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["sh"] = _sh
    env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=True)
    # The agent config as one compact line in the user data (EC2 allows 16 KB of user data).
    env.filters["compact_json"] = lambda text: (
        json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":")) + "\n"
    )
    return env


def _context(settings: BootSettings) -> dict[str, object]:
    validate(settings)
    prefix = secret_name(settings.environment, "")
    return {
        "s": settings,
        "secrets": sorted(settings.secret_files.items()),
        "namespace": METRICS_NAMESPACE_PREFIX + settings.environment,
        "placeholder": PLACEHOLDER_SECRET_VALUE,
        "secret_prefix": prefix,
        # Provider secrets under their default name (/humansa/<env>/NAME) go in one loop.
        "by_name": [
            n
            for n, src in sorted(settings.secret_files.items())
            if src.secret_id == prefix + n and src.json_key is None
        ],
        "secrets_dir": SECRETS_DIR,
        "container_secrets_dir": CONTAINER_SECRETS_DIR,
        "env_file": ENV_FILE,
        "container_name": CONTAINER_NAME,
        "stop_timeout": settings.drain_seconds + 30,
        "threshold": HEALTH_FAILURE_THRESHOLD,
        "required": ",".join(settings.required_parameters),
        "image": settings.image_uri,
        "metrics_port": METRICS_PORT,
        "job": PROMETHEUS_JOB,
        "usage_selector": _selector(
            (*USAGE_ALARM_METRICS, *USAGE_GAUGE_METRICS, USAGE_STUCK_METRIC)
        ),
        "spool_dir": USAGE_SPOOL_DIR,
        "container_spool_dir": CONTAINER_USAGE_SPOOL_DIR,
    }


def _selector(names: tuple[str, ...]) -> str:
    """One anchored regex for the agent's ``metric_selectors``: ``^prefix(a|b)$``."""
    common = names[0]
    while not all(n.startswith(common) for n in names):
        common = common[:-1]
    return f"^{re.escape(common)}(" + "|".join(n[len(common) :] for n in names) + ")$"


def render_file(name: str, settings: BootSettings) -> str:
    """Render one template of ``user_data/`` (e.g. ``health-check.sh.j2``) for tests and docs."""
    env = _environment()
    return env.get_template(name).render(**_context(settings))


def render_user_data(settings: BootSettings) -> str:
    """Render the complete boot script (``user_data/boot.sh.j2``) passed to the launch template.

    Raises:
        ValueError: a setting cannot be rendered safely, or the script exceeds EC2's 16 KB.
    """
    script = render_file("boot.sh.j2", settings)
    size = len(script.encode())
    if size >= USER_DATA_LIMIT_BYTES:
        raise ValueError(
            f"rendered user data is {size} bytes; EC2 accepts at most {USER_DATA_LIMIT_BYTES}"
        )
    return script


__all__ = [
    "CONTAINER_NAME",
    "CONTAINER_USAGE_SPOOL_DIR",
    "ENVIRONMENTS",
    "ENV_FILE",
    "GHCR_TOKEN_SECRET_NAME",
    "LAUNCH_HOOK_NAME",
    "METRICS_NAMESPACE_PREFIX",
    "METRICS_PORT",
    "PLACEHOLDER_SECRET_VALUE",
    "PROMETHEUS_JOB",
    "PROVIDER_SECRET_NAMES",
    "REQUIRED_PARAMETER_NAMES",
    "RUNBOOK_PARAMETER_NAMES",
    "SECRETS_DIR",
    "USAGE_ALARM_METRICS",
    "USAGE_GAUGE_METRICS",
    "USAGE_SPOOL_DIR",
    "USAGE_STUCK_METRIC",
    "BootSettings",
    "SecretFile",
    "lifecycle_heartbeat_seconds",
    "render_file",
    "render_user_data",
    "secret_name",
    "validate",
]
