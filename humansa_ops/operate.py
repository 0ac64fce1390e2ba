"""Day-two commands: ``make status``, ``make logs`` and ``make shell`` for one environment.

Each reads the environment's ``config/<name>.yaml`` (account, region), then the outputs of
``Humansa-<Env>-Service`` (service URL, log groups, Auto Scaling group, target group, image), and
asks AWS with the usual credential chain (``AWS_PROFILE``, environment variables, SSO, ...).
``AWS_ENDPOINT_URL`` is honoured by boto3 (the tests point it at moto).

Usage:
    python -m humansa_ops.operate status --env NAME
    python -m humansa_ops.operate logs --env NAME [--follow] [--since MINUTES] [--setup]
    python -m humansa_ops.operate shell --env NAME [--instance ID] [--print-command]

Exit status: 0 done, 1 an AWS call failed or the environment is not deployed, 2 bad input,
3 a local tool is missing (the Session Manager plugin).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import ConfigError, EnvironmentConfig, load_environment, naming
from humansa_ops import aws_errors

SSM_PLUGIN_DOC = (
    "https://docs.aws.amazon.com/systems-manager/latest/userguide/"
    "session-manager-working-with-install-plugin.html"
)
_NOT_IMPLEMENTED = {"NotImplemented", "InvalidAction", "UnknownOperationException"}


class OperateError(Exception):
    """A failed step, phrased as one line for the operator."""


class Environment:
    """AWS clients for one environment, and its Service stack's outputs."""

    def __init__(self, config: EnvironmentConfig) -> None:
        import boto3

        self.config = config
        self._session = boto3.session.Session(region_name=config.region)
        self._clients: dict[str, Any] = {}
        self._outputs: dict[str, str] | None = None

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self._session.client(service)
        return self._clients[service]

    @property
    def service_stack(self) -> str:
        return naming.stack_name(self.config.name, "Service")

    def outputs(self) -> dict[str, str]:
        """The Service stack's outputs (``OperateError`` when it is not deployed, or in a state
        without outputs)."""
        if self._outputs is None:
            stack = _describe_stack(self, self.service_stack)
            if stack is None:
                account = str(self.client("sts").get_caller_identity().get("Account", ""))
                raise OperateError(not_deployed(self.service_stack, self.config, account))
            problem = stack_state_problem(
                self.service_stack, str(stack.get("StackStatus", "")), self.config.name
            )
            if problem:
                raise OperateError(problem)
            self._outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        return self._outputs

    def output(self, key: str) -> str:
        outputs = self.outputs()
        if key not in outputs:
            raise OperateError(
                f"{self.service_stack} has no output {key} (deployed before outputs were added: "
                f"make deploy ENV={self.config.name})"
            )
        return outputs[key]


def not_deployed(stack: str, config: EnvironmentConfig, account: str) -> str:
    """``stack`` does not exist in the credentials' ``account``: where it was looked for, and
    the config's account when that is another one (the wrong credentials, not a missing
    deploy)."""
    other = (
        f" (config/{config.name}.yaml names account {config.account})"
        if account != config.account
        else ""
    )
    return (
        f"{stack} is not deployed in {config.region}/{account}{other}: deploy it with "
        f"`make deploy ENV={config.name}`"
    )


# "Stack status codes" (AWS CloudFormation User Guide): REVIEW_IN_PROGRESS is a stack made for a
# change set that was never executed; ROLLBACK_COMPLETE follows a failed creation and allows only
# a delete. Neither has outputs. (An UPDATE_ROLLBACK_* stack keeps its previous outputs.)
_CREATION_FAILED = frozenset(
    {"CREATE_FAILED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_FAILED", "ROLLBACK_COMPLETE"}
)


