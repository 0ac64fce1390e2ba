"""``make prices``: refresh ``humansa_ops/pricing/prices.yaml`` from the AWS Price List offer files.

The offer files are public JSON ("Reading the service price list file for an AWS service", AWS
Billing User Guide): ``products`` (sku -> productFamily, attributes) and ``terms.OnDemand`` (sku ->
offer term -> ``priceDimensions`` -> ``unit``, ``pricePerUnit.USD``). One file per service and
region, at ``https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/<service>/current/<region>/
index.json`` (the EC2 one is hundreds of MB: the download prints its progress).

Only rows the table already has are rewritten (the table lists what the cost model prices), and
only where the offer names exactly one on-demand price: each rewritten row records the offer
file's URL as ``source``, the day it was read as ``read``, and the offer's publication date and
SKU in ``note``. Rows no offer file covers (ALB, CloudWatch, KMS, ...) are kept as they are and
listed. The file is edited line by line, so its comments and layout stay. ``make cost`` reads
the same file.

``--offers DIR`` reads ``DIR/<service>/<region>/index.json`` instead of the internet (the tests use
a small committed fixture in the offer-file format, ``tests/fixtures/price_list``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

DEFAULT_PRICES = Path(__file__).resolve().parent / "pricing" / "prices.yaml"
BASE_URL = "https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws"
SERVICES = ("AmazonEC2", "AmazonRDS")
TIMEOUT_SECONDS = 120


class PricesError(Exception):
    """A problem the user can act on (one line)."""


@dataclass(frozen=True)
class OfferPrice:
    key: str
    usd: Decimal
    sku: str
    description: str
    publication_date: str
    source: str


def _ec2_key(family: str, a: dict[str, str]) -> str | None:
    if family == "Compute Instance":
        linux = (
            a.get("operatingSystem") == "Linux"
            and a.get("tenancy") == "Shared"
            and a.get("preInstalledSw") == "NA"
            and a.get("capacitystatus") == "Used"
            and a.get("licenseModel") == "No License required"
        )
        return f"ec2.instance.{a['instanceType']}.hour" if linux else None
    if family == "Storage" and a.get("volumeApiName") in ("gp2", "gp3"):
        return f"ebs.{a['volumeApiName']}.gb_month"
    if family == "NAT Gateway":
        usage = a.get("usagetype", "")
        if usage.endswith("NatGateway-Hours"):
            return "nat_gateway.hour"
        if usage.endswith("NatGateway-Bytes"):
            return "nat_gateway.gb"
    return None


RDS_VOLUMES = {"General Purpose": "gp2", "General Purpose-GP3": "gp3"}


def _rds_key(family: str, a: dict[str, str]) -> str | None:
    if a.get("deploymentOption") != "Single-AZ":
        return None
    if family == "Database Instance" and a.get("databaseEngine") == "PostgreSQL":
        return f"rds.postgres.{a['instanceType']}.hour"
    if family == "Database Storage" and a.get("databaseEngine") in ("PostgreSQL", "Any"):
        volume = RDS_VOLUMES.get(a.get("volumeType", ""))
        return f"rds.storage.{volume}.gb_month" if volume else None
    return None


KEYS: dict[str, Callable[[str, dict[str, str]], str | None]] = {
    "AmazonEC2": _ec2_key,
    "AmazonRDS": _rds_key,
}


def offer_url(service: str, region: str, base_url: str = BASE_URL) -> str:
    return f"{base_url}/{service}/current/{region}/index.json"


def _download(url: str) -> Any:
    print(f"prices: downloading {url}", file=sys.stderr)
    chunks: list[bytes] = []
    read = 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - https
        while chunk := response.read(8 * 1024 * 1024):
            chunks.append(chunk)
            read += len(chunk)
            print(f"prices:   {read // (1024 * 1024)} MB", file=sys.stderr)
    return json.loads(b"".join(chunks))


def load_offer(
    service: str, region: str, offers: Path | None, base_url: str = BASE_URL
) -> tuple[Any, str]:
    """The offer file's JSON and the source to record (the public URL for a local copy)."""
    url = offer_url(service, region, base_url)
    if offers is None:
        try:
            return _download(url), url
        except OSError as exc:
            raise PricesError(
                f"cannot read {url}: {exc} (run where the internet is reachable, or pass "
                "--offers DIR with <service>/<region>/index.json files)"
            ) from exc
    path = offers / service / region / "index.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")), offer_url(service, region)
    except OSError as exc:
        raise PricesError(f"cannot read the offer file {path}: {exc.strerror}") from exc


