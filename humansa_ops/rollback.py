"""`make rollback ENV=<name> TO=<version>`: deploy exactly what release ``<version>`` deployed.

A release is the tag ``release-<version>``: its commit (app, config, server sources) and its
image (``-c image_tag=<version>``). Rolling back checks that commit out in a temporary
``git worktree`` and runs, there, the same command the release workflow ran: ``make
release-deploy ENV=<name> VERSION=<version>`` (the GHCR image of that release under its
immutable version tag), or, for a release made before that target existed, ``make deploy
ENV=<name> CDK_ARGS="-c image_tag=<version>"``. So the templates are the old release's, not
today's templates with an old tag (which, with ``image.source: asset``, would only rewrite the
``ml_server_image_tag`` parameter and keep today's image).

``--synth-only DIR`` writes the old release's cloud assembly to DIR instead of deploying.

Usage:
    python -m humansa_ops.rollback --env NAME --to VERSION [--synth-only DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from config import naming
from humansa_ops.make_diff import (
    TOOLS_ROOT,
    MakeDiffError,
    _cdk,
    _run,
    _tool_env,
    link_shared_tools,
)

# Linked from this clone into the release's checkout, already installed. The release's `make
# deploy` must not rebuild them: its checkout's files are newer than the links' .installed
# markers, and `npm ci` would empty this clone's node_modules through the link. So the files
# the Makefile's install rules depend on get an old timestamp in the (temporary) checkout.
PINS = (
    "requirements.txt",
    "requirements-dev.txt",
    "ml_server/requirements.txt",
    "package.json",
    "package-lock.json",
    "components/db_bootstrap_handler/requirements.txt",
)
INSTALL_INPUTS = (*PINS, "ml_server/certs/rds-ca-bundle.pem")

VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
TAG_PREFIX = "release-"


def has_release_deploy(checkout: Path) -> bool:
    """True when the checkout's Makefile has ``release-deploy`` (what its release.yml ran)."""
    makefile = checkout / "Makefile"
    return makefile.is_file() and "\nrelease-deploy:" in makefile.read_text(encoding="utf-8")


def release_context(checkout: Path, environment: str, version: str) -> list[str]:
    """The CDK context the release in ``checkout`` deployed with: ``make release-deploy``
    (GHCR image, version tag), or before that target existed ``-c image_tag=<version>``."""
    context = ["-c", f"env={environment}"]
    if has_release_deploy(checkout):
        context += ["-c", "image_source=ghcr"]
    return [*context, "-c", f"image_tag={version}"]


def deploy_command(checkout: Path, environment: str, version: str) -> list[str]:
    """The command the release in ``checkout`` ran to deploy ``environment``."""
    if has_release_deploy(checkout):
        return ["make", "release-deploy", f"ENV={environment}", f"VERSION={version}"]
    return ["make", "deploy", f"ENV={environment}", f"CDK_ARGS=-c image_tag={version}"]


def release_commit(repo: Path, version: str, env: dict[str, str]) -> str:
    tag = f"{TAG_PREFIX}{version}"
    probe = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise MakeDiffError(f"no tag {tag} in this clone (git fetch --tags, or check TO=)")
    return probe.stdout.strip()


def link_tools(checkout: Path, version: str) -> list[str]:
    """Link this clone's installed tools into the release's ``checkout`` (those it lacks) and
    date the install rules' inputs there so that its ``make`` keeps them; the linked names."""
    linked = link_shared_tools(checkout)
    changed = [
        pin
        for pin in PINS
        if (TOOLS_ROOT / pin).is_file()
        and (checkout / pin).is_file()
        and (TOOLS_ROOT / pin).read_bytes() != (checkout / pin).read_bytes()
    ]
    if linked:
        for name in INSTALL_INPUTS:
            if (checkout / name).is_file():
                os.utime(checkout / name, (0, 0))
    if changed:
        print(
            f"rollback: note: release {version} pins other tool versions "
            f"({', '.join(changed)}); it runs with this clone's installed ones",
            flush=True,
        )
    return linked


def rollback(repo: Path, environment: str, version: str, *, synth_only: Path | None = None) -> int:
    env = _tool_env()
    commit = release_commit(repo, version, env)
    print(f"rollback: {environment} -> release {version} (commit {commit[:12]})", flush=True)
    with tempfile.TemporaryDirectory(prefix="humansa-rollback-") as tmp:
        checkout = Path(tmp) / "release"
        _run(
            ["git", "worktree", "add", "--detach", "--quiet", str(checkout), commit],
            cwd=repo,
            env=env,
        )
        try:
            link_tools(checkout, version)
            if not (checkout / "config" / f"{environment}.yaml").is_file():
                raise MakeDiffError(
                    f"release {version} has no config/{environment}.yaml: it never deployed "
                    f"{environment}"
                )
            if synth_only is not None:
                out = synth_only.resolve()
                cmd = [_cdk(), "synth", "-q", "--no-notices", "--output", str(out)]
                result = subprocess.run(
                    [*cmd, *release_context(checkout, environment, version)], cwd=checkout, env=env
                )
                if result.returncode != 0 and not (out / "manifest.json").exists():
                    return result.returncode
                print(f"rollback: release {version}'s assembly for {environment} is in {out}")
                return 0
            cmd = deploy_command(checkout, environment, version)
            for setting in ("APPROVAL", "DEPLOY_METHOD"):  # as given to `make rollback`
                if os.environ.get(setting):
                    cmd.append(f"{setting}={os.environ[setting]}")
            print(f"rollback: in release {version}'s sources: {' '.join(cmd)}", flush=True)
            return subprocess.run(cmd, cwd=checkout, env=env).returncode
        finally:
            _run(["git", "worktree", "remove", "--force", str(checkout)], cwd=repo, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="deploy what release <version> deployed")
    parser.add_argument("--env", required=True, help="environment (config/<name>.yaml)")
    parser.add_argument("--to", required=True, help="release version (tag release-<version>)")
    parser.add_argument("--synth-only", type=Path, metavar="DIR", help="write the assembly only")
    args = parser.parse_args(argv)
    if not naming.is_env_name(args.env):
        print(f"make rollback: ENV={args.env!r} is not an environment name", file=sys.stderr)
        return 2
    version = args.to.removeprefix(TAG_PREFIX)
    if not VERSION.match(version):
        print(
            f"make rollback: TO={args.to!r} is not a release version (e.g. 1.2.3)", file=sys.stderr
        )
        return 2
    try:
        repo = Path(
            _run(["git", "rev-parse", "--show-toplevel"], cwd=Path.cwd(), env=_tool_env()).strip()
        )
        return rollback(repo, args.env, version, synth_only=args.synth_only)
    except MakeDiffError as exc:
        print(f"make rollback: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
