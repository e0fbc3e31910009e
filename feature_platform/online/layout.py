"""Key layout and value encoding of the online store (docs/online-store.md explains the why).

Keys (all under `settings.key_prefix`, written `<p>` below):

    <p>:<view>:v<version>:<entity value>   one hash per (view, version, entity), batch and stream alike
    <p>:meta:views                         hash: "<view>:v<version>" -> JSON (kind, fingerprint, times)
    <p>:dedupe:<source>                    sorted set: event_id -> when it may be forgotten (event_time + retention)

Batch hashes hold `S = ceil(ttl / cadence) + 1` slots; the row with feature_timestamp `ft` lives in
slot `(ft / cadence) mod S` as fields `<slot>:ft` (ft in epoch seconds) and `<slot>:<feature>`.
Stream hashes hold one field per tile: `<hop seconds>:<tile index k>` -> a JSON array
`[newest event_time_us, component...]` whose components are listed by `HopSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from feature_platform.registry.model import BatchFeatureView, Dtype, StreamFeatureView

META_SUFFIX = "meta:views"


def view_key_prefix(prefix: str, view_name: str, version: int) -> str:
    return f"{prefix}:{view_name}:v{version}:"


def meta_key(prefix: str) -> str:
    return f"{prefix}:{META_SUFFIX}"


def meta_field(view_name: str, version: int) -> str:
    return f"{view_name}:v{version}"


def dedupe_key(prefix: str, source: str) -> str:
    return f"{prefix}:dedupe:{source}"


def to_us(t: datetime) -> int:
    """Epoch microseconds of an aware datetime; a naive one is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    delta = t - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc).replace(microsecond=us % 1_000_000)


# ---- batch views ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchLayout:
    """Where the rows of one batch view version live inside an entity hash."""

    view: BatchFeatureView

    @property
    def cadence_us(self) -> int:
        c = self.view.cadence
        return (c.days * 86_400 + c.seconds) * 1_000_000 + c.microseconds

    @property
    def slots(self) -> int:
        # ceil(ttl / cadence) slots cover every row that can still be served; +1 leaves room for a
        # row pushed up to one cadence before its feature_timestamp without evicting a live one.
        return math.ceil(self.view.ttl_us / self.cadence_us) + 1

    def slot(self, ft_us: int) -> int:
        return (ft_us // self.cadence_us) % self.slots

    def candidates(self, t_us: int) -> list[int]:
        """Feature timestamps (newest first) whose rows could be served at t: ft + delay <= t < ft + ttl."""
        c = self.cadence_us
        ft = ((t_us - self.view.availability_delay_us) // c) * c
        out = []
        while ft + self.view.ttl_us > t_us:
            out.append(ft)
            ft -= c
        return out


def batch_feature_dtype(view: BatchFeatureView, feature: str) -> Dtype:
    f = next(x for x in view.features if x.name == feature)
    if f.function in ("count", "count_distinct"):
        return Dtype.INT64
    if f.function in ("sum", "mean"):
        return Dtype.FLOAT64
    return view.source.column_types()[f.column] if f.column else Dtype.INT64


def decode_batch(raw: bytes | None, dtype: Dtype) -> Any:
    """Inverse of the push encoding: b'' is null; strings carry a '=' prefix so '' stays distinct from null."""
    if not raw:
        return None
    if dtype is Dtype.INT64:
        return int(raw)
    if dtype is Dtype.FLOAT64:
        return float(raw)
    if dtype is Dtype.BOOL:
        return raw == b"1"
    return raw[1:].decode()


# ---- stream views ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HopSpec:
    """The tiles of one hop of a stream view: which components each tile keeps, and where.

    A tile value is a JSON array: index 0 is the newest event_time (us) in the tile, then the
    components in order; `last` takes three places (event_time, event_id, value).
    """

    hop_us: int
    window_us: int                                 # the longest window on this hop
    components: tuple[tuple[str, str | None], ...]  # ("n", None), ("nn"|"sum"|"max"|"min"|"last", column)

    @property
    def hop_s(self) -> int:
        return self.hop_us // 1_000_000

    def index(self, kind: str, column: str | None) -> int:
        """Position of a component in the tile array (0-based, Python side)."""
        i = 1
        for comp in self.components:
            if comp == (kind, column):
                return i
            i += 3 if comp[0] == "last" else 1
        raise KeyError((kind, column))

    def initial(self) -> list[Any]:
        out: list[Any] = [None]
        for kind, _ in self.components:
            if kind in ("n", "nn", "sum"):
                out.append(0)
            elif kind == "last":
                out.extend([None, None, None])
            else:
                out.append(None)
        return out

    def field(self, k: int) -> str:
        return f"{self.hop_s}:{k}"

    def retention_us(self, lateness_us: int) -> int:
        """Tile k expires at (k+1)*h + this: after that no window can reach it and no event may still arrive."""
        return self.window_us + lateness_us


def _components(function: str, column: str | None) -> list[tuple[str, str | None]]:
    if function == "count":
        return [("n", None)] if column is None else [("nn", column)]
    if function == "sum":
        return [("sum", column)]
    if function == "mean":
        return [("sum", column), ("nn", column)]
    return [(function, column)]


def hop_specs(view: StreamFeatureView) -> dict[int, HopSpec]:
    """One HopSpec per distinct hop of the view, components in a stable order (the definition's)."""
    out: dict[int, HopSpec] = {}
    for hop in sorted({a.hop_us for a in view.aggregations}):
        aggs = [a for a in view.aggregations if a.hop_us == hop]
        comps: list[tuple[str, str | None]] = []
        for a in aggs:
            for c in _components(a.function, a.column):
                if c not in comps:
                    comps.append(c)
        out[hop] = HopSpec(hop, max(a.window_us for a in aggs), tuple(comps))
    return out


def stream_feature_dtype(view: StreamFeatureView, feature: str) -> Dtype:
    a = view.aggregation(feature)
    if a.function == "count":
        return Dtype.INT64
    if a.function in ("sum", "mean"):
        return Dtype.FLOAT64
    return view.source.column_types()[a.column]  # type: ignore[index]


def cast_value(value: Any, dtype: Dtype) -> Any:
    """Tiles pass numbers through Lua doubles (%.17g, exact); restore the declared Python type."""
    if value is None:
        return None
    if dtype is Dtype.FLOAT64:
        return float(value)
    if dtype is Dtype.INT64:
        return int(value)
    if dtype is Dtype.BOOL:
        return bool(value)
    return value
