"""Batch feature views: one row per entity per day, computed by one GROUP BY over the lookback.

A partition for day D has feature_timestamp = D+1 00:00 UTC (the end of D) and reads the
event-date partitions D-lookback+1 .. D only. Too-late events never enter (SPEC §5), so a row is
final as soon as D's lateness horizon has closed, which is when the schedule runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from feature_platform.offline.store import OfflineStore, connect, view_schema
from feature_platform.registry.model import EVENT_TIME, BatchFeatureView


def feature_timestamp(day: date) -> datetime:
    """The end of `day` (midnight UTC of the next day)."""
    return datetime.combine(day + timedelta(days=1), dtime(0), tzinfo=timezone.utc)


def partition_day(ft: datetime) -> date:
    return (ft.astimezone(timezone.utc) - timedelta(days=1)).date()


def batch_sql(view: BatchFeatureView, events_sql: str, ft: datetime) -> str:
    """The SQL of one day's rows; shared with the brute-force-checked tests and the online push."""
    key = view.entity.join_key
    ft_lit = f"TIMESTAMPTZ '{ft.isoformat()}'"
    cols = []
    for f in view.features:
        cond = f"{EVENT_TIME} >= {ft_lit} - INTERVAL {f.lookback.days} DAY"
        target = f'"{f.column}"' if f.column else "*"
        if f.function == "count":
            expr = f"count({target}) FILTER (WHERE {cond})"
        elif f.function == "count_distinct":
            expr = f"count(DISTINCT {target}) FILTER (WHERE {cond})"
        elif f.function == "sum":
            expr = f"coalesce(sum({target}) FILTER (WHERE {cond}), 0.0)"
        elif f.function == "mean":
            expr = f"avg({target}) FILTER (WHERE {cond})"
        else:  # min / max
            expr = f"{f.function}({target}) FILTER (WHERE {cond})"
        cols.append(f'{expr} AS "{f.name}"')
    return f"""
        SELECT "{key}", {ft_lit} AS feature_timestamp, {', '.join(cols)}
        FROM {events_sql}
        WHERE NOT is_too_late
          AND {EVENT_TIME} >= {ft_lit} - INTERVAL {view.max_lookback.days} DAY
          AND {EVENT_TIME} < {ft_lit}
        GROUP BY "{key}"
        ORDER BY "{key}" """


def lookback_dates(view: BatchFeatureView, day: date) -> list[date]:
    return [day - timedelta(days=i) for i in range(view.max_lookback.days)]


def compute_partition(store: OfflineStore, view: BatchFeatureView, day: date) -> pa.Table:
    """The rows of `view` for `day`, straight from the stored events."""
    con = connect()
    try:
        events = store.events_sql(view.source.name, dates=lookback_dates(view, day))
        table = con.sql(batch_sql(view, events, feature_timestamp(day))).to_arrow_table()
    finally:
        con.close()
    return table.cast(view_schema(view))


@dataclass
class BatchPartitionReport:
    view: str
    version: int
    day: date
    feature_timestamp: datetime
    rows: int
    path: Path
    seconds: float
    null_rates: dict[str, float] = field(default_factory=dict)
    value_ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    source_event_days: int = 0


def materialize_partition(store: OfflineStore, view: BatchFeatureView, day: date) -> BatchPartitionReport:
    """Compute and store one day of a batch view (idempotent: a re-run rewrites the same file)."""
    started = time.perf_counter()
    table = compute_partition(store, view, day)
    path = store.write_view_partition(view, day, table)
    null_rates, ranges = profile(table, view.feature_names)
    stored_days = set(store.event_dates(view.source.name))
    return BatchPartitionReport(
        view=view.name, version=view.version, day=day, feature_timestamp=feature_timestamp(day),
        rows=table.num_rows, path=path, seconds=time.perf_counter() - started, null_rates=null_rates,
        value_ranges=ranges, source_event_days=len(stored_days & set(lookback_dates(view, day))))


def profile(table: pa.Table, columns: tuple[str, ...] | list[str]) -> tuple[dict[str, float], dict[str, tuple]]:
    """Null rate and min/max per column: what a person checks first on an asset page."""
    import pyarrow.compute as pc

    null_rates, ranges = {}, {}
    for c in columns:
        col = table.column(c)
        null_rates[c] = (col.null_count / table.num_rows) if table.num_rows else 0.0
        numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
        if numeric and table.num_rows and col.null_count < table.num_rows:
            mm = pc.min_max(col).as_py()
            ranges[c] = (mm["min"], mm["max"])
    return null_rates, ranges
