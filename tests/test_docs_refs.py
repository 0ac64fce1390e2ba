"""Every file, folder, script, Python module and make target that README.md and docs/*.md name
in backticks (or as ``make X`` anywhere) exists in the repository: no dangling references."""

from __future__ import annotations

import importlib.util
import re
import subprocess
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


@cache
def tracked() -> tuple[str, ...]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return tuple(listed)


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
