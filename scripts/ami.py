#!/usr/bin/env python3
"""``make ami``: move the recorded Amazon Linux 2023 AMIs (``config/amis.json``) to the latest.

Reads the public SSM parameter ``/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-<arch>``
for every recorded region and architecture (``--region`` adds one), rewrites the file and prints
each change. Commit the file: the pull request's diff comment then shows the fleet refresh (and,
for arm64 in dev, the NAT instance replacement) that the next deploy performs. Needs AWS
credentials; without them it explains and leaves the file unchanged (exit 2).

Usage: ``python scripts/ami.py [--region ap-east-1] [--file config/amis.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from components.ami import AMI_FILE, ARCHITECTURES, ssm_parameter  # noqa: E402


def resolve(session: Any, region: str, architecture: str) -> str:
    """The AMI ID the public parameter names now."""
    ssm = session.client("ssm", region_name=region)
    return str(ssm.get_parameter(Name=ssm_parameter(architecture))["Parameter"]["Value"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/ami.py", description=__doc__)
    parser.add_argument("--region", action="append", default=[], help="also record this region")
    parser.add_argument("--file", type=Path, default=AMI_FILE, help="default config/amis.json")
    args = parser.parse_args(argv)
    data: dict[str, Any] = json.loads(args.file.read_text(encoding="utf-8"))
    regions = [r for r in data if not r.startswith("_")] + [r for r in args.region if r not in data]
    import boto3
    import botocore.exceptions

    session = boto3.Session()
    changes = []
    try:
        for region in regions:
            recorded = data.setdefault(region, {})
            for arch in ARCHITECTURES:
                latest = resolve(session, region, arch)
                if recorded.get(arch) != latest:
                    changes.append(f"{region} {arch}: {recorded.get(arch) or '-'} -> {latest}")
                    recorded[arch] = latest
    except (
        botocore.exceptions.NoCredentialsError,
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ClientError,
    ) as exc:
        print(
            f"make ami: could not read {ssm_parameter('<arch>')} ({exc}). It needs AWS "
            "credentials for the account (any identity may read the public parameter); the "
            f"recorded AMIs in {args.file.name} are unchanged.",
            file=sys.stderr,
        )
        return 2
    if not changes:
        print(f"make ami: the recorded AMIs are the latest ({', '.join(regions)})")
        return 0
    args.file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    for line in changes:
        print(f"make ami: {line}")
    print(
        "Commit the file: the next deploy refreshes every fleet of that architecture (instance "
        "refresh) and replaces the dev NAT instance (arm64)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
