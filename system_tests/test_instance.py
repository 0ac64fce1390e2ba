"""make instance-test: the rendered user data booted by real systemd in a Debian machine.

systemd-nspawn boots Debian 12 with systemd as PID 1; a stand-in for cloud-init runs the rendered
user data once at the first boot; AWS (SSM, Secrets Manager, ECR, the instance metadata service,
the instance role's credentials) is moto on 127.0.0.1 and 169.254.169.254 inside a private network
namespace, seeded as tests/boot_harness.py seeds it. Stand-ins (system_tests/standins/) replace
only what cannot exist here: AL2023's dnf, the Docker engine (the built image's root filesystem
runs as uid 10001 in a chroot), the CloudWatch agent, cloud-init. The units and timers are the
rendered ones; drop-ins only shorten the timers' intervals (health check 60 s -> 6 s, refresh
15 min -> 20 s). The machine's AWS calls pass through the recording proxy of tests/aws_proxy.py,
which answers the launch hook's CompleteLifecycleAction (moto 5.2 does not implement it) and here
also notes whether the machine's /health answered at that moment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from moto.server import ThreadedMotoServer

from components.boot import (
    CONTAINER_NAME,
    PROVIDER_SECRET_NAMES,
    RUNBOOK_PARAMETER_NAMES,
    SECRETS_DIR,
    USAGE_ALARM_METRICS,
    USAGE_GAUGE_METRICS,
    USAGE_SPOOL_DIR,
    USAGE_STUCK_METRIC,
    BootSettings,
    render_file,
    render_user_data,
)
from ml_server.tests.fake_provider import FakeProvider
from ml_server.tests.pg import TempPostgres
from system_tests import images
from system_tests.machine import (
    IMDS_ADDRESS,
    Machine,
    enter_private_network,
    machine_rootfs,
    python_binds,
)
from tests import boot_harness as h
from tests.aws_proxy import RecordingProxy

pytestmark = pytest.mark.slow

# The runbook's parameters plus one the tests add: the fake provider as the OpenAI base URL.
PARAMETER_NAMES = (*RUNBOOK_PARAMETER_NAMES, "openai_base_url")

MOTO_PORT = 80  # also answers the instance metadata service on 169.254.169.254:80
MOTO_ACCOUNT = "123456789012"  # moto's default account, which the seeding uses
#: An "environment" seeded with nothing: its boot fails fatally (no parameters under its path).
BROKEN = "broken"
HEALTH = "http://127.0.0.1:5001/health"
IMAGE_INSIDE = "/var/lib/humansa-standin/image"
# Shorter timer intervals, so the test does not wait minutes; the rendered units are unchanged.
# One empty OnActiveSec= resets every On*Sec= of the unit, then the new ones. The health check
# keeps a start-up grace (threshold 3 x 6 s) longer than the server's start on a busy machine.
TIMER_DROPINS = {
    "humansa-health.timer": "OnActiveSec=\nOnActiveSec=30s\nOnUnitActiveSec=6s\nAccuracySec=1s\n",
    "humansa-secrets-refresh.timer": "OnActiveSec=\nOnActiveSec=20s\nOnUnitActiveSec=20s\n"
    "RandomizedDelaySec=0\nAccuracySec=1s\n",
}


def health() -> int:
    try:
        with urllib.request.urlopen(HEALTH, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def instance_id() -> str:
    """The instance id the metadata service (moto, on 169.254.169.254 here) gives the machine."""
    url = f"http://{IMDS_ADDRESS}/latest/meta-data/instance-id"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def wait_for(what: str, check: Any, timeout: float, machine: Machine | None = None) -> float:
    """Poll ``check()`` until truthy; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            detail = ""
            if machine is not None and machine.leader:
                detail = machine.journal("humansa-ml.service")[-2500:]
                detail += machine.run("tail", "-n", "30", "/var/log/user-data.log").stdout
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{detail}")
        time.sleep(0.25)
    return time.monotonic() - start


@dataclass
class HookProxy(RecordingProxy):
    """The recording proxy, also noting /health of the machine when each hook is completed."""

    health_at_completion: list[int] = field(default_factory=list)

    def _lifecycle(self, action: str, params: dict[str, Any], headers: dict[str, str]) -> bytes:
        status = health() if action == "CompleteLifecycleAction" else 0
        answer = super()._lifecycle(action, params, headers)
        if action == "CompleteLifecycleAction":
            self.health_at_completion.append(status)
        return answer

    def hooks_of(self, env: str) -> list[tuple[str, str, int]]:
        """(result, instance id, /health status then) of each completion for ``env``'s group."""
        return [
            (c.result, c.instance_id, status)
            for c, status in zip(self.completions, self.health_at_completion, strict=True)
            if c.group == group_name(env)
        ]


