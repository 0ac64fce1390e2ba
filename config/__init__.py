"""Environment configuration: ``config/<env>.yaml`` files validated by :mod:`config.model`.

``config/account.yaml`` is not an environment: it configures the account-level stack
``Humansa-CI`` (:func:`load_account`), selected as ``ci``.

``HUMANSA_CONFIG_DIR`` points the loader at another folder (used by tests). Every problem is
reported as one :class:`ConfigError` line naming the file, the key, the value and what is
allowed, e.g. ``config/production.yaml: fleet.min_capacity=3 is above fleet.max_capacity=2``.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from config.model import AccountConfig, EnvironmentConfig, cross_field_problems

__all__ = [
    "ACCOUNT_FILE",
    "CI_SELECTOR",
    "AccountConfig",
    "ConfigError",
    "EnvironmentConfig",
    "account_config_exists",
    "config_dir",
    "environment_names",
    "load_account",
    "load_all",
    "load_environment",
]

#: The account-level settings file (not an environment) and the name that selects its stack.
ACCOUNT_FILE = "account.yaml"
CI_SELECTOR = "ci"

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_PREFERRED_ORDER = ("dev", "staging", "production")


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the user."""


def config_dir() -> Path:
    """The folder holding ``<env>.yaml`` files (``HUMANSA_CONFIG_DIR`` or ``config/``)."""
    override = os.environ.get("HUMANSA_CONFIG_DIR")
    return Path(override) if override else Path(__file__).resolve().parent


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def environment_names() -> list[str]:
    """Known environments: the config folder's ``*.yaml`` files, dev/staging/production first."""
    names = [p.stem for p in config_dir().glob("*.yaml") if p.name != ACCOUNT_FILE]
    return sorted(
        names,
        key=lambda n: (_PREFERRED_ORDER.index(n) if n in _PREFERRED_ORDER else 99, n),
    )


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, default=str)


_SETTING_PREFIX = re.compile(r"^[a-z_]+\.[a-z_]+")


def _format_validation_error(
    shown: str, exc: ValidationError, model: type[BaseModel] = EnvironmentConfig
) -> str:
    errors = exc.errors()
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    message = first["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        parent_fields = _fields_at(first["loc"][:-1], model)
        line = f"{shown}: {key} is not a known setting (allowed: {', '.join(parent_fields)})"
    elif kind == "missing":
        line = f"{shown}: {key} is required"
    elif _SETTING_PREFIX.match(message):  # the validator already named the setting
        line = f"{shown}: {message}"
    else:
        if kind == "literal_error":
            expected = first.get("ctx", {}).get("expected", "")
            message = f"is not allowed (allowed: {expected.replace(' or ', ', ')})"
        elif not message.startswith(("must", "is")):
            message = f"is not allowed: {message[0].lower()}{message[1:]}"
        line = f"{shown}: {key}={_format_value(first.get('input'))} {message}"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return line


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        model = field.annotation
    fields = getattr(model, "model_fields", {})
    return [name for name in fields if name != "name"]


def _known_az_count(account: str, region: str) -> int | None:
    context_file = _PROJECT_ROOT / "cdk.context.json"
    if not context_file.exists():
        return None
    context = json.loads(context_file.read_text(encoding="utf-8"))
    zones = context.get(f"availability-zones:account={account}:region={region}")
    return len(zones) if isinstance(zones, list) else None


def _read_mapping(path: Path, shown: str, example_keys: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{shown}: not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown}: must be a mapping of settings ({example_keys})")
    return raw


def load_environment(name: str) -> EnvironmentConfig:
    """Load and validate ``<config dir>/<name>.yaml``.

    Raises:
        ConfigError: unknown environment, unreadable YAML, or an invalid setting.
    """
    known = environment_names()
    if name == CI_SELECTOR:
        raise ConfigError(
            f"{CI_SELECTOR!r} is the account-level stack Humansa-CI, not an environment "
            f"(its settings are config/{ACCOUNT_FILE})"
        )
    from config.naming import name_problem

    problem = name_problem(name)
    if problem:
        raise ConfigError(problem)
    if name not in known:
        raise ConfigError(
            f"unknown environment {name!r}; known environments: {', '.join(known) or '(none)'}"
        )
    path = config_dir() / f"{name}.yaml"
    shown = _display(path)
    raw = _read_mapping(path, shown, "account, region, vpc, ...")
    if "name" in raw:
        raise ConfigError(f"{shown}: name is not a setting (the file name {name} is the name)")
    try:
        cfg = EnvironmentConfig.model_validate({**raw, "name": name})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(shown, exc)) from None
    problems = cross_field_problems(cfg)
    problems += instance_type_problems(cfg)
    zones = _known_az_count(cfg.account, cfg.region)
    if zones is None:
        problems.append(
            f"account={cfg.account} region={cfg.region} has no availability zones recorded in "
            "cdk.context.json (add them so synth stays offline)"
        )
    elif cfg.vpc.max_azs > zones:
        problems.append(
            f"vpc.max_azs={cfg.vpc.max_azs} is above the {zones} availability zones of "
            f"{cfg.region} recorded in cdk.context.json"
        )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{shown}: {problems[0]}{more}")
    return cfg


