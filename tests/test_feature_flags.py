"""cdk.json sets the recommended feature flags of the installed aws-cdk-lib, and those flags change
the templates only where docs/infrastructure.md says: the session's synth (flags on, from
cdk.json) is compared with a synth of the same code with the flags taken out."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App

from app import build
from config import CI_SELECTOR
from humansa_ops import feature_flags
from tests.conftest import ENVIRONMENTS, ROOT, Synth, cdk_context

#: Resource types whose replacement or loss would lose data, keys, logs or the fleet's name.
STATEFUL = {
    "AWS::RDS::DBInstance",
    "AWS::SecretsManager::Secret",
    "AWS::KMS::Key",
    "AWS::Logs::LogGroup",
    "AWS::S3::Bucket",
    "AWS::AutoScaling::AutoScalingGroup",
}
#: Properties holding an IAM-style policy document (compared by what they allow, not by layout).
POLICY_PROPERTIES = {
    "AWS::IAM::Policy": "PolicyDocument",
    "AWS::KMS::Key": "KeyPolicy",
}


def test_cdk_json_sets_every_recommended_flag_of_the_installed_cdk_lib() -> None:
    recommended = feature_flags.recommended()
    assert len(recommended) > 50, recommended  # the bundle's list, not an empty file
    set_now = feature_flags.context()
    wrong = {
        flag: (set_now.get(flag, "<unset>"), value)
        for flag, value in recommended.items()
        if flag not in feature_flags.LEFT_OFF and set_now.get(flag, "<unset>") != value
    }
    assert not wrong, f"cdk.json (set, recommended), or add to LEFT_OFF with a reason: {wrong}"
    assert feature_flags.missing() == {}
    stale = set(feature_flags.LEFT_OFF) - set(recommended)
    assert not stale, f"LEFT_OFF names flags aws-cdk-lib no longer recommends: {stale}"
    for flag in feature_flags.LEFT_OFF:
        assert set_now.get(flag, "<unset>") != recommended[flag], f"{flag} is left off but set"


def test_every_left_off_flag_is_named_in_the_docs() -> None:
    docs = (ROOT / "docs" / "infrastructure.md").read_text(encoding="utf-8")
    for flag in feature_flags.LEFT_OFF:
        assert f"`{flag}`" in docs, f"docs/infrastructure.md does not explain leaving {flag} off"


def _without_flags() -> dict[str, Any]:
    context = cdk_context()
    for flag in feature_flags.recommended():
        if flag not in feature_flags.LEFT_OFF:  # LEFT_OFF ones stay as they are
            context.pop(flag, None)
    return context


@pytest.fixture(scope="module")
def flags_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    outdir = tmp_path_factory.mktemp("cdk.out.flags-off")
    app = App(
        outdir=str(outdir),
        context={**_without_flags(), "env": ",".join((*ENVIRONMENTS, CI_SELECTOR))},
    )
    build(app)
    with contextlib.suppress(RuntimeError):  # cdk-nag findings: templates are still written
        app.synth()
    yield outdir


def _atoms(document: dict[str, Any]) -> set[str]:
    """What a policy document allows or denies, one (effect, principal, action, resource,
    condition) atom per combination: equal sets mean the same policy, however it is laid out."""

    def many(value: Any) -> list[Any]:
        return value if isinstance(value, list) else [value]

    atoms: set[str] = set()
    for statement in document["Statement"]:
        principals: list[Any] = [None]
        if "Principal" in statement:
            principal = statement["Principal"]
            principals = (
                [(kind, p) for kind, ps in principal.items() for p in many(ps)]
                if isinstance(principal, dict)
                else [principal]
            )
        for principal in principals:
            for action in many(statement.get("Action", statement.get("NotAction"))):
                for resource in many(statement.get("Resource", statement.get("NotResource"))):
                    atoms.add(
                        json.dumps(
                            [
                                statement["Effect"],
                                "NotAction" in statement,
                                principal,
                                action,
                                resource,
                                statement.get("Condition"),
                            ],
                            sort_keys=True,
                        )
                    )
    return atoms


def _partition_literal(value: Any) -> Any:
    """``value`` as ``@aws-cdk/core:enablePartitionLiterals`` writes it: ``{"Ref":
    "AWS::Partition"}`` becomes ``aws`` (every stack has a concrete region in the ``aws``
    partition) and a ``Fn::Join`` with "" is merged into its literal runs, one string when
    nothing else is left. Both synths are compared in this form, so that flag's only change
    (the literal instead of the pseudo parameter) is accounted for and nothing else hides."""
    if isinstance(value, list):
        return [_partition_literal(v) for v in value]
    if not isinstance(value, dict):
        return value
    if value == {"Ref": "AWS::Partition"}:
        return "aws"
    if set(value) == {"Fn::Join"} and value["Fn::Join"][0] == "":
        parts: list[Any] = []
        for part in _partition_literal(value["Fn::Join"][1]):
            if isinstance(part, str) and parts and isinstance(parts[-1], str):
                parts[-1] += part
            else:
                parts.append(part)
        return (
            parts[0] if len(parts) == 1 and isinstance(parts[0], str) else {"Fn::Join": ["", parts]}
        )
    return {k: _partition_literal(v) for k, v in value.items()}


def _changes(on: dict[str, Any], off: dict[str, Any]) -> list[str]:
    """What the flags changed in one template, except policies that allow exactly the same
    and the partition literal (:func:`_partition_literal`)."""
    on, off = _partition_literal(on), _partition_literal(off)
    found: list[str] = []
    for section in ("Parameters", "Conditions", "Mappings", "Rules", "Outputs"):
        if on.get(section) != off.get(section):
            found.append(f"section {section}")
    res_on, res_off = on.get("Resources", {}), off.get("Resources", {})
    for logical_id in sorted(set(res_on) | set(res_off)):
        if logical_id not in res_on or logical_id not in res_off:
            kind = (res_on.get(logical_id) or res_off[logical_id])["Type"]
            verb = "added" if logical_id in res_on else "removed"
            found.append(f"{verb} {logical_id} ({kind})")
            continue
        a, b = res_on[logical_id], res_off[logical_id]
        if a == b:
            continue
        keys = sorted(k for k in set(a) | set(b) if k != "Properties" and a.get(k) != b.get(k))
        props_a, props_b = a.get("Properties", {}), b.get("Properties", {})
        for prop in sorted(set(props_a) | set(props_b)):
            if props_a.get(prop) == props_b.get(prop):
                continue
            if POLICY_PROPERTIES.get(a["Type"]) == prop and _atoms(props_a[prop]) == _atoms(
                props_b[prop]
            ):
                continue  # @aws-cdk/aws-iam:minimizePolicies: same statements, merged
            keys.append(f"Properties.{prop}")
        if keys:
            found.append(f"changed {logical_id} ({a['Type']}): {', '.join(keys)}")
    return found


def test_the_flags_change_the_templates_only_by_merging_policy_statements(
    synth: Synth, flags_off: Path
) -> None:
    changed: dict[str, list[str]] = {}
    minimized = 0
    for path in synth.template_files():
        on = json.loads(path.read_text(encoding="utf-8"))
        off_path = flags_off / path.name
        assert off_path.exists(), f"{path.name} is synthesized only with the flags"
        off = json.loads(off_path.read_text(encoding="utf-8"))
        if found := _changes(on, off):
            changed[path.name] = found
        minimized += sum(
            1
            for logical_id, resource in on.get("Resources", {}).items()
            if resource != off.get("Resources", {}).get(logical_id)
        )
    assert sorted(p.name for p in flags_off.glob("*.template.json")) == sorted(
        p.name for p in synth.template_files()
    )
    assert not changed, (
        "the feature flags change more than policy layout; say why in docs/infrastructure.md "
        f"('CDK feature flags') and here, or leave the flag off: {changed}"
    )
    assert minimized > 0  # the comparison saw the flags at work (minimizePolicies merges)


def _partition_refs(value: Any, where: str = "") -> list[str]:
    """Where ``value`` holds ``{"Ref": "AWS::Partition"}`` (dotted paths)."""
    if isinstance(value, dict):
        if value == {"Ref": "AWS::Partition"}:
            return [where]
        return [p for k, v in value.items() for p in _partition_refs(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _partition_refs(v, f"{where}[{i}]")]
    return []


def test_partition_literals_leave_the_pseudo_parameter_only_in_aws_managed_policy_arns(
    synth: Synth, flags_off: Path
) -> None:
    """``enablePartitionLiterals``: with the flags, ARNs CDK formats for a stack read
    ``arn:aws:`` where the synth without them writes ``Fn::Join`` with ``Ref AWS::Partition``;
    AWS managed policy ARNs (``ManagedPolicyArns``, CDK's ``from_aws_managed_policy_name``)
    keep the pseudo parameter either way, so their cdk-nag IAM4 acknowledgments still name
    ``<AWS::Partition>``. Every other difference disappears once the literal is written in
    (:func:`_partition_literal`, used by the comparisons above)."""
    rewritten = 0
    for path in synth.template_files():
        on = json.loads(path.read_text(encoding="utf-8"))
        off = json.loads((flags_off / path.name).read_text(encoding="utf-8"))
        left = [p for p in _partition_refs(on) if ".ManagedPolicyArns[" not in p]
        assert left == [], f"{path.name}: Ref AWS::Partition with the flag at {left}"
        rewritten += len(_partition_refs(off)) - len(_partition_refs(on))
    assert rewritten > 0  # the flags-off synth wrote the pseudo parameter where the flag did not


def test_no_stateful_resource_is_touched_beyond_its_key_policy(
    synth: Synth, flags_off: Path
) -> None:
    for path in synth.template_files():
        on = _partition_literal(json.loads(path.read_text(encoding="utf-8"))).get("Resources", {})
        off = json.loads((flags_off / path.name).read_text(encoding="utf-8"))
        off = _partition_literal(off).get("Resources", {})
        stateful_on = {k for k, r in on.items() if r["Type"] in STATEFUL}
        stateful_off = {k for k, r in off.items() if r["Type"] in STATEFUL}
        assert stateful_on == stateful_off, f"{path.name}: stateful logical ids differ"
        for logical_id in stateful_on:
            a = {**on[logical_id], "Properties": dict(on[logical_id].get("Properties", {}))}
            b = {**off[logical_id], "Properties": dict(off[logical_id].get("Properties", {}))}
            if a["Type"] == "AWS::KMS::Key":  # a key policy is updated in place
                assert _atoms(a["Properties"].pop("KeyPolicy")) == _atoms(
                    b["Properties"].pop("KeyPolicy")
                )
            assert a == b, f"{path.name}: {logical_id} ({a['Type']}) changes with the flags"
