"""A Debian "instance" booted with systemd as PID 1 under systemd-nspawn (make instance-test).

The test process first moves into a private network namespace of its own (only loopback, plus
169.254.169.254 on it for the instance metadata service), so the machine, moto, PostgreSQL and the
fake provider share 127.0.0.1 without touching the host's network. The machine's root is an
overlay on the rootfs scripts/machine-rootfs.sh prepares, one upper folder per environment, kept
across a reboot (``/run`` is a fresh tmpfs at every boot, as on EC2).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from system_tests.images import Missing, require

CLONE_NEWNET = 0x40000000
IMDS_ADDRESS = "169.254.169.254"
REPO = Path(__file__).resolve().parents[1]
STANDINS = Path(__file__).parent / "standins"


def enter_private_network() -> None:
    """Move this process (and what it starts later) into a new network namespace."""
    require("ip", "apt-get install iproute2 (the instance test sets up its own loopback)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise Missing(
            f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())} (run as root)"
        )
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo"], check=True)


def machine_rootfs() -> Path:
    done = subprocess.run(
        [str(REPO / "scripts/machine-rootfs.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise Missing(
            done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "machine rootfs failed"
        )
    return REPO / done.stdout.strip().splitlines()[-1]


class Machine:
    """Args:
    lower: the prepared Debian rootfs (read-only lower layer).
    base: a folder for this machine's upper layer, work folder and merged root.
    binds: host path -> machine path, bind-mounted read-only.
    """

    def __init__(self, lower: Path, base: Path, binds: dict[str, str]) -> None:
        require("systemd-nspawn", "apt-get install systemd-container (boots the instance)")
        require("nsenter", "apt-get install util-linux")
        self.lower = lower
        self.base = base
        self.binds = binds
        self.upper = base / "upper"
        self.root = base / "root"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.boots = 0
        for d in (self.upper, base / "work", self.root):
            d.mkdir(parents=True, exist_ok=True)

    def mount(self) -> None:
        opts = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.base / 'work'}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)], check=True
        )

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], check=False)

    def path(self, inside: str) -> Path:
        """A path of the machine's own file system (its /run only while it runs)."""
        if self.leader:
            return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def install_standin(self, name: str, inside: str, mode: int = 0o755) -> None:
        self.write(inside, (STANDINS / name).read_text(), mode)

    @property
    def log(self) -> Path:
        return self.base / f"console-{self.boots}.log"

    def boot(self) -> float:
        """Start systemd in the machine; returns time.monotonic() at the start."""
        self.boots += 1
        cmd = [
            "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--console=pipe",
            "--boot", "-D", str(self.root), "--machine", f"humansa-{os.getpid()}",
        ]  # fmt: skip
        cmd += [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        start = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not self.leader:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"systemd-nspawn exited {self.proc.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no systemd in the machine after 30 s:\n{self.tail()}")
            self.leader = self._find_leader(self.proc.pid)
            time.sleep(0.05)
        return start

    @staticmethod
    def _find_leader(pid: int) -> int:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return int(child)
        return 0

    def run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command inside the machine (its mount, PID, IPC and UTS namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-p", "-r", "-w", "--", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-P", prop, "--timestamp=unix", unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-b", "--no-pager", "-o", "cat", "-u", unit).stdout

    def poweroff(self, timeout: float = 120) -> int:
        """Orderly shutdown (systemd stops every unit), like a stop or reboot of the instance."""
        assert self.proc is not None
        if self.proc.poll() is None:
            # systemd-nspawn: SIGTERM asks the container's systemd to power off.
            self.proc.terminate()
        code = self.proc.wait(timeout)
        self.leader = 0
        return code

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGKILL to systemd-nspawn alone leaves the machine's systemd running, reparented to
            # the host's init, with the server's workers in it (seen: a machine left from a killed
            # run). Killing the PID namespace's init makes the kernel kill every process in it.
            if self.leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(30)
        self.unmount()
        shutil.rmtree(self.base, ignore_errors=True)


def python_binds() -> dict[str, str]:
    """The venv's AWS CLI (awscli from PyPI, as the boot tests use) and its interpreter."""
    venv = Path(sys.prefix).resolve()
    base = Path(sys.base_prefix).resolve()
    return {str(venv): str(venv), str(base): str(base)}