def group_name(env: str) -> str:
    return f"humansa-{env}-fleet"


def add_group_with_launch_hook(moto: h.Moto, env: str) -> None:
    """The environment's Auto Scaling group and its launch hook, as the Service stack makes them."""
    asg = moto.client("autoscaling")
    asg.create_launch_configuration(
        LaunchConfigurationName=f"{env}-lc", ImageId="ami-12c6146b", InstanceType="t3.micro"
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName=group_name(env),
        LaunchConfigurationName=f"{env}-lc",
        MinSize=0,
        MaxSize=1,
        DesiredCapacity=0,
        AvailabilityZones=[f"{h.REGION}a"],
    )
    asg.put_lifecycle_hook(
        AutoScalingGroupName=group_name(env),
        LifecycleHookName=h.HOOK_NAME,
        LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
        HeartbeatTimeout=900,
        DefaultResult="ABANDON",
    )


@dataclass
class World:
    moto: h.Moto
    proxy: HookProxy
    pg: TempPostgres
    fake: FakeProvider
    lower: Path
    image_root: str
    image_config: dict[str, Any]
    tmp: Path
    arns: dict[str, dict[str, str]]


def seed_environment(moto: h.Moto, env: str, extra: dict[str, str]) -> dict[str, str]:
    """The boot tests' parameters and secrets (tests/boot_harness.py) for ``env``."""
    if env == h.ENVIRONMENT:
        arns = dict(moto.secret_arns)  # moto.seed() made these
    else:
        ssm, sm = moto.client("ssm"), moto.client("secretsmanager")
        for name, value in h.PARAMETERS.items():
            ssm.put_parameter(
                Name=f"/humansa/{env}/{name}", Value=value, Type="String", Overwrite=True
            )
        rds = {"username": "humansa", "password": h.DB_PASSWORD, "dbname": "humansa"}
        made = sm.create_secret(Name=f"HumansaDbSecret-{env}", SecretString=json.dumps(rds))
        arns = {"DB_PASSWORD": made["ARN"]}
        for name, value in h.provider_values().items():
            arns[name] = sm.create_secret(Name=f"/humansa/{env}/{name}", SecretString=value)["ARN"]
    for name, value in extra.items():
        moto.client("ssm").put_parameter(
            Name=f"/humansa/{env}/{name}", Value=value, Type="String", Overwrite=True
        )
    return arns


@contextlib.contextmanager
def make_world() -> Iterator[World]:
    """moto (AWS and IMDS), PostgreSQL and the fake provider in a private network namespace."""
    enter_private_network()
    lower = machine_rootfs()
    config = images.image_config()
    name = f"humansa-instance-test-{uuid.uuid4().hex[:8]}"
    images.new_container(images.IMAGE, name)
    mounted = images.buildah("mount", name)
    assert mounted.returncode == 0, mounted.stderr
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=MOTO_PORT, verbose=False)
    server.start()
    moto = h.Moto(port=MOTO_PORT, server=server)
    proxy = HookProxy(upstream_port=MOTO_PORT, account=MOTO_ACCOUNT)
    proxy.start()
    try:
        with (
            TempPostgres(password=h.DB_PASSWORD) as pg,
            tempfile.TemporaryDirectory(prefix="humansa-instance-test-") as tmp,
        ):
            moto.seed()
            fake = FakeProvider().start()
            extra = {
                "db_host": pg.host,
                "db_port": str(pg.port),
                "db_name": pg.database,
                "openai_base_url": f"{fake.url}/openai/v1",
            }
            arns = {env: seed_environment(moto, env, extra) for env in ("production", "dev")}
            arns["staging"] = seed_environment(moto, "staging", extra)
            arns[BROKEN] = {"DB_PASSWORD": arns["production"]["DB_PASSWORD"]}
            for env in arns:
                add_group_with_launch_hook(moto, env)
            yield World(
                moto, proxy, pg, fake, lower, mounted.stdout.strip(), config, Path(tmp), arns
            )
            fake.stop()
    finally:
        images.buildah("umount", name)
        images.remove_container(name)
        proxy.stop()
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with make_world() as made:
        yield made


def settings_for(world: World, env: str) -> BootSettings:
    return h.settings(
        world.arns[env],
        environment=env,
        parameter_path=f"/humansa/{env}/",
        app_log_group=f"/aws/ec2/humansa-ml/{env}",
        setup_log_group=f"/aws/ec2/humansa-ml/{env}/setup",
        parameter_names=PARAMETER_NAMES,
        auto_scaling_group_name=group_name(env),
        lifecycle_hook_name=h.HOOK_NAME,
    )


