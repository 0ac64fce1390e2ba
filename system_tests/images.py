"""The image `make image` built, as buildah sees it (vfs storage, as scripts/image.sh builds it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

IMAGE = os.environ.get("IMAGE", "localhost/humansa-ml:local")
STORAGE = ["--storage-driver", "vfs"]


class Missing(RuntimeError):
    """A tool or the built image is missing: the test fails with this one line."""


def require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise Missing(f"{tool} not found: {hint}")
    return path


def buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", *STORAGE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def image_config(image: str = IMAGE) -> dict[str, Any]:
    """The image's Docker config (Cmd, Env, WorkingDir, User, Healthcheck)."""
    require("buildah", "apt-get install buildah (the image tests run the image with buildah)")
    done = buildah("inspect", "--type", "image", image)
    if done.returncode != 0:
        raise Missing(f"image {image} is not built here: run `make image` ({done.stderr.strip()})")
    config: dict[str, Any] = json.loads(done.stdout)["Docker"]["config"]
    return config


def new_container(image: str, name: str) -> str:
    buildah("rm", name)
    done = buildah("from", "--pull=never", "--name", name, image)
    if done.returncode != 0:
        raise Missing(f"buildah from {image} failed: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def remove_container(name: str) -> None:
    buildah("rm", name)
