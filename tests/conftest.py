"""One synth of every environment per test session, shared by all infra tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template

from app import build_app
from config import EnvironmentConfig, load_all
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
    """The session's cloud assembly."""

    outdir: Path
    configs: dict[str, EnvironmentConfig]
    stacks: dict[str, EnvironmentStacks]
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
    app = App(outdir=str(outdir), context={**cdk_context(), "env": ",".join(ENVIRONMENTS)})
    stacks = dict(zip(ENVIRONMENTS, build_app(app), strict=True))
    validation_error: str | None = None
    try:
        app.synth()
    except RuntimeError as exc:  # cdk-nag findings: templates are still written
        validation_error = str(exc)
    templates: dict[tuple[str, str], Template] = {}
    for env, built in stacks.items():
        for kind, stack in zip(
            STACK_KINDS, (built.network, built.data, built.service), strict=True
        ):
            data = json.loads((outdir / f"{stack.stack_name}.template.json").read_text())
            templates[(env, kind)] = Template.from_json(data)
    yield Synth(
        outdir=outdir,
        configs={c.name: c for c in load_all()},
        stacks=stacks,
        validation_error=validation_error,
        _templates=templates,
    )
