"""Instance boot script: renders the user data from the Jinja2 templates in ``user_data/``.

The rendered script holds configuration only (names, ARNs, CloudFormation references); every
secret is fetched on the instance with the instance role and lands in a tmpfs file. Values are
shell-quoted by the ``sh`` filter, so CDK token strings stay one word until CloudFormation
replaces them at deploy time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jinja2

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

METRICS_NAMESPACE_PREFIX: Final = "humansa-ml/"
"""CloudWatch agent metrics land in ``humansa-ml/<env>`` (see docs/boot.md)."""

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


def secret_name(environment: str, name: str) -> str:
    """Secrets Manager name of a provider secret: ``/humansa/<env>/<NAME>``."""
    return f"/humansa/{environment}/{name}"


@dataclass(frozen=True)
class SecretFile:
    """One secret file the boot writes into the secrets folder.

    Args:
        arn: Secrets Manager ARN (may be a CDK token string).
        json_key: key to extract from a JSON SecretString (the RDS secret's ``password``);
            ``None`` writes the whole value.
    """

    arn: str
    json_key: str | None = None


@dataclass(frozen=True)
class BootSettings:
    """Everything the boot script needs; no secret values.

    Args:
        environment: ``dev``, ``staging`` or ``production``.
        region: AWS region, e.g. ``ap-east-1``.
        parameter_path: SSM path read recursively into the env file, ``/humansa/<env>/``.
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


def validate(settings: BootSettings) -> None:
    """Raise ValueError naming the field when a setting cannot be rendered safely."""
    if settings.environment not in ENVIRONMENTS:
        raise ValueError(
            f"BootSettings.environment must be one of {', '.join(ENVIRONMENTS)}, "
            f"got {settings.environment!r}"
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
    for name, source in settings.secret_files.items():
        if not _SECRET_NAME.fullmatch(name):
            raise ValueError(
                f"BootSettings.secret_files key {name!r} must be an upper-case variable name "
                "(A-Z, 0-9, _), as the server's settings read it"
            )
        if not isinstance(source, SecretFile):
            raise ValueError(f"BootSettings.secret_files[{name!r}] must be a SecretFile")
        _check_unit_value(f"secret_files[{name!r}].arn", source.arn)
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
    return env


def _context(settings: BootSettings) -> dict[str, object]:
    validate(settings)
    return {
        "s": settings,
        "secrets": sorted(settings.secret_files.items()),
        "namespace": METRICS_NAMESPACE_PREFIX + settings.environment,
        "placeholder": PLACEHOLDER_SECRET_VALUE,
        "secrets_dir": SECRETS_DIR,
        "container_secrets_dir": CONTAINER_SECRETS_DIR,
        "env_file": ENV_FILE,
        "container_name": CONTAINER_NAME,
        "stop_timeout": settings.drain_seconds + 30,
        "threshold": HEALTH_FAILURE_THRESHOLD,
    }


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
    "ENVIRONMENTS",
    "ENV_FILE",
    "GHCR_TOKEN_SECRET_NAME",
    "METRICS_NAMESPACE_PREFIX",
    "PLACEHOLDER_SECRET_VALUE",
    "PROVIDER_SECRET_NAMES",
    "SECRETS_DIR",
    "BootSettings",
    "SecretFile",
    "render_file",
    "render_user_data",
    "secret_name",
    "validate",
]
