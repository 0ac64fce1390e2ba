"""make image-test: the built image, run as the rendered systemd unit runs it.

The boot script runs first under the boot-test stand-ins (tests/boot_harness.py: no docker engine,
systemd or IMDS) against moto, so the env file, the secret files (modes, owner) and the unit are
the boot's own output. The unit's ``docker run`` line is then parsed and replayed with buildah
(chroot isolation, host network; ``podman run`` cannot set rlimits here): user, env file,
read-only secrets mount, capabilities. The database is a real PostgreSQL on 127.0.0.1; the
provider is the fake OpenAI server (ml_server/tests/fake_provider.py); the client is the openai SDK.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from components.boot import RUNBOOK_PARAMETER_NAMES, render_user_data
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres, free_port
from system_tests import images
from system_tests.unit import DockerRun, parse_docker_run
from tests import boot_harness as h

pytestmark = pytest.mark.slow

# The runbook's parameters plus one the tests add: the fake provider as the OpenAI base URL.
PARAMETER_NAMES = (*RUNBOOK_PARAMETER_NAMES, "openai_base_url")


def get(url: str, timeout: float = 3) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def read_env_file(path: Path) -> list[str]:
    """docker's --env-file format: KEY=VALUE lines, taken literally; blank and # lines skipped."""
    return [
        line
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                out += [int(child), *children(int(child))]
    return out


def ids(pid: int) -> tuple[list[int], list[int]]:
    """(real, effective, saved, fs uid), the same for gid."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return [int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()]


@dataclass
class Running:
    run: DockerRun
    unit: str
    root: Path
    container: str
    env: list[str]
    log: Path
    url: str
    port: int
    fake: FakeProvider
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None
        return self.proc

    def host_path(self, instance_path: str) -> Path:
        """An instance path of the unit, where the stubbed boot wrote it on this machine."""
        return self.root / instance_path.lstrip("/")

    def buildah_args(self, user: str | None = None) -> list[str]:
        args = [
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--user",
            user or self.run.user,
        ]
        for item in self.env:
            args += ["--env", item]
        for vol in self.run.volumes:
            mode = ":ro" if vol.read_only else ""
            args += ["-v", f"{self.host_path(vol.host)}:{vol.container}{mode}"]
        for cap in self.run.cap_drop:
            args += ["--cap-drop", cap]
        return args

    def exec(self, *cmd: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in the running container (same rootfs, env, mounts)."""
        return images.buildah(*self.buildah_args(user), self.container, "--", *cmd, timeout=60)

    def server_pid(self) -> int:
        for pid in children(self.server.pid):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"ml_server" in cmdline and b"serve" in cmdline:
                    return pid
        raise AssertionError(f"no `python -m ml_server serve` under buildah run {self.server.pid}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    config = images.image_config()
    port = free_port()
    name = f"humansa-image-test-{uuid.uuid4().hex[:8]}"
    with (
        TempPostgres(password=h.DB_PASSWORD) as pg,
        h.moto_server() as moto,
        tempfile.TemporaryDirectory(prefix="humansa-image-test-") as tmp,
    ):
        fake = FakeProvider().start()
        ssm = moto.client("ssm")
        for key, value in {
            "db_host": pg.host,
            "db_port": str(pg.port),
            "db_username": pg.user,
            "db_name": pg.database,
            "openai_base_url": f"{fake.url}/openai/v1",
        }.items():
            ssm.put_parameter(Name=h.PARAM_PATH + key, Value=value, Type="String", Overwrite=True)
        box = h.Sandbox(Path(tmp))
        box.setup()
        script = render_user_data(
            h.settings(
                moto.secret_arns,
                image_uri=images.IMAGE,
                registry="",
                container_port=port,
                parameter_names=PARAMETER_NAMES,
            )
        )
        t0 = time.monotonic()
        boot = box.run(script, moto.endpoint)
        print(f"\nstubbed boot (env file, secret files, unit): {time.monotonic() - t0:.1f} s")
        assert boot.returncode == 0, f"stubbed boot failed:\n{boot.stdout[-3000:]}{boot.stderr}"
        unit = (box.root / "etc/systemd/system/humansa-ml.service").read_text()
        run = parse_docker_run(unit)
        assert run.image == images.IMAGE
        env: list[str] = []
        for env_file in run.env_files:
            env += read_env_file(box.root / env_file.lstrip("/"))
        env += run.env
        t0 = time.monotonic()
        container = images.new_container(run.image, name)
        print(f"buildah from {run.image}: {time.monotonic() - t0:.1f} s")
        log = Path(tmp) / "server.log"
        args = Running(
            run, unit, box.root, container, env, log, f"http://127.0.0.1:{port}", port, fake, config
        )
        cmd = run.command or list(config["Cmd"])
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["buildah", *images.STORAGE, *args.buildah_args(), container, "--", *cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        args.proc = proc
        t0 = time.monotonic()
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"the container exited {proc.returncode}:\n{args.log_tail()}")
                with contextlib.suppress(OSError):
                    # /ready: migrations applied and the database answers.
                    if get(args.url + "/ready") == 200:
                        print(f"container start to /ready 200: {time.monotonic() - t0:.1f} s")
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"no /ready 200 within 90 s:\n{args.log_tail()}")
                time.sleep(0.3)
            yield args
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            images.remove_container(name)
            fake.stop()


def test_the_unit_runs_the_image_as_the_dockerfile_user_with_the_secrets_read_only(
    running: Running,
) -> None:
    run = running.run
    assert run.user == running.config["User"] == "10001:10001"
    env = dict(item.split("=", 1) for item in running.env)
    # The secrets read-only; only the usage spool (a host folder) writable.
    mounts = {v.container: v.read_only for v in run.volumes}
    assert mounts == {"/run/secrets/humansa": True, env["USAGE_SPOOL_DIR"]: False}
    assert run.cap_drop == ["ALL"] and "no-new-privileges" in run.security_opt
    published = {p.rsplit(":", 1)[-1] for p in run.publish}
    assert published == {env["ML_SERVER_PORT"], env["METRICS_PORT"]}
    assert env["ML_SERVER_PORT"] == str(running.port)
    assert f"127.0.0.1:{env['METRICS_PORT']}:{env['METRICS_PORT']}" in run.publish


def test_health_and_ready_answer_200(running: Running) -> None:
    assert get(running.url + "/health") == 200
    assert get(running.url + "/ready") == 200, running.log_tail()


@pytest.fixture(scope="module")
def api_key(running: Running) -> str:
    done = running.exec("python", "-m", "ml_server", "keys", "create", "--name", "image-test")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_chat_completion_and_stream_through_the_fake_provider(
    running: Running, api_key: str
) -> None:
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key, max_retries=0)
    reply = client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hello image"}]
    )
    assert reply.choices[0].message.content == "echo: hello image"
    # The provider key reached the provider from the secret file the boot wrote.
    auth = running.fake.last("/chat/completions")["headers"]["authorization"]
    assert auth == "Bearer " + h.provider_values()["OPENAI_API_KEY"]
    stream = client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: one two three"


