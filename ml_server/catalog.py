"""The model catalogue: what each ``provider/model`` is (limits, aliases, listed) and costs.

One data file, ``ml_server/catalog/models.yaml`` (its header documents every field), optionally
extended by the operator's own file (MODEL_CATALOG_FILE: its entries replace or add to the
shipped ones, e.g. negotiated prices or Azure deployments). Loaded once at start and validated:
a bad entry stops the server with an error naming the model and the field.

Prices are USD per 1 million tokens. ``Price.cost`` never guesses: a token category with tokens
but no price makes the cost unknown (``None``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from ml_server.providers.base import ProviderError

DEFAULT_CATALOG_FILE = Path(__file__).resolve().parent / "catalog" / "models.yaml"
_MILLION = Decimal(1_000_000)
_CATEGORIES = ("input", "cached_input", "cache_write", "output")
_PRICE_FIELDS = frozenset({*_CATEGORIES, "tiers", "source", "checked"})
_TIER_FIELDS = frozenset({*_CATEGORIES, "above_prompt_tokens"})
_ENTRY_FIELDS = frozenset(
    {"listed", "aliases", "context_window", "max_output_tokens", "price", "provider"}
    | {"thinking", "limits_source", "limits_checked", "limits_secondary"}
    | {"retired", "successor", "retired_source", "alias_to_successor"}
)
THINKING_KINDS = ("budget", "adaptive")


class CatalogError(ValueError):
    """The catalogue file is invalid; the message names the file, the model and the field."""


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per 1M tokens per category; ``None`` = not priced."""

    input: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    output: Decimal | None = None

    def cost(
        self, *, input: int, cached_input: int, cache_write: int, output: int
    ) -> Decimal | None:
        total = Decimal(0)
        for tokens, rate in (
            (input, self.input),
            (cached_input, self.cached_input),
            (cache_write, self.cache_write),
            (output, self.output),
        ):
            if tokens:
                if rate is None:
                    return None
                total += rate * tokens
        return total / _MILLION


@dataclass(frozen=True, slots=True)
class PriceTier:
    above_prompt_tokens: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class Price:
    rates: Rates
    source: str
    checked: date
    tiers: tuple[PriceTier, ...] = ()

    def cost(
        self, *, input: int, cached_input: int = 0, cache_write: int = 0, output: int = 0
    ) -> Decimal | None:
        """Cost in USD; ``output`` includes reasoning tokens. ``None`` when not computable."""
        prompt = input + cached_input + cache_write
        rates = self.rates
        for tier in self.tiers:  # sorted by threshold, highest last
            if prompt > tier.above_prompt_tokens:
                rates = tier.rates
        return rates.cost(
            input=input, cached_input=cached_input, cache_write=cache_write, output=output
        )


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str  # provider/model
    provider: str
    model: str
    listed: bool = True
    aliases: tuple[str, ...] = ()
    context_window: int | None = None
    max_output_tokens: int | None = None
    price: Price | None = None
    # How the model thinks (Anthropic): "budget" (thinking.budget_tokens) or "adaptive"
    # (thinking adaptive + output_config.effort); None = not known.
    thinking: str | None = None
    limits_source: str | None = None  # where context_window / max_output_tokens were read
    limits_checked: date | None = None
    limits_secondary: bool = False  # the limits come from a secondary source (not the provider)
    # Lifecycle: from ``retired`` (UTC date) on the provider refuses the model; ``successor`` is
    # the catalogue id to use instead; ``alias_to_successor``: MODEL_ALIASES naming this model
    # route to the successor from that date (direct names are refused either way).
    retired: date | None = None
    successor: str | None = None
    retired_source: str | None = None
    alias_to_successor: bool = False

    def is_retired(self, today: date | None = None) -> bool:
        return self.retired is not None and self.retired <= (today or _today())

    def card(self) -> dict[str, Any]:
        """The entry's facts shown by GET /v1/models (absent when not known)."""
        out: dict[str, Any] = {}
        if self.context_window is not None:
            out["context_window"] = self.context_window
        if self.max_output_tokens is not None:
            out["max_output_tokens"] = self.max_output_tokens
        if self.retired is not None:
            out["retires"] = self.retired.isoformat()
            if self.successor is not None:
                out["successor"] = self.successor
        return out


