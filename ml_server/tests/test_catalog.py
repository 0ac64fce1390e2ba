"""The model catalogue: the shipped file loads, prices compute without guessing, bad input is
refused with the model and the field named."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ml_server import catalog


def test_shipped_catalogue_loads_and_every_price_is_sourced_and_dated() -> None:
    cat = catalog.load()
    assert cat.lookup("anthropic", "claude-opus-4-1") is not None
    priced = [e for e in cat.entries.values() if e.price is not None]
    assert priced, "at least one sourced price"
    for e in priced:
        assert e.price is not None
        assert e.price.source.startswith("https://")
        assert e.price.checked.year >= 2025
    assert "gpt-4o-mini" in cat.listed("openai")
    assert "claude-sonnet-4" not in cat.listed("anthropic")  # listed: false


def test_cost_per_category_and_unknown_when_a_used_category_has_no_price() -> None:
    e = catalog.load().lookup("anthropic", "claude-opus-4-1")
    assert e is not None and e.price is not None
    # 1M uncached + 1M cache reads + 1M cache writes + 1M output = 15 + 1.50 + 18.75 + 75
    cost = e.price.cost(
        input=1_000_000, cached_input=1_000_000, cache_write=1_000_000, output=1_000_000
    )
    assert cost == Decimal("110.25")
    ds = catalog.load().lookup("deepseek", "deepseek-chat")
    assert ds is not None and ds.price is not None
    assert ds.price.cost(input=10, cache_write=5) is None  # DeepSeek lists no cache-write price


def test_long_context_tier_applies_to_the_whole_request() -> None:
    e = catalog.load().lookup("anthropic", "claude-sonnet-4")
    assert e is not None and e.price is not None
    assert e.price.cost(input=200_000, output=1_000) == Decimal("0.615")  # 0.6 + 0.015
    assert e.price.cost(input=200_001, output=1_000) == Decimal("1.222506")  # 1.200006 + 0.0225
    assert e.price.cost(input=150_000, cached_input=60_000) is None  # tier gives no cache price


def test_aliases_resolve_to_the_entry() -> None:
    cat = catalog.load()
    assert cat.lookup("xai", "grok-3-mini-latest") is cat.lookup("xai", "grok-3-mini")


def test_extra_file_overrides_and_adds(tmp_path: Path) -> None:
    extra = tmp_path / "mine.yaml"
    extra.write_text(
        "version: 1\nmodels:\n  azure/Phi-4:\n    price: {input: 1, output: 2, "
        "source: 'https://example.invalid/contract', checked: 2026-11-30}\n"
    )
    cat = catalog.load(extra)
    phi = cat.lookup("azure", "Phi-4")
    assert phi is not None and phi.price is not None
    assert phi.price.cost(input=1_000_000) == Decimal(1)
    assert cat.lookup("anthropic", "claude-opus-4-1") is not None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  openai/x:\n    price: {input: 1, output: 2, checked: 2026-01-01}\n", "'price.source'"),
        (
            "  openai/x:\n    price: {input: 1, output: 2, source: 'https://a.b'}\n",
            "'price.checked'",
        ),
        (
            "  openai/x:\n    price: {input: -1, output: 2, source: 'https://a.b', "
            "checked: 2026-01-01}\n",
            "'price.input': must be a number >= 0",
        ),
        (
            "  openai/x:\n    price: {input: 1, output: two, source: 'https://a.b', "
            "checked: 2026-01-01}\n",
            "'price.output'",
        ),
        ("  openai/x:\n    context_windw: 5\n", "'context_windw': unknown field"),
        ("  nomodel: {}\n", "'provider/model'"),
        ("  openai/x:\n    context_window: 0\n", "'context_window'"),
    ],
)
def test_bad_entries_name_the_model_and_field(tmp_path: Path, entry: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodels:\n" + entry)
    with pytest.raises(catalog.CatalogError) as err:
        catalog.load(bad)
    assert message in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_limits_metadata_is_validated_and_dated_snapshots_are_found(tmp_path: Path) -> None:
    from ml_server import catalog as model_catalog

    shipped = model_catalog.default()
    entry = shipped.find("anthropic", "claude-sonnet-4-5-20250929")
    assert entry is not None and entry.max_output_tokens == 64000 and entry.thinking == "budget"
    assert entry.limits_source is not None and entry.limits_checked is not None
    bad = tmp_path / "extra.yaml"
    bad.write_text("version: 1\nmodels:\n  anthropic/claude-z:\n    thinking: sometimes\n")
    with pytest.raises(model_catalog.CatalogError, match="thinking"):
        model_catalog.load(bad)
    bad.write_text(
        "version: 1\nmodels:\n  anthropic/claude-z:\n    limits_source: https://example.com\n"
    )
    with pytest.raises(model_catalog.CatalogError, match="limits_checked"):
        model_catalog.load(bad)
