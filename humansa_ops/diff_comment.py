#!/usr/bin/env python3
"""Turn `cdk diff` outputs into one Markdown pull-request comment.

Reads one or more files holding what the CDK CLI printed for `cdk diff` (one stack or several per
file; stdout and stderr together are fine), and prints a Markdown comment that

- starts with a hidden marker (``<!-- humansa-cdk-diff -->`` by default) so a workflow can find
  and update its previous comment instead of adding a new one;
- shows a loud CAUTION block when a stateful resource (database, secret, VPC, bucket, log group,
  table, key) would be replaced or destroyed, and a note when one would be orphaned (removed from
  the stack but retained);
- folds resources whose only differences are asset hashes (a new code bundle or image build:
  ``<sha256>.zip`` keys, ``asset.<sha256>`` paths, image URIs/tags that are asset hashes, legacy
  ``AssetParameters*`` parameters) into one line per stack;
- keeps every other change verbatim in a collapsible section per stack;
- optionally adds a monthly cost change section.

Cost hook: ``--cost-before FILE --cost-after FILE`` (or only ``--cost-after``) take JSON mapping an
environment name to either a number of US dollars per month, ``{"dev": 61.3}``, or an object with a
``total_usd`` number, as ``scripts/cost.py --json`` prints: ``{"dev": {"total_usd": 61.3, ...}}``.

Usage:
    python -m humansa_ops.diff_comment [--title TEXT] [--source TEXT] [--marker TEXT]
        [--cost-before FILE] [--cost-after FILE] DIFF_FILE [DIFF_FILE ...]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MARKER = "<!-- humansa-cdk-diff -->"

#: Resource types whose replacement or deletion loses data or breaks everything built on them.
STATEFUL_TYPES = frozenset(
    {
        "AWS::RDS::DBInstance",
        "AWS::RDS::DBCluster",
        "AWS::SecretsManager::Secret",
        "AWS::EC2::VPC",
        "AWS::S3::Bucket",
        "AWS::Logs::LogGroup",
        "AWS::DynamoDB::Table",
        "AWS::KMS::Key",
    }
)

#: GitHub refuses comment bodies above 65,536 characters; keep a margin for the marker and notes.
MAX_COMMENT_CHARS = 60_000

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STACK_HEADER = re.compile(r"^Stack (?P<name>\S+)")
_RESOURCE_HEADER = re.compile(
    r"^\[(?P<op>[-+~]|-/\+)\] (?P<type>[A-Za-z0-9]+::[A-Za-z0-9]+::[A-Za-z0-9:]+) "
    r"(?P<path>\S+) (?P<logical>\S+)(?: (?P<impact>.+?))?\s*$"
)
_ENTRY_HEADER = re.compile(r"^\[(?P<op>[-+~]|-/\+)\] (?P<rest>.+)$")
_LEAF = re.compile(r"\[(?P<op>[-+])\]\s?(?P<value>.*)$")
_ASSET_HASH = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
_NO_DIFF = "There were no differences"
_AMI = re.compile(r"ami-[0-9a-f]{8,17}")
_SECTION_TITLES = frozenset(
    {
        "Resources",
        "Parameters",
        "Outputs",
        "Conditions",
        "Mappings",
        "Metadata",
        "Rules",
        "Transform",
        "Description",
        "AWSTemplateFormatVersion",
        "Other Changes",
        "IAM Statement Changes",
        "IAM Policy Changes",
        "Security Group Changes",
    }
)


class DiffCommentError(Exception):
    """Bad input: a missing file or malformed cost JSON."""


@dataclass
class Entry:
    """One changed item in a stack: a resource, a parameter, an output, a table..."""

    section: str
    header: str
    body: list[str] = field(default_factory=list)
    op: str = ""
    resource_type: str = ""
    logical_id: str = ""
    path: str = ""
    impact: str = ""

    @property
    def text(self) -> str:
        return "\n".join([self.header, *self.body]).rstrip()

    def is_asset_only(self) -> bool:
        """True when every removed value equals an added one once asset hashes are masked."""
        if "AssetParameters" in self.header:
            return True
        if self.op != "~" or self.impact in {"replace", "destroy"}:
            return False
        removed: Counter[str] = Counter()
        added: Counter[str] = Counter()
        saw_hash = False
        for line in self.body:
            match = _LEAF.search(line)
            if not match:
                continue
            value = match.group("value").strip()
            saw_hash = saw_hash or bool(_ASSET_HASH.search(value))
            masked = _ASSET_HASH.sub("<asset-hash>", value)
            (removed if match.group("op") == "-" else added)[masked] += 1
        return saw_hash and bool(removed) and removed == added

    def ami_change(self) -> tuple[str, str] | None:
        """(old, new) AMI of a launch template or instance whose ImageId changes, else None."""
        if self.resource_type not in {"AWS::EC2::LaunchTemplate", "AWS::EC2::Instance"}:
            return None
        if not any("ImageId" in line for line in self.body):
            return None
        old = new = ""
        for line in self.body:
            match = _LEAF.search(line)
            if match and _AMI.fullmatch(match.group("value").strip()):
                if match.group("op") == "-":
                    old = match.group("value").strip()
                else:
                    new = match.group("value").strip()
        return (old, new) if new else None

    def stateful_risk(self) -> str | None:
        """How a stateful resource is at risk: 'replace', 'may be replaced', 'destroy', 'orphan'.

        None for any other resource type or when nothing risky happens to it.
        """
        if self.resource_type not in STATEFUL_TYPES:
            return None
        impact = self.impact.lower()
        if self.op in {"-", "-/+"}:
            if "orphan" in impact or "retain" in impact:
                return "orphan"
            return "replace" if self.op == "-/+" else "destroy"
        if "may be replaced" in impact:
            return "may be replaced"
        if "replace" in impact:
            return "replace"
        if "destroy" in impact:
            return "destroy"
        return None


@dataclass
class StackDiff:
    """The parsed diff of one stack."""

    name: str
    entries: list[Entry] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    no_differences: bool = False

    @property
    def has_changes(self) -> bool:
        return bool(self.entries or self.other_lines)


def parse_diff(text: str) -> list[StackDiff]:
    """Parse what `cdk diff` printed into one StackDiff per "Stack <name>" header."""
    stacks: list[StackDiff] = []
    current: StackDiff | None = None
    section = ""
    entry: Entry | None = None
    for raw in _ANSI.sub("", text).splitlines():
        line = raw.rstrip()
        header = _STACK_HEADER.match(line)
        if header:
            current = StackDiff(name=header.group("name"))
            stacks.append(current)
            section, entry = "", None
            continue
        if current is None:
            continue  # synth warnings and notices printed before the first stack
        if line.startswith("✨") or line.startswith("Number of stacks with differences"):
            entry = None
            continue
        if line == _NO_DIFF:
            current.no_differences = True
            continue
        if line in _SECTION_TITLES:
            section, entry = line, None
            continue
        if not line.strip():
            entry = None
            continue
        resource = _RESOURCE_HEADER.match(line)
        if resource:
            entry = Entry(
                section=section or "Resources",
                header=line,
                op=resource.group("op"),
                resource_type=resource.group("type"),
                path=resource.group("path"),
                logical_id=resource.group("logical"),
                impact=(resource.group("impact") or "").strip(),
            )
            current.entries.append(entry)
            continue
        other = _ENTRY_HEADER.match(line)
        if other:
            entry = Entry(section=section, header=line, op=other.group("op"))
            current.entries.append(entry)
            continue
        if entry is not None and (line.startswith(" ") or line.startswith("\t")):
            entry.body.append(line)
            continue
        entry = None
        current.other_lines.append(line)  # tables (IAM, security groups) and anything unknown
    return stacks


def merge_stacks(diffs: list[StackDiff]) -> list[StackDiff]:
    """Keep one diff per stack name (the first seen), preserving order."""
    seen: dict[str, StackDiff] = {}
    for diff in diffs:
        if diff.name not in seen:
            seen[diff.name] = diff
    return list(seen.values())


def load_costs(path: Path | None) -> dict[str, float]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DiffCommentError(f"cannot read the cost file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise DiffCommentError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise DiffCommentError(f"{path}: expected an object mapping environment -> monthly USD")
    costs: dict[str, float] = {}
    for env, value in data.items():
        if isinstance(value, dict):
            value = value.get("total_usd")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DiffCommentError(
                f"{path}: environment {env!r} needs a number of USD per month, "
                'or an object with a numeric "total_usd"'
            )
        costs[str(env)] = float(value)
    return costs


def _cost_section(before: dict[str, float], after: dict[str, float]) -> list[str]:
    if not before and not after:
        return []
    lines = ["#### Estimated monthly cost (USD)", ""]
    if before:
        lines += ["| Environment | Before | After | Change |", "|---|---:|---:|---:|"]
        for env in sorted(set(before) | set(after)):
            old, new = before.get(env), after.get(env)
            old_s = f"{old:,.2f}" if old is not None else "—"
            new_s = f"{new:,.2f}" if new is not None else "—"
            change = f"{new - old:+,.2f}" if old is not None and new is not None else "—"
            lines.append(f"| {env} | {old_s} | {new_s} | {change} |")
    else:
        lines += ["| Environment | Estimate |", "|---|---:|"]
        lines += [f"| {env} | {after[env]:,.2f} |" for env in sorted(after)]
    lines += ["", "_An estimate from list prices, not a bill._", ""]
    return lines


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


_RISK_WORDS = {
    "replace": "would be **REPLACED** (new physical resource, data not carried over)",
    "may be replaced": "**may be REPLACED** (depends on the deployed values)",
    "destroy": "would be **DESTROYED**",
}


def render(
    stacks: list[StackDiff],
    *,
    title: str = "CDK diff",
    source: str = "",
    marker: str = DEFAULT_MARKER,
    cost_before: dict[str, float] | None = None,
    cost_after: dict[str, float] | None = None,
) -> str:
    """Render the comment body."""
    lines = [marker, f"### {title}", ""]
    if source:
        lines += [f"_{source}_", ""]

    risks = [(s.name, e, r) for s in stacks for e in s.entries if (r := e.stateful_risk())]
    loud = [(name, e, r) for name, e, r in risks if r != "orphan"]
    orphans = [(name, e) for name, e, r in risks if r == "orphan"]
    if loud:
        lines += [
            "> [!CAUTION]",
            "> **WARNING: stateful resources would be replaced or destroyed.** "
            "Data may be lost; check the backup and migration plan before merging.",
        ]
        for name, e, risk in loud:
            lines.append(f"> - WARNING `{name}`: {e.resource_type} `{e.path}` {_RISK_WORDS[risk]}")
        lines.append("")
    if orphans:
        lines.append("> [!NOTE]")
        lines.append("> Removed from the stack but retained in the account (orphaned):")
        lines += [f"> - `{name}`: {e.resource_type} `{e.path}`" for name, e in orphans]
        lines.append("")

    amis = [(s.name, e, c) for s in stacks for e in s.entries if (c := e.ami_change())]
    if amis:
        lines.append("> [!IMPORTANT]")
        lines.append("> **New AMI (config/amis.json): the deploy replaces instances.**")
        for name, e, (old, new) in amis:
            what = (
                "fleet refresh: every instance is replaced (instance refresh)"
                if e.resource_type == "AWS::EC2::LaunchTemplate"
                else "instance replaced (the dev NAT instance: egress pauses while it boots)"
            )
            lines.append(f"> - `{name}`: `{e.path}` {old or '?'} → {new}: {what}")
        lines.append("")
    if not stacks:
        lines += ["No `cdk diff` output was found.", ""]
    changed = [s for s in stacks if s.has_changes]
    unchanged = [s.name for s in stacks if not s.has_changes]
    if stacks and not changed:
        lines += [f"No differences in {len(stacks)} stack(s).", ""]

    details: list[list[str]] = []
    if changed:
        lines += [
            "| Stack | Changes | Asset-only (folded) | Stateful risk |",
            "|---|---:|---:|---|",
        ]
    for stack in changed:
        folded = [e for e in stack.entries if e.is_asset_only()]
        shown = [e for e in stack.entries if not e.is_asset_only()]
        stack_risks = sorted({r for name, _, r in risks if name == stack.name})
        lines.append(
            f"| `{stack.name}` | {len(shown)} | {len(folded)} | "
            f"{', '.join(stack_risks) if stack_risks else '—'} |"
        )
        block = [f"#### `{stack.name}`", ""]
        if folded:
            names = ", ".join(
                f"`{e.path or e.header}`" + (f" ({e.resource_type})" if e.resource_type else "")
                for e in folded
            )
            block += [
                f"📦 {len(folded)} change(s) only in asset hashes (new code or image build), "
                f"folded: {names}.",
                "",
            ]
        body = "\n\n".join(e.text for e in shown)
        if stack.other_lines:
            body = "\n".join([body, "", *stack.other_lines]).strip()
        if body:
            block += [
                f"<details><summary>{len(shown)} other change(s)</summary>",
                "",
                _fence(body),
                "",
                "</details>",
                "",
            ]
        details.append(block)
    if changed:
        lines.append("")
    if changed and unchanged:
        lines += [f"No differences: {', '.join(f'`{n}`' for n in unchanged)}.", ""]

    lines += _cost_section(cost_before or {}, cost_after or {})

    budget = MAX_COMMENT_CHARS - sum(len(line) + 1 for line in lines)
    for block in details:
        text = "\n".join(block)
        if len(text) + 1 > budget:
            lines += [
                block[0],
                "",
                "_Details cut: the comment is too long. Run `make diff` locally or see the "
                "workflow log._",
                "",
            ]
            budget -= len(block[0]) + 100
            continue
        lines += block
        budget -= len(text) + 1
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("diff_files", nargs="+", type=Path, help="files holding `cdk diff` output")
    parser.add_argument("--title", default="CDK diff", help="heading of the comment")
    parser.add_argument("--source", default="", help="one line saying what was compared")
    parser.add_argument("--marker", default=DEFAULT_MARKER, help="hidden marker (HTML comment)")
    parser.add_argument("--cost-before", type=Path, help="JSON: environment -> monthly USD")
    parser.add_argument("--cost-after", type=Path, help="JSON: environment -> monthly USD")
    args = parser.parse_args(argv)
    if not (args.marker.startswith("<!--") and args.marker.endswith("-->")):
        parser.error("--marker must be an HTML comment such as '<!-- humansa-cdk-diff -->'")
    try:
        stacks: list[StackDiff] = []
        for path in args.diff_files:
            try:
                stacks += parse_diff(path.read_text(encoding="utf-8", errors="replace"))
            except OSError as exc:
                raise DiffCommentError(f"cannot read diff file {path}: {exc.strerror}") from exc
        body = render(
            merge_stacks(stacks),
            title=args.title,
            source=args.source,
            marker=args.marker,
            cost_before=load_costs(args.cost_before),
            cost_after=load_costs(args.cost_after),
        )
    except DiffCommentError as exc:
        print(f"diff_comment: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
