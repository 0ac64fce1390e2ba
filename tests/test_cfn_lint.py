"""cfn-lint over every synthesized template: no errors and no warnings (see .cfnlintrc.yaml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, Synth


def test_cfn_lint_clean(synth: Synth) -> None:
    templates = synth.template_files()
    assert len(templates) == 10  # three environments x three stacks, and Humansa-CI
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "cfn-lint"),
            "--config-file",
            str(ROOT / ".cfnlintrc.yaml"),
            "--format",
            "parseable",
            *map(str, templates),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
