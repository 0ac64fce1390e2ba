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

import asyncpg
import openai
import pytest

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
