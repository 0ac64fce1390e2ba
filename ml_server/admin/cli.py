"""``make keys`` / ``make usage``: the admin API of a deployed environment, or of ``make serve``.

Deployed (``--env dev|staging|production``): the URL is the ``ServiceUrl`` output of the stack
``Humansa-<Env>-Service`` and the admin key the Secrets Manager secret
``/humansa/<env>/ADMIN_API_KEY``, both read with the caller's AWS credentials (boto3; the region
from ``config/<env>.yaml``). The caller's identity (STS ``GetCallerIdentity``) is sent as
``X-Admin-Actor``, so the server's audit log says who did what.

Local (no ``--env``): ``http://127.0.0.1:5001`` (``HUMANSA_URL`` overrides) and the key that
``make serve`` printed (``ADMIN_API_KEY``, else ``.humansa/admin_api_key``).

Examples::

    make keys ARGS="create --name team-a --owner alice --models 'openai/*' --budget-daily 5"
    make keys ENV=staging ARGS="list"
    make keys ENV=staging ARGS="update 7 --tpm 20000 --expires-in-days 30"
    make keys ENV=staging ARGS="revoke 7"
    make usage ENV=production ARGS="--start 2026-12-01"
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

LOCAL_URL = "http://127.0.0.1:5001"
LOCAL_KEY_FILE = Path(".humansa") / "admin_api_key"
PLACEHOLDER = "UNSET"  # components/boot.py PLACEHOLDER_SECRET_VALUE
# As ml_server/admin/routes.py allows (checked here first for an error naming the option).
MAX_EXPIRES_IN_DAYS = 36_500
MAX_BUDGET_USD = 1_000_000_000


class CliError(Exception):
    """A problem the user can fix; the message says how."""


class BadInput(CliError):
    """A wrong ENV or option (exit status 2)."""


@dataclass(frozen=True)
class Target:
    url: str
    admin_key: str
    actor: str


def local_target() -> Target:
    key = os.environ.get("ADMIN_API_KEY", "").strip()
    if not key and LOCAL_KEY_FILE.is_file():
        key = LOCAL_KEY_FILE.read_text().strip()
    if not key:
        raise CliError(
            f"no local admin key: start `make serve` (it writes {LOCAL_KEY_FILE}) or set "
            "ADMIN_API_KEY; for a deployed environment give ENV=dev|staging|production"
        )
    return Target(os.environ.get("HUMANSA_URL", LOCAL_URL).rstrip("/"), key, getpass.getuser())


def deployed_target(env: str, *, region: str | None = None) -> Target:
    """URL from the stack outputs, key from Secrets Manager, actor from STS (boto3)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from config import ConfigError, load_environment, naming

    if problem := naming.name_problem(env):
        raise BadInput(f"ENV: {problem}")
    try:
        config = load_environment(env)
    except ConfigError as exc:
        raise BadInput(f"ENV: {exc}") from None
    region = region or config.region
    stack = naming.stack_name(env, "Service")
    secret_id = f"/humansa/{env}/ADMIN_API_KEY"
    session = boto3.session.Session(region_name=region)
    try:
        # Who is asking first: the actor for the audit log, and the account a missing stack
        # was looked for in.
        identity = session.client("sts").get_caller_identity()
        actor, account = str(identity["Arn"]), str(identity["Account"])
        cfn = session.client("cloudformation")
        try:
            stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
        except ClientError as exc:
            # CloudFormation answers a stack that does not exist with ValidationError
            # ("Stack with id ... does not exist").
            if exc.response["Error"].get("Code") != "ValidationError":
                raise
            from humansa_ops.operate import not_deployed

            raise CliError(
                "stack "
                + not_deployed(stack, config.model_copy(update={"region": region}), account)
            ) from None
        from humansa_ops.operate import stack_state_problem

        if problem := stack_state_problem(stack, str(stacks[0].get("StackStatus", "")), env):
            raise CliError(problem)
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        if naming.OUTPUT_SERVICE_URL not in outputs:
            raise CliError(
                f"stack {stack} has no ServiceUrl output: deploy it (make deploy ENV={env})"
            )
        secret = session.client("secretsmanager").get_secret_value(SecretId=secret_id)[
            "SecretString"
        ]
    except ClientError as exc:
        from humansa_ops.aws_errors import explain

        if exc.response["Error"].get("Code") == "ResourceNotFoundException":
            raise CliError(
                f"secret {secret_id} does not exist in {region}: the Service stack creates it "
                f"(make deploy ENV={env}), then `make secrets ENV={env} NAME=ADMIN_API_KEY`"
            ) from None
        line = explain(exc, region=region)
        if line.startswith("AWS refused"):
            line += f" [stack {stack}, secret {secret_id}]"
        raise CliError(line) from None
    except BotoCoreError as exc:
        from humansa_ops.aws_errors import explain

        raise CliError(explain(exc, region=region)) from None
    if not secret.strip() or secret.strip() == PLACEHOLDER:
        raise CliError(
            f"{secret_id} is not set yet: `make secrets ENV={env} NAME=ADMIN_API_KEY` "
            "(the instances pick it up with their secrets refresh)"
        )
    return Target(outputs[naming.OUTPUT_SERVICE_URL].rstrip("/"), secret.strip(), actor)


