"""Every file, folder, script, Python module and make target that README.md and docs/*.md name
in backticks (or as ``make X`` anywhere) exists in the repository: no dangling references."""

from __future__ import annotations

import importlib.util
import os
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Folders the build writes (never committed): paths inside them are outputs, not references.
OUTPUTS = ("cdk.out", "cdk.out.diff", ".humansa", ".venv", ".venv-checkov", "node_modules")
#: A word names a file when it ends in one of these (model ids, ARNs and env vars do not).
FILE_SUFFIXES = (".py", ".sh", ".yaml", ".yml", ".json", ".j2", ".toml", ".md", ".txt", ".cfg")
SPAN = re.compile(r"`([^`\n]+)`")
MAKE = re.compile(r"\bmake ([a-z][a-z-]*)")
MODULE = re.compile(r"-m ([a-z_][\w.]*)")


#: Not part of the sources: caches and the folders the build writes.
SKIPPED = {".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__", *OUTPUTS}


@cache
def tracked() -> tuple[str, ...]:
    """Every file of the working tree (relative, with /), outside caches and build outputs."""
    found: list[str] = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        base = Path(folder).relative_to(ROOT).as_posix()
        found += [f if base == "." else f"{base}/{f}" for f in files]
    return tuple(found)


@cache
def top_level() -> frozenset[str]:
    return frozenset(p.split("/")[0] for p in tracked())


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z-]*):", text, re.MULTILINE))


def _words(span: str) -> list[str]:
    """The words of a backticked span, without what a command writes (``-o out.txt``)."""
    words = [w.strip("()[],;:\"'") for w in span.split()]
    return [w for i, w in enumerate(words) if i == 0 or words[i - 1] not in ("-o", ">")]


def dangling_path(word: str) -> bool:
    """True when ``word`` names a repository file or folder that does not exist."""
    if not word or any(c in word for c in "<>*{}$…=") or "..." in word or "://" in word:
        return False
    if word.startswith("/"):  # a path on an instance or a URL path, not in the repository
        return False
    path = word.removeprefix("./").rstrip("/")
    first = path.split("/")[0]
    if first in OUTPUTS:
        return False
    files = tracked()
    if "/" in path and first in top_level():  # from the repository root
        return not (path in files or any(f.startswith(path + "/") for f in files))
    if path.endswith(FILE_SUFFIXES):  # a file named relative to its folder, or by its name
        names = (path, path + ".j2")  # user_data/lib.sh.j2 is installed as lib.sh
        return not any(f == n or f.endswith("/" + n) for f in files for n in names)
    return False


def references(text: str) -> list[tuple[str, str]]:
    """(kind, name) of every reference in one document."""
    found: list[tuple[str, str]] = [("make", t) for t in MAKE.findall(text)]
    for span in SPAN.findall(text):
        found += [("module", m) for m in MODULE.findall(span)]
        found += [("path", w) for w in _words(span) if dangling_path(w)]
    return found


def test_the_checker_finds_what_dangles() -> None:
    # a file that moved, a folder that never was, a made-up target, a missing module
    text = "run `python scripts/cost.py cdk.out`, see `components/nothing/` or `make nope`"
    text += " and `python -m humansa_ops.nothing`; `openai/gpt-4o-mini` is a model id"
    kinds = {name: kind for kind, name in references(text)}
    assert kinds["scripts/cost.py"] == "path" and kinds["components/nothing/"] == "path"
    assert "openai/gpt-4o-mini" not in kinds
    assert "nope" not in make_targets() and kinds["nope"] == "make"
    assert importlib.util.find_spec("humansa_ops.nothing") is None
    assert not dangling_path("humansa_ops/cost.py") and not dangling_path("release.yml")
    assert not dangling_path("cdk.out/manifest.json")  # an output of make synth


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_reference_in_the_docs_exists(doc: Path) -> None:
    targets = make_targets()
    wrong: list[str] = []
    for kind, name in references(doc.read_text(encoding="utf-8")):
        if kind == "make" and name not in targets:
            wrong.append(f"make {name} (no such target in the Makefile)")
        elif kind == "module" and importlib.util.find_spec(name.split(".")[0]) is not None:
            if importlib.util.find_spec(name) is None:
                wrong.append(f"python -m {name} (no such module)")
        elif kind == "path":
            wrong.append(f"{name} (no such file or folder)")
    assert not wrong, f"{doc.relative_to(ROOT)} names what does not exist: {wrong}"