def test_the_dockerfile_healthcheck_exits_0_inside_the_container(running: Running) -> None:
    test = running.config["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    done = running.exec(*test[1:], user=running.config["User"])
    assert done.returncode == 0, done.stderr


def test_the_server_process_is_not_root(running: Running) -> None:
    uids, gids = ids(running.server_pid())
    assert uids == [running.run.uid] * 4
    assert gids == [running.run.gid] * 4


def test_secret_files_are_the_boots_modes_and_unreadable_by_another_uid(running: Running) -> None:
    folder = running.host_path(running.run.volumes[0].host)
    st = folder.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o500, running.run.uid)
    names = sorted(p.name for p in folder.iterdir())
    assert "DB_PASSWORD" in names and "OPENAI_API_KEY" in names
    for path in folder.iterdir():
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o400, running.run.uid), path.name
    inside = f"{running.run.volumes[0].container}/DB_PASSWORD"
    own = running.exec("cat", inside)
    assert own.returncode == 0 and own.stdout == h.DB_PASSWORD
    other = running.exec("cat", inside, user="10002:10002")
    assert other.returncode != 0 and "Permission denied" in other.stderr, other
    listing = running.exec("ls", running.run.volumes[0].container, user="10002:10002")
    assert listing.returncode != 0 and listing.stdout == "", listing


def test_sigterm_drains_a_stream_and_exits_0(running: Running, api_key: str) -> None:
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=api_key, max_retries=0)
    started = threading.Event()
    result: dict[str, Any] = {}

    def slow_stream() -> None:
        try:
            stream = client.chat.completions.create(
                model="openai/x-chunkdelay-400",
                messages=[{"role": "user", "content": "a b c d e f"}],
                stream=True,
            )
            parts = []
            for chunk in stream:
                started.set()
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    result["finish"] = chunk.choices[0].finish_reason or result.get("finish")
            result["text"] = "".join(parts)
        except Exception as err:  # reported by the assertion below
            result["error"] = repr(err)
            started.set()

    worker = threading.Thread(target=slow_stream)
    worker.start()
    assert started.wait(30), "the slow stream never started"
    pid = running.server_pid()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)  # what `docker stop` sends to the container's process
    worker.join(60)
    assert result.get("text") == "echo: a b c d e f", (result, running.log_tail())
    assert result.get("finish") == "stop"
    code = running.server.wait(60)
    print(f"\nSIGTERM to exit: {time.monotonic() - t0:.1f} s, exit {code}")
    assert code == 0, running.log_tail()
    # The HEALTHCHECK command can fail: with the server gone it exits non-zero.
    test = running.config["Healthcheck"]["Test"]
    assert running.exec(*test[1:], user=running.config["User"]).returncode != 0


def test_the_usage_spool_is_the_boots_host_folder_writable_by_the_server_only(
    running: Running,
) -> None:
    env = dict(item.split("=", 1) for item in running.env)
    (spool,) = [v for v in running.run.volumes if v.container == env["USAGE_SPOOL_DIR"]]
    probe = f"{spool.container}/probe"
    own = running.exec("sh", "-c", f"echo row > {probe} && cat {probe} && rm {probe}")
    assert own.returncode == 0 and own.stdout == "row\n", own
    other = running.exec("ls", spool.container, user="10002:10002")
    assert other.returncode != 0 and "Permission denied" in other.stderr, other
