"""The CDK feature flags a new ``cdk init`` app of the installed aws-cdk-lib sets, against cdk.json.

``python -m humansa_ops.feature_flags`` lists the recommended flags cdk.json lacks (or sets to
another value) that are not in :data:`LEFT_OFF`, and exits 1 if there are any: run it after
moving the aws-cdk-lib pin. ``tests/test_feature_flags.py`` checks the same and that the flags
change the templates only where docs/infrastructure.md says ("CDK feature flags").
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CDK_JSON = ROOT / "cdk.json"

#: Recommended flags deliberately not set (or set to another value), with the reason.
LEFT_OFF: dict[str, str] = {
    "@aws-cdk/core:defaultCrossStackReferences": (
        "kept 'strong' (recommended: 'weak'): strong references (Export/ImportValue) stop a "
        "stack from being deleted or changed while another uses its output, and moto (the "
        "emulator the deploy tests use) rejects the Fn::GetStackOutput that weak ones emit"
    ),
    "@aws-cdk/aws-secretsmanager:useAttachedSecretResourcePolicyForSecretTargetAttachments": (
        "moves the database secret's resource policy (Deny secretsmanager:DeleteSecret) to a "
        "new logical id: CloudFormation creates the new AWS::SecretsManager::ResourcePolicy and "
        "then deletes the old one, which removes the policy from the same secret, so the "
        "deploy would leave the secret without its delete guard"
    ),
}


def cdk_lib_version() -> str:
    """The installed aws-cdk-lib version (the jsii bundle inside the Python package)."""
    return _bundle().name.removeprefix("aws-cdk-lib@").removesuffix(".jsii.tgz")


def _bundle() -> Path:
    spec = importlib.util.find_spec("aws_cdk")  # located, not imported (no jsii start-up)
    if spec is None or spec.origin is None:
        raise RuntimeError("aws-cdk-lib is not installed (make install)")
    bundles = sorted((Path(spec.origin).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz"))
    if len(bundles) != 1:
        raise RuntimeError(f"expected one aws-cdk-lib jsii bundle, found {bundles}")
    return bundles[0]


def recommended() -> dict[str, Any]:
    """``recommended-feature-flags.json`` of the installed aws-cdk-lib (what ``cdk init`` sets)."""
    with tarfile.open(_bundle()) as bundle:
        member = bundle.extractfile("package/recommended-feature-flags.json")
        if member is None:
            raise RuntimeError("aws-cdk-lib bundle has no recommended-feature-flags.json")
        flags: dict[str, Any] = json.load(member)
    return flags


def context(path: Path = CDK_JSON) -> dict[str, Any]:
    """cdk.json's context."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["context"]
    return data


def missing(path: Path = CDK_JSON) -> dict[str, Any]:
    """Recommended flags cdk.json lacks or sets otherwise, not in :data:`LEFT_OFF`."""
    set_now = context(path)
    return {
        flag: value
        for flag, value in recommended().items()
        if flag not in LEFT_OFF and set_now.get(flag, object()) != value
    }


def main() -> int:
    wrong = missing()
    print(f"aws-cdk-lib {cdk_lib_version()}: {len(recommended())} recommended feature flags")
    for flag, reason in LEFT_OFF.items():
        print(f"  left off: {flag}: {reason}")
    for flag, value in wrong.items():
        print(f"  MISSING in cdk.json: {json.dumps(flag)}: {json.dumps(value)}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
