"""A throwaway PostgreSQL 16 with pgvector: ``TempPostgres`` run on the binaries of PyPI's
``pgserver`` (requirements-dev.txt), which bundles PostgreSQL 16.2 with pgvector 0.6.2.

Debian bookworm has no pgvector package, so the Debian cluster of ``pg.py`` (PostgreSQL 15)
serves every other test and shows the migration without the extension. As root (CI) the
cluster runs as the ``postgres`` user like ``pg.py``'s; it listens on 127.0.0.1 only, with a
password, and ``cleanup`` stops it and removes its folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ml_server.tests.pg import TempPostgres


def pgserver_bindir() -> Path:
    try:
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset (CI, root)
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise RuntimeError(
            "the memory tests need PostgreSQL with pgvector: pip install -r requirements-dev.txt "
            "(pgserver)"
        ) from exc
    bindir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    if not (bindir / "initdb").exists():
        raise RuntimeError(f"pgserver has no initdb in {bindir}")
    return bindir


class PgvectorPostgres(TempPostgres):
    def __init__(self) -> None:
        super().__init__(database="humansa_memory")
        self.bindir = pgserver_bindir()
