"""CloudFormation custom resource: the server's own PostgreSQL login, made with the master secret.

Runs as a Lambda function in the VPC (components/db_bootstrap.py); the fleet never holds the master
credentials. On Create and Update it makes sure, idempotently, that:

- ``<user>`` exists: LOGIN, no SUPERUSER / CREATEDB / CREATEROLE / REPLICATION / BYPASSRLS, with the
  app secret's password when it is created (afterwards the rotation owns the password; the handler
  resets it only if the secret's current credentials do not log in);
- ``<user>_clone`` exists (the second user of Secrets Manager's alternating-users rotation, which
  sets its password on the first rotation and alternates afterwards), is a member of ``<user>``
  and runs every session as ``<user>`` (``ALTER ROLE ... SET role``), so the objects either login
  creates belong to ``<user>``;
- ``<user>`` may connect to the database and use and create in schema ``public``, and owns every
  relation and type there that the master owned (databases created before this role existed).

Delete keeps the roles (the data they own stays with the database). Every change is logged.
Dependencies (pg8000 and its own) are vendored into ``vendor/`` by ``make install``; boto3 comes
with the Lambda runtime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import ssl
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"
if VENDOR.is_dir() and str(VENDOR) not in sys.path:
    sys.path.insert(0, str(VENDOR))

import pg8000.native  # type: ignore[import-not-found]  # noqa: E402  (vendor/)

log = logging.getLogger()
log.setLevel(logging.INFO)

CLONE_SUFFIX = "_clone"  # Secrets Manager's alternating-users rotation names the second user so
RESTRICTED = {
    "rolsuper": "NOSUPERUSER",
    "rolcreatedb": "NOCREATEDB",
    "rolcreaterole": "NOCREATEROLE",
    "rolreplication": "NOREPLICATION",
    "rolbypassrls": "NOBYPASSRLS",
}
# The Amazon RDS CA bundle, copied next to the vendored packages by `make install`.
DEFAULT_CA_FILE = VENDOR / "rds-ca-bundle.pem"

Connect = Callable[[str, str], pg8000.native.Connection]


def connector(host: str, port: int, database: str, ca_file: str | Path) -> Connect:
    """Connections (user, password) -> session, TLS verify-full against ``ca_file``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def connect(user: str, password: str) -> pg8000.native.Connection:
        return pg8000.native.Connection(
            user,
            host=host,
            port=port,
            database=database,
            password=password,
            ssl_context=context,
            timeout=10,
        )

    return connect


def _ident(conn: pg8000.native.Connection, name: str) -> str:
    (row,) = conn.run("SELECT quote_ident(:n)", n=name)
    return str(row[0])


def _role(conn: pg8000.native.Connection, name: str) -> dict[str, Any] | None:
    cols = ", ".join(["rolcanlogin", *RESTRICTED])
    rows = conn.run(f"SELECT {cols} FROM pg_roles WHERE rolname = :n", n=name)  # noqa: S608
    if not rows:
        return None
    return dict(zip(["rolcanlogin", *RESTRICTED], rows[0], strict=True))


def _ensure_role(
    conn: pg8000.native.Connection, name: str, password: str | None, changes: list[str]
) -> None:
    ident = _ident(conn, name)
    attrs = "LOGIN " + " ".join(RESTRICTED.values())
    role = _role(conn, name)
    if role is None:
        if password is None:
            conn.run(f"CREATE ROLE {ident} {attrs}")
        else:
            conn.run(f"CREATE ROLE {ident} {attrs} PASSWORD {_verifier(conn, password)}")
        changes.append(f"created role {name}")
    elif not role["rolcanlogin"] or any(role[k] for k in RESTRICTED):
        conn.run(f"ALTER ROLE {ident} {attrs}")
        changes.append(f"restricted role {name} ({attrs})")


