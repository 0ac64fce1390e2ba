#!/usr/bin/env python3
"""`make diff`: what a deployment would change, against AWS or against the templates of main.

Modes (``--mode``, default ``auto``):

- ``aws``: ``cdk diff --method=template`` against the deployed stacks. Needs credentials that can
  assume the CDK lookup role (the pull-request diff role can); it never creates a change set.
- ``offline``: synthesizes this checkout into ``OUT/head`` and the base ref (default
  ``origin/main``, else ``main``) into ``OUT/base`` from a temporary ``git worktree``, then runs
  ``cdk diff --app OUT/head --template OUT/base/<stack>.template.json <stack>`` for every stack.
  No AWS call at all. A stack new in this checkout is diffed against an empty template.
- ``auto``: ``aws`` when ``aws sts get-caller-identity`` succeeds, otherwise ``offline``.

Each stack's (or environment's) diff is saved in ``OUT/diffs/``, echoed to the terminal, and
summarized by ``humansa_ops.diff_comment`` into ``OUT/comment.md`` (the pull-request comment).

The comment includes the estimated monthly cost per environment before and after
(``humansa_ops.cost --json`` on the base and head assemblies, saved as ``OUT/cost-before.json`` and
``OUT/cost-after.json``). In ``aws`` mode the "before" side needs a base to synthesize: pass
``--base-ref``. ``--cost-before`` / ``--cost-after`` use given files instead; ``--no-cost``
skips it.
A cost estimate that fails (e.g. a resource without a price) becomes a note, never a failed diff.

Environment: ``CDK_CLI`` overrides the CDK CLI path (default ``node_modules/.bin/cdk``).

Usage:
    python -m humansa_ops.make_diff [--env NAME ...] [--mode auto|aws|offline] [--base-ref REF]
        [--out DIR] [--head-app DIR] [--cost-before FILE] [--cost-after FILE] [--no-cost]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from config import naming
from humansa_ops import cost
from humansa_ops.diff_comment import (
    DEFAULT_MARKER,
    DiffCommentError,
    StackDiff,
    load_costs,
    merge_stacks,
    parse_diff,
    render,
)

TOOLS_ROOT = Path(__file__).resolve().parent.parent
# What `make install` puts in a clone and git does not hold: the venv, the CDK CLI and the
# Lambda asset's vendored packages.
SHARED_TOOLS = (".venv", "node_modules", "components/db_bootstrap_handler/vendor")


def link_shared_tools(checkout: Path) -> list[str]:
    """Link this clone's installed tools (``SHARED_TOOLS``) into ``checkout`` where it lacks
    them; the linked names."""
    linked = []
    for shared in SHARED_TOOLS:
        source = TOOLS_ROOT / shared
        target = checkout / shared
        if source.exists() and not target.exists() and target.parent.is_dir():
            target.symlink_to(source.resolve(), target_is_directory=True)
            linked.append(shared)
    return linked


class MakeDiffError(Exception):
    """A step failed; the message says which and what to do."""


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], capture: bool = True) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if result.returncode != 0 and capture:
        raise MakeDiffError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}) in {cwd}:\n{result.stdout}"
        )
    return result.stdout


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CDK_DISABLE_CLI_TELEMETRY"] = "true"
    env["JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"] = "20"
    venv_bin = TOOLS_ROOT / ".venv" / "bin"
    if venv_bin.is_dir():
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    return env


def _cdk() -> str:
    """The pinned CDK CLI of this checkout (``CDK_CLI`` overrides the path)."""
    cdk = Path(os.environ.get("CDK_CLI") or TOOLS_ROOT / "node_modules" / ".bin" / "cdk")
    if not cdk.exists():
        raise MakeDiffError(f"the pinned CDK CLI is missing ({cdk}); run `make install`")
    return str(cdk)


def _context_args(envs: list[str]) -> list[str]:
    return ["-c", f"env={envs[0]}"] if len(envs) == 1 else []


def aws_credentials_work(env: dict[str, str]) -> bool:
    """True when `aws sts get-caller-identity` succeeds (within 20 s)."""
    aws = shutil.which("aws", path=env.get("PATH"))
    if aws is None:
        return False
    try:
        result = subprocess.run(
            [aws, "sts", "get-caller-identity", "--output", "json"],
            env=env,
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def stacks_in(assembly: Path) -> dict[str, str]:
    """Map stack artifact ID -> template file name, from a cloud assembly's manifest.json."""
    manifest = json.loads((assembly / "manifest.json").read_text(encoding="utf-8"))
    return {
        name: artifact["properties"]["templateFile"]
        for name, artifact in manifest.get("artifacts", {}).items()
        if artifact.get("type") == "aws:cloudformation:stack"
    }