def _none_or(kind: type, allowed: str) -> Any:
    """An argparse type: ``kind`` (finite), or none/null for "no such limit"; else an error
    that argparse prints after the option's name."""

    def parse(value: str) -> Any:
        if value.strip().lower() in ("none", "null"):
            return None
        try:
            parsed = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{allowed}, or 'none'; not {value!r}") from None
        if kind is float and not math.isfinite(parsed):
            raise argparse.ArgumentTypeError(f"{allowed}, or 'none'; not {value!r}")
        return parsed

    return parse


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and 0 < days <= MAX_EXPIRES_IN_DAYS):
        raise argparse.ArgumentTypeError(
            f"a number of days above 0 and at most {MAX_EXPIRES_IN_DAYS}; not {value!r}"
        )
    return days


def _day(value: str) -> str:
    from datetime import date

    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"a UTC day as YYYY-MM-DD; not {value!r}") from None


def _models(value: str) -> list[str] | None:
    if value.strip().lower() in ("none", "null", "*"):
        return None
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(
            "comma-separated model globs such as 'openai/*,claude-*', or 'none' for every model"
        )
    return items


def _key_fields(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "owner": "owner",
        "models": "allowed_models",
        "rpm": "rpm",
        "tpm": "tpm",
        "max_concurrent": "max_concurrent",
        "budget_daily": "budget_daily_usd",
        "budget_monthly": "budget_monthly_usd",
        "expires_at": "expires_at",
        "expires_in_days": "expires_in_days",
    }
    fields = {api: getattr(args, arg) for arg, api in names.items() if hasattr(args, arg)}
    fields = {k: v for k, v in fields.items() if v is not _UNSET}
    if getattr(args, "name", _UNSET) is not _UNSET:
        fields["name"] = args.name
    return fields


_UNSET: Any = object()


