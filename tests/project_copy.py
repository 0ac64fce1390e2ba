"""A throwaway git repository holding this checkout's files (for make diff / rollback tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout


def commit(repo: Path, message: str) -> None:
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", message)


def copy_project(dest: Path) -> None:
    """This checkout's files (tracked and new, as git lists them) in a fresh one-commit repo
    whose branch is ``main``, with the shared .venv and node_modules linked in."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for shared in (".venv", "node_modules", "components/db_bootstrap_handler/vendor"):
        (dest / shared).symlink_to((ROOT / shared).resolve(), target_is_directory=True)
    git(dest, "init", "-q", "-b", "main")
    commit(dest, "base")
