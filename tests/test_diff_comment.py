"""The diff-comment formatter on outputs recorded from the real CDK CLI (tests/fixtures/diff)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from humansa_ops.diff_comment import (
    DEFAULT_MARKER,
    STATEFUL_TYPES,
    StackDiff,
    merge_stacks,
    parse_diff,
    render,
)

FIXTURES = Path(__file__).parent / "fixtures" / "diff"
SCRIPT = Path(__file__).parent.parent / "scripts" / "diff-comment"


def _stacks(scenario: str) -> list[StackDiff]:
    parsed: list[StackDiff] = []
    for path in sorted((FIXTURES / scenario).glob("*.diff")):
        parsed += parse_diff(path.read_text(encoding="utf-8"))
    return merge_stacks(parsed)


def _comment(scenario: str, *extra: str) -> str:
    files = sorted(str(p) for p in (FIXTURES / scenario).glob("*.diff"))
    result = subprocess.run(
        [str(SCRIPT), *extra, *files], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_parses_every_stack_header_in_the_recorded_outputs() -> None:
    names = [s.name for s in _stacks("rds_replace")]
    assert names == ["Humansa-Dev-Data", "Humansa-Dev-Service"]


def test_asset_hash_only_changes_are_folded_into_one_line() -> None:
    # GIVEN a real diff where only the Lambda bundle and the image build changed
    service = next(s for s in _stacks("asset_only") if s.name == "Humansa-Dev-Service")
    # THEN all three resources are recognised as asset-only
    assert {e.path for e in service.entries if e.is_asset_only()} == {
        "Hook",
        "LaunchTemplate",
        "ImageTag",
    }
    comment = _comment("asset_only")
    assert "3 change(s) only in asset hashes" in comment
    # and the raw hashes are not in the comment
    assert "9954a503ecc2c5bad43f3652365e16ab3314be2e8f1495502eeb8e0e47f7f591" not in comment
    assert "<details>" not in comment
    assert "WARNING" not in comment


def test_a_real_change_next_to_asset_noise_is_kept() -> None:
    comment = _comment("mixed")
    assert "3 change(s) only in asset hashes" in comment
    assert "[+] AWS::SSM::Parameter Extra Extra6C4EAC05" in comment
    assert "| `Humansa-Dev-Service` | 1 | 3 | — |" in comment


def test_replaced_rds_instance_and_secret_raise_a_loud_warning() -> None:
    data = next(s for s in _stacks("rds_replace") if s.name == "Humansa-Dev-Data")
    risks = {e.resource_type: e.stateful_risk() for e in data.entries}
    assert risks == {"AWS::RDS::DBInstance": "replace", "AWS::SecretsManager::Secret": "replace"}
    comment = _comment("rds_replace")
    assert "> [!CAUTION]" in comment
    warning = [line for line in comment.splitlines() if "AWS::RDS::DBInstance `Database`" in line]
    assert warning == [
        "> - WARNING `Humansa-Dev-Data`: AWS::RDS::DBInstance `Database` would be **REPLACED** "
        "(new physical resource, data not carried over)"
    ]
    # the ordinary change in the other stack is shown, not flagged
    assert "[+] AWS::SSM::Parameter Extra Extra6C4EAC05" in comment
    assert "AWS::SSM::Parameter `Extra`" not in comment


def test_destroy_is_loud_and_orphan_is_a_note() -> None:
    comment = _comment("destroy")
    assert "AWS::Logs::LogGroup `AppLogs` would be **DESTROYED**" in comment
    note = comment.split("> [!NOTE]", 1)[1]
    assert "AWS::S3::Bucket `Reports`" in note
    assert "Bucket `Reports` would be" not in comment


def test_no_differences() -> None:
    comment = _comment("no_change")
    assert comment.startswith(DEFAULT_MARKER + "\n")
    assert "No differences in 2 stack(s)." in comment
    assert "CAUTION" not in comment


def test_the_marker_is_the_first_line_and_configurable() -> None:
    assert _comment("mixed", "--marker", "<!-- other -->").splitlines()[0] == "<!-- other -->"


def test_stateful_list_names_the_issue_types() -> None:
    assert {
        "AWS::RDS::DBInstance",
        "AWS::SecretsManager::Secret",
        "AWS::EC2::VPC",
    } <= STATEFUL_TYPES


def test_cost_section_accepts_numbers_and_cost_py_objects(tmp_path: Path) -> None:
    before = tmp_path / "before.json"
    after = tmp_path / "after.json"
    before.write_text(json.dumps({"dev": 50.0, "production": {"total_usd": 400.5}}))
    after.write_text(json.dumps({"dev": {"total_usd": 61.25}, "production": 400.5}))
    comment = _comment("mixed", "--cost-before", str(before), "--cost-after", str(after))
    assert "| dev | 50.00 | 61.25 | +11.25 |" in comment
    assert "| production | 400.50 | 400.50 | +0.00 |" in comment


def test_bad_cost_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "cost.json"
    bad.write_text(json.dumps({"dev": "cheap"}))
    files = [str(p) for p in (FIXTURES / "mixed").glob("*.diff")]
    result = subprocess.run(
        [str(SCRIPT), "--cost-after", str(bad), *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "environment 'dev' needs a number of USD per month" in result.stderr


def test_ansi_colours_and_preamble_are_ignored() -> None:
    raw = (FIXTURES / "rds_replace" / "Humansa-Dev-Data.diff").read_text(encoding="utf-8")
    coloured = "some synth warning\n" + raw.replace("[~] AWS::RDS", "\x1b[33m[~]\x1b[39m AWS::RDS")
    (data,) = parse_diff(coloured)
    assert {e.stateful_risk() for e in data.entries} == {"replace"}


@pytest.mark.parametrize("size", [5_000, 80_000])
def test_comment_stays_under_the_github_limit(size: int) -> None:
    stacks = _stacks("rds_replace")
    stacks[1].other_lines = ["x" * 100] * (size // 100)
    body = render(stacks)
    assert len(body) < 65_536
    assert "> [!CAUTION]" in body


def test_ami_change_shows_as_a_fleet_refresh() -> None:
    """GIVEN the real `cdk diff` of a `make ami` change (tests/fixtures/diff/ami_change) THEN the
    comment says that the fleet is refreshed and the NAT instance replaced."""
    comment = _comment("ami_change")
    assert "New AMI (config/amis.json): the deploy replaces instances." in comment
    assert (
        "`Humansa-Dev-Service`: `Fleet/LaunchTemplate` ami-055dad2a73290e160 → "
        "ami-0a113d1cc996f121d: fleet refresh" in comment
    )
    assert "`Humansa-Dev-Network`: `Network/Vpc/PublicSubnet1/NatInstance`" in comment
    assert "NAT instance" in comment
    assert "New AMI" not in _comment("asset_only")
