"""The cost estimator (humansa_ops/cost.py) against hand-computed fixtures.

Each fixture under tests/fixtures/cost/<env>/ is a minimal cloud assembly shaped like CDK's
(manifest.json + <Stack>.template.json). The expected totals below are written as the
arithmetic from the committed price table (humansa_ops/pricing/) and its assumptions, so a
price change in the table shows up here as a failing sum to re-check by hand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from humansa_ops import cost

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "cost"
SCRIPT = ROOT / "scripts" / "cost"

H = 730  # hours per month in the table


@pytest.fixture(scope="module")
def table() -> cost.PriceTable:
    return cost.PriceTable(cost.DEFAULT_PRICES)


def _copy(env: str, tmp_path: Path) -> Path:
    dest = tmp_path / env
    shutil.copytree(FIXTURES / env, dest)
    return dest


def _edit(path: Path, logical_id: str, **props: Any) -> None:
    template = json.loads(path.read_text())
    template["Resources"][logical_id]["Properties"].update(props)
    path.write_text(json.dumps(template))


def _items(est: cost.Estimate, resource: str) -> list[cost.LineItem]:
    return [i for i in est.items if i.resource == resource]


# ----------------------------------------------------------------------------- fixtures


def test_dev_total_at_us_east_1(table: cost.PriceTable) -> None:
    # GIVEN the dev assembly (NAT instance, 1 spot instance, single-AZ db.t4g.micro)
    est = cost.estimate(FIXTURES / "dev", table, region="us-east-1")["Dev"]
    # THEN every priced line adds up to the hand-computed figure (dev assumptions: 0.5 LCU,
    # 0.2 GB per log group; t4g.small spot discount 70 %)
    expected = (
        H * 0.0042  # NAT instance t4g.nano
        + 8 * 0.08  # its default 8 GiB gp3 root volume
        + H * 0.005  # its public IPv4 (public subnet maps one on launch)
        + H * 0.016  # RDS db.t4g.micro single-AZ
        + 20 * 0.115  # RDS 20 GB gp3
        + 0.40  # database secret
        + H * 0.0225  # ALB hours
        + 0.5 * H * 0.008  # ALB LCU
        + 2 * H * 0.005  # ALB public IPv4, 2 AZs
        + H * 0.0168 * (1 - 0.70)  # 1 spot t4g.small
        + 20 * 0.08  # its 20 GiB gp3
        + 3 * 0.10  # 3 standard alarms
        + 0.00  # 1 dashboard: within the always-free 3 per account
        + 0.2 * 0.50  # log ingestion
        + 0.2 * (30 / 30.4) * 0.03  # log storage, 30-day retention
    )
    assert est.total_usd == pytest.approx(expected)
    assert expected <= 60  # the issue's dev target at us-east-1 prices holds for this shape
    assert est.not_priced == []
    assert est.free["AWS::EC2::VPCEndpoint (Gateway)"] == 1
    assert est.free["AWS::SSM::Parameter"] == 2


def test_dev_at_manifest_region_warns_unsourced(table: cost.PriceTable) -> None:
    est = cost.estimate(FIXTURES / "dev", table)["Dev"]
    assert est.region == "ap-east-1"
    expected = (
        H * 0.0053
        + 8 * 0.1056
        + H * 0.005
        + H * 0.025
        + 20 * 0.138
        + 0.40
        + H * 0.0252
        + 0.5 * H * 0.008
        + 2 * H * 0.005
        + H * 0.0212 * (1 - 0.70)
        + 20 * 0.1056
        + 3 * 0.10
        + 0.00  # dashboard: always-free
        + 0.2 * 0.57
        + 0.2 * (30 / 30.4) * 0.033
    )
    assert est.total_usd == pytest.approx(expected)
    assert "nat_gateway.hour" not in est.unsourced  # only the prices used are listed
    assert {"ec2.instance.t4g.small.hour", "elb.alb.hour"} <= est.unsourced
    assert "ipv4.hour" not in est.unsourced  # sourced for every region
    assert "WARNING: unsourced prices used" in cost.render_table({"Dev": est}, table)


def test_staging_total_at_us_east_1(table: cost.PriceTable) -> None:
    est = cost.estimate(FIXTURES / "staging", table, region="us-east-1")["Staging"]
    expected = (
        H * 0.045  # 1 NAT gateway
        + 10 * 0.045  # staging NAT traffic assumption, 10 GB
        + H * 0.005  # its EIP
        + 2 * (2 * H * 0.01)  # 2 interface endpoints x 2 AZs
        + 10 * 0.01  # interface endpoint traffic, 10 GB
        + 1 * 0.50  # flow log group: 1 GB vended logs
        + 1 * (14 / 30.4) * 0.03  # its 14-day storage
        + H * 0.032  # RDS db.t4g.small single-AZ
        + 30 * 0.115  # 30 GB, StorageType absent = gp2
        + 0.40  # RDS-managed master password secret
        + 0.40  # provider keys secret
        + H * 0.0225  # ALB
        + 0.5 * H * 0.008
        + 2 * H * 0.005
        + H * 0.0168  # 1 on-demand t4g.small (MinSize, no DesiredCapacity)
        + 30 * 0.08
        + 2 * 0.10
        + 0.00  # dashboard: always-free
        + 0.3 * 0.50  # server log group
        + 0.3 * (90 / 30.4) * 0.03
    )
    assert est.total_usd == pytest.approx(expected)


def test_production_and_ci_totals_at_us_east_1(table: cost.PriceTable) -> None:
    result = cost.estimate(FIXTURES / "production", table, region="us-east-1")
    assert set(result) == {"Production", "CI"}
    prod = result["Production"]
    expected = (
        2 * H * 0.045  # 2 NAT gateways
        + 20 * 0.045  # default NAT traffic, once for the environment
        + 2 * H * 0.005  # their EIPs
        + 1.00  # KMS key
        + 2 * 0.40  # 2 secrets
        + 2 * H * 0.032  # RDS db.t4g.small Multi-AZ: two instances
        + 2 * 50 * 0.115  # and two copies of 50 GB gp3
        + H * 0.0225
        + 1.0 * H * 0.008
        + 2 * H * 0.005
        + H * 0.0168  # OnDemandBaseCapacity 1: one on-demand t4g.small
        + H * 0.0168 * (1 - 0.70)  # 0 % above base: the second one is spot
        + 2 * 20 * 0.08
        + 2 * 0.10  # 5xx-rate alarm over 2 metrics
        + 0.10  # unhealthy hosts
        + 0.30  # 10-second period: high-resolution alarm
        + 0.00  # dashboard: always-free
        + 0.5 * 0.50
        + 0.5 * (365 / 30.4) * 0.03  # server logs, 1 year
        + 0.5 * 0.50
        + 0.5 * 12 * 0.03  # boot logs never expire: 12 months assumed
        + 5.00  # WAF web ACL (no rules in the fixture)
    )
    assert prod.total_usd == pytest.approx(expected)
    assert prod.not_priced == [
        "WAF requests inspected by Humansa-Production-Service/WebAcl3C4D5E6F "
        "($0.60/million, volume unknown)"
    ]
    ci = result["CI"]
    assert ci.total_usd == pytest.approx(1.00 + 2 * 0.023 + 0.5 * 0.50 + 0.5 * (90 / 30.4) * 0.03)


# ----------------------------------------------------------------------------- behaviours


def test_dashboards_are_free_up_to_three_per_account_then_all_billed(
    table: cost.PriceTable, tmp_path: Path
) -> None:
    out = _copy("dev", tmp_path)
    service = out / "Humansa-Dev-Service.template.json"
    template = json.loads(service.read_text())
    (lid,) = [
        k for k, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Dashboard"
    ]

    def dashboards(est: cost.Estimate) -> list[cost.LineItem]:
        return [i for i in est.items if i.resource_type == "AWS::CloudWatch::Dashboard"]

    (free,) = dashboards(cost.estimate(out, table, region="us-east-1")["Dev"])
    assert free.monthly_usd == 0 and "always-free" in free.what
    for n in range(1, 4):  # 4 dashboards in the same account: none is free any more
        template["Resources"][f"{lid}Extra{n}"] = template["Resources"][lid]
    service.write_text(json.dumps(template))
    billed = dashboards(cost.estimate(out, table, region="us-east-1")["Dev"])
    assert [i.monthly_usd for i in billed] == [pytest.approx(3.00)] * 4


def test_unknown_price_is_unpriced_naming_the_resource(
    table: cost.PriceTable, tmp_path: Path
) -> None:
    out = _copy("dev", tmp_path)
    before = cost.estimate(out, table, region="us-east-1")["Dev"]
    _edit(
        out / "Humansa-Dev-Data.template.json",
        "DatabaseB269D8BB",
        DBInstanceClass="db.r7g.16xlarge",
    )
    est = cost.estimate(out, table, region="us-east-1")["Dev"]
    assert est.unpriced == [
        "AWS::RDS::DBInstance Humansa-Dev-Data/DatabaseB269D8BB (rds.postgres.db.r7g.16xlarge.hour)"
    ]
    db_before = sum(
        i.monthly_usd
        for i in before.items
        if i.resource == "DatabaseB269D8BB" and i.price_key.startswith("rds.postgres.db.")
    )
    assert db_before > 0
    assert est.total_usd == pytest.approx(before.total_usd - db_before)
    assert "unpriced (no row in humansa_ops/pricing/prices.yaml" in cost.render_table(
        {"Dev": est}, table
    )
    assert "1 unpriced" in cost.render_summary({"Dev": est})


def test_cli_exits_0_and_says_unpriced(tmp_path: Path) -> None:
    out = _copy("dev", tmp_path)
    _edit(
        out / "Humansa-Dev-Network.template.json",
        "VpcPublicSubnet1NatInstance2B1AB6B8",
        InstanceType="x9z.huge",
    )
    run = subprocess.run([str(SCRIPT), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "unpriced" in run.stdout
    assert "AWS::EC2::Instance" in run.stdout and "ec2.instance.x9z.huge.hour" in run.stdout


def test_unpriced_region_is_an_error(table: cost.PriceTable) -> None:
    with pytest.raises(cost.CostError, match="region 'eu-west-3' has no price table"):
        cost.estimate(FIXTURES / "dev", table, region="eu-west-3")


def test_spot_versus_on_demand(table: cost.PriceTable, tmp_path: Path) -> None:
    out = _copy("dev", tmp_path)
    spot = cost.estimate(out, table, region="us-east-1")["Dev"]
    template = out / "Humansa-Dev-Service.template.json"
    _edit(
        template,
        "FleetAsg4E5A3C2B",
        MixedInstancesPolicy={
            "InstancesDistribution": {
                "OnDemandBaseCapacity": 0,
                "OnDemandPercentageAboveBaseCapacity": 100,
            },
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": {"Ref": "FleetLaunchTemplate3C5A8E2D"}
                },
                "Overrides": [{"InstanceType": "t4g.small"}],
            },
        },
    )
    on_demand = cost.estimate(out, table, region="us-east-1")["Dev"]

    def compute(est: cost.Estimate) -> float:
        return sum(i.monthly_usd for i in _items(est, "FleetAsg4E5A3C2B") if "EC2" in i.what)

    assert compute(spot) == pytest.approx(H * 0.0168 * 0.30)
    assert compute(on_demand) == pytest.approx(H * 0.0168)
    assert on_demand.total_usd - spot.total_usd == pytest.approx(H * 0.0168 * 0.70)


def test_mixed_split_rounds_on_demand_up(table: cost.PriceTable, tmp_path: Path) -> None:
    out = _copy("production", tmp_path)
    template = out / "Humansa-Production-Service.template.json"
    data = json.loads(template.read_text())
    props = data["Resources"]["FleetAsg4E5A3C2B"]["Properties"]
    props["DesiredCapacity"] = "4"
    props["MixedInstancesPolicy"]["InstancesDistribution"] = {
        "OnDemandBaseCapacity": 1,
        "OnDemandPercentageAboveBaseCapacity": 50,
    }
    template.write_text(json.dumps(data))
    est = cost.estimate(out, table, region="us-east-1")["Production"]
    lines = {i.what.split(" (")[0]: i.quantity for i in _items(est, "FleetAsg4E5A3C2B")}
    # 1 base + ceil(3 x 50 %) = 3 on-demand, 1 spot
    assert lines["EC2 t4g.small on-demand x3"] == 3 * H
    assert lines["EC2 t4g.small spot x1"] == 1 * H


def test_multi_az_doubles_instance_and_storage(table: cost.PriceTable, tmp_path: Path) -> None:
    out = _copy("dev", tmp_path)
    single = cost.estimate(out, table, region="us-east-1")["Dev"]
    _edit(out / "Humansa-Dev-Data.template.json", "DatabaseB269D8BB", MultiAZ="true")
    multi = cost.estimate(out, table, region="us-east-1")["Dev"]

    def rds(est: cost.Estimate) -> float:
        return sum(i.monthly_usd for i in _items(est, "DatabaseB269D8BB"))

    assert rds(single) == pytest.approx(H * 0.016 + 20 * 0.115)
    assert rds(multi) == pytest.approx(2 * (H * 0.016 + 20 * 0.115))


def test_interface_endpoints_are_billed_per_az(table: cost.PriceTable, tmp_path: Path) -> None:
    out = _copy("staging", tmp_path)
    _edit(
        out / "Humansa-Staging-Network.template.json",
        "VpcSsmEndpoint1F2E3D4C",
        SubnetIds=[
            {"Ref": "VpcPrivateSubnet1Subnet536B997A"},
            {"Ref": "VpcPrivateSubnet2Subnet3788AAA1"},
            {"Ref": "VpcPublicSubnet1Subnet5C2D37C4"},
        ],
    )
    est = cost.estimate(out, table, region="us-east-1")["Staging"]
    hours = [i for i in _items(est, "VpcSsmEndpoint1F2E3D4C") if i.unit == "endpoint-AZ-h"]
    assert [i.quantity for i in hours] == [3 * H]
    assert hours[0].what == "interface endpoint ssm x3 AZ"
    # the traffic assumption is charged once per environment, not per endpoint
    assert len([i for i in est.items if i.price_key == "vpce.interface.gb"]) == 1


def test_unknown_types_are_listed_not_zeroed(table: cost.PriceTable, tmp_path: Path) -> None:
    folder = _copy("production", tmp_path)
    path = folder / "Humansa-Production-Service.template.json"
    template = json.loads(path.read_text())
    template["Resources"]["WebAcl3C4D5E6F"]["Type"] = "AWS::Shield::Protection"
    path.write_text(json.dumps(template))
    est = cost.estimate(folder, table, region="us-east-1")["Production"]
    text = cost.render_table({"Production": est}, table)
    assert "NOT PRICED (unknown billable types): AWS::Shield::Protection" in text
    assert all(i.resource_type != "AWS::Shield::Protection" for i in est.items)


def test_waf_web_acl_and_rules_are_priced(table: cost.PriceTable, tmp_path: Path) -> None:
    folder = _copy("production", tmp_path)
    path = folder / "Humansa-Production-Service.template.json"
    _edit(path, "WebAcl3C4D5E6F", Rules=[{"Name": "A"}, {"Name": "B"}, {"Name": "C"}])
    est = cost.estimate(folder, table, region="us-east-1")["Production"]
    items = {i.price_key: i for i in _items(est, "WebAcl3C4D5E6F")}
    assert (items["waf.web_acl_month"].quantity, items["waf.web_acl_month"].monthly_usd) == (
        1,
        5.00,
    )
    assert (items["waf.rule_month"].quantity, items["waf.rule_month"].monthly_usd) == (3, 3.00)


def test_price_table_rows_all_have_a_source_and_date() -> None:
    import yaml

    data = yaml.safe_load(cost.DEFAULT_PRICES.read_text())
    assert {"us-east-1", "ap-east-1"} <= set(data["regions"])
    for region, rows in data["regions"].items():
        for key, row in rows.items():
            assert row["source"] == "unsourced" or row["source"].startswith("https://"), key
            assert str(row["read"]), (region, key)
            if row["source"] == "unsourced":
                assert row.get("note"), (region, key)
    # both regions price the same keys, so a config that works in one works in the other
    assert set(data["regions"]["us-east-1"]) == set(data["regions"]["ap-east-1"])


def test_bad_price_row_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text(
        "regions:\n  us-east-1:\n    ipv4.hour: {usd: 0.005, unit: IP-hour, "
        "source: somewhere, read: 2026-11-26}\n"
    )
    with pytest.raises(cost.CostError, match=r"ipv4.hour.source: expected an https:// URL"):
        cost.PriceTable(bad)


def test_json_and_summary_modes() -> None:
    run = subprocess.run(
        [
            str(SCRIPT),
            str(FIXTURES / "production"),
            "--json",
            "--region",
            "us-east-1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(run.stdout)
    assert set(data) == {"Production", "CI"}
    prod = data["Production"]
    assert prod["region"] == "us-east-1"
    assert prod["estimate"] is True
    assert prod["total_usd"] == pytest.approx(
        sum(i["monthly_usd"] for i in prod["items"]), abs=0.01
    )
    assert {
        "stack",
        "resource",
        "type",
        "what",
        "quantity",
        "unit",
        "unit_usd",
        "monthly_usd",
        "price_key",
    } == set(prod["items"][0])
    summary = subprocess.run(
        [str(SCRIPT), str(FIXTURES / "dev"), "--summary", "--env", "dev"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(summary) == 1
    assert summary[0].startswith("cost estimate: Dev ~$")
    assert "(ap-east-1;" in summary[0]


def test_unknown_env_and_missing_assembly(table: cost.PriceTable, tmp_path: Path) -> None:
    with pytest.raises(
        cost.CostError, match=r"--env staging: no such environment; found: Dev \(make synth"
    ):
        cost.estimate(FIXTURES / "dev", table, env="staging")
    with pytest.raises(cost.CostError, match="run `make synth` first"):
        cost.estimate(tmp_path, table)


def test_env_is_the_config_file_name(table: cost.PriceTable, tmp_path: Path) -> None:
    """`make cost ENV=dev-alice` finds the stacks `Humansa-DevAlice-*` of config/dev-alice.yaml."""
    dest = tmp_path / "dev-alice"
    dest.mkdir()
    for source in (FIXTURES / "dev").iterdir():
        text = source.read_text().replace("Humansa-Dev-", "Humansa-DevAlice-")
        (dest / source.name.replace("Humansa-Dev-", "Humansa-DevAlice-")).write_text(text)
    stacks = [f"Humansa-DevAlice-{layer}" for layer in ("Network", "Data", "Service")]
    for name in ("dev-alice", "DevAlice", "devalice"):
        (estimate,) = cost.estimate(dest, table, env=name).values()
        assert estimate.name == "DevAlice" and estimate.stacks == stacks
        assert estimate.total_usd > 0
    with pytest.raises(cost.CostError, match=r"found: DevAlice \(make synth ENV=dev first\)"):
        cost.estimate(dest, table, env="dev")


def test_environment_names_from_stack_names() -> None:
    assert cost.environment_of("Humansa-Dev-Network") == "Dev"
    assert cost.environment_of("Humansa-CI") == "CI"
    assert cost.environment_of("Standalone") == "Standalone"


@pytest.mark.parametrize(
    ("selectors", "not_priced"),
    [
        # What AuditTrail synthesizes: management events only (the first copy is free).
        ([{"IncludeManagementEvents": True, "ReadWriteType": "All"}], []),
        (
            [
                {
                    "IncludeManagementEvents": True,
                    "DataResources": [{"Type": "AWS::S3::Object", "Values": ["arn:aws:s3"]}],
                }
            ],
            ["CloudTrail data events selected on Humansa-CI/Trail022F0CF2 (volume unknown)"],
        ),
    ],
)
def test_only_data_event_selectors_are_unpriced(
    table: cost.PriceTable, tmp_path: Path, selectors: list[dict[str, Any]], not_priced: list[str]
) -> None:
    folder = _copy("production", tmp_path)
    _edit(folder / "Humansa-CI.template.json", "Trail022F0CF2", EventSelectors=selectors)
    ci = cost.estimate(folder, table, region="us-east-1")["CI"]
    assert ci.not_priced == not_priced


def _personal_assembly(tmp_path: Path, title: str) -> Path:
    """The dev fixture assembly renamed to ``Humansa-<title>-*`` (what `make synth ENV=...`
    writes for a copy of config/dev.yaml)."""
    dest = tmp_path / f"assembly-{title}"
    dest.mkdir()
    for source in (FIXTURES / "dev").iterdir():
        text = source.read_text().replace("Humansa-Dev-", f"Humansa-{title}-")
        (dest / source.name.replace("Humansa-Dev-", f"Humansa-{title}-")).write_text(text)
    return dest


def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Path:
    """A config folder with dev.yaml and staging.yaml, plus ``name=<yaml appended to a copy of
    dev.yaml>`` for each extra environment."""
    folder = tmp_path / "config"
    folder.mkdir()
    dev = (ROOT / "config" / "dev.yaml").read_text()
    (folder / "dev.yaml").write_text(dev)
    (folder / "staging.yaml").write_text((ROOT / "config" / "staging.yaml").read_text())
    for name, tail in extra.items():
        (folder / f"{name.replace('_', '-')}.yaml").write_text(dev + tail)
    monkeypatch.setenv("HUMANSA_CONFIG_DIR", str(folder))
    return folder


def test_a_personal_environment_is_priced_with_its_base_environments_traffic(
    table: cost.PriceTable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make cost ENV=dev-alice` (config/dev-alice.yaml, a copy of dev.yaml) uses dev's
    traffic assumptions, not the defaults: the same templates cost what dev costs."""
    _config_dir(tmp_path, monkeypatch, dev_alice="")
    alice = cost.estimate(_personal_assembly(tmp_path, "DevAlice"), table, region="us-east-1")
    dev = cost.estimate(FIXTURES / "dev", table, region="us-east-1")["Dev"]
    est = alice["DevAlice"]
    assert est.assumptions == table.assumptions_for("dev") != table.assumptions_for("default")
    assert est.assumptions_from == "dev (dev-alice is a personal environment of dev)"
    assert round(est.total_usd, 6) == round(dev.total_usd, 6)
    assert "assumptions (dev (dev-alice is a personal environment of dev)):" in (
        cost.render_table(alice, table)
    )


