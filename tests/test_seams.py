"""The seams of a first deploy, each run on both sides (issue 10).

Per deployed environment, the launch template's user data is taken from the SYNTHESIZED Service
template and resolved as CloudFormation would (tests/iam_contract.py), then executed by the boot
harness (stubs for docker/systemd/dnf/IMDS, the real AWS CLI) against moto, through a recording
proxy (tests/aws_proxy.py). One boot per environment feeds three checks:

- IAM contract: every AWS request it made, and the calls of the stand-ins (docker pull, the
  awslogs driver, the CloudWatch agent), evaluated against the synthesized instance-role policy
  with IAM's rules and the resource ARN AWS derives from the request.
- Boot -> server: the secrets folder and env file it produced handed to the real server with a
  real PostgreSQL: /health 200, /ready 200, every provider secret at its CDK placeholder, and a
  SecureString planted under /humansa/<env>/ nowhere in the server's environment.
- Lifecycle: the launch hook is completed with CONTINUE only after /health answered 200, and
  with ABANDON on a FATAL boot.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.boot import PLACEHOLDER_SECRET_VALUE, USAGE_SPOOL_DIR
from ml_server.tests.pg import TempPostgres, free_port
from ml_server.tests.server_proc import ServerProcess
from tests import boot_harness as h
from tests.aws_proxy import RecordingProxy, Request, recording_proxy
from tests.conftest import ENVIRONMENTS, Synth
from tests.iam_contract import (
    Call,
    Templates,
    Unresolvable,
    calls_for,
    evaluate,
    instance_role_statements,
)

pytestmark = pytest.mark.slow

RUNBOOK_PARAMETERS = (
    "alb_dns_name",
    "asg_name",
    "ml_tg_arn",
    "vpc_id",
    "db_host",
    "db_port",
    "db_username",
    "db_name",
    "ml_server_image_tag",
)
MOTO_DEFAULT_ACCOUNT = "123456789012"  # the account the boot harness seeds (no header)
PLANTED = {  # what the old runbook left under the path: SecureStrings
    "db_password": "planted-securestring-db-password-Xq71",
    "github_pat": "FAKE-planted-securestring-github-pat",
}


def _stacks(synth: Synth, env: str) -> dict[str, str]:
    s = synth.stacks[env]
    return {
        kind: st.stack_name
        for kind, st in zip(
            ("Network", "Data", "Service"), (s.network, s.data, s.service), strict=True
        )
    }


@dataclass
class Booted:
    env: str
    sandbox: h.Sandbox
    proxy: RecordingProxy
    templates: Templates
    service_stack: str
    result: subprocess.CompletedProcess[str]
    boot_requests: list[Request]
    refresh_requests: list[Request]
    group_arns: dict[str, str]
    secret_arns: dict[str, str]
    user_data: str


def _seed(
    proxy: RecordingProxy, synth: Synth, env: str, pg: TempPostgres
) -> tuple[dict[str, str], dict[str, str]]:
    """Parameters, secrets and the Auto Scaling group as the deployed stacks hold them."""
    cfg = synth.configs[env]
    path = cfg.parameter_path
    client = _client_factory(proxy, cfg.region)
    ssm = client("ssm")
    values = {
        "alb_dns_name": f"humansa-{env}-alb-123.{cfg.region}.elb.amazonaws.com",
        "asg_name": f"humansa-{env}-fleet",
        "ml_tg_arn": f"arn:aws:elasticloadbalancing:{cfg.region}:{cfg.account}:targetgroup/ml/1",
        "vpc_id": "vpc-0123456789abcdef0",
        "db_host": pg.host,
        "db_port": str(pg.port),
        "db_username": pg.user,
        "db_name": pg.database,
        "ml_server_image_tag": "release-1.2.3",
    }
    for name, value in values.items():
        ssm.put_parameter(Name=path + name, Value=value, Type="String", Overwrite=True)
    for name, value in PLANTED.items():
        ssm.put_parameter(Name=path + name, Value=value, Type="SecureString", Overwrite=True)
    sm = client("secretsmanager")
    secret_arns: dict[str, str] = {}
    for kind in ("Data", "Service"):
        for res in synth.template_json(env, kind)["Resources"].values():
            if res["Type"] != "AWS::SecretsManager::Secret":
                continue
            name = res["Properties"]["Name"]
            if "GenerateSecretString" in res["Properties"]:  # the RDS-managed secret
                value = json.dumps({"username": pg.user, "password": pg.password})
            else:
                value = res["Properties"]["SecretString"]
            secret_arns[name] = sm.create_secret(Name=name, SecretString=value)["ARN"]
    group_arns: dict[str, str] = {}
    for res in synth.template_json(env, "Service")["Resources"].values():
        if res["Type"] != "AWS::AutoScaling::AutoScalingGroup":
            continue
        props = res["Properties"]
        if "AutoScalingGroupName" not in props:
            continue
        asg = client("autoscaling")
        name = props["AutoScalingGroupName"]
        asg.create_launch_configuration(
            LaunchConfigurationName=f"{name}-lc", ImageId="ami-12c6146b", InstanceType="t3.micro"
        )
        asg.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchConfigurationName=f"{name}-lc",
            MinSize=0,
            MaxSize=1,
            DesiredCapacity=0,
            AvailabilityZones=[f"{cfg.region}a"],
        )
        for hook in props.get("LifecycleHookSpecificationList", []):
            asg.put_lifecycle_hook(
                AutoScalingGroupName=name,
                LifecycleHookName=hook["LifecycleHookName"],
                LifecycleTransition=hook["LifecycleTransition"],
                HeartbeatTimeout=hook["HeartbeatTimeout"],
                DefaultResult=hook["DefaultResult"],
            )
        (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"
        ]
        group_arns[name] = group["AutoScalingGroupARN"]
    return secret_arns, group_arns


def _client_factory(proxy: RecordingProxy, region: str) -> Any:
    import boto3

    def client(service: str) -> Any:
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=proxy.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    return client


def _user_data(templates: Templates, stack: str) -> str:
    for res in templates.resources(stack).values():
        if res["Type"] == "AWS::EC2::LaunchTemplate":
            return str(
                templates.resolve(res["Properties"]["LaunchTemplateData"]["UserData"], stack)
            )
    raise AssertionError(f"{stack}: no launch template")


@pytest.fixture(scope="module")
def pg() -> Iterator[TempPostgres]:
    cluster = TempPostgres().init()
    try:
        yield cluster
    finally:
        cluster.cleanup()


#: The environments this module boots. tests/test_seams_staging.py and _production.py boot the
#: others with the same tests: one module per boot, so pytest-xdist (--dist loadfile) spreads the
#: three boots over its workers instead of queueing them in one.
SEAM_ENVIRONMENTS: tuple[str, ...] = ("dev",)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seam_env" in metafunc.fixturenames:
        envs = metafunc.module.SEAM_ENVIRONMENTS
        assert set(envs) <= set(ENVIRONMENTS), envs
        metafunc.parametrize("seam_env", envs, scope="module")


def test_the_seam_modules_boot_every_environment_once() -> None:
    from tests import test_seams_production, test_seams_staging

    split = (
        SEAM_ENVIRONMENTS,
        test_seams_staging.SEAM_ENVIRONMENTS,
        test_seams_production.SEAM_ENVIRONMENTS,
    )
    assert sorted(env for envs in split for env in envs) == sorted(ENVIRONMENTS)


@pytest.fixture(scope="module")
def booted(
    seam_env: str,
    synth: Synth,
    pg: TempPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Booted]:
    env = seam_env
    cfg = synth.configs[env]
    names = _stacks(synth, env)
    with h.moto_server() as moto, recording_proxy(moto.port, cfg.account) as proxy:
        proxy.recording = False
        secret_arns, group_arns = _seed(proxy, synth, env, pg)
        by_logical: dict[tuple[str, str], str] = {}

        def secret_arn(stack: str, logical: str, props: dict[str, Any]) -> str:
            by_logical[(stack, logical)] = secret_arns[props["Name"]]
            return secret_arns[props["Name"]]

        templates = Templates(
            templates={n: synth.template_json(env, k) for k, n in names.items()},
            region=cfg.region,
            account=cfg.account,
            secret_arn=secret_arn,
        )
        user_data = _user_data(templates, names["Service"])
        sandbox = h.Sandbox(tmp_path_factory.mktemp(f"boot-{env}"))
        sandbox.setup()
        proxy.clear()
        proxy.recording = True
        result = sandbox.run(user_data, proxy.endpoint)
        boot_requests = list(proxy.requests)
        proxy.clear()
        # The refresh timer's run (every 15 min) and the unit's start after a reboot.
        for args in ([], ["--if-missing"]):
            subprocess.run(
                [str(sandbox.root / "usr/local/libexec/humansa/fetch-secrets"), *args],
                env=sandbox.env(proxy.endpoint),
                capture_output=True,
                text=True,
                check=True,
            )
        refresh_requests = list(proxy.requests)
        yield Booted(
            env=env,
            sandbox=sandbox,
            proxy=proxy,
            templates=templates,
            service_stack=names["Service"],
            result=result,
            boot_requests=boot_requests,
            refresh_requests=refresh_requests,
            group_arns=group_arns,
            secret_arns=secret_arns,
            user_data=user_data,
        )


# --- IAM contract ----------------------------------------------------------------------------


def _declared_stand_in_calls(b: Booted, cfg: Any) -> list[Call]:
    """What the real programs behind the stubs call with the instance role.

    docker pull of an ECR image (ECR's registry auth: BatchCheckLayerAvailability,
    GetDownloadUrlForLayer, BatchGetImage on the repository), the awslogs log driver
    (CreateLogStream, PutLogEvents on the app group's stream), the CloudWatch agent
    (PutMetricData in its namespace, DescribeTags for the ASG dimension, CreateLogStream and
    PutLogEvents on both groups). Derived from the rendered unit and agent config, not hard-coded.
    """
    root = b.sandbox.root
    region, account = cfg.region, cfg.account
    calls: list[Call] = []
    runs = [c["argv"] for c in b.sandbox.calls("docker") if c["argv"][0] == "run"]
    assert runs, "the unit never ran docker"
    image = runs[0][-1]
    host, _, rest = image.partition("/")
    if host.endswith(".amazonaws.com") and ".dkr.ecr." in host:
        repo = rest.split("@")[0].rsplit(":", 1)[0]
        repo_account = host.split(".")[0]
        arn = f"arn:aws:ecr:{region}:{repo_account}:repository/{repo}"
        for action in ("BatchCheckLayerAvailability", "GetDownloadUrlForLayer", "BatchGetImage"):
            calls.append(Call(f"ecr:{action}", arn, {}, "docker pull " + image))
    run = runs[0]
    opts = dict(run[i + 1].split("=", 1) for i, a in enumerate(run) if a == "--log-opt")
    group, stream = opts["awslogs-group"], opts["awslogs-stream"]
    arn = f"arn:aws:logs:{region}:{account}:log-group:{group}:log-stream:{stream}"
    for action in ("CreateLogStream", "PutLogEvents"):
        calls.append(Call(f"logs:{action}", arn, {}, "docker awslogs driver"))
    agent = json.loads((root / "opt/aws/amazon-cloudwatch-agent/etc/humansa-ml.json").read_text())
    namespace = agent["metrics"]["namespace"]
    calls.append(
        Call("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": namespace}, "agent")
    )
    calls.append(Call("ec2:DescribeTags", "*", {}, "agent (${aws:AutoScalingGroupName})"))
    for entry in agent["logs"]["logs_collected"]["files"]["collect_list"]:
        arn = (
            f"arn:aws:logs:{region}:{account}:log-group:{entry['log_group_name']}"
            f":log-stream:i-0123456789abcdef0"
        )
        for action in ("CreateLogStream", "PutLogEvents"):
            calls.append(Call(f"logs:{action}", arn, {}, f"agent {entry['file_path']}"))
    return calls


def test_every_aws_call_of_the_boot_is_allowed_by_the_synthesized_instance_policy(
    booted: Booted, synth: Synth, record_property: Any
) -> None:
    b = booted
    cfg = synth.configs[b.env]
    assert b.result.returncode == 0, b.result.stdout[-3000:] + b.result.stderr[-3000:]
    statements = instance_role_statements(b.templates, b.service_stack)
    by_name = {n: a for n, a in b.secret_arns.items()}

    def secret_arn(secret_id: str) -> str:
        if secret_id.startswith("arn:"):
            return secret_id
        return by_name[secret_id]

    requests = b.boot_requests + b.refresh_requests
    calls: list[Call] = []
    for req in requests:
        try:
            calls += calls_for(
                req,
                region=cfg.region,
                account=cfg.account,
                secret_arn=secret_arn,
                group_arn=lambda name: b.group_arns[name],
            )
        except Unresolvable as exc:
            pytest.fail(f"{b.env}: {exc}")
    stand_ins = _declared_stand_in_calls(b, cfg)
    denied = [
        f"DENIED {call}\n    {d.reason}"
        for call in calls + stand_ins
        if not (d := evaluate(statements, call)).allowed
    ]
    summary = (
        f"{b.env}: {len(requests)} AWS requests recorded -> {len(calls)} authorization calls, "
        f"+ {len(stand_ins)} declared calls of the stand-ins; {len(denied)} denied"
    )
    print(summary)
    record_property(f"iam_calls_{b.env}", len(calls) + len(stand_ins))
    assert not denied, summary + "\n" + "\n".join(denied)
    actions = {c.action for c in calls}
    assert "secretsmanager:GetSecretValue" in actions and any(
        a.startswith("ssm:") for a in actions
    ), f"{b.env}: the boot made no SSM or Secrets Manager call: {sorted(actions)}"


def test_the_policy_evaluator_follows_iam_rules() -> None:
    """The evaluator itself: literal ARN match (trailing slash), globbing, Deny, conditions."""
    arn = "arn:aws:ssm:ap-east-1:1:parameter/humansa/dev"
    allow = [{"Effect": "Allow", "Action": "SSM:GetParametersByPath", "Resource": arn}]
    assert evaluate(allow, Call("ssm:getparametersbypath", arn, {}, "t")).allowed
    assert not evaluate(allow, Call("ssm:GetParametersByPath", arn + "/", {}, "t")).allowed
    star = [{"Effect": "Allow", "Action": "ssm:Get*", "Resource": arn + "/db_?ost"}]
    assert evaluate(star, Call("ssm:GetParameters", arn + "/db_host", {}, "t")).allowed
    assert not evaluate(star, Call("ssm:GetParameters", arn + "/DB_HOST", {}, "t")).allowed
    deny = [*star, {"Effect": "Deny", "NotAction": "ssm:Describe*", "Resource": "*"}]
    assert not evaluate(deny, Call("ssm:GetParameters", arn + "/db_host", {}, "t")).allowed
    cond = [
        {
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": "humansa-ml/dev"}},
        }
    ]
    ok = Call("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "humansa-ml/dev"}, "t")
    assert evaluate(cond, ok).allowed
    other = Call("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "x"}, "t")
    assert not evaluate(cond, other).allowed
    unknown = Call("cloudwatch:PutMetricData", "*", {}, "t")  # key absent: cannot evaluate
    decision = evaluate(cond, unknown)
    assert not decision.allowed and "cannot be evaluated" in decision.reason


# --- boot -> server --------------------------------------------------------------------------


def _env_file(b: Booted) -> dict[str, str]:
    text = (b.sandbox.root / "etc/humansa/humansa-ml.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def _status_within(url: str, *, seconds: float) -> int:
    """The first non-503 status of ``url`` within ``seconds`` (a loaded test machine can make
    one readiness probe's 3 s database check time out), or the last 503."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as err:
            if err.code != 503 or time.monotonic() > deadline:
                return int(err.code)
        time.sleep(0.5)


def test_the_boot_output_starts_the_real_server_with_every_provider_at_its_placeholder(
    booted: Booted,
) -> None:
    b = booted
    assert b.result.returncode == 0, b.result.stdout[-3000:] + b.result.stderr[-3000:]
    secrets = b.sandbox.root / "run/humansa/secrets"
    files = {p.name: p.read_text() for p in secrets.iterdir()}
    providers = {k: v for k, v in files.items() if k != "DB_PASSWORD"}
    assert providers and all(v == "" for v in providers.values()), providers  # all UNSET
    assert PLACEHOLDER_SECRET_VALUE not in files.values()
    env = _env_file(b)
    env_text = (b.sandbox.root / "etc/humansa/humansa-ml.env").read_text()
    for value in PLANTED.values():
        assert value not in env_text, f"{b.env}: a planted SecureString reached the env file"
    # As docker run --env-file + the read-only secrets mount: the env file's variables and
    # SECRETS_DIR; the ports are the test's own (5001 and 9101 may be taken here).
    server_env = {k: v for k, v in env.items() if k not in ("ML_SERVER_PORT",)}
    server_env["METRICS_PORT"] = str(free_port())
    # The unit mounts the boot's spool folder at USAGE_SPOOL_DIR: here, that folder itself.
    spool = b.sandbox.root / USAGE_SPOOL_DIR.lstrip("/")
    server = ServerProcess(
        {**server_env, "SECRETS_DIR": str(secrets), "USAGE_SPOOL_DIR": str(spool)}
    )
    try:
        try:
            server.start(wait_ready=True)  # polls /ready for 30 s (the server's DB check is 3 s)
        except RuntimeError:
            # Two workers importing the app on a loaded 2-core machine (the three boots run side
            # by side under xdist) can take longer; an exited server fails here at once.
            server.wait("/ready", deadline_s=60)
        for path in ("/health", "/ready"):
            assert _status_within(server.url + path, seconds=20) == 200, path
        assert server.proc is not None
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().decode(errors="replace")
        for value in PLANTED.values():
            assert value not in environ, f"{b.env}: a planted SecureString is in the environment"
        names = {e.split("=", 1)[0] for e in environ.split("\0") if e}
        assert "DB_PASSWORD" not in names, f"{b.env}: DB_PASSWORD reached the server's environment"
    finally:
        server.stop()


# --- lifecycle hook --------------------------------------------------------------------------


def test_the_launch_hook_is_completed_with_continue_after_local_health(booted: Booted) -> None:
    b = booted
    assert b.result.returncode == 0, b.result.stdout[-3000:] + b.result.stderr[-3000:]
    done = [
        r
        for r in b.boot_requests
        if r.service == "autoscaling" and r.action == "CompleteLifecycleAction"
    ]
    assert len(done) == 1, f"{b.env}: expected one CompleteLifecycleAction, got {len(done)}"
    (req,) = done
    assert req.status == 200, req.describe()
    assert req.params["LifecycleActionResult"] == "CONTINUE"
    assert req.params["InstanceId"] == "i-0123456789abcdef0"
    health = [
        c
        for c in b.sandbox.calls("curl")
        if any(a.startswith("http://127.0.0.1:") for a in c["argv"])
    ]
    assert health and health[-1]["t"] < req.t, "completed before the local /health answered"


def _lifecycle_run(tmp_path: Path, **extra: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    with h.moto_server() as moto, recording_proxy(moto.port, MOTO_DEFAULT_ACCOUNT) as proxy:
        proxy.recording = False
        asg = _client_factory(proxy, h.REGION)("autoscaling")
        asg.create_launch_configuration(
            LaunchConfigurationName="lc", ImageId="ami-12c6146b", InstanceType="t3.micro"
        )
        asg.create_auto_scaling_group(
            AutoScalingGroupName=h.ASG_NAME,
            LaunchConfigurationName="lc",
            MinSize=0,
            MaxSize=1,
            AvailabilityZones=[f"{h.REGION}a"],
        )
        asg.put_lifecycle_hook(
            AutoScalingGroupName=h.ASG_NAME,
            LifecycleHookName=h.HOOK_NAME,
            LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
            HeartbeatTimeout=900,
            DefaultResult="ABANDON",
        )
        proxy.recording = True
        sandbox = h.Sandbox(tmp_path)
        sandbox.setup()
        arns = {"DB_PASSWORD": moto.secret_arns["DB_PASSWORD"]}
        from components.boot import render_user_data

        script = render_user_data(
            h.settings(arns, auto_scaling_group_name=h.ASG_NAME, lifecycle_hook_name=h.HOOK_NAME)
        )
        result = sandbox.run(script, proxy.endpoint, **extra)
        health = [
            c
            for c in sandbox.calls("curl")
            if any(a.startswith("http://127.0.0.1:") for a in c["argv"])
        ]
        return result, (list(proxy.completions), health)


def test_the_hook_waits_for_a_slow_health_then_continues(tmp_path: Path) -> None:
    result, (completions, health) = _lifecycle_run(tmp_path, STUB_HEALTH_FAILURES="3")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [c.result for c in completions] == ["CONTINUE"]
    assert len(health) == 4, "three failed /health answers, then one 200"
    assert health[-1]["t"] < completions[0].t


def test_a_fatal_boot_abandons_the_launch(tmp_path: Path) -> None:
    result, (completions, _) = _lifecycle_run(
        tmp_path, STUB_HEALTH_FAIL="1", HUMANSA_READY_TIMEOUT="2"
    )
    assert result.returncode != 0
    assert "FATAL: container did not answer" in result.stdout + result.stderr
    assert [(c.result, c.group, c.hook) for c in completions] == [
        ("ABANDON", h.ASG_NAME, h.HOOK_NAME)
    ]