def offer_prices(service: str, offer: Any, source: str) -> Iterator[OfferPrice]:
    """One price per product the cost model knows, from the offer's on-demand terms."""
    if not isinstance(offer, dict) or "products" not in offer or "terms" not in offer:
        raise PricesError(f"{source}: not an offer file (no products/terms)")
    on_demand = offer["terms"].get("OnDemand", {})
    for sku, product in offer["products"].items():
        key = KEYS[service](product.get("productFamily", ""), product.get("attributes", {}))
        if key is None or sku not in on_demand:
            continue
        dimensions = [
            d
            for term in on_demand[sku].values()
            for d in term.get("priceDimensions", {}).values()
            if d.get("beginRange", d.get("startingRange", "0")) == "0"
        ]
        if len(dimensions) != 1 or "USD" not in dimensions[0].get("pricePerUnit", {}):
            continue  # tiered or ambiguous: not ours to guess
        yield OfferPrice(
            key=key,
            usd=Decimal(dimensions[0]["pricePerUnit"]["USD"]),
            sku=sku,
            description=str(dimensions[0].get("description", "")),
            publication_date=str(offer.get("publicationDate", "")),
            source=source,
        )


ROW = re.compile(r"^(?P<indent>    )(?P<key>[\w.-]+): \{(?P<body>.*)\}\s*$")
UNIT = re.compile(r"\bunit: (?P<unit>[^,}]+)")


def _usd(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if "." in text else text + ".0"


def _row(price: OfferPrice, unit: str, today: str) -> str:
    note = f"Price List offer {price.publication_date}, SKU {price.sku}: {price.description}"
    return (
        f"    {price.key}: {{usd: {_usd(price.usd)}, unit: {unit}, "
        f"source: {json.dumps(price.source)}, read: {today}, note: {json.dumps(note)}}}"
    )


def update_table(
    text: str, region: str, prices: dict[str, OfferPrice], today: str
) -> tuple[str, list[str], list[str]]:
    """``text`` with ``region``'s rows that ``prices`` covers rewritten; (text, updated, kept)."""
    lines = text.split("\n")
    try:
        start = lines.index(f"  {region}:")
    except ValueError:
        raise PricesError(f"the price table has no region {region} under regions:") from None
    updated: list[str] = []
    kept: list[str] = []
    for number in range(start + 1, len(lines)):
        line = lines[number]
        if re.match(r"^ {0,2}\S", line):  # the next region, or the end of regions:
            break
        found = ROW.match(line)
        if not found:
            continue
        key = found["key"]
        if key not in prices:
            kept.append(key)
            continue
        unit = UNIT.search(found["body"])
        lines[number] = _row(prices[key], unit["unit"].strip() if unit else "unit", today)
        updated.append(key)
    return "\n".join(lines), updated, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--region", action="append", help="region to refresh (default: all)")
    parser.add_argument("--offers", type=Path, help="folder of <service>/<region>/index.json")
    parser.add_argument("--prices", type=Path, default=DEFAULT_PRICES)
    parser.add_argument("--today", default=dt.date.today().isoformat(), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", default=BASE_URL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        text = args.prices.read_text(encoding="utf-8")
        regions = args.region or re.findall(
            r"^  ([a-z]{2}(?:-[a-z]+)+-\d):$", text.split("\nregions:", 1)[-1], re.MULTILINE
        )
        for region in regions:
            found: dict[str, OfferPrice] = {}
            for service in SERVICES:
                offer, source = load_offer(service, region, args.offers, args.base_url)
                for price in offer_prices(service, offer, source):
                    found[price.key] = price
            text, updated, kept = update_table(text, region, found, args.today)
            print(
                f"prices: {region}: {len(updated)} rows from the offer files: {', '.join(updated)}"
            )
            print(f"prices: {region}: {len(kept)} rows kept (no offer price): {', '.join(kept)}")
    except PricesError as exc:
        print(f"prices: error: {exc} (the table is unchanged)", file=sys.stderr)
        return 2
    args.prices.write_text(text, encoding="utf-8")
    print(f"prices: wrote {args.prices}; review the diff and commit it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