def prepare(world: World, env: str) -> tuple[Machine, BootSettings]:
    """A fresh machine for ``env``: the rendered user data, the stand-ins, the emulator endpoint."""
    settings = settings_for(world, env)
    binds = {world.image_root: IMAGE_INSIDE, **python_binds()}
    machine = Machine(world.lower, world.tmp / env, binds)
    machine.mount()
    machine.write("/var/lib/cloud/instance/scripts/part-001", render_user_data(settings), 0o700)
    machine.install_standin("cloud-final.service", "/etc/systemd/system/cloud-final.service", 0o644)
    wants = machine.root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "cloud-final.service").symlink_to("/etc/systemd/system/cloud-final.service")
    for name in ("docker", "docker.service", "amazon-cloudwatch-agent-ctl", "iptables"):
        machine.install_standin(name, f"/usr/local/lib/humansa-standins/{name}")
    machine.install_standin("dnf", "/usr/bin/dnf")
    aws = machine.root / "usr/local/bin/aws"
    aws.parent.mkdir(parents=True, exist_ok=True)
    aws.symlink_to(Path(sys.prefix).resolve() / "bin/aws")
    machine.write(
        "/etc/systemd/system.conf.d/humansa-emulator.conf",
        f"[Manager]\nDefaultEnvironment=AWS_ENDPOINT_URL={world.proxy.endpoint}\n",
    )
    machine.write(IMAGE_INSIDE + ".json", json.dumps(world.image_config))
    for timer, body in TIMER_DROPINS.items():
        machine.write(f"/etc/systemd/system/{timer}.d/test-time.conf", "[Timer]\n" + body)
    return machine, settings


def boot_to_healthy(machine: Machine, label: str) -> float:
    start = machine.boot()
    wait_for(f"{label}: {HEALTH} 200", lambda: health() == 200, 240, machine)
    took = time.monotonic() - start
    print(f"\n{label}: boot to /health 200 in {took:.1f} s")
    return took


@dataclass
class Booted:
    machine: Machine
    settings: BootSettings
    world: World
    boot_seconds: float

    def main_pid(self) -> int:
        return int(self.machine.show("humansa-ml.service", "MainPID") or 0)

    def restarts(self) -> int:
        return int(self.machine.show("humansa-ml.service", "NRestarts") or 0)

    def signal_unit(self, sig: str) -> None:
        """Every process of humansa-ml.service (with WEB_CONCURRENCY workers, stopping only the
        supervisor would leave its workers answering)."""
        for _ in range(5):
            # Right after a restart, systemd can fail a process of the cgroup with EIO
            # ("Failed to send signal ... to auxiliary processes"); the signal is idempotent.
            done = self.machine.run("systemctl", "kill", f"--signal=SIG{sig}", "humansa-ml.service")
            if done.returncode == 0:
                return
            time.sleep(0.5)
        self.machine.run("systemctl", "kill", "--signal=SIGCONT", "humansa-ml.service")
        raise AssertionError(f"systemctl kill --signal=SIG{sig}: {done.stderr}")

    def signal(self, pid: int, sig: str) -> None:
        done = self.machine.run("/bin/sh", "-c", f"kill -{sig} {pid}")  # minbase has no kill(1)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("env", ["dev", "staging"])
def test_each_environment_boots_to_healthy(world: World, env: str) -> None:
    assert health() == 0, "something already answers on the machine's port"
    machine, settings = prepare(world, env)
    try:
        boot_to_healthy(machine, f"{env} first boot")
        wait_for(
            "cloud-final done",
            lambda: machine.show("cloud-final.service", "ActiveState") == "active",
            60,
        )
        assert machine.show("cloud-final.service", "Result") == "success"
        env_file = machine.path("/etc/humansa/humansa-ml.env").read_text()
        assert f"ENVIRONMENT={env}\n" in env_file
        assert machine.path(f"/etc/systemd/system/{CONTAINER_NAME}.service").read_text() == (
            render_file("humansa-ml.service.j2", settings)
        )
        assert world.proxy.hooks_of(env) == [("CONTINUE", instance_id(), 200)]
        assert machine.poweroff() == 0
    finally:
        machine.destroy()


