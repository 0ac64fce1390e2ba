"""IAM's evaluation of identity policies, and the resource ARN AWS derives from a request.

Used by tests/test_seam_iam.py to check every AWS call of the boot against the synthesized
instance-role policy (moto does not evaluate IAM). Rules implemented, from the IAM User Guide
("Policy evaluation logic", "IAM JSON policy elements: Action / NotAction / Resource /
NotResource / Condition"):

- an explicit Deny wins; otherwise an Allow is needed; otherwise implicitly denied;
- ``Action``/``NotAction``: case-insensitive, ``*`` and ``?`` wildcards;
- ``Resource``/``NotResource``: case-sensitive, ``*`` and ``?`` wildcards (ARNs compared as
  whole strings, so ``parameter/humansa/dev`` does not cover ``parameter/humansa/dev/``);
- ``Condition``: ``StringEquals``/``StringLike``/``StringNotEquals`` (and their
  ``ForAnyValue:`` forms over one value) on keys the request context carries; any other
  operator, or a key the context lacks, cannot be evaluated here: an Allow with such a
  condition is treated as not applying, a Deny as applying (both the conservative side).

Also resolves CloudFormation intrinsics in the synthesized templates (``Ref``, ``Fn::GetAtt``
of a log group's ``Arn``, ``Fn::Join``, ``Fn::Sub``, ``Fn::Select``, ``Fn::Split``,
``Fn::ImportValue``), so the policy and the launch template's user data can be read as they
would be after deployment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.aws_proxy import Request

# --- CloudFormation --------------------------------------------------------------------------


class Unresolvable(ValueError):
    """An intrinsic this resolver cannot give a deployed value for."""


@dataclass
class Templates:
    """Synthesized templates of one environment, resolved as CloudFormation would.

    Args:
        templates: stack name -> template JSON.
        region, account: the pseudo parameters.
        secret_arn: (stack, logical id, properties) -> the ARN the deployed secret has.
    """

    templates: Mapping[str, dict[str, Any]]
    region: str
    account: str
    secret_arn: Callable[[str, str, dict[str, Any]], str]
    _exports: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for stack, tpl in self.templates.items():
            for out in tpl.get("Outputs", {}).values():
                name = out.get("Export", {}).get("Name")
                if isinstance(name, str):
                    self._exports[name] = (stack, out["Value"])

    def resources(self, stack: str) -> dict[str, Any]:
        return dict(self.templates[stack]["Resources"])

    def _pseudo(self, name: str, stack: str) -> str | None:
        return {
            "AWS::Partition": "aws",
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack,
        }.get(name)

    def _ref(self, name: str, stack: str) -> Any:
        pseudo = self._pseudo(name, stack)
        if pseudo is not None:
            return pseudo
        res = self.resources(stack).get(name)
        if res is None:
            raise Unresolvable(f"Ref {name} in {stack}")
        kind, props = res["Type"], res.get("Properties", {})
        if kind == "AWS::SecretsManager::Secret":
            return self.secret_arn(stack, name, props)
        if kind == "AWS::SecretsManager::SecretTargetAttachment":
            return self.resolve(props["SecretId"], stack)
        if kind == "AWS::Logs::LogGroup":
            return self.resolve(props["LogGroupName"], stack)
        if kind == "AWS::AutoScaling::AutoScalingGroup" and "AutoScalingGroupName" in props:
            return self.resolve(props["AutoScalingGroupName"], stack)
        raise Unresolvable(f"Ref {name} ({kind}) in {stack}")

    def _get_att(self, name: str, attr: str, stack: str) -> Any:
        res = self.resources(stack).get(name)
        if res is not None and res["Type"] == "AWS::Logs::LogGroup" and attr == "Arn":
            group = self.resolve(res["Properties"]["LogGroupName"], stack)
            return f"arn:aws:logs:{self.region}:{self.account}:log-group:{group}:*"
        raise Unresolvable(f"Fn::GetAtt {name}.{attr} in {stack}")

    def resolve(self, value: Any, stack: str) -> Any:
        if isinstance(value, list):
            return [self.resolve(v, stack) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self.resolve(v, stack) for k, v in value.items()}
        ((key, arg),) = value.items()
        if key == "Ref":
            return self._ref(arg, stack)
        if key == "Fn::GetAtt":
            return self._get_att(arg[0], arg[1], stack)
        if key == "Fn::Join":
            return str(arg[0]).join(str(self.resolve(v, stack)) for v in arg[1])
        if key == "Fn::Select":
            return self.resolve(arg[1], stack)[int(arg[0])]
        if key == "Fn::Split":
            return str(self.resolve(arg[1], stack)).split(arg[0])
        if key == "Fn::Base64":
            return self.resolve(arg, stack)
        if key == "Fn::ImportValue":
            name = self.resolve(arg, stack)
            if name not in self._exports:
                raise Unresolvable(f"Fn::ImportValue {name}")
            other, out = self._exports[name]
            return self.resolve(out, other)
        if key == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])

            def sub(m: re.Match[str]) -> str:
                var = m.group(1)
                if var in variables:
                    return str(self.resolve(variables[var], stack))
                if "." in var:
                    res, attr = var.split(".", 1)
                    return str(self._get_att(res, attr, stack))
                return str(self._ref(var, stack))

            return re.sub(r"\$\{([^}!]+)\}", sub, text)
        return {key: self.resolve(arg, stack)}


def instance_role_statements(t: Templates, stack: str) -> list[dict[str, Any]]:
    """Every statement of the policies attached to the launch template's instance role.

    Raises:
        Unresolvable: a managed policy is attached (its document is not in the template).
    """
    resources = t.resources(stack)
    templates = [r for r in resources.values() if r["Type"] == "AWS::EC2::LaunchTemplate"]
    assert len(templates) == 1, f"{stack}: expected one launch template"
    profile_ref = templates[0]["Properties"]["LaunchTemplateData"]["IamInstanceProfile"]["Arn"]
    profile = resources[profile_ref["Fn::GetAtt"][0]]
    (role_ref,) = profile["Properties"]["Roles"]
    role_id = role_ref["Ref"]
    role = resources[role_id]["Properties"]
    if role.get("ManagedPolicyArns"):
        raise Unresolvable(f"{stack}: managed policies on the instance role cannot be evaluated")
    docs = [p["PolicyDocument"] for p in role.get("Policies", [])]
    for res in resources.values():
        if res["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in res["Properties"]["Roles"]:
            docs.append(res["Properties"]["PolicyDocument"])
        if res["Type"] == "AWS::IAM::ManagedPolicy" and {"Ref": role_id} in res["Properties"].get(
            "Roles", []
        ):
            docs.append(res["Properties"]["PolicyDocument"])
    statements: list[dict[str, Any]] = []
    for doc in docs:
        raw = doc["Statement"]
        for stmt in raw if isinstance(raw, list) else [raw]:
            resolved = dict(stmt)
            for key in ("Resource", "NotResource"):
                if key in stmt:
                    try:
                        resolved[key] = t.resolve(stmt[key], stack)
                    except Unresolvable as exc:
                        resolved[key] = [f"<unresolvable: {exc}>"]
            statements.append(resolved)
    return statements


# --- IAM -------------------------------------------------------------------------------------


def _glob(pattern: str, value: str, *, ignore_case: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return (
        re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)
        is not None
    )


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value])]


@dataclass(frozen=True)
class Call:
    """One authorization request: ``service:Action`` on one resource ARN, with its context."""

    action: str
    resource: str
    context: Mapping[str, str]
    source: str

    def __str__(self) -> str:
        ctx = f" {dict(self.context)}" if self.context else ""
        return f"{self.action} on {self.resource}{ctx} (from {self.source})"


def _condition(cond: Mapping[str, Any], context: Mapping[str, str]) -> bool | None:
    """True/False, or None when this evaluator cannot decide."""
    for operator, entries in cond.items():
        op = operator.removeprefix("ForAnyValue:")
        for key, expected in entries.items():
            actual = next((v for k, v in context.items() if k.lower() == key.lower()), None)
            if actual is None or op not in ("StringEquals", "StringLike", "StringNotEquals"):
                return None
            values = _as_list(expected)
            if op == "StringEquals":
                ok = actual in values
            elif op == "StringLike":
                ok = any(_glob(v, actual, ignore_case=False) for v in values)
            else:
                ok = actual not in values
            if not ok:
                return False
    return True


def _matches(stmt: Mapping[str, Any], call: Call) -> bool:
    if "Action" in stmt:
        action_ok = any(_glob(a, call.action, ignore_case=True) for a in _as_list(stmt["Action"]))
    else:
        action_ok = not any(
            _glob(a, call.action, ignore_case=True) for a in _as_list(stmt.get("NotAction", []))
        )
    if "Resource" in stmt:
        res_ok = any(_glob(r, call.resource, ignore_case=False) for r in _as_list(stmt["Resource"]))
    else:
        res_ok = not any(
            _glob(r, call.resource, ignore_case=False)
            for r in _as_list(stmt.get("NotResource", []))
        )
    return action_ok and res_ok


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def evaluate(statements: list[dict[str, Any]], call: Call) -> Decision:
    allow = None
    undecided: list[dict[str, Any]] = []
    for stmt in statements:
        if not _matches(stmt, call):
            continue
        cond = _condition(stmt["Condition"], call.context) if "Condition" in stmt else True
        if cond is None and stmt["Effect"] == "Allow":
            undecided.append(stmt)
        if stmt["Effect"] == "Deny" and cond is not False:
            how = "" if cond else " (condition not evaluable here: treated as applying)"
            return Decision(False, f"explicit Deny{how}: {json.dumps(stmt)}")
        if stmt["Effect"] == "Allow" and cond:
            allow = stmt
    if allow is not None:
        return Decision(True, f"allowed by {json.dumps(allow)}")
    if undecided:
        return Decision(
            False,
            "implicit deny: this Allow's condition cannot be evaluated here (treated as "
            f"failing): {json.dumps(undecided[0])}",
        )
    return Decision(False, "implicit deny; nearest statement: " + nearest(statements, call))


def nearest(statements: list[dict[str, Any]], call: Call) -> str:
    """The statement closest to allowing the call: same action first, then the longest
    common ARN prefix."""

    def score(stmt: dict[str, Any]) -> tuple[int, int]:
        acts = _as_list(stmt.get("Action", []))
        action = any(_glob(a, call.action, ignore_case=True) for a in acts)
        service = any(a.split(":")[0].lower() == call.action.split(":")[0].lower() for a in acts)
        prefix = max(
            (len(_common_prefix(r, call.resource)) for r in _as_list(stmt.get("Resource", []))),
            default=0,
        )
        return (2 * action + service, prefix)

    if not statements:
        return "(the policy has no statement)"
    return json.dumps(max(statements, key=score))


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


# --- requests -> authorization calls ---------------------------------------------------------


def calls_for(
    req: Request,
    *,
    region: str,
    account: str,
    secret_arn: Callable[[str], str],
    group_arn: Callable[[str], str],
) -> list[Call]:
    """The authorization calls AWS makes for one request (one per resource it names).

    Args:
        secret_arn: a SecretId (name, partial or full ARN) -> the secret's full ARN.
        group_arn: an Auto Scaling group name -> its ARN.

    Raises:
        Unresolvable: an action this table does not know (add it, with its resource rule from
            the Service Authorization Reference).
    """
    action = f"{req.service}:{req.action}"
    p = req.params
    src = req.describe()

    def ssm_param(name: str) -> str:
        # "arn:aws:ssm:REGION:ACCOUNT:parameter/NAME" with NAME's leading slash dropped (a
        # path keeps its trailing slash: IAM matches the string as requested).
        return f"arn:aws:ssm:{region}:{account}:parameter/{name.removeprefix('/')}"

    if action in ("ssm:GetParameters",):
        return [Call(action, ssm_param(n), {}, src) for n in p.get("Names", [])]
    if action in ("ssm:GetParameter",):
        return [Call(action, ssm_param(p["Name"]), {}, src)]
    if action == "ssm:GetParametersByPath":
        return [Call(action, ssm_param(p["Path"]), {}, src)]
    if req.service == "secretsmanager" and "SecretId" in p:
        return [Call(action, secret_arn(p["SecretId"]), {}, src)]
    if action in (
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:RecordLifecycleActionHeartbeat",
    ):
        return [Call(action, group_arn(p["AutoScalingGroupName"]), {}, src)]
    if action in ("ecr:GetAuthorizationToken", "ec2:DescribeTags"):
        return [Call(action, "*", {}, src)]
    if action == "cloudwatch:PutMetricData":
        return [Call(action, "*", {"cloudwatch:namespace": str(p.get("Namespace", ""))}, src)]
    if req.service == "logs" and "logGroupName" in p:
        group, stream = p["logGroupName"], p.get("logStreamName", "*")
        arn = f"arn:aws:logs:{region}:{account}:log-group:{group}:log-stream:{stream}"
        return [Call(action, arn, {}, src)]
    raise Unresolvable(f"no resource rule for {action} ({src})")
