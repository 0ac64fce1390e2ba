"""Shared by the boot-test stubs: record argv as one JSON line, keep state in STUB_STATE."""

import json
import os
import sys
import time
from pathlib import Path


def record(prog: str) -> None:
    line = json.dumps({"prog": prog, "argv": sys.argv[1:], "t": time.time()})
    with open(os.environ["STUB_LOG"], "a", encoding="utf-8") as log:
        log.write(line + "\n")


def state_dir(kind: str) -> Path:
    path = Path(os.environ["STUB_STATE"]) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def root() -> Path:
    return Path(os.environ.get("HUMANSA_ROOT", "/"))
