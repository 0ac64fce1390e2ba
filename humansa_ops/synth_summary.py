#!/usr/bin/env python3
"""Print, per synthesized stack, its resource count and cdk-nag acknowledgments/findings.

Usage: ``python -m humansa_ops.synth_summary cdk.out``. Reads only the cloud assembly (manifest,
templates, ``<stack>.metadata.json`` and ``validation-report.json``); exits 1 when the
validation report lists any finding.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ACK_TYPE = "aws:cdk:acknowledged-rules"


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _stack_metadata(outdir: Path, name: str, artifact: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = dict(artifact.get("metadata", {}))
    extra = outdir / f"{name}.metadata.json"
    if extra.exists():
        metadata.update(_load(extra))
    return metadata


def acknowledgments(metadata: dict[str, Any]) -> list[str]:
    """cdk-nag rule ids acknowledged anywhere in one stack (one entry per construct and rule)."""
    rules: list[str] = []
    for entries in metadata.values():
        for entry in entries:
            if entry.get("type") == ACK_TYPE:
                for key in entry.get("data", {}):
                    rule = key.split("::", 1)[1] if "::" in key else key
                    if rule.startswith("AwsSolutions-"):
                        rules.append(rule.split("[", 1)[0])
    return rules


def findings(outdir: Path) -> Counter[str]:
    """Unacknowledged findings per stack name, from ``validation-report.json``."""
    counts: Counter[str] = Counter()
    report = outdir / "validation-report.json"
    if not report.exists():
        return counts
    for plugin in _load(report).get("pluginReports", []):
        for violation in plugin.get("violations", []):
            for resource in violation.get("violatingResources", []):
                stack = resource.get("constructPath", "").lstrip("/").split("/", 1)[0]
                counts[stack] += 1
    return counts


def plain_http_listeners(template: dict[str, Any]) -> list[int]:
    """Ports of HTTP listeners that forward to targets (a redirect to HTTPS does not count)."""
    ports = []
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") != "AWS::ElasticLoadBalancingV2::Listener":
            continue
        props = resource.get("Properties", {})
        actions = props.get("DefaultActions", [])
        if props.get("Protocol") == "HTTP" and any(a.get("Type") == "forward" for a in actions):
            ports.append(int(props.get("Port", 0)))
    return ports


def environment_tag(template: dict[str, Any]) -> str | None:
    """The ``Environment`` tag our stacks put on every taggable resource."""
    for resource in template.get("Resources", {}).values():
        tags = resource.get("Properties", {}).get("Tags")
        if isinstance(tags, list):
            for tag in tags:
                if isinstance(tag, dict) and tag.get("Key") == "Environment":
                    return str(tag.get("Value"))
    return None


def transport_lines(name: str, template: dict[str, Any]) -> list[str]:
    """What the synth summary says about a stack's listeners: loud for a production on HTTP."""
    ports = plain_http_listeners(template)
    if not ports:
        return []
    env = environment_tag(template) or "?"
    where = ", ".join(str(p) for p in ports)
    if env == "production":
        return [
            f"WARNING: {name} would serve bearer keys and prompts over PLAIN HTTP (port {where}): "
            "no service.certificate_arn in config/production.yaml. make deploy / make preflight "
            "ENV=production refuse it unless service.allow_plain_http gives a written reason."
        ]
    return [
        f"note: {name} ({env}) serves plain HTTP on port {where} (allowed outside production; "
        "set service.certificate_arn for HTTPS)."
    ]


def main(argv: list[str]) -> int:
    outdir = Path(argv[1] if len(argv) > 1 else "cdk.out")
    manifest_file = outdir / "manifest.json"
    if not manifest_file.exists():
        print(f"synth_summary: {manifest_file} not found; run cdk synth first", file=sys.stderr)
        return 2
    artifacts = _load(manifest_file).get("artifacts", {})
    open_findings = findings(outdir)
    print(f"{'stack':<30} {'resources':>9} {'acks':>5} {'findings':>8}  acknowledged rules")
    for name, artifact in artifacts.items():
        if artifact.get("type") != "aws:cloudformation:stack":
            continue
        template_file = outdir / artifact["properties"]["templateFile"]
        resources = len(_load(template_file).get("Resources", {}))
        acks = acknowledgments(_stack_metadata(outdir, name, artifact))
        rule_counts = ", ".join(
            f"{rule.removeprefix('AwsSolutions-')}x{n}"
            if n > 1
            else rule.removeprefix("AwsSolutions-")
            for rule, n in sorted(Counter(acks).items())
        )
        print(
            f"{name:<30} {resources:>9} {len(acks):>5} {open_findings.get(name, 0):>8}  "
            f"{rule_counts or '-'}"
        )
    for name, artifact in artifacts.items():
        if artifact.get("type") == "aws:cloudformation:stack":
            template = _load(outdir / artifact["properties"]["templateFile"])
            for line in transport_lines(name, template):
                print(line)
    total = sum(open_findings.values())
    if total:
        print(f"cdk-nag: {total} unacknowledged finding(s); see {outdir}/validation-report.json")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