def _today() -> date:
    return datetime.now(UTC).date()


class ModelRetired(ProviderError):
    """A request named a model its provider has retired (404, as the providers answer)."""

    def __init__(self, name: str, entry: ModelEntry, *, via: str | None = None) -> None:
        assert entry.retired is not None
        shown = f"'{name}'" if via is None else f"'{name}' (alias '{via}')"
        message = f"The model {shown} was retired by its provider on {entry.retired.isoformat()}"
        if entry.successor is not None:
            message += f"; use its successor '{entry.successor}'"
        super().__init__(
            404, message, type="invalid_request_error", code="model_retired", kind="http_4xx",
            param="model",
        )  # fmt: skip


@dataclass
class Catalog:
    entries: dict[str, ModelEntry]
    _index: dict[tuple[str, str], ModelEntry] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for e in self.entries.values():
            self._index[(e.provider, e.model)] = e
        for e in self.entries.values():
            for alias in e.aliases:
                self._index.setdefault((e.provider, alias), e)
        self._check_successors()

    def lookup(self, provider: str, model: str) -> ModelEntry | None:
        """The entry for ``provider``'s model id (or one of its aliases)."""
        return self._index.get((provider, model))

    def find(self, provider: str, model: str) -> ModelEntry | None:
        """``lookup``, also for a dated snapshot of a listed id (``claude-x-20250929``)."""
        entry = self._index.get((provider, model))
        if entry is None:
            base, sep, stamp = model.rpartition("-")
            if sep and len(stamp) == 8 and stamp.isdigit():
                entry = self._index.get((provider, base))
        return entry

    def listed(self, provider: str, today: date | None = None) -> list[str]:
        """Model ids (without the provider prefix) listed for ``provider``, in file order;
        retired models are never listed."""
        return [
            e.model
            for e in self.entries.values()
            if e.provider == provider and e.listed and not e.is_retired(today)
        ]

    def card(self, name: str) -> dict[str, Any]:
        """``ModelEntry.card`` of ``provider/model`` ({} when the catalogue does not know it)."""
        provider, _, model = name.partition("/")
        entry = self.find(provider, model)
        return entry.card() if entry is not None else {}

    def lifecycle(self, provider: str, model: str) -> ModelEntry | None:
        """The entry of a model that has a retirement date (past or future), else None."""
        entry = self.find(provider, model)
        return entry if entry is not None and entry.retired is not None else None

    def check_not_retired(
        self, name: str, today: date | None = None, *, via: str | None = None
    ) -> None:
        """Raise ``ModelRetired`` when ``provider/model`` (reached through alias ``via``)
        names a retired model."""
        provider, _, model = name.partition("/")
        entry = self.lifecycle(provider, model)
        if entry is not None and entry.is_retired(today):
            raise ModelRetired(name, entry, via=via)

    def redirect(self, name: str, today: date | None = None) -> str:
        """An alias target: the successor's id when the target is retired and its entry says
        ``alias_to_successor``, else ``name`` unchanged."""
        provider, _, model = name.partition("/")
        entry = self.lifecycle(provider, model)
        if entry is not None and entry.is_retired(today) and entry.alias_to_successor:
            return entry.successor or name
        return name

    def _check_successors(self) -> None:
        for e in self.entries.values():
            if e.successor is None:
                continue
            target = self.entries.get(e.successor)
            if target is None:
                raise CatalogError(
                    f"model {e.id!r}, field 'successor': {e.successor!r} is not in the catalogue"
                )
            if target.retired is not None and e.retired is not None and target.retired <= e.retired:
                raise CatalogError(
                    f"model {e.id!r}, field 'successor': {e.successor!r} retires on "
                    f"{target.retired.isoformat()}, not after this model"
                )


def _where(path: Path, model: str | None, fld: str | None = None) -> str:
    out = str(path.name)
    if model is not None:
        out += f": model {model!r}"
    if fld is not None:
        out += f", field {fld!r}"
    return out