def test_a_fatal_boot_abandons_the_launch(world: World) -> None:
    """No parameters under the path: the boot stops with FATAL and answers the hook ABANDON."""
    assert health() == 0, "something already answers on the machine's port"
    machine, _ = prepare(world, BROKEN)
    try:
        machine.boot()
        wait_for(
            "cloud-final failed",
            lambda: machine.show("cloud-final.service", "ActiveState") == "failed",
            120,
            machine,
        )
        log = machine.path("/var/log/user-data.log").read_text()
        assert "FATAL" in log and "boot FAILED" in log, log[-2000:]
        assert world.proxy.hooks_of(BROKEN) == [("ABANDON", instance_id(), 0)]
        assert machine.poweroff() == 0
    finally:
        machine.destroy()


@pytest.fixture(scope="module")
def production(world: World) -> Iterator[Booted]:
    machine, settings = prepare(world, "production")
    try:
        took = boot_to_healthy(machine, "production first boot")
        yield Booted(machine, settings, world, took)
        machine.poweroff()
    finally:
        machine.destroy()


def test_first_boot_runs_the_user_data_and_the_rendered_units(production: Booted) -> None:
    m = production.machine
    wait_for(
        "cloud-final done", lambda: m.show("cloud-final.service", "ActiveState") == "active", 60
    )
    assert m.show("cloud-final.service", "Result") == "success"
    assert "boot complete" in m.path("/var/log/user-data.log").read_text()
    # The metadata firewall (user_data/imds-firewall.sh.j2), kept by the iptables stand-in.
    rules = m.path("/run/humansa-standin/iptables.rules").read_text().splitlines()
    assert "DOCKER-USER -d 169.254.169.254/32 -j REJECT" in rules
    for unit in ("humansa-ml.service", "humansa-health.timer", "humansa-secrets-refresh.timer"):
        assert m.show(unit, "ActiveState") == "active", unit
        assert m.show(unit, "UnitFileState") == "enabled", unit
    for template, unit in (
        ("humansa-ml.service.j2", "humansa-ml.service"),
        ("humansa-health.timer.j2", "humansa-health.timer"),
        ("humansa-secrets-refresh.timer.j2", "humansa-secrets-refresh.timer"),
    ):
        on_disk = m.path(f"/etc/systemd/system/{unit}").read_text()
        assert on_disk == render_file(template, production.settings), unit
    # The launch hook: CONTINUE once, for this instance, while /health answered 200.
    assert production.world.proxy.hooks_of("production") == [("CONTINUE", instance_id(), 200)]
    status = m.run("cat", f"/proc/{production.main_pid()}/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(production.settings.container_uid)] * 4


def test_the_agents_scrape_target_serves_the_usage_metrics(production: Booted) -> None:
    # The scrape config the boot wrote for the CloudWatch agent (which is a stand-in here): its
    # target answers with every metric the agent's EMF declaration selects.
    # Right after the first boot: a later test kills the server, and where systemd cannot kill
    # the unit's cgroup (EIO in this machine) orphaned workers keep 5001 but not the metrics
    # port of their dead supervisor.
    m = production.machine
    wait_for("healthy", lambda: health() == 200, 60, m)
    scrape = json.loads(m.path("/opt/aws/amazon-cloudwatch-agent/etc/prometheus.yaml").read_text())
    (target,) = scrape["scrape_configs"][0]["static_configs"][0]["targets"]

    def scrape_text() -> str:
        url = f"http://{target}/metrics"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
        return ""

    wait_for(f"{target}/metrics", scrape_text, 30, m)
    text = scrape_text()
    for name in (*USAGE_ALARM_METRICS, *USAGE_GAUGE_METRICS, USAGE_STUCK_METRIC):
        assert any(line.split("{")[0].split(" ")[0] == name for line in text.splitlines()), name


def test_the_container_unit_started_after_the_secrets(production: Booted) -> None:
    m = production.machine
    started = float(m.show("humansa-ml.service", "ExecMainStartTimestamp").lstrip("@"))
    folder = m.path(SECRETS_DIR)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["DB_PASSWORD", *PROVIDER_SECRET_NAMES])
    for path in folder.iterdir():
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o400, production.settings.container_uid)
        assert st.st_mtime <= started + 1, f"{path.name} written after the container started"
    assert production.restarts() == 0


def test_a_killed_server_is_restarted(production: Booted) -> None:
    before, restarts = production.main_pid(), production.restarts()
    production.signal(before, "KILL")
    took = wait_for(
        "restart after SIGKILL",
        lambda: production.main_pid() not in (0, before) and health() == 200,
        90,
        production.machine,
    )
    assert production.restarts() == restarts + 1
    print(f"\nSIGKILL to healthy again (Restart=always, RestartSec=10): {took:.1f} s")


