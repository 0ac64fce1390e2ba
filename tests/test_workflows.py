"""GitHub workflows: zizmor clean, valid against the workflow schema, pinned, least privilege."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from humansa_ops.diff_comment import DEFAULT_MARKER

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
FILES = sorted(WORKFLOWS.glob("*.yml"))
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<comment>.*)$", re.MULTILINE)
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"^\s+# v\d+\.\d+\.\d+$")


def _load(path: Path) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    # PyYAML reads the key `on` as the boolean True (YAML 1.1)
    return {("on" if key is True else str(key)): value for key, value in raw.items()}


def _zizmor(*paths: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            str(BIN / "zizmor"),
            "--offline",
            "--min-severity",
            "medium",
            "--format",
            "json",
            "--no-progress",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip(), result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return findings


def test_the_workflows_exist() -> None:
    assert [p.name for p in FILES] == ["ci.yml", "diff.yml", "release.yml", "rollback.yml"]


def test_zizmor_reports_nothing_at_medium_or_above() -> None:
    findings = _zizmor(*FILES)
    assert findings == [], [(f["ident"], f["desc"]) for f in findings]


def test_zizmor_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request_target\n"
        "permissions: write-all\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "        with:\n"
        "          ref: ${{ github.event.pull_request.head.sha }}\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n',
        encoding="utf-8",
    )
    idents = {f["ident"] for f in _zizmor(bad)}
    assert {"template-injection", "dangerous-triggers"} <= idents


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_valid_against_the_github_workflow_schema(path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_uses_is_pinned_to_a_commit_sha_with_its_version(path: Path) -> None:
    found = USES.findall(path.read_text(encoding="utf-8"))
    assert found, f"{path.name}: no uses: found"
    for ref, comment in found:
        assert PINNED.match(ref), f"{path.name}: {ref} is not pinned to a 40-character SHA"
        assert VERSION_COMMENT.match(comment), f"{path.name}: {ref} lacks a '# vX.Y.Z' comment"


def test_one_sha_per_action_across_workflows() -> None:
    pins: dict[str, set[str]] = {}
    for path in FILES:
        for ref, comment in USES.findall(path.read_text(encoding="utf-8")):
            action, sha = ref.split("@")
            pins.setdefault(action, set()).add(f"{sha}{comment}")
    assert {a: s for a, s in pins.items() if len(s) > 1} == {}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_and_hygiene(path: Path) -> None:
    workflow = _load(path)
    assert workflow["permissions"] in ({}, {"contents": "read"}), "top-level permissions"
    assert "group" in workflow["concurrency"]
    for name, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{name}: timeout-minutes"
        assert "permissions" in job, f"{name}: explicit job permissions"
        assert "write-all" not in str(job["permissions"])
        for step in job.get("steps", []):
            run = step.get("run", "")
            assert "${{" not in run, f"{name}: expression inside run: pass it through env"
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, f"{name}: checkout"
    text = path.read_text(encoding="utf-8")
    assert not re.findall(r"secrets\.(?!GITHUB_TOKEN\b)\w+", text), "only GITHUB_TOKEN"


def test_ci_tests_synthesizes_and_uploads_cdk_out() -> None:
    workflow = _load(WORKFLOWS / "ci.yml")
    assert set(workflow["on"]) == {"pull_request", "push"}
    assert workflow["on"]["push"]["branches"] == ["main"]
    (job,) = workflow["jobs"].values()
    runs = [s.get("run") for s in job["steps"] if "run" in s]
    assert runs.index("make test") < runs.index("make synth")
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-"))
    assert upload["with"]["path"] == "cdk.out"


def test_diff_comments_once_with_the_formatters_marker() -> None:
    workflow = _load(WORKFLOWS / "diff.yml")
    assert set(workflow["on"]) == {"pull_request"}
    diff, comment = workflow["jobs"]["diff"], workflow["jobs"]["comment"]
    # the job that runs the pull request's code cannot write to the repository
    assert diff["permissions"] == {"contents": "read", "id-token": "write"}
    assert comment["permissions"] == {"pull-requests": "write"}
    assert not any("actions/checkout" in s.get("uses", "") for s in comment["steps"])
    post = comment["steps"][-1]
    assert post["env"]["MARKER"] == DEFAULT_MARKER
    assert "PATCH" in post["run"] and "POST" in post["run"]
    role = next(s for s in diff["steps"] if "configure-aws-credentials" in s.get("uses", ""))
    assert role["with"]["role-to-assume"] == "${{ vars.AWS_DIFF_ROLE_ARN }}"
    assert "vars.AWS_DIFF_ROLE_ARN != ''" in role["if"]


def test_release_builds_two_platforms_then_deploys_production_through_oidc() -> None:
    workflow = _load(WORKFLOWS / "release.yml")
    assert workflow["on"] == {"push": {"tags": ["release-*"]}}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    image, deploy = workflow["jobs"]["image"], workflow["jobs"]["deploy"]
    assert image["permissions"] == {"contents": "read", "packages": "write"}
    build = next(s for s in image["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["context"] == "ml_server"
    assert build["with"]["tags"].endswith(":${{ steps.version.outputs.version }}")
    version = next(s for s in image["steps"] if s.get("id") == "version")
    assert "/humansa-ml-server" in version["run"] and "ghcr.io/" in version["run"]
    assert deploy["needs"] == "image"
    assert deploy["environment"] == "production"
    assert deploy["permissions"] == {"contents": "read", "id-token": "write"}
    role = next(s for s in deploy["steps"] if "configure-aws-credentials" in s.get("uses", ""))
    assert role["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    runs = "\n".join(s.get("run", "") for s in deploy["steps"])
    assert 'make deploy ENV=production "CDK_ARGS=-c image_tag=$VERSION"' in runs
    assert "describe-instance-refreshes" in runs and "GITHUB_STEP_SUMMARY" in runs
    # only the image job may write packages
    others = [j for n, j in workflow["jobs"].items() if n != "image"]
    assert all("packages" not in j["permissions"] for j in others)


def test_rollback_is_dispatched_and_runs_make_rollback() -> None:
    workflow = _load(WORKFLOWS / "rollback.yml")
    assert set(workflow["on"]) == {"workflow_dispatch"}
    assert set(workflow["on"]["workflow_dispatch"]["inputs"]) == {"environment", "version"}
    (job,) = workflow["jobs"].values()
    assert job["environment"] == "${{ inputs.environment }}"  # its reviewers apply
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    checkout = next(s for s in job["steps"] if "actions/checkout" in s.get("uses", ""))
    assert checkout["with"]["fetch-depth"] == 0  # the release tags
    assert job["steps"][-1]["run"] == 'make rollback "ENV=$TARGET_ENV" "TO=$VERSION"'
    assert job["env"]["VERSION"] == "${{ inputs.version }}"
