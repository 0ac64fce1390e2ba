"""`make prices` rewrites the price table from AWS Price List offer files: tested offline on a
committed fixture in the offer-file format (tests/fixtures/price_list, made-up prices), read from
disk and served over HTTP on 127.0.0.1; `make cost` then reads the rewritten table."""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from humansa_ops.cost import PriceTable
from humansa_ops.prices import DEFAULT_PRICES, main, offer_url

ROOT = Path(__file__).resolve().parent.parent
OFFERS = ROOT / "tests" / "fixtures" / "price_list"
COST_FIXTURE = ROOT / "tests" / "fixtures" / "cost" / "dev"
EC2_URL = offer_url("AmazonEC2", "ap-east-1")


@pytest.fixture
def table(tmp_path: Path) -> Path:
    copy = tmp_path / "prices.yaml"
    shutil.copy(DEFAULT_PRICES, copy)
    return copy


def test_the_fixture_prices_replace_only_the_rows_the_offers_cover(table: Path) -> None:
    before = table.read_text(encoding="utf-8").split("\n")
    args = ["--offers", str(OFFERS), "--region", "ap-east-1", "--prices", str(table)]
    assert main([*args, "--today", "2026-12-01"]) == 0
    after = table.read_text(encoding="utf-8").split("\n")
    changed = {b.split(":")[0].strip() for b, a in zip(before, after, strict=True) if a != b}
    assert sum(a != b for b, a in zip(before, after, strict=True)) == 7  # us-east-1: none
    assert changed == {
        "ec2.instance.t4g.nano.hour",
        "ec2.instance.t4g.small.hour",
        "ebs.gp3.gb_month",
        "nat_gateway.hour",
        "nat_gateway.gb",
        "rds.postgres.db.t4g.micro.hour",
        "rds.storage.gp3.gb_month",
    }
    prices = PriceTable(table)
    small = prices.get("ap-east-1", "ec2.instance.t4g.small.hour", resource_type="t", resource="r")
    # Linux, shared tenancy, on-demand: not the Windows, dedicated or reserved decoys
    assert small.usd == pytest.approx(0.0250123)
    assert small.source == EC2_URL and str(small.read) == "2026-12-01"
    assert "SKU FIXT0001" in small.note and "2026-11-01" in small.note
    assert small.unit == "instance-hour"  # the table's own unit is kept
    rds = prices.get("ap-east-1", "rds.postgres.db.t4g.micro.hour", resource_type="t", resource="r")
    assert rds.usd == pytest.approx(0.0300123)  # Single-AZ PostgreSQL, not Multi-AZ or MySQL
    # us-east-1 is untouched, and so are the comments
    assert [line for line in after if line.lstrip().startswith("#")] == [
        line for line in before if line.lstrip().startswith("#")
    ]


def test_make_cost_reads_the_rewritten_table(table: Path) -> None:
    def estimate() -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "humansa_ops.cost",
                str(COST_FIXTURE),
                "--summary",
                "--prices",
                str(table),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    old = estimate()
    assert main(["--offers", str(OFFERS), "--region", "ap-east-1", "--prices", str(table)]) == 0
    assert estimate() != old  # dev's NAT instance, fleet and database are priced anew


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def price_server(tmp_path: Path) -> Iterator[str]:
    # the public layout <service>/current/<region>/index.json, served on 127.0.0.1
    for service in ("AmazonEC2", "AmazonRDS"):
        target = tmp_path / "offers" / service / "current" / "ap-east-1"
        target.mkdir(parents=True)
        shutil.copy(OFFERS / service / "ap-east-1" / "index.json", target / "index.json")
    handler = functools.partial(_Quiet, directory=str(tmp_path / "offers"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


def test_the_offer_files_are_downloaded_from_the_price_list_url(
    table: Path, price_server: str
) -> None:
    args = ["--region", "ap-east-1", "--prices", str(table), "--base-url", price_server]
    assert main(args) == 0
    (row,) = [
        line
        for line in table.read_text(encoding="utf-8").splitlines()
        if line.startswith("    ec2.instance.t4g.small.hour:") and "0.0250123" in line
    ]
    # the URL it was read from (the cost table itself accepts only https:// sources)
    assert f'source: "{price_server}/AmazonEC2/current/ap-east-1/index.json"' in row


def test_unreachable_offers_fail_in_one_line_and_keep_the_table(
    table: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = table.read_bytes()
    # a port nobody listens on: connection refused, as where the internet is not reachable
    closed = http.server.HTTPServer(("127.0.0.1", 0), _Quiet)
    port = closed.server_address[1]
    closed.server_close()
    args = [
        "--region",
        "ap-east-1",
        "--prices",
        str(table),
        "--base-url",
        f"http://127.0.0.1:{port}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("prices: downloading")
    assert (
        err[1].startswith("prices: error: cannot read http://127.0.0.1:") and "--offers" in err[1]
    )
    assert table.read_bytes() == before


def test_an_unknown_region_is_named(table: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--offers", str(OFFERS), "--region", "eu-west-9", "--prices", str(table)]) == 2
    assert "eu-west-9" in capsys.readouterr().err