def stack_state_problem(stack: str, status: str, env_name: str) -> str | None:
    """Why a stack in ``status`` has no outputs to read, and what to do; None when it has."""
    deploy = f"make deploy ENV={env_name}"
    events = f"make status ENV={env_name}"
    if status == "REVIEW_IN_PROGRESS":
        return (
            f"{stack} was never created ({status}: a change set was made but not executed): "
            f"{deploy}"
        )
    if status == "CREATE_IN_PROGRESS":
        return (
            f"{stack} is still being created ({status}): wait for the deploy ({events} shows "
            "its events)"
        )
    if status in _CREATION_FAILED:
        return (
            f"{stack} failed to create ({status}; {events} shows the events with the reason): "
            f"fix that, then {deploy} (the CDK CLI deletes a stack whose creation failed and "
            "creates it again)"
        )
    if status.startswith("DELETE_"):
        return (
            f"{stack} is being deleted or failed to delete ({status}; {events} shows the "
            f"events): finish the delete, then {deploy}"
        )
    return None


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _describe_stack(env: Environment, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        stacks = env.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if _error_code(exc) == "ValidationError":  # "Stack with id ... does not exist"
            return None
        raise
    return dict(stacks[0]) if stacks else None


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _check_account(env: Environment, out: Callable[[str], None]) -> None:
    identity = env.client("sts").get_caller_identity()
    account = str(identity.get("Account", ""))
    if account != env.config.account:
        out(
            f"warning: the credentials are for account {account}, config/{env.config.name}.yaml "
            f"says {env.config.account}"
        )


def status(env: Environment, out: Callable[[str], None] = print) -> int:
    """Print stacks and their last events, the rollout, target health, image and alarms."""
    cfg = env.config
    out(f"Environment {cfg.name} (account {cfg.account}, region {cfg.region})")
    _check_account(env, out)
    out("")
    out("Stacks:")
    cfn = env.client("cloudformation")
    for name in naming.stack_names(cfg.name):
        stack = _describe_stack(env, name)
        if stack is None:
            out(f"  {name}: not deployed")
            continue
        updated = stack.get("LastUpdatedTime") or stack.get("CreationTime")
        out(f"  {name}: {stack['StackStatus']} (last change {_when(updated)})")
        events = cfn.describe_stack_events(StackName=name).get("StackEvents", [])[:3]
        for event in events:
            reason = (
                f" - {event['ResourceStatusReason']}" if event.get("ResourceStatusReason") else ""
            )
            out(
                f"    {_when(event['Timestamp'])} {event['LogicalResourceId']} "
                f"{event['ResourceStatus']}{reason}"
            )
    outputs = env.outputs()
    out("")
    for key in (naming.OUTPUT_SERVICE_URL, naming.OUTPUT_DASHBOARD_URL):
        out(f"{key}: {outputs.get(key, '(no output)')}")
    from botocore.exceptions import ClientError

    unavailable = 0
    for title, section in (
        ("Auto Scaling group and rollout", _status_rollout),
        ("Targets", _status_targets),
        ("Image", _status_image),
        ("Alarms", _status_alarms),
    ):
        # One denied or failed call (a read-only role without one permission, a target group
        # deleted by hand) costs its section, not the rest of the picture.
        try:
            section(env, out)
        except ClientError as exc:
            unavailable += 1
            out("")
            out(f"{title}: unavailable - {aws_errors.explain(exc, region=cfg.region)}")
    if unavailable:
        raise OperateError(f"{unavailable} section(s) unavailable (see above)")
    return 0


def _status_rollout(env: Environment, out: Callable[[str], None]) -> None:
    from botocore.exceptions import ClientError
    from botocore.parsers import ResponseParserError

    asg_name = env.output(naming.OUTPUT_ASG_NAME)
    autoscaling = env.client("autoscaling")
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg_name])
    out("")
    if not groups["AutoScalingGroups"]:
        out(f"Auto Scaling group {asg_name}: not found")
        return
    group = groups["AutoScalingGroups"][0]
    out(
        f"Auto Scaling group {asg_name}: desired {group['DesiredCapacity']} "
        f"(min {group['MinSize']}, max {group['MaxSize']})"
    )
    for instance in group.get("Instances", []):
        out(
            f"  {instance['InstanceId']} {instance.get('InstanceType') or '?'} "
            f"{instance['AvailabilityZone']} {instance['LifecycleState']} "
            f"{instance['HealthStatus']}"
        )
    try:
        refreshes = autoscaling.describe_instance_refreshes(
            AutoScalingGroupName=asg_name, MaxRecords=1
        ).get("InstanceRefreshes", [])
    except ClientError as exc:
        if _error_code(exc) in _NOT_IMPLEMENTED:
            out(
                "Instance refresh: unknown - this endpoint does not implement "
                f"DescribeInstanceRefreshes ({_error_code(exc)})"
            )
            return
        raise
    except ResponseParserError:  # moto answers an unimplemented action with a bare HTTP 500
        out(
            "Instance refresh: unknown - this endpoint does not implement "
            "DescribeInstanceRefreshes (no parseable answer)"
        )
        return
    if not refreshes:
        out("Instance refresh: none yet")
        return
    refresh = refreshes[0]
    checkpoints = refresh.get("Preferences", {}).get("CheckpointPercentages") or []
    line = (
        f"Instance refresh {refresh['InstanceRefreshId']}: {refresh['Status']}, "
        f"{refresh.get('PercentageComplete', 0)}% complete, "
        f"{refresh.get('InstancesToUpdate', 0)} instance(s) to update"
    )
    if checkpoints:
        line += f", checkpoints at {', '.join(f'{c}%' for c in checkpoints)}"
    out(line)
    if refresh.get("StatusReason"):
        out(f"  {refresh['StatusReason']}")