def synth(repo: Path, outdir: Path, envs: list[str], env: dict[str, str], *, label: str) -> None:
    """Synthesize ``repo`` into ``outdir``; accept a cdk-nag failure once templates exist."""
    cmd = [_cdk(), "synth", "-q", "--no-notices", "--output", str(outdir), *_context_args(envs)]
    # A synth takes about a minute (more on a busy machine): say what is running, then how long.
    print(f"make_diff: synthesizing {label} (about a minute)...", flush=True)
    started = time.monotonic()
    result = subprocess.run(
        cmd, cwd=repo, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    print(f"make_diff: {label} synthesized in {time.monotonic() - started:.0f} s", flush=True)
    if result.returncode != 0:
        if (outdir / "manifest.json").exists() and stacks_in(outdir):
            print(f"make_diff: {label} synth reported findings; diffing its templates anyway")
            return
        raise MakeDiffError(f"synth of {label} failed (exit {result.returncode}):\n{result.stdout}")


def assembly_cost(
    assembly: Path, envs: list[str], out_file: Path, env: dict[str, str]
) -> tuple[dict[str, float], str | None]:
    """Monthly cost per environment of ``assembly`` (``humansa_ops.cost --json``), saved to
    ``out_file``; returns the costs of ``envs`` (all when empty) and a note when it failed."""
    try:
        estimates = cost.estimate(assembly, cost.PriceTable(cost.DEFAULT_PRICES))
    except cost.CostError as exc:
        return {}, f"No cost estimate for {out_file.stem.removeprefix('cost-')}: {exc}"
    document = {name: est.as_dict() for name, est in estimates.items()}
    out_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    costs = load_costs(out_file)
    wanted = {e.lower() for e in envs}
    return {name: usd for name, usd in costs.items() if not wanted or name.lower() in wanted}, None


def default_base_ref(repo: Path, env: dict[str, str]) -> str:
    for ref in ("origin/main", "main"):
        probe = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            cwd=repo,
            env=env,
            capture_output=True,
        )
        if probe.returncode == 0:
            return ref
    raise MakeDiffError("no base ref: neither origin/main nor main exists; pass --base-ref")


