"""An independent, brute-force reading of SPEC §1-3 in plain Python, for checking the DuckDB code.

Deliberately naive: every value is recomputed from the raw deliveries with list comprehensions,
sharing no code with feature_platform.offline. Times are integer microseconds since the epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from feature_platform.registry.model import BatchFeatureView, StreamFeatureView

DAY = 86_400_000_000


@dataclass(frozen=True)
class Ev:
    event_id: str
    user_id: int
    merchant_id: int
    amount: float | None
    country: str
    et: int  # event_time, us
    it: int  # ingested_at, us


def dedupe(deliveries: list[Ev]) -> list[Ev]:
    """SPEC §1: the first delivery (smallest ingested_at; ties: first in input order) stands."""
    best: dict[str, tuple[int, int, Ev]] = {}
    for order, ev in enumerate(deliveries):
        cur = best.get(ev.event_id)
        if cur is None or (ev.it, order) < (cur[0], cur[1]):
            best[ev.event_id] = (ev.it, order, ev)
    return [v[2] for v in best.values()]


def too_late(ev: Ev, lateness_us: int) -> bool:
    return ev.it - ev.et > lateness_us


def stream_value(events: list[Ev], view: StreamFeatureView, feature: str, key: Any, t: int, mode: str) -> Any:
    agg = view.aggregation(feature)
    h, w = agg.hop_us, agg.window_us
    lateness = view.source.allowed_lateness_us
    start = (t // h) * h - w
    kcol = view.entity.join_key
    rows = [e for e in events if getattr(e, kcol) == key and start <= e.et < t]
    if mode == "ingestion":
        rows = [e for e in rows if e.it < t and not too_late(e, lateness)]
    if agg.function == "count":
        if agg.column is None:
            return len(rows)
        return sum(1 for e in rows if getattr(e, agg.column) is not None)
    vals = [(e.et, e.event_id, getattr(e, agg.column)) for e in rows if getattr(e, agg.column) is not None]
    if agg.function == "sum":
        return math.fsum(v for _, _, v in vals) if vals else 0.0
    if agg.function == "mean":
        return math.fsum(v for _, _, v in vals) / len(vals) if vals else None
    if agg.function == "max":
        return max((v for _, _, v in vals), default=None)
    if agg.function == "min":
        return min((v for _, _, v in vals), default=None)
    if agg.function == "last":
        return max(vals)[2] if vals else None
    raise AssertionError(agg.function)


def batch_row(events: list[Ev], view: BatchFeatureView, key: Any, ft: int) -> dict[str, Any] | None:
    """The row for feature_timestamp ft, or None when the entity is not in that day's population."""
    lateness = view.source.allowed_lateness_us
    kcol = view.entity.join_key
    mine = [e for e in events if getattr(e, kcol) == key and not too_late(e, lateness) and e.et < ft]
    longest = max(f.lookback_us for f in view.features)
    if not any(e.et >= ft - longest for e in mine):
        return None
    out = {}
    for f in view.features:
        rows = [e for e in mine if e.et >= ft - f.lookback_us]
        vals = [] if f.column is None else [getattr(e, f.column) for e in rows if getattr(e, f.column) is not None]
        if f.function == "count":
            out[f.name] = len(rows) if f.column is None else len(vals)
        elif f.function == "count_distinct":
            out[f.name] = len(set(vals))
        elif f.function == "sum":
            out[f.name] = math.fsum(vals) if vals else 0.0
        elif f.function == "mean":
            out[f.name] = math.fsum(vals) / len(vals) if vals else None
        elif f.function == "max":
            out[f.name] = max(vals, default=None)
        elif f.function == "min":
            out[f.name] = min(vals, default=None)
    return out


def batch_value(events: list[Ev], view: BatchFeatureView, feature: str, key: Any, t: int) -> Any:
    """SPEC §3: the latest row with ft + delay <= t < ft + ttl, else null. Rows exist at every midnight."""
    delay, ttl = view.availability_delay_us, view.ttl_us
    ft = ((t - delay) // DAY) * DAY  # the latest midnight with ft + delay <= t
    while ft + ttl > t:
        row = batch_row(events, view, key, ft)
        if row is not None:
            return row[feature]
        ft -= DAY
    return None


def close(a: Any, b: Any, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return False
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)
    return a == b
