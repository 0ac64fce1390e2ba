"""Pictures generated from a synthesized cloud assembly (Mermaid, which GitHub renders).

``python -m humansa_ops.diagram cdk.out --env dev`` prints the README's architecture diagram:
stacks with their main resources (counted by type) and the dependencies CDK recorded in
``manifest.json``; the environment's title is replaced by ``<Env>``.
``python -m humansa_ops.diagram cdk.out --rollout --env production`` prints the rollout timeline
of docs/releasing.md: the instance refresh of the Service template with every wait at its limit.
``tests/test_diagram.py`` checks that the committed copies equal what the session's synth gives,
so the pictures cannot drift.
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


def _service_template(assembly: Path, environment: str) -> dict[str, Any]:
    manifest = _load(assembly / "manifest.json")["artifacts"]
    stack = next(s for s in naming.stack_names(environment) if s.endswith("-Service"))
    template: dict[str, Any] = _load(assembly / manifest[stack]["properties"]["templateFile"])
    return template


def _only(resources: dict[str, Any], rtype: str) -> dict[str, Any]:
    (found,) = [r for r in resources.values() if r["Type"] == rtype]
    return dict(found)


_ATTRIBUTES = "TargetGroupAttributes"


def rollout_timeline(assembly: Path, environment: str) -> str:
    """The Mermaid gantt of ``environment``'s instance refresh, each wait at its limit.

    Read from the Service template: the refresh preferences (min/max healthy, checkpoints and
    their delay, warm-up, bake time), the launch hook's heartbeat, the health-check grace period,
    the group's minimum size and the target group's deregistration delay; the server's drain
    (``DRAIN_SECONDS``, which starts at SIGTERM, after the delay) from its settings. Times are
    seconds from the deploy's refresh start.
    """
    from ml_server.config import Settings  # the server's default, not in any template

    resources = _load_resources(assembly, environment)
    group = _only(resources, "AWS::AutoScaling::AutoScalingGroup")
    prefs = group["UpdatePolicy"]["AutoScalingInstanceRefresh"]["Preferences"]
    (hook,) = group["Properties"]["LifecycleHookSpecificationList"]
    target_group = _only(resources, "AWS::ElasticLoadBalancingV2::TargetGroup")
    attributes = {a["Key"]: a["Value"] for a in target_group["Properties"][_ATTRIBUTES]}
    deregistration = int(attributes["deregistration_delay.timeout_seconds"])
    heartbeat = int(hook["HeartbeatTimeout"])
    grace = int(group["Properties"]["HealthCheckGracePeriod"])
    warmup = int(prefs["InstanceWarmup"])
    bake = int(prefs.get("BakeTime", 0))
    checkpoints = [int(p) for p in prefs.get("CheckpointPercentages", [])] or [100]
    delay = int(prefs.get("CheckpointDelay", 0)) if len(checkpoints) > 1 else 0
    size = int(group["Properties"]["MinSize"])
    drain = int(Settings.model_fields["drain_seconds"].default)
    title = naming.title(environment)
    lines = [
        "```mermaid",
        "gantt",
        f"  title {title} instance refresh at {size} {'instance' if size == 1 else 'instances'}, "
        "min healthy "
        f"{prefs['MinHealthyPercentage']} %, max healthy {prefs['MaxHealthyPercentage']} %, "
        "each wait at its limit",
        "  dateFormat X",
        "  axisFormat %H:%M",
    ]
    start, done = 0, 0
    for number, percentage in enumerate(checkpoints, start=1):
        count = max(1, -(-size * percentage // 100) - done)
        done += count
        lines.append(f"  section batch {number}, {count} new, up to {percentage} %")
        boot_end = start + heartbeat
        lines.append(
            f"    boot, launch hook (heartbeat {heartbeat} s) :b{number}, {start}, {boot_end}"
        )
        lines.append(
            f"    InService, warm-up {warmup} s :w{number}, {boot_end}, {boot_end + warmup}"
        )
        lines.append(f"    health-check grace {grace} s :g{number}, {boot_end}, {boot_end + grace}")
        healthy = boot_end + warmup
        lines.append(f"  section batch {number}, {count} old")
        lines.append(
            f"    ALB deregistration {deregistration} s serving open streams, then SIGTERM, "
            f"drain {drain} s at most :d{number}, {healthy}, {healthy + deregistration}"
        )
        start = healthy + deregistration
        if delay and number < len(checkpoints):
            lines.append(f"  section checkpoint {percentage} %")
            lines.append(
                f"    pause {delay} s, alarms watched :p{number}, {start}, {start + delay}"
            )
            start += delay
    if bake:
        lines.append("  section bake")
        lines.append(f"    bake time {bake} s, alarms watched :bake, {start}, {start + bake}")
        start += bake
    total = f"{start // 60} min {start % 60} s"
    lines.append(f"    refresh done, worst case {total} :milestone, finish, {start}, {start}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def _load_resources(assembly: Path, environment: str) -> dict[str, Any]:
    resources: dict[str, Any] = _service_template(assembly, environment)["Resources"]
    return resources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mermaid diagram of one environment's stacks")
    parser.add_argument("cdk_out", type=Path, nargs="?", default=Path("cdk.out"))
    parser.add_argument("--env", default="dev")
    parser.add_argument("--rollout", action="store_true", help="the rollout timeline instead")
    args = parser.parse_args(argv)
    draw = rollout_timeline if args.rollout else mermaid
    sys.stdout.write(draw(args.cdk_out, args.env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