def synth_base(
    repo: Path, ref: str, outdir: Path, envs: list[str], env: dict[str, str]
) -> list[str]:
    """Synthesize ``ref`` from a temporary worktree into ``outdir``; return comment notes."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="humansa-diff-base-") as tmp:
        checkout = Path(tmp) / "base"
        _run(
            ["git", "worktree", "add", "--detach", "--quiet", str(checkout), ref], cwd=repo, env=env
        )
        try:
            link_shared_tools(checkout)
            if not (checkout / "cdk.json").exists():
                notes.append(f"The base `{ref}` has no CDK app: every stack is new.")
                outdir.mkdir(parents=True, exist_ok=True)
                (outdir / "manifest.json").write_text('{"artifacts": {}}', encoding="utf-8")
            else:
                synth(checkout, outdir, envs, env, label=f"base {ref}")
        finally:
            _run(["git", "worktree", "remove", "--force", str(checkout)], cwd=repo, env=env)
    return notes


def diff_offline(
    repo: Path, head: Path, base: Path, diffs: Path, env: dict[str, str]
) -> tuple[list[Path], list[str]]:
    """Diff every head stack against its base template; return the files and notes."""
    head_stacks, base_stacks = stacks_in(head), stacks_in(base)
    empty = diffs / "empty.template.json"
    empty.write_text("{}", encoding="utf-8")
    files: list[Path] = []
    for name in sorted(head_stacks):
        old = base / base_stacks[name] if name in base_stacks else empty
        out = _run(
            # --exclusively: Data and Service depend on Network, and `--template` compares one
            # stack only (without it the CLI adds the dependencies and refuses).
            [
                _cdk(),
                "diff",
                "--no-notices",
                "--exclusively",
                "--app",
                str(head),
                "--template",
                str(old),
                name,
            ],
            cwd=repo,
            env=env,
        )
        path = diffs / f"{name}.diff"
        path.write_text(out, encoding="utf-8")
        print(out, end="")
        files.append(path)
    notes = [
        f"Stack `{name}` is in the base but no longer synthesized: it would NOT be deleted by "
        "`cdk deploy`; delete it by hand if intended."
        for name in sorted(set(base_stacks) - set(head_stacks))
    ]
    return files, notes


def diff_aws(repo: Path, envs: list[str], diffs: Path, env: dict[str, str]) -> list[Path]:
    """`cdk diff --method=template` per environment against the deployed stacks."""
    files: list[Path] = []
    for selection in [[e] for e in envs] or [[]]:
        cmd = [_cdk(), "diff", "--no-notices", "--method=template", *_context_args(selection)]
        out = _run(cmd, cwd=repo, env=env)
        path = diffs / f"{selection[0] if selection else 'all'}.diff"
        path.write_text(out, encoding="utf-8")
        print(out, end="")
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cdk diff against AWS or against main")
    parser.add_argument(
        "--env", action="append", default=[], help="environment (repeatable; default all)"
    )
    parser.add_argument("--mode", choices=["auto", "aws", "offline"], default="auto")
    parser.add_argument("--base-ref", help="offline base (default origin/main, else main)")
    parser.add_argument("--out", type=Path, default=Path("cdk.out.diff"), help="work folder")
    parser.add_argument("--head-app", type=Path, help="reuse this synthesized cloud assembly")
    parser.add_argument("--cost-before", type=Path, help="JSON: environment -> monthly USD")
    parser.add_argument("--cost-after", type=Path, help="JSON: environment -> monthly USD")
    parser.add_argument("--no-cost", action="store_true", help="leave the cost change out")
    args = parser.parse_args(argv)
    envs = [e for e in args.env if e]
    for name in envs:
        if not naming.is_env_name(name):
            parser.error(f"--env / ENV: {name!r} is not an environment name (e.g. dev, production)")

    env = _tool_env()
    try:
        repo = Path(_run(["git", "rev-parse", "--show-toplevel"], cwd=Path.cwd(), env=env).strip())
        mode = args.mode
        if mode == "auto":
            mode = "aws" if aws_credentials_work(env) else "offline"
            print(
                f"make_diff: {'AWS credentials found' if mode == 'aws' else 'no AWS access'}"
                f" -> {mode} diff"
            )
        out = args.out if args.out.is_absolute() else repo / args.out
        if out.exists():
            shutil.rmtree(out)
        diffs = out / "diffs"
        diffs.mkdir(parents=True)
        notes: list[str] = []
        head_assembly: Path | None = None
        base_assembly: Path | None = None
        if mode == "aws":
            files = diff_aws(repo, envs, diffs, env)
            source = "Compared with the deployed stacks (cdk diff --method=template, read-only)."
            if not args.no_cost and args.base_ref:
                head_assembly = out / "head"
                synth(repo, head_assembly, envs, env, label="this checkout")
                base_assembly = out / "base"
                notes += synth_base(repo, args.base_ref, base_assembly, envs, env)
        else:
            head = args.head_app.resolve() if args.head_app else out / "head"
            if not args.head_app:
                synth(repo, head, envs, env, label="this checkout")
            base_ref = args.base_ref or default_base_ref(repo, env)
            sha = _run(["git", "rev-parse", "--short", f"{base_ref}^{{commit}}"], cwd=repo, env=env)
            notes += synth_base(repo, base_ref, out / "base", envs, env)
            files, more = diff_offline(repo, head, out / "base", diffs, env)
            notes += more
            head_assembly, base_assembly = head, out / "base"
            source = (
                f"No AWS access: compared with the templates synthesized from `{base_ref}` "
                f"({sha.strip()}), not with what is deployed."
            )
        stacks: list[StackDiff] = []
        for path in files:
            stacks += parse_diff(path.read_text(encoding="utf-8"))
        cost_before, cost_after = load_costs(args.cost_before), load_costs(args.cost_after)
        if not args.no_cost:
            for label, assembly, given in (
                ("before", base_assembly, args.cost_before),
                ("after", head_assembly, args.cost_after),
            ):
                if given is not None or assembly is None:
                    continue
                if not (assembly / "manifest.json").exists() or not stacks_in(assembly):
                    continue  # a base without a CDK app: no "before" figure
                costs, note = assembly_cost(assembly, envs, out / f"cost-{label}.json", env)
                if note:
                    notes.append(note)
                elif label == "before":
                    cost_before = costs
                else:
                    cost_after = costs
        env_label = ", ".join(envs) if envs else "all environments"
        body = render(
            merge_stacks(stacks),
            title=f"CDK diff ({env_label})",
            source=" ".join([source, *notes]),
            marker=DEFAULT_MARKER,
            cost_before=cost_before,
            cost_after=cost_after,
        )
        (out / "comment.md").write_text(body, encoding="utf-8")
    except (MakeDiffError, DiffCommentError) as exc:
        print(f"make_diff: {exc}", file=sys.stderr)
        return 1
    print(f"make_diff: summary written to {out / 'comment.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