def _add_key_options(p: argparse.ArgumentParser) -> None:
    whole = "a whole number"
    usd = f"a number of USD from 0 to {MAX_BUDGET_USD}"
    p.add_argument("--owner", default=_UNSET, type=_none_or(str, "a name"))
    p.add_argument(
        "--models",
        default=_UNSET,
        type=_models,
        help="comma-separated globs ('openai/*', 'claude-*'; none = every model)",
    )
    p.add_argument(
        "--rpm",
        default=_UNSET,
        type=_none_or(int, f"{whole} of requests per minute (0 = no limit)"),
        help="0 = no limit, none = the server's RATE_LIMIT_RPM",
    )
    p.add_argument("--tpm", default=_UNSET, type=_none_or(int, f"{whole} of tokens per minute"))
    p.add_argument("--max-concurrent", default=_UNSET, type=_none_or(int, f"{whole} of requests"))
    p.add_argument(
        "--budget-daily", default=_UNSET, type=_none_or(float, usd), help="USD per UTC day"
    )
    p.add_argument(
        "--budget-monthly", default=_UNSET, type=_none_or(float, usd), help="USD per UTC month"
    )
    p.add_argument(
        "--expires-at",
        default=_UNSET,
        type=_none_or(str, "ISO 8601 with a zone"),
        help="ISO 8601 with a zone, e.g. 2027-01-01T00:00:00Z",
    )
    p.add_argument(
        "--expires-in-days",
        default=_UNSET,
        type=_days,
        help=f"from now (above 0, at most {MAX_EXPIRES_IN_DAYS})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make keys / make usage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env", help="deployed environment (default: the local make serve)")
    parser.add_argument("--region", help="AWS region (default: from config/<env>.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="API keys")
    ks = keys.add_subparsers(dest="action", required=True)
    create = ks.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--name", required=True)
    _add_key_options(create)
    listing = ks.add_parser("list", help="list keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    show = ks.add_parser("show", help="one key")
    show.add_argument("id", type=int)
    update = ks.add_parser("update", help="change a key's fields ('none' clears one)")
    update.add_argument("id", type=int)
    update.add_argument("--name", default=_UNSET)
    _add_key_options(update)
    revoke = ks.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id", type=int)
    usage = sub.add_parser("usage", help="spend by key, model and UTC day")
    usage.add_argument("--start", type=_day, help="first day, YYYY-MM-DD (default: 30 days ago)")
    usage.add_argument("--end", type=_day, help="last day, YYYY-MM-DD (default: today)")
    usage.add_argument("--key", type=int, help="one key id")
    return parser


def run(args: argparse.Namespace, target: Target, out: Any = sys.stdout) -> int:
    headers = {"Authorization": f"Bearer {target.admin_key}", "X-Admin-Actor": target.actor}
    with httpx.Client(base_url=target.url, headers=headers, timeout=30) as client:
        if args.command == "usage":
            params = {
                k: v
                for k, v in (("start", args.start), ("end", args.end), ("key_id", args.key))
                if v is not None
            }
            r = client.get("/admin/usage", params=params)
            _check(r)
            _print_usage(r.json(), out)
            return 0
        if args.action == "create":
            fields = _key_fields(args)
            r = client.post("/admin/keys", json=fields)
            _check(r)
            body = r.json()
            print(json.dumps({k: v for k, v in body.items() if k != "key"}, indent=2), file=out)
            print(f"Key (shown only once, store it now): {body['key']}", file=out)
            return 0
        if args.action == "list":
            r = client.get("/admin/keys", params={"include_revoked": str(args.all).lower()})
            _check(r)
            _print_keys(r.json()["data"], out)
            return 0
        if args.action == "show":
            r = client.get(f"/admin/keys/{args.id}")
        elif args.action == "update":
            fields = _key_fields(args)
            r = client.patch(f"/admin/keys/{args.id}", json=fields)
        else:
            r = client.delete(f"/admin/keys/{args.id}")
        _check(r)
        print(json.dumps(r.json(), indent=2), file=out)
    return 0


def _check(r: httpx.Response) -> None:
    if r.is_success:
        return
    option = ""
    try:
        error = r.json()["error"]
        message = error["message"]
        field = str(error.get("param") or "").split(".")
        name = field[1] if len(field) > 1 and field[0] in ("body", "query") else field[0]
        if name in OPTIONS:
            option = f" (option {OPTIONS[name]})"
    except (ValueError, KeyError, TypeError, AttributeError):
        message = r.text[:300]
    raise CliError(
        f"{r.request.method} {r.request.url.path}: HTTP {r.status_code}: {message}{option}"
    )


# The admin API's field names and this command's options.
OPTIONS = {
    "name": "--name",
    "owner": "--owner",
    "allowed_models": "--models",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "max_concurrent": "--max-concurrent",
    "budget_daily_usd": "--budget-daily",
    "budget_monthly_usd": "--budget-monthly",
    "expires_at": "--expires-at",
    "expires_in_days": "--expires-in-days",
    "start": "--start",
    "end": "--end",
    "key_id": "id",
}


def _limit(value: Any) -> str:
    return "-" if value is None else str(value)


def _short_time(value: str | None) -> str:
    """2026-12-31T13:21:20.174420Z -> 2026-12-31T13:21:20Z (the list's column)."""
    if not value:
        return "-"
    return value.split(".")[0].removesuffix("Z") + "Z" if "." in value else value


def _print_keys(keys: list[dict[str, Any]], out: Any) -> None:
    head = (
        f"{'ID':>4}  {'PREFIX':<11} {'STATUS':<8} {'RPM':>6} {'TPM':>8} {'CONC':>5} "
        f"{'$/DAY':>8} {'$/MONTH':>8} {'EXPIRES':<21} {'OWNER':<16} NAME  MODELS"
    )
    print(head, file=out)
    for k in keys:
        print(
            f"{k['id']:>4}  {k['prefix']:<11} {k['status']:<8} {_limit(k['rpm']):>6} "
            f"{_limit(k['tpm']):>8} {_limit(k['max_concurrent']):>5} "
            f"{_limit(k['budget_daily_usd']):>8} {_limit(k['budget_monthly_usd']):>8} "
            f"{_short_time(k['expires_at']):<21} {(k['owner'] or '-')[:16]:<16} {k['name']}  "
            f"{','.join(k['allowed_models']) or '*'}",
            file=out,
        )


def _print_usage(report: dict[str, Any], out: Any) -> None:
    print(f"Usage {report['start']} .. {report['end']} (UTC days)", file=out)
    print(
        f"{'DAY':<10}  {'KEY':>4} {'NAME':<16} {'MODEL':<36} {'REQS':>6} {'PROMPT':>9} "
        f"{'COMPL':>9} {'USD':>10}",
        file=out,
    )
    for r in report["data"]:
        cost = "-" if r["cost_usd"] is None else f"{r['cost_usd']:.4f}"
        print(
            f"{r['day']:<10}  {_limit(r['key_id']):>4} {(r['key_name'] or '-')[:16]:<16} "
            f"{(r['provider'] + '/' + r['model'])[:36]:<36} {r['requests']:>6} "
            f"{r['prompt_tokens']:>9} {r['completion_tokens']:>9} {cost:>10}",
            file=out,
        )
    for key_id, usd in sorted(report.get("cost_usd_by_key", {}).items()):
        print(f"key {key_id}: ${usd:.4f} in the period", file=out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target: Target | None = None
    try:
        target = deployed_target(args.env, region=args.region) if args.env else local_target()
        return run(args, target)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, BadInput) else 1
    except httpx.HTTPError as exc:
        where = target.url if target is not None else "?"
        hint = (
            f"is the {args.env} service up?"
            if args.env
            else "is `make serve` running? (HUMANSA_URL sets another URL)"
        )
        print(f"error: cannot reach the admin API at {where}: {exc}; {hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
