"""Reads the ``docker run`` line of the rendered ``humansa-ml.service`` so the tests run the image
the way the unit does, without restating the unit's options."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# docker run options the unit may use: those taking a value, and bare flags.
_WITH_VALUE = frozenset(
    {
        "--name",
        "--env-file",
        "-e",
        "--env",
        "-v",
        "--volume",
        "-p",
        "--publish",
        "--user",
        "-u",
        "--cap-drop",
        "--cap-add",
        "--security-opt",
        "--log-driver",
        "--log-opt",
        "--network",
        "--restart",
        "--pull",
        "--tmpfs",
    }
)
_FLAGS = frozenset({"--rm", "--init", "--read-only"})


@dataclass(frozen=True)
class Volume:
    host: str
    container: str
    read_only: bool


@dataclass(frozen=True)
class DockerRun:
    """The unit's ``ExecStart=/usr/bin/docker run ...``, option by option."""

    name: str
    image: str
    user: str
    env_files: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    log_driver: str = ""
    log_opts: list[str] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)

    @property
    def uid(self) -> int:
        return int(self.user.split(":", 1)[0])

    @property
    def gid(self) -> int:
        parts = self.user.split(":", 1)
        return int(parts[1] if len(parts) > 1 else parts[0])


def unit_value(unit_text: str, key: str) -> list[str]:
    """Every value of ``key=`` in the unit (e.g. ``ExecStartPre``), in order."""
    out = []
    for line in unit_text.splitlines():
        if line.startswith(key + "="):
            out.append(line.split("=", 1)[1])
    return out


def parse_docker_run(unit_text: str) -> DockerRun:
    """Parse the unit's ExecStart. Raises ValueError on an option this reader does not know, so
    a new option in the unit makes the tests fail until they honour or name it."""
    starts = unit_value(unit_text, "ExecStart")
    if len(starts) != 1:
        raise ValueError(f"expected one ExecStart= in the unit, found {len(starts)}")
    argv = shlex.split(starts[0])
    if len(argv) < 3 or not argv[0].endswith("/docker") or argv[1] != "run":
        raise ValueError(f"ExecStart is not a docker run: {starts[0]!r}")
    values: dict[str, list[str]] = {}
    flags: list[str] = []
    i = 2
    while i < len(argv) and argv[i].startswith("-"):
        opt, sep, inline = argv[i].partition("=")
        if opt in _FLAGS:
            flags.append(opt)
            i += 1
            continue
        if opt not in _WITH_VALUE:
            raise ValueError(f"docker run option {argv[i]!r} in the unit is not understood here")
        if sep:
            value = inline
            i += 1
        else:
            value = argv[i + 1]
            i += 2
        values.setdefault(opt, []).append(value)
    if i >= len(argv):
        raise ValueError("docker run in the unit names no image")

    def many(*names: str) -> list[str]:
        return [v for n in names for v in values.get(n, [])]

    def one(*names: str) -> str:
        found = many(*names)
        if len(found) != 1:
            raise ValueError(f"docker run in the unit must give {names[0]} once, got {found}")
        return found[0]

    volumes = []
    for spec in many("-v", "--volume"):
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"volume {spec!r} is not HOST:CONTAINER[:MODE]")
        volumes.append(Volume(parts[0], parts[1], len(parts) == 3 and "ro" in parts[2].split(",")))
    return DockerRun(
        name=one("--name"),
        image=argv[i],
        user=one("--user", "-u"),
        env_files=many("--env-file"),
        env=many("-e", "--env"),
        volumes=volumes,
        publish=many("-p", "--publish"),
        cap_drop=many("--cap-drop"),
        cap_add=many("--cap-add"),
        security_opt=many("--security-opt"),
        log_driver=(many("--log-driver") or [""])[0],
        log_opts=many("--log-opt"),
        tmpfs=many("--tmpfs"),
        flags=flags,
        command=argv[i + 1 :],
    )