def test_the_health_timer_restarts_a_hung_server_then_backs_off(production: Booted) -> None:
    m = production.machine
    log = m.path("/var/log/humansa-ml/health.log")
    hung = production.main_pid()
    mark = len(log.read_text()) if log.exists() else 0
    production.signal_unit("STOP")
    try:
        took = wait_for(
            "health timer restart",
            lambda: log.exists() and "restarting humansa-ml.service" in log.read_text()[mark:],
            120,
            m,
        )
        print(f"\nhung server to health-timer restart: {took:.1f} s")
    finally:
        production.signal_unit("CONT")  # it drains on the pending SIGTERM of the restart
    wait_for(
        "healthy after the health-timer restart",
        lambda: production.main_pid() not in (0, hung) and health() == 200,
        90,
        m,
    )
    gap = m.path("/run/humansa/health.state").read_text().split()[2]
    assert gap == "120", "the next restart waits twice the first gap"
    # Hung again at once: the checks fail, but the back-off holds the next restart.
    hung = production.main_pid()
    mark = len(log.read_text())
    production.signal_unit("STOP")
    try:
        wait_for("3 failed checks", lambda: "failed (4/3)" in log.read_text()[mark:], 120, m)
        assert "restarting" not in log.read_text()[mark:]
        assert production.main_pid() == hung
    finally:
        production.signal_unit("CONT")
    wait_for("healthy again", lambda: health() == 200, 30, m)


def test_the_refresh_timer_rewrites_a_rotated_secret(production: Booted) -> None:
    m = production.machine
    new = "sk-test-not-a-real-key-rotated-7c1d"
    sm = production.world.moto.client("secretsmanager")
    sm.put_secret_value(
        SecretId=production.settings.secret_files["OPENAI_API_KEY"].secret_id, SecretString=new
    )
    path = m.path(f"{SECRETS_DIR}/OPENAI_API_KEY")
    took = wait_for("rotated secret file", lambda: path.read_text() == new, 120, m)
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o400, production.settings.container_uid)
    print(f"\nrotation to rewritten file (refresh timer every 20 s here): {took:.1f} s")


def api_key(world: World) -> str:
    env = {**os.environ, **world.pg.env(), "ENVIRONMENT": "test"}
    done = subprocess.run(
        [sys.executable, "-m", "ml_server", "keys", "create", "--name", "instance-test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_systemctl_stop_drains_a_stream(production: Booted) -> None:
    m = production.machine
    client = openai.OpenAI(
        base_url="http://127.0.0.1:5001/v1", api_key=api_key(production.world), max_retries=0
    )
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
            result["text"] = "".join(parts)
        except Exception as err:  # reported by the assertion below
            result["error"] = repr(err)
            started.set()

    worker = threading.Thread(target=slow_stream)
    worker.start()
    assert started.wait(30)
    t0 = time.monotonic()
    stop = m.run("systemctl", "stop", "humansa-ml.service")
    worker.join(60)
    print(f"\nsystemctl stop with a stream in flight: {time.monotonic() - t0:.1f} s")
    assert stop.returncode == 0, stop.stderr
    assert result.get("text") == "echo: a b c d e f", result
    assert m.show("humansa-ml.service", "Result") == "success"
    assert m.show("humansa-ml.service", "ExecMainStatus") == "0"
    m.run("systemctl", "start", "humansa-ml.service")
    wait_for("healthy after start", lambda: health() == 200, 60, m)


def test_a_reboot_fetches_the_secrets_again(production: Booted) -> None:
    m = production.machine
    # The usage spool is on the root volume: what the server left there survives the reboot.
    probe = m.path(USAGE_SPOOL_DIR) / "reboot-probe"
    probe.write_text("kept\n")
    assert m.poweroff() == 0
    assert not (m.root / SECRETS_DIR.lstrip("/")).exists(), "/run must not survive a reboot"
    took = boot_to_healthy(m, "production reboot")
    assert m.show("cloud-final.service", "ConditionResult") == "no", "user data runs once"
    assert len(list(m.path(SECRETS_DIR).iterdir())) == len(production.settings.secret_files)
    assert "secrets: " in m.journal("humansa-ml.service")
    # m.path goes through the machine's leader process, a new one after the reboot.
    assert (m.path(USAGE_SPOOL_DIR) / probe.name).read_text() == "kept\n"
    st = m.path(USAGE_SPOOL_DIR).stat()
    uid = production.settings.container_uid
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, uid, uid)
    assert production.restarts() == 0
    assert took > 0
    hooks = production.world.proxy.hooks_of("production")
    assert hooks == [("CONTINUE", instance_id(), 200)], "the reboot completes no launch hook"
