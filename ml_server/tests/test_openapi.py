"""The OpenAPI document, checked by schemathesis against the real server (bounded examples).

Run: ``.venv/bin/pytest ml_server/tests/test_openapi.py -q -s`` (prints schemathesis' summary).
The server runs in development mode (the only mode that serves /openapi.json) against the fake
providers, with a real PostgreSQL and a real key; schemathesis generates requests from the
document (examples, coverage and fuzzing phases, at most ``MAX_EXAMPLES`` per operation, fixed
seed) and checks: no 5xx, responses and status codes as documented, content types as documented.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_server.tests.conftest import TEST_SETTINGS
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from ml_server.tests.server_proc import ServerProcess, provider_env

pytestmark = pytest.mark.slow
MAX_EXAMPLES = 30
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


@pytest.fixture(scope="module")
def dev_server(pg: TempPostgres, fake: FakeProvider) -> Iterator[ServerProcess]:
    env = {**TEST_SETTINGS, **pg.env(), **provider_env(fake.url), "ENVIRONMENT": "development"}
    proc = ServerProcess(env)
    try:
        yield proc.start()
    finally:
        proc.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    dev_server: ServerProcess, tmp_path: Path
) -> None:
    key = dev_server.cli("keys", "create", "--name", "schemathesis").stdout.strip()
    st = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(st), "run", f"{dev_server.url}/openapi.json",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", "1",
        "--request-timeout", "10",
        "--header", f"Authorization: Bearer {key}",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
    )  # fmt: skip
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
