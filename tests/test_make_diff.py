"""`make diff` offline: a throwaway git repo diffed against its main branch with the real CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest

from tests.project_copy import copy_project

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_APP = ROOT / "tests" / "fixtures" / "diff" / "fixture_app.py"
SCRIPT = ROOT / "scripts" / "make-diff"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _write_app(repo: Path, *, db_identifier: str, code: str) -> None:
    (repo / "assets" / "lambda").mkdir(parents=True, exist_ok=True)
    (repo / "assets" / "image").mkdir(parents=True, exist_ok=True)
    (repo / "assets" / "lambda" / "index.py").write_text(code, encoding="utf-8")
    (repo / "assets" / "image" / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    cdk_json = {
        "app": f"{sys.executable} fixture_app.py",
        "context": {"asset_dir": "assets", "db_identifier": db_identifier},
    }
    (repo / "cdk.json").write_text(json.dumps(cdk_json), encoding="utf-8")


def _synth_head_in_process(repo: Path, outdir: Path, *, db_identifier: str) -> None:
    """Synthesize the working copy's fixture app in this process (jsii is already running), as
    `cdk synth` would, so make_diff gets it through --head-app and runs one CLI synth only
    (the base's, from its temporary worktree)."""
    spec = importlib.util.spec_from_file_location("fixture_app", repo / "fixture_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cli_context = {  # what the CDK CLI passes to an app it runs
        "aws:cdk:enable-path-metadata": True,
        "aws:cdk:enable-asset-metadata": True,
        "aws:cdk:version-reporting": True,
        "aws:cdk:bundling-stacks": ["**"],
    }
    app = cdk.App(outdir=str(outdir), context=cli_context)
    module.FixtureData(app, "Humansa-Dev-Data", db_identifier=db_identifier, with_bucket=True)
    module.FixtureService(
        app, "Humansa-Dev-Service", asset_dir=repo / "assets", extra_parameter=False
    )
    app.synth()


@pytest.mark.slow
def test_offline_diff_against_main_flags_the_replaced_database(tmp_path: Path) -> None:
    # GIVEN a repository whose main has one version of the app ...
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(FIXTURE_APP, repo / "fixture_app.py")
    _write_app(repo, db_identifier="humansa-dev", code="def handler(e, c):\n    return 1\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "base")
    # ... and a working copy that renames the database and changes the Lambda code
    _write_app(repo, db_identifier="humansa-dev-2", code="def handler(e, c):\n    return 2\n")

    head = tmp_path / "head"
    _synth_head_in_process(repo, head, db_identifier="humansa-dev-2")

    # WHEN make_diff runs with no AWS credentials reachable
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = subprocess.run(
        [str(SCRIPT), "--out", str(tmp_path / "out"), "--head-app", str(head)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    # THEN it chose the offline diff against main and wrote one diff per stack and the comment
    assert "no AWS access -> offline diff" in result.stdout
    # a synth of a minute or more shows what runs and how long it took (no silent minutes)
    assert "make_diff: synthesizing base main (about a minute)..." in result.stdout
    assert re.search(r"make_diff: base main synthesized in \d+ s", result.stdout)
    diffs = sorted(p.name for p in (tmp_path / "out" / "diffs").glob("*.diff"))
    assert diffs == ["Humansa-Dev-Data.diff", "Humansa-Dev-Service.diff"]
    comment = (tmp_path / "out" / "comment.md").read_text(encoding="utf-8")
    assert "compared with the templates synthesized from `main`" in comment
    assert "AWS::RDS::DBInstance `Database` would be **REPLACED**" in comment
    assert "change(s) only in asset hashes" in comment
    # and the cost change computed by humansa_ops/cost.py on both assemblies
    assert "#### Estimated monthly cost (USD)" in comment, comment
    before = json.loads((tmp_path / "out" / "cost-before.json").read_text())
    after = json.loads((tmp_path / "out" / "cost-after.json").read_text())
    assert set(before) == set(after) == {"Dev"}
    row = f"| Dev | {before['Dev']['total_usd']:,.2f} | {after['Dev']['total_usd']:,.2f} |"
    assert row in comment
    # and the temporary worktree of main is gone
    listed = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert len(listed.stdout.strip().splitlines()) == 1


def test_bad_environment_name_is_refused() -> None:
    result = subprocess.run([str(SCRIPT), "--env", "Prod uction"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--env / ENV: 'Prod uction' is not an environment name" in result.stderr


@pytest.mark.slow
def test_offline_diff_of_the_real_app_compares_each_stack_alone(tmp_path: Path) -> None:
    # GIVEN this project's own app (Network, and Data and Service that depend on it) on main ...
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_project(repo)
    # ... and a working copy that raises dev's fleet maximum (a Service change only)
    dev = repo / "config" / "dev.yaml"
    text = dev.read_text(encoding="utf-8")
    assert "  max_capacity: 2\n" in text
    dev.write_text(text.replace("  max_capacity: 2\n", "  max_capacity: 3\n"), encoding="utf-8")

    # WHEN `make diff ENV=dev` runs offline (the PR workflow's path: --mode offline --base-ref)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [
            str(repo / "scripts" / "make-diff"),
            *("--mode", "offline", "--base-ref", "main"),
            *("--env", "dev", "--out", str(tmp_path / "out")),
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    # THEN every stack is diffed on its own (no "Can only select one stack") and it exits 0
    assert result.returncode == 0, result.stdout + result.stderr
    diffs = {p.stem: p.read_text() for p in (tmp_path / "out" / "diffs").glob("*.diff")}
    assert set(diffs) == {"Humansa-Dev-Network", "Humansa-Dev-Data", "Humansa-Dev-Service"}
    assert "There were no differences" in diffs["Humansa-Dev-Network"]
    assert "There were no differences" in diffs["Humansa-Dev-Data"]
    assert "MaxSize" in diffs["Humansa-Dev-Service"]
    comment = (tmp_path / "out" / "comment.md").read_text(encoding="utf-8")
    assert "Humansa-Dev-Service" in comment
