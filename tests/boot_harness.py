"""Runs the rendered boot script under a temporary root with stubs and a moto server.

Used by tests/test_boot_script.py and benchmarks/boot_script.py. The stubs (tests/boot_stubs/)
stand in for what does not exist here (docker engine, systemd, dnf, IMDS, the CloudWatch agent);
the AWS CLI is the real one (awscli from PyPI), answered by moto on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from components.boot import (
    LAUNCH_HOOK_NAME,
    PLACEHOLDER_SECRET_VALUE,
    PROVIDER_SECRET_NAMES,
    BootSettings,
    SecretFile,
)

STUB_SOURCE = Path(__file__).parent / "boot_stubs"
REGION = "ap-east-1"
ENVIRONMENT = "production"
PARAM_PATH = f"/humansa/{ENVIRONMENT}/"
REGISTRY = "992382528744.dkr.ecr.ap-east-1.amazonaws.com"
IMAGE = (
    f"{REGISTRY}/cdk-hnb659fds-container-assets-992382528744-ap-east-1:"
    "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5"
)
DB_PASSWORD = "pw-test-not-a-real-password-Zq81"
PARAMETERS = {
    "alb_dns_name": "humansa-alb-123456789.ap-east-1.elb.amazonaws.com",
    "asg_name": "humansa-production-fleet",
    "ml_tg_arn": "arn:aws:elasticloadbalancing:ap-east-1:992382528744:targetgroup/ml/0123456789",
    "vpc_id": "vpc-0123456789abcdef0",
    "db_host": "humansa-db.abcdefghijkl.ap-east-1.rds.amazonaws.com",
    "db_port": "5432",
    "db_username": "humansa",
    "db_name": "humansa",
    "ml_server_image_tag": "release-1.2.3",
    "features/log_level": "INFO",
    "features/rate_limit": "60",
}
UNSET_PROVIDER = "MEM0_API_KEY"
ASG_NAME = PARAMETERS["asg_name"]
HOOK_NAME = LAUNCH_HOOK_NAME
PLANTED_SECURESTRING = "planted-securestring-not-a-real-pat-Zx40"
"""A SecureString the old runbook left under the path (``github_pat``): never read."""


def provider_values() -> dict[str, str]:
    """Fake provider secrets; MEM0_API_KEY stays the CDK placeholder."""
    values = {
        name: f"test-not-a-real-{name.lower().replace('_', '-')}-9f3a"
        for name in PROVIDER_SECRET_NAMES
    }
    values["OPENAI_API_KEY"] = "sk-test-not-a-real-key-openai-9f3a"
    values[UNSET_PROVIDER] = PLACEHOLDER_SECRET_VALUE
    return values


def secret_values() -> list[str]:
    """Every secret value that must never leak (the placeholder is not a secret)."""
    return [
        DB_PASSWORD,
        PLANTED_SECURESTRING,
        *(v for v in provider_values().values() if v != PLACEHOLDER_SECRET_VALUE),
    ]


def heredoc(script: str, destination: str) -> str:
    """The content the boot script writes to ``destination`` (a path ending, e.g.
    ``/prometheus.yaml``) with ``write_file DEST MODE <<'MARK'``, read from the script text."""
    lines = script.splitlines(keepends=True)
    for i, line in enumerate(lines):
        head = line.split("<<'", 1)
        if line.startswith("write_file ") and len(head) == 2 and destination in head[0]:
            mark = head[1].split("'", 1)[0]
            end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip("\n") == mark)
            return "".join(lines[i + 1 : end])
    raise AssertionError(f"the boot script writes no {destination} with a heredoc")


def synthesized_user_data(templates: dict[str, dict[str, Any]], stack: str, config: Any) -> str:
    """The launch template's user data in ``stack``, resolved as CloudFormation would.

    Args:
        templates: stack name -> template JSON of one environment (Network, Data, Service).
        stack: the Service stack's name.
        config: that environment's ``EnvironmentConfig`` (region, account).
    """
    from tests.iam_contract import Templates, Unresolvable

    def no_secret(stack: str, logical: str, props: dict[str, Any]) -> str:
        raise Unresolvable(f"the user data names secret {logical} by ARN, not by name")

    resolved = Templates(templates, config.region, config.account, no_secret)
    for res in resolved.resources(stack).values():
        if res["Type"] == "AWS::EC2::LaunchTemplate":
            data = res["Properties"]["LaunchTemplateData"]["UserData"]
            return str(resolved.resolve(data, stack))
    raise AssertionError(f"{stack}: no launch template")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Moto:
    """A moto server on 127.0.0.1, seeded with the stack's parameters and secrets."""

    port: int
    server: ThreadedMotoServer
    secret_arns: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def seed(self) -> None:
        ssm = self.client("ssm")
        for name, value in PARAMETERS.items():
            ssm.put_parameter(Name=PARAM_PATH + name, Value=value, Type="String", Overwrite=True)
        ssm.put_parameter(Name="/humansa/staging/db_host", Value="not-this-env", Type="String")
        ssm.put_parameter(
            Name=PARAM_PATH + "github_pat", Value=PLANTED_SECURESTRING, Type="SecureString"
        )
        sm = self.client("secretsmanager")
        rds = {
            "engine": "postgres",
            "host": PARAMETERS["db_host"],
            "port": 5432,
            "username": "humansa",
            "password": DB_PASSWORD,
            "dbname": "humansa",
        }
        made = sm.create_secret(Name="HumansaDbSecret-AbCdEf", SecretString=json.dumps(rds))
        self.secret_arns["DB_PASSWORD"] = made["ARN"]
        for name, value in provider_values().items():
            made = sm.create_secret(Name=f"/humansa/{ENVIRONMENT}/{name}", SecretString=value)
            self.secret_arns[name] = made["ARN"]

    def stop(self) -> None:
        self.server.stop()


