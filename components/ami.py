"""The recorded Amazon Linux 2023 AMIs (``config/amis.json``), one per region and architecture.

``MachineImage.latest_amazon_linux2023()`` reads the public SSM parameter at every deploy, so an
unrelated deploy after AWS publishes a new AMI rolls the whole fleet and replaces the NAT
instance. A recorded ID changes only when someone runs ``make ami`` and commits the result.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Final

from aws_cdk import aws_ec2 as ec2

AMI_FILE: Final = Path(__file__).resolve().parent.parent / "config" / "amis.json"
ARCHITECTURES: Final = ("arm64", "x86_64")
_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")


def ssm_parameter(architecture: str) -> str:
    """The public parameter ``make ami`` reads (the one CDK's AL2023 image used)."""
    return f"/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-{architecture}"


def recorded_ami_id(region: str, architecture: str, path: Path = AMI_FILE) -> str:
    """The AMI ID recorded for ``region`` and ``architecture``.

    Raises:
        ValueError: none recorded, or not an AMI ID; the message names the file and the command.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    value = data.get(region, {}).get(architecture) if isinstance(data.get(region), dict) else None
    if not isinstance(value, str) or not _AMI_ID.match(value):
        raise ValueError(
            f"config/amis.json: no Amazon Linux 2023 AMI recorded for {region}/{architecture} "
            f"(got {value!r}); run `make ami REGION={region}` with credentials and commit the file"
        )
    return value


def recorded_image(region: str, architecture: str) -> ec2.IMachineImage:
    """The recorded AL2023 image for ``region`` (a concrete region: no lookup, no SSM)."""
    return ec2.MachineImage.generic_linux({region: recorded_ami_id(region, architecture)})