@functools.cache
def _ec2_instance_types() -> frozenset[str]:
    """Every EC2 instance type botocore's EC2 model knows (its ``InstanceType`` enum), or an
    empty set when botocore is not installed (then nothing is checked)."""
    try:
        from botocore.loaders import create_loader
    except ImportError:  # pragma: no cover - botocore comes with requirements-dev.txt
        return frozenset()
    model = create_loader().load_service_model("ec2", "service-2")
    return frozenset(model["shapes"]["InstanceType"]["enum"])


def _unknown(setting: str, value: str, known: frozenset[str], prefix: str = "") -> str:
    near = difflib.get_close_matches(value.removeprefix(prefix), sorted(known), n=3, cutoff=0.6)
    hint = f" (nearest: {', '.join(prefix + n for n in near)})" if near else ""
    return f"{setting}={value} is not an instance type botocore's EC2 model knows{hint}"


def instance_type_problems(cfg: EnvironmentConfig) -> list[str]:
    """Instance types and the RDS class checked against botocore's EC2 model (RDS classes are
    ``db.`` + an EC2 type: RDS's own model has no list of classes)."""
    known = _ec2_instance_types()
    if not known:
        return []
    problems = [
        _unknown(setting, value, known)
        for setting, value in [
            ("fleet.instance_type", cfg.fleet.instance_type),
            *(("fleet.instance_types", t) for t in cfg.fleet.instance_types),
        ]
        if value not in known
    ]
    db_class = cfg.database.instance_class
    if db_class != "db.serverless" and db_class.removeprefix("db.") not in known:
        problems.append(_unknown("database.instance_class", db_class, known, prefix="db."))
    return problems


def load_all(names: list[str] | None = None) -> list[EnvironmentConfig]:
    """Load the given environments (default: every known one), in a stable order."""
    return [load_environment(n) for n in (names if names is not None else environment_names())]


def account_config_exists() -> bool:
    """True when ``<config dir>/account.yaml`` exists (the ``Humansa-CI`` stack is configured)."""
    return (config_dir() / ACCOUNT_FILE).is_file()


def load_account() -> AccountConfig:
    """Load and validate ``<config dir>/account.yaml``, the ``Humansa-CI`` stack's settings.

    Every environment in the same account must name the same ``github.repository`` (the one
    whose workflows the account's OIDC roles trust).

    Raises:
        ConfigError: missing file, unreadable YAML, an invalid setting or a repository mismatch.
    """
    path = config_dir() / ACCOUNT_FILE
    shown = _display(path)
    if not path.is_file():
        raise ConfigError(
            f"{shown} not found: the account-level stack Humansa-CI ({CI_SELECTOR!r}) needs it "
            "(account, region, github.repository, audit)"
        )
    raw = _read_mapping(path, shown, "account, region, github, audit, ...")
    try:
        cfg = AccountConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(shown, exc, AccountConfig)) from None
    zones = _known_az_count(cfg.account, cfg.region)
    if zones is None:
        raise ConfigError(
            f"{shown}: account={cfg.account} region={cfg.region} is not recorded in "
            "cdk.context.json (add it so synth stays offline)"
        )
    for env in load_all():
        if env.account == cfg.account and env.github.repository != cfg.github.repository:
            raise ConfigError(
                f"{_display(config_dir() / f'{env.name}.yaml')}: github.repository="
                f"{env.github.repository} differs from github.repository="
                f"{cfg.github.repository} in {shown} (one repository deploys account "
                f"{cfg.account})"
            )
    return cfg