def _rate(path: Path, model: str, fld: str, value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CatalogError(f"{_where(path, model, fld)}: must be a number (USD per 1M tokens)")
    try:
        rate = Decimal(str(value))
    except InvalidOperation:
        raise CatalogError(
            f"{_where(path, model, fld)}: {value!r} is not a number (USD per 1M tokens)"
        ) from None
    if not rate.is_finite() or rate < 0:
        raise CatalogError(f"{_where(path, model, fld)}: must be a number >= 0, got {value!r}")
    return rate


def _rates(path: Path, model: str, prefix: str, data: dict[str, Any]) -> Rates:
    return Rates(**{c: _rate(path, model, f"{prefix}{c}", data.get(c)) for c in _CATEGORIES})


def _unknown(
    path: Path, model: str, prefix: str, data: dict[str, Any], allowed: frozenset[str]
) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise CatalogError(
            f"{_where(path, model, prefix + extra[0])}: unknown field "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _positive_int(path: Path, model: str, fld: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CatalogError(
            f"{_where(path, model, fld)}: must be a whole number >= 1, got {value!r}"
        )
    return value


def _price(path: Path, model: str, data: Any) -> Price | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise CatalogError(f"{_where(path, model, 'price')}: must be a mapping or null")
    _unknown(path, model, "price.", data, _PRICE_FIELDS)
    source = data.get("source")
    if not isinstance(source, str) or not source.startswith("https://"):
        raise CatalogError(
            f"{_where(path, model, 'price.source')}: a price needs the https:// address of the "
            "provider's pricing page it was copied from"
        )
    checked = _as_date(data.get("checked"))
    if checked is None:
        raise CatalogError(
            f"{_where(path, model, 'price.checked')}: a price needs the date (YYYY-MM-DD) it was "
            "read from its source"
        )
    rates = _rates(path, model, "price.", data)
    if rates.input is None or rates.output is None:
        raise CatalogError(f"{_where(path, model, 'price.input')}: a price needs input and output")
    tiers_data = data.get("tiers") or []
    if not isinstance(tiers_data, list):
        raise CatalogError(f"{_where(path, model, 'price.tiers')}: must be a list")
    tiers = []
    for i, t in enumerate(tiers_data):
        prefix = f"price.tiers[{i}]."
        if not isinstance(t, dict):
            raise CatalogError(f"{_where(path, model, prefix[:-1])}: must be a mapping")
        _unknown(path, model, prefix, t, _TIER_FIELDS)
        above = _positive_int(
            path, model, prefix + "above_prompt_tokens", t.get("above_prompt_tokens")
        )
        if above is None:
            raise CatalogError(f"{_where(path, model, prefix + 'above_prompt_tokens')}: required")
        tiers.append(PriceTier(above, _rates(path, model, prefix, t)))
    tiers.sort(key=lambda t: t.above_prompt_tokens)
    return Price(rates, source, checked, tuple(tiers))


def _entry(path: Path, name: Any, data: Any) -> ModelEntry:
    if not isinstance(name, str) or "/" not in name:
        raise CatalogError(f"{_where(path, str(name))}: the key must be 'provider/model'")
    provider, _, model = name.partition("/")
    if not provider or not model:
        raise CatalogError(f"{_where(path, name)}: the key must be 'provider/model'")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CatalogError(f"{_where(path, name)}: the entry must be a mapping ({{}} when empty)")
    _unknown(path, name, "", data, _ENTRY_FIELDS)
    if data.get("provider", provider) != provider:
        raise CatalogError(f"{_where(path, name, 'provider')}: must match the key's prefix")
    listed = _flag(path, name, data, "listed", True)
    aliases = data.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise CatalogError(f"{_where(path, name, 'aliases')}: must be a list of model ids")
    return ModelEntry(
        id=name,
        provider=provider,
        model=model,
        listed=listed,
        aliases=tuple(aliases),
        context_window=_positive_int(path, name, "context_window", data.get("context_window")),
        max_output_tokens=_positive_int(
            path, name, "max_output_tokens", data.get("max_output_tokens")
        ),
        price=_price(path, name, data.get("price")),
        **_limits_meta(path, name, data),
        **_lifecycle(path, name, data),
    )


def _as_date(value: Any) -> date | None:
    """A YAML date or an ISO string as a date; anything else None (the caller names the field)."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return value if isinstance(value, date) else None


def _date(path: Path, name: str, fld: str, value: Any) -> date | None:
    if value is None:
        return None
    parsed = _as_date(value)
    if parsed is None:
        raise CatalogError(f"{_where(path, name, fld)}: must be a date (YYYY-MM-DD)")
    return parsed


def _flag(path: Path, name: str, data: dict[str, Any], fld: str, default: bool) -> bool:
    value = data.get(fld, default)
    if not isinstance(value, bool):
        raise CatalogError(f"{_where(path, name, fld)}: must be true or false")
    return value


def _https(path: Path, name: str, fld: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.startswith("https://")):
        raise CatalogError(f"{_where(path, name, fld)}: must be an https:// address")
    return value


def _lifecycle(path: Path, name: str, data: dict[str, Any]) -> dict[str, Any]:
    retired = _date(path, name, "retired", data.get("retired"))
    successor = data.get("successor")
    if successor is not None and (
        not isinstance(successor, str) or "/" not in successor or successor == name
    ):
        raise CatalogError(
            f"{_where(path, name, 'successor')}: must be another catalogue id 'provider/model'"
        )
    source = _https(path, name, "retired_source", data.get("retired_source"))
    if retired is not None and source is None:
        raise CatalogError(
            f"{_where(path, name, 'retired_source')}: a retirement date needs the https:// "
            "address of the provider's page it was read from"
        )
    if retired is None and (successor is not None or source is not None):
        raise CatalogError(
            f"{_where(path, name, 'retired')}: required with successor/retired_source"
        )
    redirect = _flag(path, name, data, "alias_to_successor", False)
    if redirect and successor is None:
        raise CatalogError(f"{_where(path, name, 'alias_to_successor')}: needs a successor")
    return {
        "retired": retired, "successor": successor, "retired_source": source,
        "alias_to_successor": redirect,
    }  # fmt: skip


def _limits_meta(path: Path, name: str, data: dict[str, Any]) -> dict[str, Any]:
    thinking = data.get("thinking")
    if thinking is not None and thinking not in THINKING_KINDS:
        raise CatalogError(
            f"{_where(path, name, 'thinking')}: must be one of {', '.join(THINKING_KINDS)}"
        )
    source = _https(path, name, "limits_source", data.get("limits_source"))
    checked = _as_date(data.get("limits_checked"))
    if source is not None and checked is None:
        raise CatalogError(
            f"{_where(path, name, 'limits_checked')}: limits from a source need the date "
            "(YYYY-MM-DD) they were read"
        )
    secondary = _flag(path, name, data, "limits_secondary", False)
    if secondary and source is None:
        raise CatalogError(f"{_where(path, name, 'limits_secondary')}: needs limits_source")
    return {
        "thinking": thinking, "limits_source": source, "limits_checked": checked,
        "limits_secondary": secondary,
    }  # fmt: skip


def parse(path: Path, text: str) -> dict[str, ModelEntry]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path.name}: not valid YAML: {exc}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("version") != 1
        or not isinstance(doc.get("models"), dict)
    ):
        raise CatalogError(f"{path.name}: must be a mapping with 'version: 1' and 'models:'")
    return {str(k): _entry(path, k, v) for k, v in doc["models"].items()}


def load(extra: Path | None = None, *, base: Path = DEFAULT_CATALOG_FILE) -> Catalog:
    """The shipped catalogue, with ``extra``'s entries replacing or adding to it."""
    entries = parse(base, base.read_text())
    if extra is not None:
        try:
            text = extra.read_text()
        except OSError as exc:
            raise CatalogError(f"MODEL_CATALOG_FILE {extra}: cannot read it ({exc})") from None
        entries.update(parse(extra, text))
    return Catalog(entries)


@functools.cache
def default() -> Catalog:
    """The shipped catalogue alone (for code without settings, e.g. tests and the CLI)."""
    return load()
