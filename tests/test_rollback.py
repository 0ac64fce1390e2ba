"""`make rollback ENV=… TO=<version>` deploys what the release deployed: its commit's templates
and its image tag, compared here with a synth of the old release's own checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from humansa_ops.make_diff import SHARED_TOOLS
from humansa_ops.rollback import link_tools
from tests.project_copy import ROOT, commit, copy_project, git

CDK = ROOT / "node_modules" / ".bin" / "cdk"


def _templates(assembly: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(assembly.glob("*.template.json"))}


def _asg_max(templates: dict[str, Any]) -> str:
    resources = templates["Humansa-Dev-Service.template.json"]["Resources"]
    (group,) = [r for r in resources.values() if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"]
    return str(group["Properties"]["MaxSize"])


@pytest.mark.slow
def test_rollback_synthesizes_exactly_the_old_release(tmp_path: Path) -> None:
    # GIVEN release 1.0.0 tagged on main, and a later commit that changes the Service stack
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_project(repo)
    git(repo, "tag", "release-1.0.0")
    dev = repo / "config" / "dev.yaml"
    dev.write_text(
        dev.read_text().replace("  max_capacity: 2\n", "  max_capacity: 3\n"), encoding="utf-8"
    )
    commit(repo, "later")
    env = {
        **os.environ,
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }

    # WHEN make rollback ENV=dev TO=1.0.0 synthesizes (instead of deploying)
    rolled = tmp_path / "rolled"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "humansa_ops.rollback",
            "--env",
            "dev",
            "--to",
            "1.0.0",
            "--synth-only",
            str(rolled),
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rollback: dev -> release 1.0.0 (commit " in done.stdout

    # THEN its templates equal those the release deployed: the tag's own checkout, synthesized
    # with the release's context (make release-deploy: -c image_source=ghcr -c image_tag=1.0.0)
    old = tmp_path / "old"
    git(repo, "worktree", "add", "--detach", "--quiet", str(old), "release-1.0.0")
    for shared in (".venv", "node_modules"):
        (old / shared).symlink_to((ROOT / shared).resolve(), target_is_directory=True)
    released = tmp_path / "released"
    subprocess.run(
        [
            str(CDK),
            "synth",
            "-q",
            "--no-notices",
            "--output",
            str(released),
            "-c",
            "env=dev",
            "-c",
            "image_tag=1.0.0",
            "-c",
            "image_source=ghcr",
        ],
        cwd=old,
        env=env,
        capture_output=True,
        timeout=600,
    )
    expected = _templates(released)
    assert set(expected) == {
        f"Humansa-Dev-{k}.template.json" for k in ("Network", "Data", "Service")
    }
    assert _templates(rolled) == expected
    # and they are not today's: main's head has max_capacity 3, the release 2
    assert _asg_max(expected) == "2"
    outputs = expected["Humansa-Dev-Service.template.json"]["Outputs"]
    assert outputs["ImageTag"]["Value"] == "1.0.0"
    assert outputs["ImageSource"]["Value"] == "ghcr"  # the image the release built and tested
    assert ":1.0.0" in json.dumps(outputs["ImageUri"]["Value"])
    # and the temporary worktree is gone (only the main one and the test's own remain)
    assert len(git(repo, "worktree", "list").strip().splitlines()) == 2


def test_an_unknown_release_fails_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "humansa_ops.rollback", "--env", "dev", "--to", "0.0.0-none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "make rollback: no tag release-0.0.0-none in this clone (git fetch --tags, or check TO=)\n"
    )


def test_a_bad_version_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "humansa_ops.rollback", "--env", "dev", "--to", "../x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "TO='../x' is not a release version" in done.stderr


def test_the_release_checkout_keeps_the_linked_tools(tmp_path: Path) -> None:
    # GIVEN a release's fresh checkout: its files are newer than the tools' .installed markers
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_project(repo)
    checkout = tmp_path / "release"
    git(repo, "worktree", "add", "--detach", "--quiet", str(checkout), "HEAD")

    # WHEN make rollback links this clone's installed tools into it
    linked = link_tools(checkout, "1.0.0")

    # THEN the release's make deploy uses them as they are: `npm ci` there would empty the
    # linked node_modules (this clone's), `pip install` rewrite the linked venv
    assert {".venv", "node_modules"} <= set(linked) <= set(SHARED_TOOLS)
    done = subprocess.run(
        ["make", "-n", "release-deploy", "ENV=dev", "VERSION=1.0.0"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cdk deploy --all" in done.stdout
    assert "npm ci" not in done.stdout
    assert "pip install" not in done.stdout
