#!/usr/bin/env python3
"""CDK entry point: one Network/Data/Service stack set per environment in ``config/``, plus the
account-level stack ``Humansa-CI`` (``config/account.yaml``).

Select with ``ENV=<names>`` or ``-c env=<names>`` (comma-separated): an environment name
(``dev``, ``staging``, ``production``) selects only that environment's stacks, ``ci`` selects the
account-level stack. Default (nothing selected): every environment and, when
``config/account.yaml`` exists, ``Humansa-CI``. Override the recorded image tag with
``-c image_tag=<tag>``. Configuration problems print one line and exit 2, before the CDK
library (jsii, several seconds) is even loaded.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import (
    CI_SELECTOR,
    AccountConfig,
    ConfigError,
    EnvironmentConfig,
    account_config_exists,
    load_account,
    load_all,
)

if TYPE_CHECKING:  # aws_cdk starts jsii on import: imported where it is used
    from aws_cdk import App

    from stacks.ci_stack import CiStack
    from stacks.environment import EnvironmentStacks

CI_STACK_NAME = "Humansa-CI"


@dataclass(frozen=True)
class Selection:
    """What one synth builds: environments and whether the account-level stack is included."""

    environments: list[EnvironmentConfig]
    account: AccountConfig | None


@dataclass(frozen=True)
class BuiltApp:
    """The stacks :func:`build` added."""

    environments: list[EnvironmentStacks]
    ci: CiStack | None


def select(app: App) -> Selection:
    """The selection named by ``-c env=`` or ``ENV`` (comma-separated), else everything."""
    return load_selection(app.node.try_get_context("env"))


def load_selection(context_env: object) -> Selection:
    """Load the configs selected by the ``env`` context value (else ``ENV``), else everything.

    Raises:
        ConfigError: a bad or unknown environment, or a bad ``config/account.yaml``.
    """
    wanted = str(context_env or os.environ.get("ENV", "")).strip()
    names = [n.strip() for n in wanted.split(",") if n.strip()] if wanted else None
    if names is None:
        account = load_account() if account_config_exists() else None
        return Selection(environments=load_all(), account=account)
    with_ci = CI_SELECTOR in names
    env_names = [n for n in names if n != CI_SELECTOR]
    return Selection(
        environments=load_all(env_names) if env_names else [],
        account=load_account() if with_ci else None,
    )


def selected_environments(app: App) -> list[EnvironmentConfig]:
    """The environments of :func:`select` (without the account-level stack)."""
    return select(app).environments


def add_ci_stack(app: App, config: AccountConfig) -> CiStack:
    """Add ``Humansa-CI``: GitHub OIDC provider and roles, and the CloudTrail trail."""
    from aws_cdk import Environment, Tags

    from stacks.ci_stack import CiStack

    stack = CiStack(
        app,
        CI_STACK_NAME,
        github_repository=config.github.repository,
        env=Environment(account=config.account, region=config.region),
        bootstrap_qualifier=config.bootstrap_qualifier,
        existing_oidc_provider_arn=config.existing_oidc_provider_arn,
        audit=config.audit,
        termination_protection=config.termination_protection,
    )
    Tags.of(stack).add("Project", "humansa-ml-server")
    Tags.of(stack).add("Environment", "account")
    return stack


IMAGE_SOURCES = ("asset", "ghcr")


def with_image_source(config: EnvironmentConfig, source: object) -> EnvironmentConfig:
    """``config`` with ``image.source`` overridden by ``-c image_source=`` (the release deploys
    the GHCR image it built and tested: ``make release-deploy``).

    Raises:
        ConfigError: a value other than asset or ghcr.
    """
    if source is None or source == "":
        return config
    if source not in IMAGE_SOURCES:
        raise ConfigError(f"-c image_source={source} is not allowed (allowed: asset, ghcr)")
    image = config.image.model_copy(update={"source": source})
    return config.model_copy(update={"image": image})


def build(app: App) -> BuiltApp:
    """Add the selected stacks and the cdk-nag AwsSolutions checks to ``app``.

    Raises:
        ConfigError: a bad or unknown environment (already one line for the user).
    """
    from aws_cdk import Aspects, Validations
    from cdk_nag import AwsSolutionsChecks

    from components.checkov import CheckovAcknowledgments
    from stacks.environment import add_environment

    selection = select(app)
    if not selection.environments and selection.account is None:
        raise ConfigError("no environments found (add config/<name>.yaml)")
    image_tag = app.node.try_get_context("image_tag")
    configs = [
        with_image_source(c, app.node.try_get_context("image_source"))
        for c in selection.environments
    ]
    environments = [
        add_environment(app, config, image_tag=str(image_tag) if image_tag else None)
        for config in configs
    ]
    ci = add_ci_stack(app, selection.account) if selection.account else None
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    Aspects.of(app).add(CheckovAcknowledgments())  # checkov-acks.yaml into resource Metadata
    return BuiltApp(environments=environments, ci=ci)


def build_app(app: App) -> list[EnvironmentStacks]:
    """:func:`build`, returning only the environments' stacks."""
    return build(app).environments


def _cli_context_env() -> object:
    """The ``env`` context value the CDK CLI hands the app (``CDK_CONTEXT_JSON``, or the file
    named by ``CONTEXT_OVERFLOW_LOCATION_ENV`` when the context is large), else None."""
    context: dict[str, Any] = {}
    overflow = os.environ.get("CONTEXT_OVERFLOW_LOCATION_ENV")
    if overflow and Path(overflow).is_file():
        context.update(json.loads(Path(overflow).read_text(encoding="utf-8")))
    if os.environ.get("CDK_CONTEXT_JSON"):
        context.update(json.loads(os.environ["CDK_CONTEXT_JSON"]))
    return context.get("env")


def main() -> int:
    try:
        load_selection(_cli_context_env())  # one-line config errors without starting jsii
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from aws_cdk import App

    app = App()
    try:
        build(app)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