def test_an_environment_names_its_cost_assumptions_in_its_config(
    table: cost.PriceTable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cost.assumptions_like` picks another entry of prices.yaml; `cost.assumptions` sets the
    environment's own figures over it; a name the table lacks fails in one line."""
    _config_dir(
        tmp_path,
        monkeypatch,
        alice="cost:\n  assumptions_like: staging\n  assumptions: {alb_lcu_per_hour: 0.1}\n",
        bob="cost:\n  assumptions: {nat_gateway_gb_per_month: 1}\n",
        carol="cost:\n  assumptions_like: qa\n",
        dave="cost:\n  assumptions: {alb_lcu: 1}\n",
    )
    alice = cost.estimate(_personal_assembly(tmp_path, "Alice"), table)["Alice"]
    assert alice.assumptions == {**table.assumptions_for("staging"), "alb_lcu_per_hour": 0.1}
    assert alice.assumptions_from == (
        "staging (config/alice.yaml cost.assumptions_like), own: alb_lcu_per_hour"
    )
    bob = cost.estimate(_personal_assembly(tmp_path, "Bob"), table)["Bob"]
    assert bob.assumptions == {**table.assumptions_for("default"), "nat_gateway_gb_per_month": 1}
    assert bob.assumptions_from == "default, own: nat_gateway_gb_per_month"
    with pytest.raises(
        cost.CostError,
        match=r"config/carol.yaml: cost.assumptions_like=qa: humansa_ops/pricing/prices.yaml "
        r"has assumptions for dev, staging",
    ):
        cost.estimate(_personal_assembly(tmp_path, "Carol"), table)
    with pytest.raises(
        cost.CostError,
        match=r"config/dave.yaml: cost.assumptions.alb_lcu is not a traffic assumption "
        r"\(allowed: alb_lcu_per_hour, ",
    ):
        cost.estimate(_personal_assembly(tmp_path, "Dave"), table)


def test_an_env_without_a_config_file_says_so(table: cost.PriceTable) -> None:
    """`make cost ENV=qa` with no config/qa.yaml: not "make synth ENV=qa first" (that fails)."""
    with pytest.raises(
        cost.CostError,
        match=r"^--env qa: no config/qa.yaml; known environments: dev, staging, production$",
    ):
        cost.estimate(FIXTURES / "dev", table, env="qa")
