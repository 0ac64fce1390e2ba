"""The README's architecture diagram (Mermaid), generated from a synthesized cloud assembly.

``python -m humansa_ops.diagram cdk.out --env dev`` prints it; ``tests/test_diagram.py`` checks
that the README's copy equals what the session's synth gives, so the picture cannot drift.
Stacks are drawn with their main resources (counted by type) and the dependencies CDK recorded
in ``manifest.json``; the environment's title is replaced by ``<Env>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from config import naming

#: Resource types worth a box, in drawing order, with their label.
SHOWN: dict[str, str] = {
    "AWS::EC2::VPC": "VPC",
    "AWS::EC2::Subnet": "subnets",
    "AWS::EC2::NatGateway": "NAT gateways",
    "AWS::EC2::Instance": "NAT instance",
    "AWS::EC2::VPCEndpoint": "VPC endpoints",
    "AWS::EC2::FlowLog": "flow logs",
    "AWS::RDS::DBInstance": "RDS PostgreSQL",
    "AWS::SecretsManager::Secret": "secrets",
    "AWS::SecretsManager::RotationSchedule": "secret rotation",
    "AWS::ElasticLoadBalancingV2::LoadBalancer": "ALB",
    "AWS::ElasticLoadBalancingV2::TargetGroup": "target group",
    "AWS::AutoScaling::AutoScalingGroup": "Auto Scaling group",
    "AWS::EC2::LaunchTemplate": "launch template",
    "AWS::Logs::LogGroup": "log groups",
    "AWS::CloudWatch::Alarm": "alarms",
    "AWS::CloudWatch::Dashboard": "dashboard",
    "AWS::SNS::Topic": "alarm topic",
    "AWS::SSM::Parameter": "SSM parameters",
    "AWS::ECR::PullThroughCacheRule": "GHCR pull-through cache",
}


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def mermaid(assembly: Path, environment: str) -> str:
    """The Mermaid flowchart of ``environment``'s stacks in ``assembly``."""
    manifest = _load(assembly / "manifest.json")["artifacts"]
    title = naming.title(environment)
    wanted = naming.stack_names(environment)
    lines = ["```mermaid", "flowchart LR"]
    edges: list[str] = []
    for stack in wanted:
        artifact = manifest[stack]
        generic = stack.replace(f"Humansa-{title}-", "")
        template = _load(assembly / artifact["properties"]["templateFile"])
        counts = Counter(r["Type"] for r in template.get("Resources", {}).values())
        lines.append(f'  subgraph {generic}["Humansa-&lt;Env&gt;-{generic}"]')
        for rtype, label in SHOWN.items():
            if counts[rtype]:
                node = f"{generic}_{label.replace(' ', '_').replace('-', '_')}"
                shown = label if counts[rtype] == 1 else f"{label} x{counts[rtype]}"
                lines.append(f'    {node}["{shown}"]')
        lines.append("  end")
        for dependency in artifact.get("dependencies", []):
            if dependency in wanted:
                edges.append(f"  {dependency.replace(f'Humansa-{title}-', '')} --> {generic}")
    lines += sorted(edges)
    lines.append("```")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mermaid diagram of one environment's stacks")
    parser.add_argument("cdk_out", type=Path, nargs="?", default=Path("cdk.out"))
    parser.add_argument("--env", default="dev")
    args = parser.parse_args(argv)
    sys.stdout.write(mermaid(args.cdk_out, args.env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
