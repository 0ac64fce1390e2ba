"""The account-level CI stack: GitHub OIDC trust pinned exactly, least-privilege roles.

``Humansa-CI`` is the one in the session's shared synth (built from config/account.yaml, cdk-nag
on); only the reuse-an-existing-provider variant is built here.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template
from cdk_nag import AwsSolutionsChecks

from components.github_oidc import validate_github_repository
from config import load_account, load_environment
from stacks.ci_stack import CiStack
from tests.conftest import Synth

_ACCOUNT_CONFIG = load_account()
ACCOUNT = _ACCOUNT_CONFIG.account
REGION = _ACCOUNT_CONFIG.region
REPO = _ACCOUNT_CONFIG.github.repository
ENV = cdk.Environment(account=ACCOUNT, region=REGION)
READ_ONLY_VERBS = ("Describe", "Get", "List")


@pytest.fixture(scope="module")
def templates(synth: Synth) -> dict[str, Template]:
    """The shared synth's Humansa-CI and a variant reusing an existing provider (cdk-nag on)."""
    app = cdk.App()
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    CiStack(
        app,
        "Humansa-CI-Existing",
        github_repository=REPO,
        env=ENV,
        existing_oidc_provider_arn=(
            f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
        ),
    )
    assembly = app.synth()
    existing = Template.from_json(assembly.get_stack_by_name("Humansa-CI-Existing").template)
    return {"Humansa-CI": synth.ci, "Humansa-CI-Existing": existing}


def _flatten(value: Any) -> Any:
    """Resolve the Fn::Join/Ref AWS::Partition that format_arn produces into a plain ARN."""
    if isinstance(value, dict) and set(value) == {"Fn::Join"}:
        sep, parts = value["Fn::Join"]
        return sep.join(_flatten(p) for p in parts)
    if isinstance(value, dict) and value == {"Ref": "AWS::Partition"}:
        return "aws"
    if isinstance(value, list):
        return [_flatten(v) for v in value]
    return value


def _role_id(template: Template, role_name: str) -> str:
    (logical_id,) = template.find_resources(
        "AWS::IAM::Role", {"Properties": {"RoleName": role_name}}
    )
    return logical_id


