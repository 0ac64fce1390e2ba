"""The README's architecture diagram equals the one generated from the synthesized assembly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from components.load_balancer import DEREGISTRATION_DELAY_SECONDS
from humansa_ops.diagram import mermaid, rollout_timeline
from tests.conftest import ENVIRONMENTS, Synth

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- diagram: production -->\n(```mermaid\n.*?```\n)", re.DOTALL)


def test_readme_diagram_matches_the_synthesized_production_stacks(synth: Synth) -> None:
    generated = mermaid(synth.outdir, "production")
    found = BLOCK.search(README.read_text(encoding="utf-8"))
    assert found, "README.md lacks the <!-- diagram: production --> block"
    assert found[1] == generated, (
        "README diagram is stale; regenerate with `python -m humansa_ops.diagram cdk.out "
        f"--env production` (after make synth):\n{generated}"
    )


def test_the_diagram_shows_the_dependencies_and_main_resources(synth: Synth) -> None:
    text = mermaid(synth.outdir, "production")
    assert "  Network --> Data\n" in text and "  Network --> Service\n" in text
    assert 'Data_RDS_PostgreSQL["RDS PostgreSQL"]' in text
    assert 'Service_ALB["ALB"]' in text and "Service_Auto_Scaling_group" in text
    assert "Production" not in text  # generic: Humansa-<Env>-...


RELEASING = README.parent / "docs" / "releasing.md"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_rollout_timelines_match_the_synthesized_service_stacks(synth: Synth, env: str) -> None:
    generated = rollout_timeline(synth.outdir, env)
    block = re.compile(rf"<!-- rollout: {env} -->\n(```mermaid\n.*?```\n)", re.DOTALL)
    found = block.search(RELEASING.read_text(encoding="utf-8"))
    assert found, f"docs/releasing.md lacks the <!-- rollout: {env} --> block"
    assert found[1] == generated, (
        "docs/releasing.md rollout timeline is stale; regenerate with `python -m "
        f"humansa_ops.diagram cdk.out --rollout --env {env}` (after make synth):\n{generated}"
    )


def test_the_timeline_follows_the_refresh_settings(synth: Synth) -> None:
    # production: checkpoints 50/100 give two batches and one pause; dev: one batch, no pause
    production = rollout_timeline(synth.outdir, "production")
    refresh = synth.template_json("production", "Service")["Resources"]
    (group,) = [r for r in refresh.values() if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"]
    prefs = group["UpdatePolicy"]["AutoScalingInstanceRefresh"]["Preferences"]
    assert production.count("boot, launch hook") == len(prefs["CheckpointPercentages"])
    assert f"pause {prefs['CheckpointDelay']} s" in production
    assert f"bake time {prefs['BakeTime']} s" in production
    dev = rollout_timeline(synth.outdir, "dev")
    assert dev.count("boot, launch hook") == 1 and "pause" not in dev
    for text in (production, dev):  # Mermaid reads a task's name up to its first colon
        tasks = [line for line in text.splitlines() if line.startswith("    ")]
        assert all(line.count(":") == 1 for line in tasks), tasks
    # the total is the sum of the bars on the critical path
    heartbeat = group["Properties"]["LifecycleHookSpecificationList"][0]["HeartbeatTimeout"]
    batch = heartbeat + prefs["InstanceWarmup"] + DEREGISTRATION_DELAY_SECONDS
    total = 2 * batch + prefs["CheckpointDelay"] + prefs["BakeTime"]
    assert f"worst case {total // 60} min {total % 60} s" in production
