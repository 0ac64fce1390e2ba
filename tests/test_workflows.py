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


#: (workflow, job environment) -> the secrets (besides GITHUB_TOKEN) its job may read.
ALLOWED_SECRETS = {("release.yml", "staging"): {"HUMANSA_SMOKE_API_KEY"}}


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
    # No AWS or registry credential is a secret (OIDC and GITHUB_TOKEN); the one other secret is
    # the smoke test's gateway key, an environment secret of `staging`, in that job only.
    for name, job in workflow["jobs"].items():
        used = set(re.findall(r"secrets\.(?!GITHUB_TOKEN\b)(\w+)", json.dumps(job)))
        allowed = ALLOWED_SECRETS.get((path.name, job.get("environment")), set())
        assert used <= allowed, f"{name}: secrets {used - allowed}; only GITHUB_TOKEN"
    text = path.read_text(encoding="utf-8")
    outside_jobs = {k: v for k, v in workflow.items() if k != "jobs"}
    assert "secrets." not in json.dumps(outside_jobs), text[:200]


def test_ci_tests_synthesizes_and_uploads_cdk_out() -> None:
    workflow = _load(WORKFLOWS / "ci.yml")
    assert set(workflow["on"]) == {"pull_request", "push"}
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert list(workflow["jobs"]) == ["test-and-synth", "system-tests"]
    job = workflow["jobs"]["test-and-synth"]
    runs = [s.get("run") for s in job["steps"] if "run" in s]
    assert runs.index("make test") < runs.index("make synth")
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-"))
    assert upload["with"]["path"] == "cdk.out"


def test_ci_runs_the_image_and_instance_tests_as_root_on_podman() -> None:
    job = _load(WORKFLOWS / "ci.yml")["jobs"]["system-tests"]
    assert job["runs-on"].startswith("ubuntu-")
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert runs[0] == "make install"
    apt = next(r for r in runs if "apt-get install" in r)
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for package in ("podman", "buildah", "runc", "debootstrap", "systemd-container", "iproute2"):
        assert f" {package}" in apt, package
        assert package in ci_run, f".ci/run does not install {package}"
    # scripts/image.sh prefers a Docker engine; the system tests read buildah's storage.
    assert any("systemctl stop docker" in r for r in runs)
    last = runs[-1].split()
    assert last[:2] == ["sudo", "env"] and last[-4:] == [
        "make",
        "image",
        "image-test",
        "instance-test",
    ]


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


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in job["steps"])


def test_release_gate_refuses_a_tag_off_main_and_a_reused_version() -> None:
    workflow = _load(WORKFLOWS / "release.yml")
    assert workflow["on"] == {"push": {"tags": ["release-*"]}}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    gate = workflow["jobs"]["gate"]
    assert gate["permissions"] == {"contents": "read", "packages": "read"}
    checkout = next(s for s in gate["steps"] if "actions/checkout" in s.get("uses", ""))
    assert checkout["with"]["fetch-depth"] == 0
    runs = _runs(gate)
    assert 'git merge-base --is-ancestor "$GITHUB_SHA" origin/main' in runs
    assert 'imagetools inspect "$IMAGE:$VERSION"' in runs  # a re-pushed version fails
    # every other job waits for the gate (directly or through the jobs it needs)
    needs = {
        n: set([j["needs"]] if isinstance(j["needs"], str) else j["needs"])
        for n, j in workflow["jobs"].items()
        if n != "gate"
    }
    assert all("gate" in n for n in needs.values()), needs


