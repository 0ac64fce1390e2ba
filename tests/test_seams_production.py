"""The seams of a first deploy (tests/test_seams.py) for production: the same boot and checks, in a
module of its own so pytest-xdist runs this boot beside the other environments'."""

from __future__ import annotations

import pytest

from tests.test_seams import (  # noqa: F401 - fixtures and tests pytest collects here
    booted,
    pg,
    pytest_generate_tests,
    test_every_aws_call_of_the_boot_is_allowed_by_the_synthesized_instance_policy,
    test_the_boot_output_starts_the_real_server_with_every_provider_at_its_placeholder,
    test_the_launch_hook_is_completed_with_continue_after_local_health,
)

pytestmark = pytest.mark.slow

SEAM_ENVIRONMENTS: tuple[str, ...] = ("production",)