def ensure_app_user(
    conn: pg8000.native.Connection,
    *,
    user: str,
    password: str,
    database: str,
    logs_in: Callable[[str, str], bool] | None = None,
    current_user: str | None = None,
    current_password: str | None = None,
) -> list[str]:
    """Bring the app's roles to the wanted state; the changes made (empty: nothing to do).

    Args:
        conn: a session as the RDS master user, in ``database``.
        user: the app's login (the app secret's first username, without ``_clone``).
        password: its password when it is created.
        database: the database the app uses.
        logs_in: tries a login (user, password); with ``current_user``/``current_password`` (the
            app secret's AWSCURRENT credentials) the handler resets that login's password only
            when they do not log in.
    """
    if user.endswith(CLONE_SUFFIX):
        raise ValueError(f"the app user {user!r} must not end with {CLONE_SUFFIX}")
    changes: list[str] = []
    clone = user + CLONE_SUFFIX
    u, c = _ident(conn, user), _ident(conn, clone)
    _ensure_role(conn, user, password, changes)
    _ensure_role(conn, clone, None, changes)

    member = conn.run(
        "SELECT 1 FROM pg_auth_members WHERE roleid = to_regrole(:r) AND member = to_regrole(:m)",
        r=user,
        m=clone,
    )
    if not member:
        conn.run(f"GRANT {u} TO {c}")
        changes.append(f"granted {user} to {clone}")
    settings = conn.run(
        "SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = 0 "
        "AND s.setrole = to_regrole(:m)",
        m=clone,
    )
    wanted = f"role={user}"
    if not settings or wanted not in (settings[0][0] or []):
        conn.run(f"ALTER ROLE {c} SET role = {_literal(conn, user)}")
        changes.append(f"{clone} sessions run as {user}")

    if not conn.run("SELECT has_database_privilege(:u, :d, 'CONNECT')", u=user, d=database)[0][0]:
        conn.run(f"GRANT CONNECT ON DATABASE {_ident(conn, database)} TO {u}")
        changes.append(f"granted CONNECT on database {database} to {user}")
    for privilege in ("USAGE", "CREATE"):
        if not conn.run("SELECT has_schema_privilege(:u, 'public', :p)", u=user, p=privilege)[0][0]:
            conn.run(f"GRANT {privilege} ON SCHEMA public TO {u}")
            changes.append(f"granted {privilege} on schema public to {user}")

    _take_over_master_objects(conn, user, u, changes)
    if logs_in and current_user and current_password is not None:
        if current_user not in (user, clone):
            raise ValueError(
                f"the app secret's user {current_user!r} is neither {user} nor {clone}"
            )
        if not logs_in(current_user, current_password):
            verifier = _verifier(conn, current_password)
            conn.run(f"ALTER ROLE {_ident(conn, current_user)} PASSWORD {verifier}")
            changes.append(f"reset the password of {current_user} to the app secret's")
    return changes


def _verifier(conn: pg8000.native.Connection, password: str) -> str:
    """A SCRAM-SHA-256 verifier as a SQL literal (RFC 5802 / 7677, PostgreSQL's stored format).

    ``CREATE/ALTER ROLE`` take no bind parameters; hashing here keeps the plain password out of
    the statement text, so out of the database's statement log too.
    """
    salt = os.urandom(16)
    iterations = 4096
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return _literal(
        conn,
        f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}",
    )


def _literal(conn: pg8000.native.Connection, value: str) -> str:
    (row,) = conn.run("SELECT quote_literal(:v)", v=value)
    return str(row[0])