def test_release_tests_first_builds_once_natively_and_promotes_one_digest() -> None:
    jobs = _load(WORKFLOWS / "release.yml")["jobs"]
    assert "make test" in _runs(jobs["test"]).splitlines()
    image = jobs["image"]
    assert set(image["needs"]) == {"gate", "test"}
    platforms = {(m["platform"], m["runner"]) for m in image["strategy"]["matrix"]["include"]}
    assert platforms == {("linux/amd64", "ubuntu-24.04"), ("linux/arm64", "ubuntu-24.04-arm")}
    text = (WORKFLOWS / "release.yml").read_text(encoding="utf-8")
    assert "setup-qemu-action" not in text  # native runners only
    build = next(s for s in image["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["platforms"] == "${{ matrix.platform }}"
    assert "push-by-digest=true" in build["with"]["outputs"]
    assert image["permissions"] == {"contents": "read", "packages": "write"}
    publish = jobs["publish"]
    assert "imagetools create --tag" in _runs(publish)
    assert publish["outputs"]["digest"] == "${{ steps.tag.outputs.digest }}"
    # staging: deployed with the release image, then the SDK smoke test on its URL
    staging = jobs["staging"]
    assert staging["environment"] == "staging"
    assert set(staging["needs"]) == {"gate", "publish"}
    runs = _runs(staging)
    assert 'make release-deploy ENV=staging "VERSION=$VERSION"' in runs
    assert runs.index("release-deploy") < runs.index("humansa_ops.smoke --env staging")
    smoke_step = next(s for s in staging["steps"] if "humansa_ops.smoke" in s.get("run", ""))
    # the full smoke (models, a chat completion) runs with the staging environment's secret
    assert smoke_step["env"]["HUMANSA_SMOKE_API_KEY"] == "${{ secrets.HUMANSA_SMOKE_API_KEY }}"
    assert smoke_step["env"]["HUMANSA_SMOKE_MODEL"] == "${{ vars.HUMANSA_SMOKE_MODEL }}"
    assert "secrets." not in json.dumps(staging["env"])  # the key only where it is used
    # production: after staging and approval, the same version, its digest checked unchanged
    deploy = jobs["deploy"]
    assert deploy["environment"] == "production"
    assert set(deploy["needs"]) == {"gate", "publish", "staging"}
    assert (
        deploy["env"]["DIGEST"] == staging["env"]["DIGEST"] == "${{ needs.publish.outputs.digest }}"
    )
    runs = _runs(deploy)
    assert '[ "$now" != "$DIGEST" ]' in runs
    assert 'make release-deploy ENV=production "VERSION=$VERSION"' in runs
    assert "describe-instance-refreshes" in runs and "GITHUB_STEP_SUMMARY" in runs
    for job in (staging, deploy):
        assert job["permissions"] == {"contents": "read", "id-token": "write"}
        role = next(s for s in job["steps"] if "configure-aws-credentials" in s.get("uses", ""))
        assert role["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    # only the image and publish jobs may write packages
    writers = {n for n, j in jobs.items() if j["permissions"].get("packages") == "write"}
    assert writers == {"image", "publish"}


def test_release_deploy_is_the_makefile_target_rollback_reuses() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\nrelease-deploy:" in makefile
    assert "-c image_source=ghcr -c image_tag=$(VERSION)" in makefile


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


def test_pip_and_npm_caches_where_no_artifact_is_published() -> None:
    for name in ("ci.yml", "diff.yml"):
        steps = next(iter(_load(WORKFLOWS / name)["jobs"].values()))["steps"]
        python = next(s for s in steps if "setup-python" in s.get("uses", ""))
        node = next(s for s in steps if "setup-node" in s.get("uses", ""))
        assert python["with"]["cache"] == "pip", name
        assert "requirements-dev.txt" in python["with"]["cache-dependency-path"], name
        assert node["with"]["cache"] == "npm", name
    # release and rollback deploy: no cache a pull request could have poisoned
    for name in ("release.yml", "rollback.yml"):
        text = (WORKFLOWS / name).read_text(encoding="utf-8")
        assert not re.search(r"^\s+cache: ", text, re.MULTILINE), name


def test_dependabot_updates_actions_pip_and_npm() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text(encoding="utf-8"))
    assert config["version"] == 2
    ecosystems = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(ecosystems) == {"github-actions", "pip", "npm"}
    assert set(ecosystems["pip"]["directories"]) == {"/", "/ml_server"}
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.dependabot",
            str(ROOT / ".github" / "dependabot.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_node_22_everywhere_and_cdk_json_runs_the_venv_python() -> None:
    for path in FILES:
        for match in re.findall(r'node-version: "(\d+)"', path.read_text(encoding="utf-8")):
            assert match == "22", path.name
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'if [ "$node_major" -lt 22 ]; then' in ci_run
    assert re.search(r"^NODE_VERSION=22\.\d+\.\d+$", ci_run, re.MULTILINE)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Node 22" in readme and "Node 20" not in readme
    cdk_json = json.loads((ROOT / "cdk.json").read_text(encoding="utf-8"))
    assert cdk_json["app"] == ".venv/bin/python app.py"


@pytest.mark.parametrize("env", ["dev", "staging", "production"])
def test_release_deploy_pulls_the_image_the_release_workflow_pushes(env: str) -> None:
    """The ghcr source's repository is where release.yml publishes: ghcr.io/<the repository
    owner, lower case>/humansa-ml-server (it was the placeholder owner/humansa-ml-server,
    an image no release ever pushed)."""
    from config import load_environment

    jobs = _load(WORKFLOWS / "release.yml")["jobs"]
    gate = _runs(jobs["gate"])
    pushed = re.search(r'image="ghcr\.io/\$\{OWNER,,\}/([a-z0-9._-]+)"', gate)
    assert pushed, "release.yml's gate no longer names the image as ghcr.io/${OWNER,,}/<name>"
    owner_step = next(s for s in jobs["gate"]["steps"] if "OWNER" in s.get("env", {}))
    assert owner_step["env"]["OWNER"] == "${{ github.repository_owner }}"
    config = load_environment(env)
    # The deploying repository (github.repository, trusted by the OIDC roles) is the one whose
    # release workflow pushed the image.
    owner = config.github.repository.split("/")[0]
    assert config.ghcr_repository == f"{owner.lower()}/{pushed.group(1)}"
