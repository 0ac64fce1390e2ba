#!/usr/bin/env python3
"""CDK entry point: one Network/Data/Service stack set per environment in ``config/``.

Select one environment with ``ENV=<name>`` or ``-c env=<name>`` (default: all). Override the
recorded image tag with ``-c image_tag=<tag>``. Configuration problems print one line and exit 2.
"""

from __future__ import annotations

import os
import sys

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from config import ConfigError, EnvironmentConfig, load_all
from stacks.environment import EnvironmentStacks, add_environment


def selected_environments(app: App) -> list[EnvironmentConfig]:
    """The environments named by ``-c env=`` or ``ENV`` (comma-separated), else all."""
    wanted = str(app.node.try_get_context("env") or os.environ.get("ENV", "")).strip()
    names = [n.strip() for n in wanted.split(",") if n.strip()] if wanted else None
    return load_all(names)


def build_app(app: App) -> list[EnvironmentStacks]:
    """Add the selected environments' stacks and the cdk-nag AwsSolutions checks to ``app``.

    Raises:
        ConfigError: a bad or unknown environment (already one line for the user).
    """
    configs = selected_environments(app)
    if not configs:
        raise ConfigError("no environments found (add config/<name>.yaml)")
    image_tag = app.node.try_get_context("image_tag")
    built = [
        add_environment(app, config, image_tag=str(image_tag) if image_tag else None)
        for config in configs
    ]
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return built


def main() -> int:
    app = App()
    try:
        build_app(app)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