_KINDS = {"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}


def _take_over_master_objects(
    conn: pg8000.native.Connection, user: str, u: str, changes: list[str]
) -> None:
    """Relations and types in ``public`` owned by the master (tables made before the app role)."""
    rows = conn.run(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relowner = current_user::regrole "
        "AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S') "
        # sequences owned by a table follow the table (ALTER TABLE ... OWNER moves them)
        "AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid "
        "AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))) ORDER BY c.relkind, 1"
    )
    types = conn.run(
        "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'public' AND t.typowner = current_user::regrole "
        "AND t.typtype IN ('e', 'd') ORDER BY 1"
    )
    if not rows and not types:
        return
    # ALTER ... OWNER TO needs membership in the new owner (RDS's master is no superuser).
    if not conn.run("SELECT pg_has_role(current_user, :u, 'MEMBER')", u=user)[0][0]:
        conn.run(f"GRANT {u} TO current_user")
        changes.append(f"granted {user} to the master (to hand over its objects)")
    for name, kind in rows:
        what = "SEQUENCE" if kind == "S" else _KINDS[kind]
        conn.run(f"ALTER {what} public.{_ident(conn, name)} OWNER TO {u}")
        changes.append(f"{what.lower()} {name} now owned by {user}")
    for (name,) in types:
        conn.run(f"ALTER TYPE public.{_ident(conn, name)} OWNER TO {u}")
        changes.append(f"type {name} now owned by {user}")


# --- Lambda / CloudFormation -----------------------------------------------------------------


def _secret(client: Any, arn: str) -> dict[str, Any]:
    value = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
    if not isinstance(value, dict):
        raise ValueError(f"secret {arn} is not a JSON object")
    return value


def _send(event: dict[str, Any], status: str, reason: str, data: dict[str, Any]) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:3000],
            "PhysicalResourceId": event.get("PhysicalResourceId")
            or event["ResourceProperties"].get("AppUsername", "humansa-db-app-user"),
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": data,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - CloudFormation's pre-signed S3 URL
        event["ResponseURL"],
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
        resp.read()


def run(event: dict[str, Any], secrets_client: Any) -> dict[str, Any]:
    """The work of one Create/Update: returns the response Data."""
    props = event["ResourceProperties"]
    master = _secret(secrets_client, props["MasterSecretArn"])
    app = _secret(secrets_client, props["AppSecretArn"])
    user = str(props["AppUsername"])
    database = str(props["DatabaseName"])
    host = str(master.get("host") or app["host"])
    port = int(master.get("port") or app.get("port") or 5432)
    connect = connector(host, port, database, os.environ.get("CA_FILE") or DEFAULT_CA_FILE)

    def logs_in(name: str, password: str) -> bool:
        try:
            connect(name, password).close()
        except pg8000.exceptions.DatabaseError as exc:
            if "28P01" in str(exc) or "password authentication failed" in str(exc):
                return False
            raise
        return True

    # Autocommit: each statement stands alone, so a role made here logs in for the check below;
    # a failure half-way leaves a state the next run completes (every step checks first).
    conn = connect(str(master["username"]), str(master["password"]))
    try:
        changes = ensure_app_user(
            conn,
            user=user,
            password=str(app["password"]) if app.get("username") == user else _fresh(),
            database=database,
            logs_in=logs_in,
            current_user=str(app["username"]),
            current_password=str(app["password"]),
        )
    finally:
        conn.close()
    for change in changes:
        log.info("db app user: %s", change)
    if not changes:
        log.info("db app user: nothing to change")
    return {"Changes": len(changes), "Username": user}


def _fresh() -> str:
    """A password nobody knows, for a role the secret does not name (the rotation sets it)."""
    import secrets

    return secrets.token_urlsafe(32)


def handler(event: dict[str, Any], context: Any) -> None:
    log.info("%s %s", event.get("RequestType"), event.get("LogicalResourceId"))
    try:
        if event["RequestType"] == "Delete":
            data: dict[str, Any] = {}  # the roles stay: the data they own stays too
        else:
            import boto3

            data = run(event, boto3.client("secretsmanager"))
        _send(event, "SUCCESS", "OK", data)
    except Exception as exc:
        log.exception("db app user failed")
        _send(event, "FAILED", f"{type(exc).__name__}: {exc}", {})
