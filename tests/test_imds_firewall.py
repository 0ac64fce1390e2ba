"""The boot's host firewall rule: containers cannot reach the instance metadata addresses.

Runs the rendered boot script under the boot harness's stubs (tests/boot_harness.py), with an
iptables/ip6tables stub that keeps the rules, against moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.boot import render_file, render_user_data
from tests import boot_harness as h

RULE4 = ["DOCKER-USER", "-d", "169.254.169.254/32", "-j", "REJECT"]


@pytest.fixture(scope="module")
def moto() -> Iterator[h.Moto]:
    with h.moto_server() as server:
        yield server


@pytest.fixture
def sandbox(tmp_path: Path) -> h.Sandbox:
    box = h.Sandbox(tmp_path)
    box.setup()
    return box


def _rules(sandbox: h.Sandbox, tool: str) -> list[list[str]]:
    path = sandbox.state / "iptables" / f"{tool}.json"
    return list(json.loads(path.read_text())) if path.exists() else []


@pytest.mark.slow
def test_boot_closes_the_metadata_addresses_to_containers_once(
    moto: h.Moto, sandbox: h.Sandbox
) -> None:
    script = render_user_data(h.settings(moto.secret_arns))
    for _ in range(2):  # a second boot adds no duplicate rule
        run = sandbox.run(script, moto.endpoint)
        assert run.returncode == 0, run.stdout + run.stderr
    assert _rules(sandbox, "iptables") == [RULE4]
    assert _rules(sandbox, "ip6tables") == [["FORWARD", "-d", "fd00:ec2::254/128", "-j", "REJECT"]]
    drop_in = sandbox.root / "etc/systemd/system/docker.service.d/imds.conf"
    assert "ExecStartPost=/usr/local/libexec/humansa/imds-fw" in drop_in.read_text()
    assert (sandbox.root / "usr/local/libexec/humansa/imds-fw").stat().st_mode & 0o111
    # The rules go in after docker is up (docker creates DOCKER-USER), before the container.
    order = [
        c["prog"] if c["prog"] != "systemctl" else " ".join(c["argv"][:2]) for c in sandbox.calls()
    ]
    docker_up = order.index("enable --now")
    first_rule = order.index("iptables")
    container = next(
        i
        for i, c in enumerate(sandbox.calls())
        if c["prog"] == "systemctl" and "humansa-ml.service" in c["argv"]
    )
    assert docker_up < first_rule < container


@pytest.mark.slow
def test_boot_fails_when_the_rule_cannot_be_set(moto: h.Moto, sandbox: h.Sandbox) -> None:
    broken = sandbox.bin / "iptables"
    broken.write_text("#!/bin/sh\necho 'iptables: permission denied' >&2\nexit 4\n")
    run = sandbox.run(render_user_data(h.settings(moto.secret_arns)), moto.endpoint)
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "permission denied" in out and "boot FAILED" in out


def test_the_firewall_block_is_included_once() -> None:
    template = (Path(__file__).parent.parent / "user_data" / "boot.sh.j2").read_text()
    assert template.count('{% include "imds-firewall.sh.j2" %}') == 1
    assert "169.254.169.254/32" in render_file("boot.sh.j2", h.settings({}))
