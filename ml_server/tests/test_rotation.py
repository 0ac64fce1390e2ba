"""Database credential rotation mid-traffic costs no failed request (issue 7).

The server reads its password from the DB_PASSWORD file in SECRETS_DIR (as on the instances, where
a systemd timer refreshes the files every 15 minutes). Every new database connection re-reads that
file, so after ``ALTER ROLE ... PASSWORD`` and the file's refresh, new connections use the new
password while pooled ones live on. Here the server's connections are then killed outright
(harsher than a rotation) to force new ones.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
from sqlalchemy import make_url, text

from ml_server.db.engine import make_engine
from ml_server.db.migrate import upgrade_to_head
from ml_server.tests import http
from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow

ROLE = "rotation_app"
DATABASE = "rotation_db"
OLD = "rotation-old-not-a-real-password"  # throwaway test cluster
NEW = "rotation-new-not-a-real-password"  # throwaway test cluster
REQUESTS = 200
WORKERS = 4


def _write_atomically(path: Path, value: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    tmp.chmod(0o400)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def secrets_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ml-server-secrets-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def rotating_server(
    pg: TempPostgres, fake: FakeProvider, secrets_dir: Path
) -> Iterator[ServerProcess]:
    async def create_role() -> None:
        conn = await asyncpg.connect(pg.dsn)
        try:
            await conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{OLD}'")
            await conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        finally:
            await conn.close()

    asyncio.run(create_role())
    _write_atomically(secrets_dir / "DB_PASSWORD", OLD)
    env = {
        **TEST_SETTINGS,
        **provider_env(fake.url),
        "DB_HOST": pg.host,
        "DB_PORT": str(pg.port),
        "DB_USERNAME": ROLE,
        "DB_NAME": DATABASE,
        "SECRETS_DIR": str(secrets_dir),  # no DB_PASSWORD variable: the file is the source
    }
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


async def test_password_rotation_mid_traffic_fails_no_request(
    rotating_server: ServerProcess, secrets_dir: Path, db: asyncpg.Connection, pg: TempPostgres
) -> None:
    server = rotating_server
    key = server.cli("keys", "create", "--name", "rotation").stdout.strip()
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    ids = [f"t-rot-{i}-{uuid.uuid4().hex[:8]}" for i in range(REQUESTS)]
    done = 0
    errors: list[str] = []
    rotated = asyncio.Event()
    started = asyncio.get_running_loop().time()

    async def worker(mine: list[str]) -> None:
        nonlocal done
        for rid in mine:
            try:
                await client.chat.completions.create(
                    model="openai/gpt-4o",
                    messages=[{"role": "user", "content": "rotate"}],
                    extra_headers={"X-Request-ID": rid},
                )
            except openai.APIError as exc:
                errors.append(f"{rid}: {exc}")
            done += 1
            if done == REQUESTS // 4:
                quarter.set()
            await asyncio.sleep(0.02)

    quarter = asyncio.Event()

    async def rotate() -> None:
        await quarter.wait()
        await db.execute(f"ALTER ROLE {ROLE} PASSWORD '{NEW}'")
        _write_atomically(secrets_dir / "DB_PASSWORD", NEW)
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
            ROLE,
        )
        assert killed >= 1  # the server had connections open
        rotated.set()

    traffic = [asyncio.create_task(worker(ids[i::WORKERS])) for i in range(WORKERS)]
    await asyncio.wait_for(asyncio.gather(rotate(), *traffic), 60)
    assert rotated.is_set() and done == REQUESTS
    print(f"{REQUESTS} requests in {asyncio.get_running_loop().time() - started:.1f} s")
    assert errors == []

    # Every usage row arrives: the writer reconnected with the new password.
    end = asyncio.get_running_loop().time() + 20
    count = 0
    while asyncio.get_running_loop().time() < end:
        count = await _count_rows(pg, ids)
        if count == REQUESTS:
            break
        await asyncio.sleep(0.2)
    assert count == REQUESTS
    # The old password is really gone, and the server's new connections use the new one.
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=pg.host, port=pg.port, user=ROLE, password=OLD, database=DATABASE
        )
    assert http.get(server.url + "/ready").status_code == 200
    new_key = server.cli("keys", "create", "--name", "after-rotation").stdout.strip()
    fresh = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=new_key, max_retries=0)
    await fresh.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "new key"}]
    )
    assert "InvalidPasswordError" not in server.log()


async def _count_rows(pg: TempPostgres, ids: list[str]) -> int:
    conn = await asyncpg.connect(
        host=pg.host, port=pg.port, user=pg.user, password=pg.password, database=DATABASE
    )
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM usage WHERE request_id = ANY($1)", ids)
        return n
    finally:
        await conn.close()


# --- alternating users (Secrets Manager multi-user rotation) ---------------------------------

ALT_ROLE, ALT_DB = "alt_app", "alt_db"
P1 = "alt-first-not-a-real-password"  # throwaway test cluster
P2 = "alt-clone-not-a-real-password"  # throwaway test cluster
P3 = "alt-third-not-a-real-password"  # throwaway test cluster


@pytest.fixture(scope="module")
def alternating(pg: TempPostgres) -> str:
    """``alt_app`` and ``alt_app_clone`` as components/db_bootstrap_handler makes them."""

    async def create() -> None:
        conn = await asyncpg.connect(pg.dsn)
        try:
            await conn.execute(f"CREATE ROLE {ALT_ROLE} LOGIN PASSWORD '{P1}'")
            await conn.execute(f"CREATE ROLE {ALT_ROLE}_clone LOGIN")
            await conn.execute(f"GRANT {ALT_ROLE} TO {ALT_ROLE}_clone")
            await conn.execute(f"ALTER ROLE {ALT_ROLE}_clone SET role = '{ALT_ROLE}'")
            await conn.execute(f"CREATE DATABASE {ALT_DB} OWNER {ALT_ROLE}")
        finally:
            await conn.close()

    asyncio.run(create())
    return f"postgresql+asyncpg://{ALT_ROLE}@{pg.host}:{pg.port}/{ALT_DB}"


async def _as_superuser(pg: TempPostgres, sql: str) -> None:
    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _session_user(conn: Any) -> str:
    return str((await conn.execute(text("SELECT session_user"))).scalar_one())


async def test_new_connections_follow_the_alternating_users(
    pg: TempPostgres, alternating: str, tmp_path: Path
) -> None:
    """Each rotation sets the password of the user the secret does not name and makes it current:
    the password file then holds the other user's password, and new connections log in as that
    user while the open ones live on."""
    password_file = tmp_path / "DB_PASSWORD"
    _write_atomically(password_file, P1)
    engine = make_engine(alternating, pool_size=1, password_file=password_file)
    try:
        async with engine.connect() as first:
            assert await _session_user(first) == ALT_ROLE
            # first rotation: the clone gets a password and becomes current
            await _as_superuser(pg, f"ALTER ROLE {ALT_ROLE}_clone PASSWORD '{P2}'")
            _write_atomically(password_file, P2)
            async with engine.connect() as second:  # a new connection (pool overflow)
                assert await _session_user(second) == f"{ALT_ROLE}_clone"
                current = await second.execute(text("SELECT current_user"))
                assert current.scalar_one() == ALT_ROLE  # acts as the app role
            assert await _session_user(first) == ALT_ROLE  # the open one lives on
        # second rotation: back to the first user, with a new password
        await _as_superuser(pg, f"ALTER ROLE {ALT_ROLE} PASSWORD '{P3}'")
        _write_atomically(password_file, P3)
        await engine.dispose()  # every connection new
        async with engine.connect() as third:
            assert await _session_user(third) == ALT_ROLE
    finally:
        await engine.dispose()


def test_the_migrations_log_in_as_the_alternate_user(pg: TempPostgres, alternating: str) -> None:
    """A server starting after a rotation: its password is the clone's, its username setting the
    first user's; the migrations still run (and what they create belongs to the app role)."""
    asyncio.run(_as_superuser(pg, f"ALTER ROLE {ALT_ROLE}_clone PASSWORD '{P2}'"))
    url = make_url(alternating).set(password=P2).render_as_string(hide_password=False)
    upgrade_to_head(url)

    async def owner() -> str:
        conn = await asyncpg.connect(
            host=pg.host, port=pg.port, user=f"{ALT_ROLE}_clone", password=P2, database=ALT_DB
        )
        try:
            return str(
                await conn.fetchval(
                    "SELECT tableowner FROM pg_tables WHERE tablename = 'alembic_version'"
                )
            )
        finally:
            await conn.close()

    assert asyncio.run(owner()) == ALT_ROLE
