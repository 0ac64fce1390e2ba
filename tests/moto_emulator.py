"""A STAND-IN for AWS: moto on 127.0.0.1 with the gaps patched that stop the real ``cdk deploy``.

The real CDK CLI (node_modules/.bin/cdk) deploys the real templates to it with
``AWS_ENDPOINT_URL=http://localhost:PORT`` (``localhost``, not ``127.0.0.1``: moto's
CloudFormation reads a ``TemplateURL`` as path-style only when the host says ``localhost``, else it
takes the first label of the host, ``127``, for the bucket: "The specified bucket does not exist").
What is patched, each a moto 5.2.5 gap and none a change to the templates:

- the models and fixes of tests/test_emulator_deploy.py (Secrets Manager secrets and alarms,
  which moto's CloudFormation skips; ``Ref`` to a DB parameter group; ``TargetGroupFullName``;
  SSM parameter and KMS key tags);
- ``AWS::EC2::SecurityGroup`` ingress rules without ``FromPort``/``ToPort`` (``IpProtocol: -1``,
  all ports, as CloudFormation allows; the NAT instance's group): moto raised ``KeyError`` and
  then reported "Fn::GetAtt references undefined resource";
- ``UsePreviousValue`` for a parameter the stack was created without (the CLI's
  ``BootstrapVersion`` on an update): moto raised ``KeyError`` (HTTP 500); CloudFormation keeps
  what it had, the template's default, and so does this stand-in;
- Lambda-backed custom resources: moto runs Lambda functions only in Docker, so it never gets an
  answer; here each one answers SUCCESS with no data at once (nothing runs: the database user of
  ``components/db_bootstrap.py`` is not created, the VPC's default security group not emptied).

Not for users and not a deploy: ``python -m tests.moto_emulator --port 5077`` serves it for the
walkthrough in docs/operations.md; tests/test_deploy_moto.py starts it in-process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from moto.server import ThreadedMotoServer

_PATCHED = "_humansa_patched"


def _patch_security_group_all_ports() -> None:
    from moto.ec2.models.security_groups import SecurityGroup

    original = SecurityGroup.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    if getattr(original, _PATCHED, False):
        return

    def create(cls: Any, name: str, cloudformation_json: Any, *args: Any, **kw: Any) -> Any:
        properties = cloudformation_json.get("Properties", {})
        rules = [
            {"FromPort": -1, "ToPort": -1, **rule} if str(rule.get("IpProtocol")) == "-1" else rule
            for rule in properties.get("SecurityGroupIngress", [])
        ]
        if rules:
            properties = {**properties, "SecurityGroupIngress": rules}
            cloudformation_json = {**cloudformation_json, "Properties": properties}
        return original(cls, name, cloudformation_json, *args, **kw)

    setattr(create, _PATCHED, True)
    SecurityGroup.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign,assignment]


def _patch_custom_resources() -> None:
    from moto.cloudformation.custom_model import CustomModel
    from moto.cloudformation.models import cloudformation_backends
    from moto.moto_api._internal import mock_random

    if getattr(CustomModel.create_from_cloudformation_json.__func__, _PATCHED, False):  # type: ignore[attr-defined]
        return

    def create(
        cls: Any,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> CustomModel:
        resource = CustomModel(  # type: ignore[abstract]
            region_name, str(mock_random.uuid4()), kwargs["LogicalId"], resource_name
        )
        stack = cloudformation_backends[account_id][region_name].get_stack(kwargs["StackId"])
        stack.add_custom_resource(resource)
        resource.set_data({})  # the stand-in's answer: SUCCESS, no data
        return resource

    setattr(create, _PATCHED, True)
    CustomModel.create_from_cloudformation_json = classmethod(create)  # type: ignore[method-assign,assignment,arg-type]


def _patch_previous_parameters() -> None:
    from moto.cloudformation.models import CloudFormationBackend

    original = CloudFormationBackend._resolve_update_parameters
    if getattr(original, _PATCHED, False):
        return

    def resolve(self: Any, instance: Any, incoming_params: list[dict[str, str]]) -> Any:
        kept = [
            parameter
            for parameter in incoming_params
            if not parameter.get("UsePreviousValue")
            or parameter["ParameterKey"] in instance.parameters
        ]
        return original(self, instance, kept)

    setattr(resolve, _PATCHED, True)
    CloudFormationBackend._resolve_update_parameters = resolve  # type: ignore[method-assign]


def patch_moto() -> None:
    """Apply every patch above (idempotent)."""
    from tests.test_emulator_deploy import _patch_moto_gaps

    _patch_moto_gaps()
    _patch_security_group_all_ports()
    _patch_previous_parameters()
    _patch_custom_resources()


def start(port: int = 0) -> ThreadedMotoServer:
    """The patched moto on 127.0.0.1:``port`` (0: a free port), started."""
    patch_moto()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5077)
    parser.add_argument("--account", help="MOTO_ACCOUNT_ID: the account every request is in")
    args = parser.parse_args(argv)
    if args.account:
        os.environ["MOTO_ACCOUNT_ID"] = args.account
    server = start(args.port)
    host, port = server.get_host_and_port()
    print(
        f"moto_emulator (stand-in, patched moto) on http://{host}:{port}; deploy with "
        f"AWS_ENDPOINT_URL=http://localhost:{port}",
        flush=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
