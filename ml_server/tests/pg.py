"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, start on 127.0.0.1:<free port>.

As root (CI), initdb and pg_ctl run as the ``postgres`` user via ``runuser`` on a folder it owns.
A missing PostgreSQL raises (tests fail with the reason; CI installs Debian's ``postgresql``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if (Path(c) / "initdb").exists():
            return Path(c)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(out.stdout.strip())
        if (path / "initdb").exists():
            return path
    if shutil.which("initdb"):
        return Path(shutil.which("initdb") or "").parent
    raise RuntimeError(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin, pg_config, "
        "PATH). Install them: apt-get install postgresql "
        "(the ml_server tests need a real PostgreSQL)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TempPostgres:
    """Args:
    user: the superuser created by initdb.
    password: its password (scram-sha-256 over TCP, so clients really authenticate).
    database: created after the first start.
    """

    def __init__(
        self,
        user: str = "humansa",
        password: str = "pg-test-password-not-real",  # noqa: S107 - throwaway cluster
        database: str = "humansa_test",
    ) -> None:
        self.user = user
        self.password = password
        self.database = database
        self.host = "127.0.0.1"
        self.port = free_port()
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="ml-server-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o700)

    @property
    def url(self) -> str:
        return (
            f"postgresql+asyncpg://{self.user}:{self.password}@{self.host}:{self.port}/"
            f"{self.database}"
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def env(self) -> dict[str, str]:
        """The server's DB_* settings for this cluster."""
        return {
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_USERNAME": self.user,
            "DB_PASSWORD": self.password,
            "DB_NAME": self.database,
        }

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.root)
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}): {result.stderr}{result.stdout}"
                f"\n{log[-2000:]}"
            )
        return result

    def init(self) -> TempPostgres:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.datadir),
            "-U", self.user,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        self.start()
        self._run(
            str(self.bindir / "psql"),
            "-h", str(self.root), "-p", str(self.port), "-U", self.user, "-d", "postgres",
            "-c", f"CREATE DATABASE {self.database}",
        )  # fmt: skip
        return self

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses={self.host} -k {self.root} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
            "-o", opts, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.init()

    def __exit__(self, *_: object) -> None:
        self.cleanup()
