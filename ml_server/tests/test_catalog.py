"""The model catalogue: the shipped file loads, prices compute without guessing, bad input is
refused with the model and the field named."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

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
    entry = shipped.find("anthropic", "claude-haiku-4-5-20251001")
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


# --- limits of the non-Anthropic models, retirement -------------------------------------------


def test_every_limit_is_sourced_dated_and_secondary_sources_are_labelled() -> None:
    from ml_server import catalog as model_catalog

    shipped = model_catalog.default()
    for provider in ("openai", "gemini", "xai"):
        sized = [e for e in shipped.entries.values() if e.provider == provider and e.limits_source]
        assert sized, provider
        for e in sized:
            assert e.limits_checked is not None, e.id
            assert e.context_window is not None or e.max_output_tokens is not None, e.id
            # LiteLLM's table, Vercel's and OpenRouter's pages are not the provider's own.
            if not any(d in (e.limits_source or "") for d in ("openai.com", "google", "x.ai")):
                assert e.limits_secondary, e.id
    gpt = shipped.find("openai", "gpt-4o")
    assert gpt is not None and (gpt.context_window, gpt.max_output_tokens) == (128000, 16384)
    grok = shipped.find("xai", "grok-4")
    assert grok is not None and grok.max_output_tokens is None  # no source: left empty


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("retired: 2026-11-30\n", "retired_source"),
        ("retired: soon\n    retired_source: https://example.com\n", "'retired'"),
        ("successor: openai/gpt-4o\n", "'retired'"),
        ("retired: 2026-11-30\n    retired_source: https://example.com\n"
         "    successor: openai/nope\n", "not in the catalogue"),
        ("retired: 2026-11-30\n    retired_source: https://example.com\n"
         "    alias_to_successor: true\n", "needs a successor"),
        ("retired: 2026-11-30\n    retired_source: http://example.com\n", "https://"),
        ("context_window: 5\n    limits_secondary: true\n", "needs limits_source"),
        ("retired: 2030-01-01\n    retired_source: https://example.com\n"
         "    successor: anthropic/claude-sonnet-4-5\n", "retires on 2026-11-30"),
    ],
)  # fmt: skip
def test_lifecycle_fields_are_validated(tmp_path: Path, entry: str, message: str) -> None:
    from ml_server import catalog as model_catalog

    extra = tmp_path / "extra.yaml"
    extra.write_text(f"version: 1\nmodels:\n  openai/gpt-z:\n    {entry}")
    with pytest.raises(model_catalog.CatalogError, match=message) as err:
        model_catalog.load(extra)
    assert "gpt-z" in str(err.value)


def _router(catalog: object, aliases: dict[str, str | list[str]] | None = None) -> object:
    from ml_server.metrics import Metrics
    from ml_server.providers.anthropic import AnthropicProvider
    from ml_server.providers.openai_compat import OpenAICompatProvider
    from ml_server.router import Router

    providers = {
        "anthropic": AnthropicProvider(
            "sk-unused", "http://127.0.0.1:9/v1", version="2023-06-01", default_max_tokens=100,
            timeout=1, connect_timeout=1,
        ),
        "openai": OpenAICompatProvider(
            "openai", "http://127.0.0.1:9/v1", {}, timeout=1, connect_timeout=1
        ),
    }  # fmt: skip
    return Router(providers, Metrics(), aliases=aliases, catalog=catalog)  # type: ignore[arg-type]


def test_a_retired_model_is_hidden_and_refused_with_its_date_and_successor() -> None:
    from ml_server import catalog as model_catalog

    router: Any = _router(model_catalog.default(), {"smart": "anthropic/claude-sonnet-4-5"})
    ids = {m["id"] for m in router.list_models()}
    assert "anthropic/claude-sonnet-5-5" in ids
    assert "anthropic/claude-sonnet-4-5" not in ids and "smart" not in ids
    for name in ("anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5-20250929", "smart"):
        with pytest.raises(model_catalog.ModelRetired) as err:
            router.resolve(name)
        e = err.value
        assert (e.status, e.code, e.param) == (404, "model_retired", "model")
        assert "2026-11-30" in e.message and "'anthropic/claude-sonnet-5-5'" in e.message
    with pytest.raises(model_catalog.ModelRetired, match="alias 'smart'"):
        router.resolve("smart")


def test_alias_to_successor_routes_aliases_but_never_direct_names(tmp_path: Path) -> None:
    from ml_server import catalog as model_catalog

    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "version: 1\nmodels:\n  anthropic/claude-sonnet-4-5:\n    retired: 2026-11-30\n"
        "    retired_source: https://platform.claude.com/docs/en/about-claude/model-deprecations\n"
        "    successor: anthropic/claude-sonnet-5-5\n    alias_to_successor: true\n"
    )
    router: Any = _router(model_catalog.load(extra), {"smart": "anthropic/claude-sonnet-4-5"})
    route = router.resolve("smart")
    assert [(t.provider.name, t.model) for t in route.targets] == [
        ("anthropic", "claude-sonnet-5-5")
    ]
    smart = next(m for m in router.list_models() if m["id"] == "smart")
    assert smart["max_output_tokens"] == 128000 and "retires" not in smart
    with pytest.raises(model_catalog.ModelRetired):
        router.resolve("anthropic/claude-sonnet-4-5")


def test_a_model_retiring_later_is_served_and_listed_with_the_date(tmp_path: Path) -> None:
    from ml_server import catalog as model_catalog

    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "version: 1\nmodels:\n  openai/gpt-4o:\n    retired: 2999-01-01\n"
        "    retired_source: https://example.com/deprecations\n    successor: openai/gpt-4.1\n"
    )
    router: Any = _router(model_catalog.load(extra), {"fast": ["openai/gpt-4o", "openai/gpt-4.1"]})
    assert router.resolve("openai/gpt-4o").label == "openai/gpt-4o"
    assert [t.model for t in router.resolve("fast").targets] == ["gpt-4o", "gpt-4.1"]
    card = next(m for m in router.list_models() if m["id"] == "openai/gpt-4o")
    assert card["retires"] == "2999-01-01" and card["successor"] == "openai/gpt-4.1"
    # The date passes while the server runs: refused from then on (no restart needed).
    from datetime import date

    entry = router.catalog.find("openai", "gpt-4o")
    assert entry.is_retired(date(2999, 1, 1)) and not entry.is_retired(date(2998, 12, 31))
    with pytest.raises(model_catalog.ModelRetired):
        router.catalog.check_not_retired("openai/gpt-4o", date(2999, 1, 2))
