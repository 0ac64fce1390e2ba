"""checkov's CloudFormation checks on the test session's cdk.out: no failed check, and every
acknowledgment in checkov-acks.yaml still matches a finding (none stale)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import CfnResource, Stack

from components.checkov import ACKS_FILE, CheckovAck, load_acks
from tests.conftest import ROOT, Synth

#: checkov lives in its own venv (its pins conflict with requirements-dev.txt): make checkov-venv.
CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))


def run_checkov(directory: Path) -> dict[str, Any]:
    """checkov's JSON report for the CloudFormation templates in ``directory``."""
    if not CHECKOV.is_file():
        pytest.fail(f"{CHECKOV} not found: run `make checkov-venv` (requirements-checkov.txt)")
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(directory),
            "--framework",
            "cloudformation",
            "--output",
            "json",
            "--compact",
            "--skip-download",  # offline: no Prisma Cloud guidelines or policies
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    # Exit 1 means failed checks, which the caller reports by name; other codes are errors.
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert isinstance(report, dict), f"expected one CloudFormation report, got {report!r:.200}"
    return report


def construct_paths(synth: Synth) -> dict[tuple[str, str], str]:
    """(template file name, logical ID) -> construct path, for every resource of the synth."""
    stacks: list[Stack] = [synth.ci_stack]
    for env_stacks in synth.stacks.values():
        stacks += [env_stacks.network, env_stacks.data, env_stacks.service]
    paths: dict[tuple[str, str], str] = {}
    for stack in stacks:
        for node in stack.node.find_all():
            if isinstance(node, CfnResource) and Stack.of(node) is stack:
                logical_id = str(stack.resolve(node.logical_id))
                paths[(stack.template_file, logical_id)] = node.node.path
    return paths


@pytest.fixture(scope="module")
def paths(synth: Synth) -> dict[tuple[str, str], str]:
    return construct_paths(synth)


def cdk_path(paths: dict[tuple[str, str], str], finding: dict[str, Any]) -> str:
    """The construct path of the resource a checkov result is about."""
    logical_id = finding["resource"].rsplit(".", 1)[-1]
    return paths[(Path(finding["file_path"]).name, logical_id)]


@pytest.fixture(scope="module")
def report(synth: Synth) -> dict[str, Any]:
    return run_checkov(synth.outdir)


def test_no_unacknowledged_checkov_finding(
    paths: dict[tuple[str, str], str], report: dict[str, Any]
) -> None:
    failed = sorted(
        f"{f['check_id']} {cdk_path(paths, f)} ({f['check_name']})"
        for f in report["results"]["failed_checks"]
    )
    assert report["summary"]["parsing_errors"] == 0
    assert failed == [], "fix, or acknowledge in checkov-acks.yaml:\n" + "\n".join(failed)


def test_every_acknowledgment_matches_a_finding(
    paths: dict[tuple[str, str], str], report: dict[str, Any]
) -> None:
    skipped = {(f["check_id"], cdk_path(paths, f)) for f in report["results"]["skipped_checks"]}
    stale = [
        f"{ack.check_id} {pattern}"
        for ack in load_acks()
        for pattern in ack.paths
        if not any(
            check == ack.check_id and CheckovAck(check, (pattern,), "").matches(path)
            for check, path in skipped
        )
    ]
    assert stale == [], f"not found by checkov, remove from {ACKS_FILE.name}: " + ", ".join(stale)


def test_skips_carry_the_committed_reasons(report: dict[str, Any]) -> None:
    reasons = {ack.reason for ack in load_acks()}
    comments = {
        f["check_id"]: f["check_result"]["suppress_comment"]
        for f in report["results"]["skipped_checks"]
    }
    assert comments, "checkov reported no acknowledged check"
    assert set(comments.values()) <= reasons


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id: CKV_AWS_1\n", "expected a list"),
        ("- id: CKV_AWS_1\n  paths: [a]\n", "needs exactly the keys id, paths, reason"),
        ("- {id: X1, paths: [a], reason: one two three four five six seven eight}\n", "'X1'"),
        (
            "- {id: CKV_AWS_1, paths: [], reason: one two three four five six seven eight}\n",
            "paths must be a non-empty list",
        ),
        ("- {id: CKV_AWS_1, paths: [a], reason: because}\n", "reason must say why"),
    ],
)
def test_malformed_acknowledgments_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "checkov-acks.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_acks(path)
