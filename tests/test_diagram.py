"""The README's architecture diagram equals the one generated from the synthesized assembly."""

from __future__ import annotations

import re
from pathlib import Path

from humansa_ops.diagram import mermaid
from tests.conftest import Synth

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- diagram: production -->\n(```mermaid\n.*?```\n)", re.DOTALL)


def test_readme_diagram_matches_the_synthesized_production_stacks(synth: Synth) -> None:
    generated = mermaid(synth.outdir, "production")
    found = BLOCK.search(README.read_text(encoding="utf-8"))
    assert found, "README.md lacks the <!-- diagram: production --> block"
    assert found[1] == generated, (
        "README diagram is stale; regenerate with `python -m humansa_ops.diagram cdk.out "
        f"--env production` (after make synth):\n{generated}"
    )


def test_the_diagram_shows_the_dependencies_and_main_resources(synth: Synth) -> None:
    text = mermaid(synth.outdir, "production")
    assert "  Network --> Data\n" in text and "  Network --> Service\n" in text
    assert 'Data_RDS_PostgreSQL["RDS PostgreSQL"]' in text
    assert 'Service_ALB["ALB"]' in text and "Service_Auto_Scaling_group" in text
    assert "Production" not in text  # generic: Humansa-<Env>-...
