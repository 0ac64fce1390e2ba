"""Command line:
``python -m ml_server serve | migrate | keys create --name N [--rpm N] | keys list |
keys set-rpm ID N|default | keys revoke ID | usage [--since D] [--until D] [--key ID]
[--model M] [--json]``.

Run ``python -m ml_server --help`` for details.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from ml_server.config import Settings, SettingsError, load_settings

T = TypeVar("T")
log = logging.getLogger("ml_server")


async def _with_sessions(settings: Settings, fn: Callable[..., Awaitable[T]]) -> T:
    from ml_server.db.engine import make_engine, make_sessionmaker

    engine = make_engine(settings.sqlalchemy_url)
    try:
        async with make_sessionmaker(engine)() as session:
            return await fn(session)
    finally:
        await engine.dispose()


def _migrate(settings: Settings) -> None:
    from ml_server.db.migrate import upgrade_to_head

    upgrade_to_head(settings.sqlalchemy_url)


def cmd_keys_create(settings: Settings, name: str, rpm: int | None = None) -> str:
    from ml_server.db.keys import create_key

    _migrate(settings)
    row, key = asyncio.run(_with_sessions(settings, lambda s: create_key(s, name, rpm)))
    print(f"Created API key {row.id} ({name}). It is shown only once:", file=sys.stderr)
    print(key)
    return key


def cmd_keys_list(settings: Settings) -> None:
    from ml_server.db.keys import list_keys

    _migrate(settings)
    rows = asyncio.run(_with_sessions(settings, list_keys))
    print(f"{'ID':>4}  {'PREFIX':<12} {'CREATED':<20} {'STATUS':<8} {'RPM':<9} NAME")
    for r in rows:
        status = "revoked" if r.revoked_at else "active"
        created = r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else ""
        rpm = "default" if r.rate_limit_rpm is None else str(r.rate_limit_rpm or "unlimited")
        print(f"{r.id:>4}  {r.prefix + '…':<12} {created:<20} {status:<8} {rpm:<9} {r.name}")


def cmd_keys_set_rpm(settings: Settings, key_id: int, rpm: int | None) -> int:
    from ml_server.db.keys import set_key_rpm

    _migrate(settings)
    done = asyncio.run(_with_sessions(settings, lambda s: set_key_rpm(s, key_id, rpm)))
    if not done:
        print(f"keys set-rpm: no key with id {key_id}", file=sys.stderr)
        return 1
    what = "the server default (RATE_LIMIT_RPM)" if rpm is None else f"{rpm} requests/minute"
    if rpm == 0:
        what = "no limit"
    print(f"Key {key_id}: {what} (servers apply it within KEY_CACHE_SECONDS)")
    return 0


def _rpm(value: str) -> int | None:
    """``--rpm`` / ``set-rpm`` value: a whole number >= 0 (0 = no limit) or ``default``."""
    if value.lower() == "default":
        return None
    try:
        rpm = int(value)
    except ValueError:
        rpm = -1
    if rpm < 0:
        raise argparse.ArgumentTypeError(
            f"RPM must be a whole number >= 0 (0 = no limit) or 'default', not {value!r}"
        )
    return rpm


def cmd_keys_revoke(settings: Settings, key_id: int) -> int:
    from ml_server.db.keys import revoke_key

    _migrate(settings)
    done = asyncio.run(_with_sessions(settings, lambda s: revoke_key(s, key_id)))
    if not done:
        print(f"keys revoke: no active key with id {key_id}", file=sys.stderr)
        return 1
    print(f"Revoked key {key_id} (servers stop accepting it within KEY_CACHE_SECONDS)")
    return 0


def cmd_usage(settings: Settings, args: argparse.Namespace) -> None:
    import json

    from ml_server.usage_report import usage_report

    _migrate(settings)
    rows = asyncio.run(
        _with_sessions(
            settings,
            lambda s: usage_report(
                s, since=args.since, until=args.until, key_id=args.key, model=args.model
            ),
        )
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'DAY':<10} {'KEY':>4} {'MODEL':<36} {'REQS':>6} {'INPUT':>10} {'CACHED':>9} "
        f"{'CWRITE':>8} {'OUTPUT':>9} {'REASON':>8} {'COST_USD':>12} UNPRICED"
    )
    for r in rows:
        key = "-" if r["api_key_id"] is None else str(r["api_key_id"])
        print(
            f"{r['day']:<10} {key:>4} {r['model'][:36]:<36} {r['requests']:>6} "
            f"{r['input_tokens']:>10} {r['cached_input_tokens']:>9} {r['cache_write_tokens']:>8} "
            f"{r['output_tokens']:>9} {r['reasoning_tokens']:>8} {r['cost_usd']:>12} "
            f"{r['unpriced_requests']}"
        )


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a day is YYYY-MM-DD, not {value!r}") from None


def cmd_serve(settings: Settings, *, local: bool) -> None:
    import uvicorn

    from ml_server.app import SERVING_ENV, create_app
    from ml_server.http_protocol import HEADER_READ_ENV, HeaderDeadlineProtocol
    from ml_server.logging import configure_logging

    os.environ[SERVING_ENV] = "1"  # the app tunes the garbage collector once started
    # The request-head deadline, for this process and (through the environment) its workers.
    os.environ[HEADER_READ_ENV] = f"{settings.header_read_seconds:g}"
    HeaderDeadlineProtocol.header_seconds = settings.header_read_seconds
    host = settings.ml_server_host
    if local:
        host = "127.0.0.1"
        _migrate(settings)
        key = cmd_keys_create(settings, "make-serve")
        settings = _local_admin_key(settings)
        model = "fake/echo" if settings.fake_provider_enabled else "openai/gpt-4o-mini"
        base = f"http://{host}:{settings.ml_server_port}"
        print(
            f"\nHumansa ML Server on {base} (database: {settings.sqlalchemy_url.split('://')[0]})\n"
            f"Try it:\n\n"
            f"curl -s {base}/v1/chat/completions \\\n"
            f"  -H 'Authorization: Bearer {key}' \\\n"
            f"  -H 'Content-Type: application/json' \\\n"
            f'  -d \'{{"model": "{model}", "messages": [{{"role": "user", '
            f'"content": "Hello"}}]}}\'\n\n'
            f'OpenAI SDK: OpenAI(base_url="{base}/v1", api_key="{key}")\n\n'
            f"Admin API key (this machine only; `make keys` reads it from "
            f"{Path(settings.local_data_dir) / LOCAL_ADMIN_KEY_FILE}): "
            f"{settings.admin_api_key.get_secret_value() if settings.admin_api_key else ''}\n"
            f"curl -s {base}/admin/keys -H 'Authorization: Bearer <admin key>'\n",
            flush=True,
        )
    configure_logging(settings.log_level)
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, wait up to DRAIN_SECONDS for
    # requests and streams, then the lifespan flushes usage) and afterwards re-raises the signal
    # under the handler that was installed before it. With Python's default that re-raised
    # SIGTERM kills the process (exit 143); this handler exits 0 instead, and also ends a start
    # that is interrupted before uvicorn has installed its own.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    options: dict[str, Any] = {
        "host": host,
        "port": settings.ml_server_port,
        "loop": "uvloop",
        "http": HeaderDeadlineProtocol,
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "limit_concurrency": settings.max_concurrency,
        "timeout_graceful_shutdown": settings.drain_seconds,
        "timeout_keep_alive": settings.keep_alive_seconds,
    }
    workers = worker_count(settings)
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Several processes share the port (uvicorn's supervisor binds it, each worker accepts);
    # each builds its own app from the same environment, so settings made here go through it.
    if settings.admin_api_key is not None:
        os.environ["ADMIN_API_KEY"] = settings.admin_api_key.get_secret_value()
    folder = _prometheus_multiprocess_dir()
    if settings.effective_metrics_port:  # one metrics port for every worker's counters
        from prometheus_client import start_http_server

        from ml_server.metrics import worker_registry

        registry = worker_registry(folder)
        start_http_server(settings.effective_metrics_port, settings.metrics_host, registry=registry)
    log.info("starting workers", extra={"fields": {"workers": workers}})
    uvicorn.run("ml_server.app:create_app", factory=True, workers=workers, **options)


def worker_count(settings: Settings) -> int:
    """WEB_CONCURRENCY, or one per CPU this process may run on when it is 0."""
    if settings.web_concurrency:
        return settings.web_concurrency
    return max(1, len(os.sched_getaffinity(0)))


def _prometheus_multiprocess_dir() -> str:
    """Counters of every worker in one /metrics (prometheus_client's multiprocess mode): a fresh
    folder in PROMETHEUS_MULTIPROC_DIR (default: a new temporary one) before any worker starts."""
    import shutil
    import tempfile

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        Path(folder).mkdir(parents=True, exist_ok=True)
    else:
        folder = tempfile.mkdtemp(prefix="ml-server-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


LOCAL_ADMIN_KEY_FILE = "admin_api_key"


def _local_admin_key(settings: Settings) -> Settings:
    """``make serve``: ADMIN_API_KEY if set, else one kept in LOCAL_DATA_DIR (made once, 0600)."""
    import secrets

    from pydantic import SecretStr

    if settings.admin_api_key is not None and settings.admin_api_key.get_secret_value().strip():
        return settings
    path = Path(settings.local_data_dir) / LOCAL_ADMIN_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("hsa-" + secrets.token_urlsafe(32) + "\n")
    return settings.model_copy(update={"admin_api_key": SecretStr(path.read_text().strip())})


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handling (before start, or re-raised after the drain)."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument(
        "--local",
        action="store_true",
        help="bind 127.0.0.1, create an API key and print a ready-to-paste curl (make serve)",
    )
    sub.add_parser("migrate", help="apply database migrations")
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--rpm",
        type=_rpm,
        default=None,
        help="requests per minute for this key (0 = no limit; default: RATE_LIMIT_RPM)",
    )
    keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    set_rpm = keys_sub.add_parser("set-rpm", help="set a key's requests-per-minute limit")
    set_rpm.add_argument("id", type=int)
    set_rpm.add_argument("rpm", type=_rpm, help="N >= 0 (0 = no limit) or 'default'")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=int)
    usage = sub.add_parser("usage", help="tokens and spend by day, key and model")
    usage.add_argument("--since", type=_day, help="first day (UTC), default: 6 days ago")
    usage.add_argument("--until", type=_day, help="last day (UTC), default: today")
    usage.add_argument("--key", type=int, help="only this key id")
    usage.add_argument("--model", help="only this model (provider/model)")
    usage.add_argument("--json", action="store_true", help="JSON instead of a table")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"ml_server: configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "serve":
        cmd_serve(settings, local=args.local)
    elif args.command == "migrate":
        _migrate(settings)
        print("migrations applied")
    elif args.command == "usage":
        cmd_usage(settings, args)
    elif args.keys_command == "create":
        cmd_keys_create(settings, args.name, args.rpm)
    elif args.keys_command == "list":
        cmd_keys_list(settings)
    elif args.keys_command == "set-rpm":
        return cmd_keys_set_rpm(settings, args.id, args.rpm)
    elif args.keys_command == "revoke":
        return cmd_keys_revoke(settings, args.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
