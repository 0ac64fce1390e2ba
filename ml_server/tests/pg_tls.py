"""A throwaway PostgreSQL with TLS on: a CA and a server certificate made here (``cryptography``).

``TlsPostgres`` wraps ``TempPostgres``: the server presents a certificate for ``localhost`` signed
by ``ca_file``; ``wrong_ca_file`` is a CA that signed nothing of it.
"""

from __future__ import annotations

import datetime
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ml_server.tests.pg import TempPostgres


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, dns_name: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class TlsPostgres:
    pg: TempPostgres
    ca_file: Path  # the CA that signed the server's certificate
    wrong_ca_file: Path  # a CA that did not
    cert_name: str  # the name in the server's certificate (resolves to 127.0.0.1)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "ENVIRONMENT": "staging",
            "DB_HOST": self.cert_name,
            "DB_PORT": str(self.pg.port),
            "DB_USERNAME": self.pg.user,
            "DB_PASSWORD": self.pg.password,
            "DB_NAME": self.pg.database,
            **extra,
        }


@contextmanager
def tls_postgres(certs: Path, **pg_args: str) -> Iterator[TlsPostgres]:
    """A started ``TempPostgres`` serving TLS; CA files written into ``certs``."""
    ca_key, ca = _ca("Humansa test CA")
    _, wrong_ca = _ca("Some other CA")
    server_key, server = _server_cert(ca_key, ca, "localhost")
    (certs / "ca.pem").write_bytes(_pem(ca))
    (certs / "wrong-ca.pem").write_bytes(_pem(wrong_ca))
    with TempPostgres(**pg_args) as pg:
        # PostgreSQL reads its key only if the server's user owns it and nobody else can.
        key_file, cert_file = pg.root / "server.key", pg.root / "server.crt"
        key_file.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_file.write_bytes(_pem(server))
        key_file.chmod(0o600)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for f in (key_file, cert_file):
                os.chown(f, pw.pw_uid, pw.pw_gid)
        psql = [str(pg.bindir / "psql"), "-h", str(pg.root), "-p", str(pg.port), "-U", pg.user]
        for sql in (
            f"ALTER SYSTEM SET ssl_cert_file = '{cert_file}'",
            f"ALTER SYSTEM SET ssl_key_file = '{key_file}'",
            "ALTER SYSTEM SET ssl = on",
        ):
            pg._run(*psql, "-d", "postgres", "-c", sql)
        pg.stop()
        pg.start()
        yield TlsPostgres(pg, certs / "ca.pem", certs / "wrong-ca.pem", "localhost")