def _status_targets(env: Environment, out: Callable[[str], None]) -> None:
    arn = env.output(naming.OUTPUT_TARGET_GROUP_ARN)
    health = env.client("elbv2").describe_target_health(TargetGroupArn=arn)
    descriptions = health.get("TargetHealthDescriptions", [])
    out("")
    out(f"Targets ({len(descriptions)}):")
    for target in descriptions:
        state = target["TargetHealth"]
        reason = f" ({state['Reason']})" if state.get("Reason") else ""
        where = f"{target['Target']['Id']}:{target['Target'].get('Port', '')}"
        out(f"  {where} {state['State']}{reason}")


def split_image_uri(uri: str) -> tuple[str, str, str]:
    """``<registry>/<repository>:<tag>`` -> (registry, repository, tag)."""
    registry, _, rest = uri.partition("/")
    repository, _, tag = rest.rpartition(":")
    if not repository:
        raise OperateError(f"image URI {uri!r} has no tag")
    return registry, repository, tag


def _status_image(env: Environment, out: Callable[[str], None]) -> None:
    from botocore.exceptions import ClientError

    uri = env.output(naming.OUTPUT_IMAGE_URI)
    source = env.outputs().get(naming.OUTPUT_IMAGE_SOURCE, "?")
    tag_parameter = f"{env.config.parameter_path}ml_server_image_tag"
    try:
        recorded = env.client("ssm").get_parameter(Name=tag_parameter)["Parameter"]["Value"]
    except ClientError as exc:
        recorded = f"(unreadable: {_error_code(exc)})"
    out("")
    out(f"Image ({source}): {uri}")
    out(f"  release tag ({tag_parameter}): {recorded}")
    _, repository, tag = split_image_uri(uri)
    try:
        images = env.client("ecr").describe_images(
            repositoryName=repository, imageIds=[{"imageTag": tag}]
        )["imageDetails"]
    except ClientError as exc:
        out(f"  digest: unknown ({_error_code(exc)} for {repository}:{tag})")
        return
    digests = sorted({image["imageDigest"] for image in images})
    out(f"  digest: {', '.join(digests) or 'unknown'} (what ECR serves for this tag)")


def _status_alarms(env: Environment, out: Callable[[str], None]) -> None:
    prefix = f"Humansa-{env.config.title}-"
    paginator = env.client("cloudwatch").get_paginator("describe_alarms")
    firing: list[dict[str, Any]] = []
    for page in paginator.paginate(AlarmNamePrefix=prefix, StateValue="ALARM"):
        alarms = page.get("MetricAlarms", []) + page.get("CompositeAlarms", [])
        firing += [a for a in alarms if a.get("StateValue") == "ALARM"]  # moto ignores the filter
    out("")
    if not firing:
        out(f"Alarms in ALARM ({prefix}*): none")
        return
    out(f"Alarms in ALARM ({prefix}*): {len(firing)}")
    for alarm in firing:
        out(
            f"  {alarm['AlarmName']} since {_when(alarm.get('StateUpdatedTimestamp'))}: "
            f"{alarm.get('StateReason', '')}"
        )


def log_events(
    env: Environment,
    *,
    setup: bool,
    since_minutes: int,
    follow: bool,
    max_polls: int | None = None,
    poll_seconds: float = 2.0,
) -> Iterator[str]:
    """Lines of the server (or boot) log group, oldest first; with ``follow``, keep polling."""
    from botocore.exceptions import ClientError

    key = naming.OUTPUT_SETUP_LOG_GROUP if setup else naming.OUTPUT_APP_LOG_GROUP
    group = env.output(key)
    logs = env.client("logs")
    start = int((time.time() - since_minutes * 60) * 1000)
    seen: set[str] = set()
    polls = 0
    while True:
        kwargs: dict[str, Any] = {"logGroupName": group, "startTime": start}
        newest = start
        while True:
            try:
                page = logs.filter_log_events(**kwargs)
            except ClientError as exc:
                if _error_code(exc) != "ResourceNotFoundException":
                    raise
                raise OperateError(
                    f"log group {group} does not exist in {env.config.region}: "
                    f"{env.service_stack} creates it (make deploy ENV={env.config.name})"
                ) from None
            for event in page.get("events", []):
                if event["eventId"] in seen:
                    continue
                seen.add(event["eventId"])
                newest = max(newest, int(event["timestamp"]))
                stamp = datetime.fromtimestamp(event["timestamp"] / 1000, UTC)
                yield f"{stamp:%Y-%m-%d %H:%M:%S} {event['logStreamName']} {event['message']}"
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        polls += 1
        if not follow or (max_polls is not None and polls >= max_polls):
            return
        start = newest
        time.sleep(poll_seconds)


