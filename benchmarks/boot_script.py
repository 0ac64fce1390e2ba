"""Prints figures for the boot script: rendered size per environment, wall time under stubs
against moto, and how many commands run before the container starts. With ``--machine`` (root,
after ``make image``), also boot to /health under real systemd in systemd-nspawn, first boot and
reboot (system_tests/test_instance.py's machine; the server runs from the built image).

Run: .venv/bin/python benchmarks/boot_script.py [--machine]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from components.boot import ENVIRONMENTS, render_user_data
from tests import boot_harness as h


def machine_figures() -> None:
    """Boot-to-/health of the production user data in a systemd-nspawn Debian machine."""
    from system_tests.test_instance import boot_to_healthy, make_world, prepare

    with make_world() as world:
        machine, _ = prepare(world, "production")
        try:
            boot_to_healthy(machine, "systemd-nspawn machine, first boot (user data runs)")
            machine.poweroff()
            boot_to_healthy(machine, "systemd-nspawn machine, reboot (unit fetches the secrets)")
            machine.poweroff()
        finally:
            machine.destroy()


def main() -> None:
    if "--machine" in sys.argv[1:]:
        machine_figures()
    with h.moto_server() as moto:
        for env in ENVIRONMENTS:
            size = len(render_user_data(h.settings(moto.secret_arns, environment=env)).encode())
            print(f"rendered size {env}: {size} bytes (moto ARNs, 11 secrets)")
        script = render_user_data(h.settings(moto.secret_arns))
        with tempfile.TemporaryDirectory() as tmp:
            box = h.Sandbox(Path(tmp))
            box.setup()
            trace = Path(tmp) / "trace"
            (Path(tmp) / "user-data.sh").write_text(script)
            times = []
            for label in ("first run", "second run (idempotent)"):
                start = time.perf_counter()
                done = subprocess.run(
                    [
                        "/bin/bash",
                        "-c",
                        'exec 9>>"$1"; BASH_XTRACEFD=9 exec bash -x "$2"',
                        "_",
                        str(trace),
                        str(Path(tmp) / "user-data.sh"),
                    ],
                    env=box.env(moto.endpoint),
                    capture_output=True,
                    text=True,
                    check=False,
                )
                times.append(time.perf_counter() - start)
                print(f"{label}: exit {done.returncode}, {times[-1]:.2f} s wall under stubs")
                if label == "first run":
                    lines = trace.read_text().splitlines()
                    cut = next(
                        i for i, ln in enumerate(lines) if "enable --now humansa-ml.service" in ln
                    )
                    top = [ln for ln in lines[:cut] if ln.startswith("+ ")]
                    print(
                        f"  simple commands traced before the unit start: {len(lines[:cut])} "
                        f"({len(top)} at top level)"
                    )
                    calls = box.calls()
                    run_at = next(
                        i
                        for i, c in enumerate(calls)
                        if c["prog"] == "docker" and c["argv"][0] == "run"
                    )
                    before = calls[:run_at]
                    by = {
                        p: sum(1 for c in before if c["prog"] == p)
                        for p in sorted({c["prog"] for c in before})
                    }
                    print(f"  recorded programs before docker run: {len(before)} {by}")
                    aws = [c for c in before if c["prog"] == "aws"]
                    span = aws[-1]["t"] - aws[0]["t"] if aws else 0.0
                    print(f"  AWS CLI calls: {len(aws)}, first to last start {span:.2f} s")


if __name__ == "__main__":
    main()
