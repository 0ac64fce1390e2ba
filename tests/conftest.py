"""One synth of every environment and the account-level CI stack per test session, shared by
all infra tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template

from app import CI_STACK_NAME, build
from config import CI_SELECTOR, AccountConfig, EnvironmentConfig, load_account, load_all
from stacks.ci_stack import CiStack
from stacks.environment import EnvironmentStacks

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ("dev", "staging", "production")
STACK_KINDS = ("Network", "Data", "Service")


def cdk_context() -> dict[str, Any]:
    """The context ``cdk synth`` would see: cdk.json's plus the committed cdk.context.json."""
    context: dict[str, Any] = dict(json.loads((ROOT / "cdk.json").read_text())["context"])
    context.update(json.loads((ROOT / "cdk.context.json").read_text()))
    return context


@dataclass
class Synth:
    """The session's cloud assembly: every environment and ``Humansa-CI``."""

    outdir: Path
    configs: dict[str, EnvironmentConfig]
    stacks: dict[str, EnvironmentStacks]
    account: AccountConfig
    ci_stack: CiStack
    ci: Template
    validation_error: str | None
    _templates: dict[tuple[str, str], Template]

    def template(self, env: str, kind: str) -> Template:
        return self._templates[(env, kind)]

    def template_json(self, env: str, kind: str) -> dict[str, Any]:
        return dict(self._templates[(env, kind)].to_json())

    def template_files(self) -> list[Path]:
        return sorted(self.outdir.glob("*.template.json"))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    outdir = tmp_path_factory.mktemp("cdk.out")
    selection = ",".join((*ENVIRONMENTS, CI_SELECTOR))
    app = App(outdir=str(outdir), context={**cdk_context(), "env": selection})
    built = build(app)
    assert built.ci is not None
    stacks = dict(zip(ENVIRONMENTS, built.environments, strict=True))
    validation_error: str | None = None
    try:
        app.synth()
    except RuntimeError as exc:  # cdk-nag findings: templates are still written
        validation_error = str(exc)
    templates: dict[tuple[str, str], Template] = {}
    for env, env_stacks in stacks.items():
        for kind, stack in zip(
            STACK_KINDS, (env_stacks.network, env_stacks.data, env_stacks.service), strict=True
        ):
            data = json.loads((outdir / f"{stack.stack_name}.template.json").read_text())
            templates[(env, kind)] = Template.from_json(data)
    ci_data = json.loads((outdir / f"{CI_STACK_NAME}.template.json").read_text())
    yield Synth(
        outdir=outdir,
        configs={c.name: c for c in load_all()},
        stacks=stacks,
        account=load_account(),
        ci_stack=built.ci,
        ci=Template.from_json(ci_data),
        validation_error=validation_error,
        _templates=templates,
    )
