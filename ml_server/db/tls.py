"""TLS to PostgreSQL: libpq's ``sslmode`` / ``sslrootcert`` turned into asyncpg's ``ssl`` argument.

The server's URL carries them as query parameters (``?sslmode=verify-full&sslrootcert=FILE``, as
libpq spells them); :func:`split_url` takes them out and returns what asyncpg needs, so the
engine and the migrations connect the same way. ``verify-full`` is an ``ssl.SSLContext`` that
trusts only the CA file and checks the server's name against the host the client dialled
(asyncpg passes it as ``server_hostname``): RDS puts the instance endpoint in its certificate
(AWS: "Using SSL with a PostgreSQL DB instance").
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # sqlalchemy is imported where a URL is handled (the settings import this module)
    from sqlalchemy.engine import URL

SSL_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
VERIFYING_MODES = ("verify-ca", "verify-full")
# The Amazon RDS certificate authorities, shipped with the package (ml_server/certs/README.md).
RDS_CA_BUNDLE = Path(__file__).resolve().parent.parent / "certs" / "rds-ca-bundle.pem"
# Endpoints of RDS instances: <id>.<hash>.<region>.rds.amazonaws.com (.com.cn in China).
RDS_ENDPOINT_SUFFIXES = (".rds.amazonaws.com", ".rds.amazonaws.com.cn")


class TlsSettingError(ValueError):
    """An sslmode / sslrootcert that cannot be used; the message names the setting."""


def is_rds_endpoint(host: str) -> bool:
    return host.lower().rstrip(".").endswith(RDS_ENDPOINT_SUFFIXES)


def check(mode: str, rootcert: str | None, *, mode_name: str, cert_name: str) -> None:
    """Raise :class:`TlsSettingError` naming ``mode_name`` / ``cert_name`` for unusable values."""
    if mode not in SSL_MODES:
        raise TlsSettingError(f"{mode_name}={mode!r}: allowed values are {', '.join(SSL_MODES)}")
    if mode in VERIFYING_MODES:
        if not rootcert:
            raise TlsSettingError(f"{mode_name}={mode} needs {cert_name} (a CA bundle file)")
        if not Path(rootcert).is_file():
            raise TlsSettingError(f"{cert_name}={rootcert}: no such file ({mode_name}={mode})")


def ssl_argument(mode: str, rootcert: str | None) -> ssl.SSLContext | str | bool | None:
    """asyncpg's ``ssl`` for a libpq ``sslmode``; None = asyncpg's default (``prefer``)."""
    check(mode, rootcert, mode_name="sslmode", cert_name="sslrootcert")
    if mode == "disable":
        return False
    if mode == "prefer":
        return None
    if mode == "require":
        return "require"  # encrypted, the certificate not checked (libpq's meaning)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=rootcert)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = mode == "verify-full"
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def url_with_tls(url: URL, mode: str, rootcert: str | None) -> URL:
    """``url`` with ``sslmode`` (and, for the verifying modes, ``sslrootcert``) in its query."""
    query: dict[str, str] = {"sslmode": mode}
    if mode in VERIFYING_MODES and rootcert:
        query["sslrootcert"] = rootcert
    return url.update_query_dict(query)


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """The URL without ``sslmode``/``sslrootcert``, and the connect arguments they mean.

    Raises:
        TlsSettingError: an unknown ``sslmode``, or a verifying mode without a readable CA file.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url, {}
    query = dict(parsed.query)
    mode = query.pop("sslmode", None)
    rootcert = query.pop("sslrootcert", None)
    if mode is None and rootcert is None:
        return url, {}
    if isinstance(mode, tuple) or isinstance(rootcert, tuple):
        raise TlsSettingError("sslmode / sslrootcert given more than once in the database URL")
    stripped = parsed.set(query=query).render_as_string(hide_password=False)
    argument = ssl_argument(mode or ("verify-full" if rootcert else "prefer"), rootcert)
    return stripped, ({} if argument is None else {"ssl": argument})