@contextlib.contextmanager
def moto_server() -> Iterator[Moto]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    moto = Moto(port=port, server=server)
    try:
        # moto's backends are process-wide: start from an empty account every time.
        reset = urllib.request.Request(f"{moto.endpoint}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310 - moto on 127.0.0.1
        moto.seed()
        yield moto
    finally:
        with contextlib.suppress(Exception):
            server.stop()


def settings(secret_arns: dict[str, str], **overrides: Any) -> BootSettings:
    files = {
        name: SecretFile(arn, "password" if name == "DB_PASSWORD" else None)
        for name, arn in secret_arns.items()
    }
    base: dict[str, Any] = {
        "environment": ENVIRONMENT,
        "region": REGION,
        "parameter_path": PARAM_PATH,
        "image_uri": IMAGE,
        "registry": REGISTRY,
        "secret_files": files,
        "app_log_group": f"/aws/ec2/humansa-ml/{ENVIRONMENT}",
        "setup_log_group": f"/aws/ec2/humansa-ml/{ENVIRONMENT}/setup",
    }
    base.update(overrides)
    return BootSettings(**base)


@dataclass
class Sandbox:
    """A temporary root, a stub bin folder, the stubs' log and state."""

    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def bin(self) -> Path:
        return self.base / "bin"

    @property
    def stub_log(self) -> Path:
        return self.base / "stub-calls.jsonl"

    @property
    def state(self) -> Path:
        return self.base / "stub-state"

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        for stub in STUB_SOURCE.iterdir():
            if stub.name.startswith((".", "__")):
                continue
            target = self.bin / stub.name
            text = stub.read_text()
            if text.startswith("#!python"):
                text = f"#!{sys.executable}" + text.removeprefix("#!python")
            target.write_text(text)
            target.chmod(0o755)

    def env(self, endpoint: str, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HUMANSA_ROOT": str(self.root),
            "HUMANSA_READY_TIMEOUT": "10",
            "STUB_LOG": str(self.stub_log),
            "STUB_STATE": str(self.state),
            "REAL_AWS": str(Path(sys.executable).parent / "aws"),
            "REAL_PYTHON": sys.executable,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.base / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.base / "no-aws-credentials"),
            "HOME": str(self.root / "root"),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def run(self, script: str, endpoint: str, **extra: str) -> subprocess.CompletedProcess[str]:
        path = self.base / "user-data.sh"
        path.write_text(script)
        return subprocess.run(
            ["/bin/bash", str(path)],
            env=self.env(endpoint, **extra),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def calls(self, prog: str | None = None) -> list[dict[str, Any]]:
        if not self.stub_log.exists():
            return []
        rows = [json.loads(line) for line in self.stub_log.read_text().splitlines()]
        return [r for r in rows if prog is None or r["prog"] == prog]

    def manifest(self) -> dict[str, tuple[str, int, int, int, str]]:
        """Path -> (kind, mode, uid, gid, sha256) of everything under the root except the log."""
        out: dict[str, tuple[str, int, int, int, str]] = {}
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            if rel == "var/log/user-data.log":
                continue
            st = path.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else ""
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
        return out

    def reset(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        os.makedirs(self.base, exist_ok=True)
        self.setup()
