"""The shutdown timings line up: server drain < ALB deregistration delay, and drain + usage flush
< Docker's stop grace < systemd's stop timeout (docs/ml-server.md, "Resilience")."""

from __future__ import annotations

import re

from components.boot import BootSettings, render_file
from components.load_balancer import DEREGISTRATION_DELAY_SECONDS
from ml_server.app import USAGE_FLUSH_AT_EXIT_SECONDS
from ml_server.config import Settings
from tests.test_boot_script import realistic


def test_drain_fits_inside_deregistration_and_stop_timeouts() -> None:
    # GIVEN the defaults of the server, the load balancer and the boot unit
    drain = Settings.model_fields["drain_seconds"].default
    docker_grace = BootSettings.__dataclass_fields__["drain_seconds"].default
    settings = realistic("dev")
    # WHEN the unit is rendered
    unit = render_file("humansa-ml.service.j2", settings)
    stop_t = int(re.search(r"docker stop -t (\d+)", unit)[1])  # type: ignore[index]
    systemd = int(re.search(r"TimeoutStopSec=(\d+)", unit)[1])  # type: ignore[index]
    # THEN every layer waits longer than the one inside it
    assert drain < DEREGISTRATION_DELAY_SECONDS
    assert drain + USAGE_FLUSH_AT_EXIT_SECONDS < stop_t == docker_grace
    assert stop_t < systemd
