"""The usage metrics' path from the server to CloudWatch, checked on the synthesized stacks.

The CloudWatch agent scrapes the server's Prometheus port and writes the usage metrics as
embedded-metric-format events into the log group of its ``prometheus`` section, in a stream it
names after the scrape job (CloudWatch extracts the metrics from those events; no
PutMetricData). Those writes are evaluated against the synthesized instance-role policy with
IAM's rules (tests/iam_contract.py), as tests/test_seams.py does for the boot's own calls.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests import boot_harness as h
from tests.conftest import ENVIRONMENTS, Synth
from tests.iam_contract import Call, Templates, evaluate, instance_role_statements


def _templates(synth: Synth, env: str) -> tuple[dict[str, dict[str, Any]], str]:
    s = synth.stacks[env]
    kinds = zip(("Network", "Data", "Service"), (s.network, s.data, s.service), strict=True)
    return {st.stack_name: synth.template_json(env, k) for k, st in kinds}, s.service.stack_name


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_instance_role_may_write_the_agents_usage_metric_events(synth: Synth, env: str) -> None:
    cfg = synth.configs[env]
    templates, service = _templates(synth, env)
    script = h.synthesized_user_data(templates, service, cfg)
    agent = json.loads(h.heredoc(script, "/humansa-ml.json"))
    scrape = yaml.safe_load(h.heredoc(script, "/prometheus.yaml"))
    group = agent["logs"]["metrics_collected"]["prometheus"]["log_group_name"]
    # The agent writes to the group it is given (it creates the group only when it is missing:
    # here the stack's own log group must be the one named).
    groups = {
        r["Properties"]["LogGroupName"]
        for r in templates[service]["Resources"].values()
        if r["Type"] == "AWS::Logs::LogGroup"
    }
    assert group in groups, (group, groups)

    def no_secret(stack: str, logical: str, props: dict[str, Any]) -> str:
        return f"arn:aws:secretsmanager:{cfg.region}:{cfg.account}:secret:{props['Name']}-AbCdEf"

    statements = instance_role_statements(
        Templates(templates, cfg.region, cfg.account, no_secret), service
    )
    calls = [
        Call(
            f"logs:{action}",
            f"arn:aws:logs:{cfg.region}:{cfg.account}:log-group:{group}:log-stream:{job['job_name']}",
            {},
            "agent prometheus (EMF)",
        )
        for job in scrape["scrape_configs"]
        for action in ("CreateLogStream", "PutLogEvents")
    ]
    assert calls
    denied = [f"{c}: {d.reason}" for c in calls if not (d := evaluate(statements, c)).allowed]
    assert not denied, "\n".join(denied)
