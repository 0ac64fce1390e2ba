"""Instance boot script: settings and rendering of ``user_data/boot.sh.j2``.

Minimal version of the boot contract: log in to ECR with the instance role, pull the image,
fetch secret files into tmpfs, write the env file from the SSM parameters, run the container.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "user_data"


@dataclass(frozen=True)
class SecretFile:
    """One secret file for the container.

    Args:
        arn: Secrets Manager ARN (may be a CDK token string).
        json_key: key to extract from a JSON SecretString; None keeps the whole value.
    """

    arn: str
    json_key: str | None = None


@dataclass(frozen=True)
class BootSettings:
    """Everything the boot script needs; see the boot contract for the meaning of each field."""

    environment: str
    region: str
    parameter_path: str
    image_uri: str
    registry: str
    secret_files: Mapping[str, SecretFile] = field(default_factory=dict)
    app_log_group: str = ""
    setup_log_group: str = ""
    container_port: int = 5001
    health_path: str = "/health"
    container_uid: int = 10001
    drain_seconds: int = 30
    fetch_attempts: int = 5
    fetch_backoff_seconds: int = 2


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders a shell script, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render_user_data(settings: BootSettings) -> str:
    """Render the boot script for ``settings`` (values shell-quoted; CDK tokens survive)."""
    if not settings.parameter_path.startswith("/") or not settings.parameter_path.endswith("/"):
        raise ValueError(
            f"parameter_path={settings.parameter_path} must start and end with '/' "
            "(e.g. /humansa/production/)"
        )
    for name in settings.secret_files:
        if not name.replace("_", "").isalnum() or not name.isupper():
            raise ValueError(f"secret_files key {name} must be UPPER_SNAKE_CASE")
    return _environment().get_template("boot.sh.j2").render(s=settings)