def _statements(template: Template, role_name: str) -> list[dict[str, Any]]:
    role_id = _role_id(template, role_name)
    policies = template.find_resources(
        "AWS::IAM::Policy", {"Properties": {"Roles": Match.array_with([{"Ref": role_id}])}}
    )
    assert len(policies) == 1, f"{role_name}: expected exactly one policy"
    (policy,) = policies.values()
    statements: list[dict[str, Any]] = policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _bootstrap(kind: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/cdk-hnb659fds-{kind}-{ACCOUNT}-{REGION}"


def test_oidc_provider_for_github_with_sts_audience(templates: dict[str, Template]) -> None:
    templates["Humansa-CI"].has_resource_properties(
        "AWS::IAM::OIDCProvider",
        {
            "Url": "https://token.actions.githubusercontent.com",
            "ClientIdList": ["sts.amazonaws.com"],
        },
    )
    templates["Humansa-CI-Existing"].resource_count_is("AWS::IAM::OIDCProvider", 0)


@pytest.mark.parametrize(
    ("role_name", "subject"),
    [
        (
            "humansa-github-actions-role",
            [f"repo:{REPO}:environment:staging", f"repo:{REPO}:environment:production"],
        ),
        ("humansa-github-diff-role", f"repo:{REPO}:pull_request"),
    ],
)
def test_trust_pins_audience_and_subject_exactly(
    templates: dict[str, Template], role_name: str, subject: str | list[str]
) -> None:
    template = templates["Humansa-CI"]
    role = template.find_resources("AWS::IAM::Role")[_role_id(template, role_name)]
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    provider_id = next(iter(template.find_resources("AWS::IAM::OIDCProvider")))
    assert statement == {
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Effect": "Allow",
        "Principal": {"Federated": {"Ref": provider_id}},
        # StringEquals, not StringLike: no wildcard can widen the subject
        "Condition": {
            "StringEquals": {
                "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
                "token.actions.githubusercontent.com:sub": subject,
            }
        },
    }
    assert "ManagedPolicyArns" not in role["Properties"]
    assert "Policies" not in role["Properties"]


def test_existing_provider_is_trusted_by_arn(templates: dict[str, Template]) -> None:
    template = templates["Humansa-CI-Existing"]
    role = template.find_resources("AWS::IAM::Role")[
        _role_id(template, "humansa-github-actions-role")
    ]
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {
        "Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
    }


def test_deploy_role_can_only_assume_the_bootstrap_roles(templates: dict[str, Template]) -> None:
    statements = [
        s
        for s in _statements(templates["Humansa-CI"], "humansa-github-actions-role")
        if s.get("Sid") != "DescribeGhcrTokens"  # the release guard's metadata read, below
    ]
    actions = {a for s in statements for a in _as_list(s["Action"])}
    resources = {r for s in statements for r in _as_list(_flatten(s["Resource"]))}
    assert actions == {"sts:AssumeRole"}
    assert all(s["Effect"] == "Allow" and "NotResource" not in s for s in statements)
    assert resources == {
        _bootstrap(kind)
        for kind in ("deploy-role", "file-publishing-role", "image-publishing-role", "lookup-role")
    }


def test_diff_role_has_no_write_action(templates: dict[str, Template]) -> None:
    statements = _statements(templates["Humansa-CI"], "humansa-github-diff-role")
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        for action in _as_list(statement["Action"]):
            verb = action.partition(":")[2]
            assert "*" not in action, action
            # No sts:AssumeRole at all: the lookup role reads the whole account.
            assert verb.startswith(READ_ONLY_VERBS), f"{action} is not read-only"


def test_diff_role_reads_only_the_apps_stacks(templates: dict[str, Template]) -> None:
    statements = _statements(templates["Humansa-CI"], "humansa-github-diff-role")
    cfn = next(s for s in statements if s["Sid"] == "ReadStacksAndTemplates")
    assert _flatten(cfn["Resource"]) == (
        f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/Humansa-*/*"
    )
    assert set(cfn["Action"]) == {
        "cloudformation:DescribeStacks",
        "cloudformation:GetTemplate",
        "cloudformation:ListStackResources",
    }


def test_outputs_name_the_two_role_arns(templates: dict[str, Template]) -> None:
    outputs = templates["Humansa-CI"].find_outputs("*")
    assert {"DeployRoleArn", "DiffRoleArn", "OidcProviderArn"} <= set(outputs)
    template = templates["Humansa-CI"]
    deploy_id = _role_id(template, "humansa-github-actions-role")
    assert outputs["DeployRoleArn"]["Value"] == {"Fn::GetAtt": [deploy_id, "Arn"]}


@pytest.mark.parametrize(
    "bad",
    ["humansa", "https://github.com/octo/humansa", "octo/humansa.git", "octo/", "/x", "a b/c"],
)
def test_repository_must_be_owner_slash_name(bad: str) -> None:
    with pytest.raises(ValueError, match=r"github\.repository: .* expected 'owner/name'"):
        validate_github_repository(bad)


def test_stack_refuses_a_bad_repository_before_building() -> None:
    with pytest.raises(ValueError, match=r"github\.repository"):
        CiStack(cdk.App(), "Humansa-CI", github_repository="not-a-repo", env=ENV)


def test_stack_needs_a_concrete_environment() -> None:
    with pytest.raises(ValueError, match="concrete account and region"):
        CiStack(cdk.App(), "Humansa-CI", github_repository=REPO, env=cdk.Environment())


def test_deploy_session_outlasts_the_worst_deploy_plus_rollback(
    templates: dict[str, Template],
) -> None:
    """The arithmetic of docs/infrastructure.md ("Deploy role session"), from production's
    config: image build, Network + Data updates, a refresh that fails at its last step, and the
    rollback (refresh back, Data back)."""
    config = load_environment("production")
    r = config.rollout
    boot = 300  # the boot's READY_TIMEOUT: launch to local /health, worst case
    batches = len(r.checkpoint_percentages) or 1
    refresh = (
        batches * (boot + r.instance_warmup_seconds)
        + (batches - 1) * r.checkpoint_delay_minutes * 60
        + r.bake_time_minutes * 60
    )
    image_build = 30 * 60  # arm64 under QEMU in the release job
    network = 10 * 60  # NAT gateways per AZ
    database = 40 * 60  # RDS Multi-AZ class change
    worst = image_build + network + database + refresh + refresh + database
    role_id = _role_id(templates["Humansa-CI"], "humansa-github-actions-role")
    role = templates["Humansa-CI"].to_json()["Resources"][role_id]
    assert role["Properties"]["MaxSessionDuration"] >= worst, worst
    assert worst > 3600  # the default one hour would not do


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_deploy_role_may_describe_but_never_read_the_ghcr_token(
    templates: dict[str, Template], env: str
) -> None:
    """The release guard (humansa_ops/preflight.py) runs with the deploy role: IAM allows its
    DescribeSecret on the environment's GHCR token, and nothing that reads a value."""
    from config.naming import ghcr_token_secret_name
    from tests.iam_contract import Call, evaluate

    statements = [
        {**s, "Resource": _flatten(s["Resource"])}
        for s in _statements(templates["Humansa-CI"], "humansa-github-actions-role")
    ]
    cfg = load_environment(env)
    arn = (
        f"arn:aws:secretsmanager:{cfg.region}:{cfg.account}:secret:"
        f"{ghcr_token_secret_name(env)}-AbCdEf"
    )
    describe = evaluate(statements, Call("secretsmanager:DescribeSecret", arn, {}, "preflight"))
    assert describe.allowed, describe.reason
    for action in ("secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"):
        assert not evaluate(statements, Call(action, arn, {}, "test")).allowed, action
    provider_key = arn.replace(ghcr_token_secret_name(env), f"/humansa/{env}/OPENAI_API_KEY")
    assert not evaluate(
        statements, Call("secretsmanager:DescribeSecret", provider_key, {}, "test")
    ).allowed
