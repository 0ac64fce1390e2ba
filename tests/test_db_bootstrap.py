"""The database app-user custom resource's handler, run for real.

A PostgreSQL with TLS (throwaway CA), a master role like RDS's (CREATEROLE/CREATEDB, no superuser,
owner of the database), the two secrets in moto's Secrets Manager on 127.0.0.1, and a local HTTP
server standing in for CloudFormation's pre-signed response URL. The handler is the Lambda
asset's own code with its vendored pg8000 (``make install``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from ml_server.tests.pg import free_port
from ml_server.tests.pg_tls import TlsPostgres, tls_postgres

HANDLER_DIR = Path(__file__).resolve().parent.parent / "components" / "db_bootstrap_handler"
REGION = "ap-east-1"
MASTER, MASTER_PW = "humansa", "master-test-password-not-real"
APP, APP_PW = "humansa_app", "app-test-password-not-real"


def _load_handler() -> ModuleType:
    if not (HANDLER_DIR / "vendor" / "pg8000").is_dir():
        pytest.fail(f"{HANDLER_DIR}/vendor is missing: run `make install` (vendors pg8000)")
    spec = importlib.util.spec_from_file_location("db_bootstrap_index", HANDLER_DIR / "index.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Responses:
    bodies: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def response_url() -> Iterator[tuple[str, Responses]]:
    """CloudFormation's side of a custom resource: takes the handler's PUT."""
    got = Responses()

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers["Content-Length"])
            got.bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/response", got
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class World:
    pg: TlsPostgres
    index: ModuleType
    secrets: Any
    master_arn: str
    app_arn: str
    url: str
    responses: Responses

    def event(self, request_type: str = "Create") -> dict[str, Any]:
        return {
            "RequestType": request_type,
            "ResponseURL": self.url,
            "StackId": "arn:aws:cloudformation:ap-east-1:123456789012:stack/Humansa-Test-Data/x",
            "RequestId": f"req-{len(self.responses.bodies)}",
            "LogicalResourceId": "DatabaseAppUser",
            "ResourceType": "Custom::HumansaDbAppUser",
            "ResourceProperties": {
                "ServiceToken": "arn:aws:lambda:ap-east-1:123456789012:function:x",
                "MasterSecretArn": self.master_arn,
                "AppSecretArn": self.app_arn,
                "AppUsername": APP,
                "DatabaseName": self.pg.pg.database,
            },
        }

    def invoke(self, request_type: str = "Create") -> dict[str, Any]:
        self.index.handler(self.event(request_type), None)
        return self.responses.bodies[-1]

    def connect(self, user: str, password: str) -> Any:
        return self.index.pg8000.native.Connection(
            user,
            host="localhost",
            port=self.pg.pg.port,
            database=self.pg.pg.database,
            password=password,
        )

    def superuser(self) -> Any:
        return self.connect(self.pg.pg.user, self.pg.pg.password)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    index = _load_handler()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    mp = pytest.MonkeyPatch()
    try:
        with (
            tls_postgres(tmp_path_factory.mktemp("pg-tls"), user="pgadmin") as pg,
            response_url() as (url, got),
        ):
            for k, v in {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION,
                "CA_FILE": str(pg.ca_file),
            }.items():
                mp.setenv(k, v)
            secrets = boto3.client("secretsmanager", region_name=REGION)
            conn = index.pg8000.native.Connection(
                pg.pg.user,
                host="localhost",
                port=pg.pg.port,
                database=pg.pg.database,
                password=pg.pg.password,
            )
            # A master as RDS makes it: CREATEROLE and CREATEDB, not a superuser, owner of the
            # database (so of schema public), with a table made before the app role existed and a
            # schema of its own.
            conn.run(f"CREATE ROLE {MASTER} LOGIN CREATEROLE CREATEDB PASSWORD '{MASTER_PW}'")
            conn.run(f"ALTER DATABASE {pg.pg.database} OWNER TO {MASTER}")
            conn.close()
            master = index.pg8000.native.Connection(
                MASTER,
                host="localhost",
                port=pg.pg.port,
                database=pg.pg.database,
                password=MASTER_PW,
            )
            master.run("CREATE TABLE api_keys (id serial PRIMARY KEY, name text)")
            master.run("CREATE SCHEMA other")
            master.run("CREATE TABLE other.private (x int)")
            master.run("INSERT INTO other.private VALUES (1)")
            master.close()
            base = {"engine": "postgres", "host": "localhost", "port": pg.pg.port}
            master_arn = secrets.create_secret(
                Name="humansa/test/db",
                SecretString=json.dumps({**base, "username": MASTER, "password": MASTER_PW}),
            )["ARN"]
            app_arn = secrets.create_secret(
                Name="humansa/test/db-app",
                SecretString=json.dumps(
                    {
                        **base,
                        "username": APP,
                        "password": APP_PW,
                        "dbname": pg.pg.database,
                        "masterarn": master_arn,
                    }
                ),
            )["ARN"]
            yield World(pg, index, secrets, master_arn, app_arn, url, got)
    finally:
        mp.undo()
        moto.stop()


def _role(w: World, name: str) -> dict[str, Any]:
    conn = w.superuser()
    try:
        rows = conn.run(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, "
            "rolbypassrls FROM pg_roles WHERE rolname = :n",
            n=name,
        )
    finally:
        conn.close()
    keys = ["login", "super", "createrole", "createdb", "replication", "bypassrls"]
    return dict(zip(keys, rows[0], strict=True))


def test_the_first_run_creates_the_app_roles_and_the_second_changes_nothing(world: World) -> None:
    first = world.invoke("Create")
    assert first["Status"] == "SUCCESS", first["Reason"]
    assert first["PhysicalResourceId"] == APP and first["Data"]["Changes"] >= 5
    for name in (APP, f"{APP}_clone"):
        assert _role(world, name) == {
            "login": True,
            "super": False,
            "createrole": False,
            "createdb": False,
            "replication": False,
            "bypassrls": False,
        }
    second = world.invoke("Update")
    assert second["Status"] == "SUCCESS", second["Reason"]
    assert second["Data"]["Changes"] == 0


def test_the_app_role_logs_in_with_its_secret_and_owns_the_app_tables(world: World) -> None:
    world.invoke("Create")
    app = world.connect(APP, APP_PW)
    try:
        # the table made by the master before the app role existed is the app's now
        owner = app.run("SELECT tableowner FROM pg_tables WHERE tablename = 'api_keys'")
        assert owner == [[APP]]
        app.run("ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS note text")  # DDL: migrations
        app.run("INSERT INTO api_keys (name) VALUES ('k')")
        app.run("CREATE TABLE IF NOT EXISTS made_by_app (id int)")
    finally:
        app.close()


def test_the_app_role_cannot_create_roles_or_read_other_schemas(world: World) -> None:
    world.invoke("Create")
    db_error = world.index.pg8000.exceptions.DatabaseError
    app = world.connect(APP, APP_PW)
    try:
        with pytest.raises(db_error, match="permission denied to create role"):
            app.run("CREATE ROLE intruder")
        with pytest.raises(db_error, match="permission denied for schema other"):
            app.run("SELECT * FROM other.private")
        with pytest.raises(db_error, match="permission denied to create database"):
            app.run("CREATE DATABASE another")
    finally:
        app.close()


def test_the_rotation_clone_acts_as_the_app_role(world: World) -> None:
    """What Secrets Manager's first multi-user rotation does (ALTER USER <user>_clone WITH
    PASSWORD, as the master): the clone logs in, and what it creates belongs to the app role."""
    world.invoke("Create")
    master = world.connect(MASTER, MASTER_PW)
    try:
        master.run(f"ALTER USER {APP}_clone WITH PASSWORD 'clone-test-password-not-real'")
    finally:
        master.close()
    clone = world.connect(f"{APP}_clone", "clone-test-password-not-real")
    try:
        assert clone.run("SELECT session_user, current_user") == [[f"{APP}_clone", APP]]
        clone.run("CREATE TABLE made_by_clone (id int)")
        assert clone.run("SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_clone'") == [
            [APP]
        ]
        clone.run("INSERT INTO api_keys (name) VALUES ('from clone')")
    finally:
        clone.close()
    assert world.invoke("Update")["Data"]["Changes"] == 0


def test_a_password_out_of_step_with_the_secret_is_reset(world: World) -> None:
    world.invoke("Create")
    master = world.connect(MASTER, MASTER_PW)
    try:
        master.run(f"ALTER USER {APP} WITH PASSWORD 'drifted-password-not-real'")
    finally:
        master.close()
    result = world.invoke("Update")
    assert result["Status"] == "SUCCESS" and result["Data"]["Changes"] == 1
    world.connect(APP, APP_PW).close()


def test_the_handler_verifies_the_database_certificate(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CA_FILE", str(world.pg.wrong_ca_file))
    result = world.invoke("Update")
    assert result["Status"] == "FAILED"
    assert "certificate verify failed" in result["Reason"]


def test_delete_keeps_the_roles(world: World) -> None:
    world.invoke("Create")
    result = world.invoke("Delete")
    assert result["Status"] == "SUCCESS"
    assert _role(world, APP)["login"] is True
