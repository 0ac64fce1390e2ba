"""checkov acknowledgments (``checkov-acks.yaml``) written into the resources' Metadata.

checkov reads ``Metadata.checkov.skip: [{id, comment}]`` on a CloudFormation resource and reports
the check as skipped with that comment. The acknowledgments live in one committed file, each
with its reason and the construct paths it applies to; an aspect on the app copies them onto
the matching resources at synth, so ``checkov -d cdk.out`` shows them as skipped, and a new
resource that fails a check is a failure.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import jsii
import yaml
from aws_cdk import CfnResource, IAspect
from constructs import IConstruct

ACKS_FILE = Path(__file__).resolve().parent.parent / "checkov-acks.yaml"


@dataclass(frozen=True)
class CheckovAck:
    """One acknowledged checkov check on the resources whose construct path matches a glob."""

    check_id: str
    paths: tuple[str, ...]
    reason: str

    def matches(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.paths)


def load_acks(path: Path = ACKS_FILE) -> list[CheckovAck]:
    """The acknowledgments of ``path``; raise ValueError naming the entry that is malformed."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    if not isinstance(data, list):
        raise ValueError(f"{path.name}: expected a list of {{id, paths, reason}} entries")
    acks: list[CheckovAck] = []
    for index, entry in enumerate(data):
        where = f"{path.name}: entry {index + 1}"
        if not isinstance(entry, dict) or set(entry) != {"id", "paths", "reason"}:
            raise ValueError(f"{where}: needs exactly the keys id, paths, reason")
        check_id, paths, reason = entry["id"], entry["paths"], entry["reason"]
        if not isinstance(check_id, str) or not check_id.startswith("CKV"):
            raise ValueError(f"{where}: id {check_id!r} is not a checkov check ID (CKV_...)")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise ValueError(f"{where} ({check_id}): paths must be a non-empty list of globs")
        if not isinstance(reason, str) or len(reason.split()) < 8:
            raise ValueError(f"{where} ({check_id}): reason must say why (8 words or more)")
        acks.append(CheckovAck(check_id, tuple(paths), " ".join(reason.split())))
    return acks


@jsii.implements(IAspect)
class CheckovAcknowledgments:
    """Aspect: add each matching acknowledgment to a resource's ``Metadata.checkov.skip``.

    Args:
        acks: The acknowledgments. Default: ``checkov-acks.yaml``.
    """

    def __init__(self, acks: list[CheckovAck] | None = None) -> None:
        self.acks = load_acks() if acks is None else acks

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, CfnResource):
            return
        path = node.node.path
        skips = [{"id": a.check_id, "comment": a.reason} for a in self.acks if a.matches(path)]
        if skips:
            node.add_metadata("checkov", {"skip": skips})