def pick_instance(env: Environment) -> str:
    """An InService, Healthy instance of the environment's Auto Scaling group."""
    asg_name = env.output(naming.OUTPUT_ASG_NAME)
    groups = env.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[asg_name]
    )["AutoScalingGroups"]
    instances = groups[0].get("Instances", []) if groups else []
    for instance in instances:
        if instance["LifecycleState"] == "InService" and instance["HealthStatus"] == "Healthy":
            return str(instance["InstanceId"])
    raise OperateError(f"no InService instance in {asg_name} (make status ENV={env.config.name})")


def shell_command(env: Environment, instance: str | None) -> list[str]:
    """The ``aws ssm start-session`` command for ``instance`` (default: a healthy one), which
    must be an instance of the environment's group."""
    if instance:
        asg_name = env.output(naming.OUTPUT_ASG_NAME)
        groups = env.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[asg_name]
        )["AutoScalingGroups"]
        ids = [str(i["InstanceId"]) for i in (groups[0].get("Instances", []) if groups else [])]
        if instance not in ids:
            raise OperateError(
                f"{instance} is not an instance of {asg_name} (its instances: "
                f"{', '.join(ids) or 'none'}; make status ENV={env.config.name})"
            )
    target = instance or pick_instance(env)
    return ["aws", "ssm", "start-session", "--target", target, "--region", env.config.region]


#: The venv's bin folder: ``make shell`` runs its pinned ``aws`` (awscli in requirements-dev.txt)
#: when none is on PATH (the venv is not activated by make).
VENV_BIN = Path(sys.executable).parent


def aws_cli() -> str | None:
    """The ``aws`` to run: the one on PATH, else the venv's; None when there is neither."""
    return shutil.which("aws") or shutil.which("aws", path=str(VENV_BIN))


def missing_plugin_message() -> str | None:
    """Why ``make shell`` cannot open a session on this machine, or None."""
    if shutil.which("session-manager-plugin"):
        return None
    return (
        "needs the AWS Session Manager plugin (session-manager-plugin is not on "
        f"PATH); install it as in {SSM_PLUGIN_DOC} "
        "(Debian/Ubuntu: download session-manager-plugin.deb from that page, then "
        "`sudo dpkg -i session-manager-plugin.deb`; macOS: `brew install --cask "
        "session-manager-plugin`)"
    )


def missing_cli_message() -> str:
    return (
        "needs the AWS CLI (aws is neither on PATH nor in the venv): make install (the venv "
        "pins awscli), or install the AWS CLI"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="status, logs and shell for one environment")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("status", "logs", "shell"):
        sub = commands.add_parser(name)
        sub.add_argument("--env", required=True, help="environment (config/<name>.yaml)")
        if name == "logs":
            sub.add_argument("--follow", action="store_true", help="keep polling (Ctrl-C stops)")
            sub.add_argument("--since", type=int, default=30, help="minutes back (default 30)")
            sub.add_argument("--setup", action="store_true", help="the boot log group")
            sub.add_argument("--max-polls", type=int, help=argparse.SUPPRESS)
        if name == "shell":
            sub.add_argument("--instance", help="instance ID (default: a healthy instance)")
            sub.add_argument(
                "--print-command", action="store_true", help="print the command, do not run it"
            )
    args = parser.parse_args(argv)
    prog = f"make {args.command}"
    if not args.env:
        print(f"{prog}: needs ENV=<name> (a config/<name>.yaml)", file=sys.stderr)
        return 2
    try:
        config = load_environment(args.env)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    from botocore.exceptions import BotoCoreError, ClientError

    env = Environment(config)
    try:
        if args.command == "status":
            return status(env)
        if args.command == "logs":
            for line in log_events(
                env,
                setup=args.setup,
                since_minutes=args.since,
                follow=args.follow,
                max_polls=args.max_polls,
            ):
                print(line, flush=True)
            return 0
        # The stack and a healthy instance first (two cheap calls): installing the plugin does
        # not help an environment that is not deployed.
        env.outputs()
        command = shell_command(env, args.instance)
        if args.print_command:
            print(" ".join(command))
            return 0
        executable = aws_cli()
        problem = missing_plugin_message() if executable else missing_cli_message()
        if problem:
            print(f"{prog}: {problem}", file=sys.stderr)
            return 3
        print(f"{prog}: {' '.join(command)}", flush=True)
        os.execv(str(executable), command)  # noqa: S606 - replaces this process with the session
    except OperateError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as exc:
        print(f"{prog}: {aws_errors.explain(exc, region=config.region)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
