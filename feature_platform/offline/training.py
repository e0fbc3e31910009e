"""Point-in-time correct training sets in a handful of set-based DuckDB queries (SPEC §2-3).

For a label at time t and a windowed aggregate (window W, hop h) the window is
[floor(t/h)*h - W, t). It is split in two:

* closed tiles: whole tiles k with (k+1)*h <= t - allowed_lateness (ingestion mode) or k < floor(t/h)
  (event mode). Every event that can count in such a tile had been ingested before t, so the tile
  can be pre-aggregated once per entity and shared by every label ("sawtooth" tiles).
* the open head: the rest of the window, joined event by event with the ingestion filters
  (ingested_at < t, not too late) that make the value equal to what the online store served.

Tiles only pay off when they are coarse (many events per tile): measured on the 10M-event benchmark,
hourly tiles were slower than reading the events (about three events per user-day), daily tiles
faster, so tiles are used for hops of a day or more and finer windows read the events directly. Both range joins use a bucket
equi-join (entity, coarse bucket) followed by an exact range filter, which keeps DuckDB on hash
joins instead of a per-entity nested loop. All partial aggregates are decomposable (count, sum,
min, max, and `last` as max of a (event_time, event_id, value) struct), so combining the two parts
is exact up to float rounding of sums.

Batch views join by ASOF: the latest row with feature_timestamp + availability_delay <= t, kept
only while t < feature_timestamp + ttl.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal

import pandas as pd
import pyarrow as pa

from feature_platform.offline.batch import batch_sql, feature_timestamp, lookback_dates
from feature_platform.offline.store import OfflineStore, TS, arrow_type, connect, read_parquet_metadata, view_schema
from feature_platform.registry.model import (
    EVENT_ID,
    EVENT_TIME,
    Aggregation,
    BatchFeatureView,
    FeatureRef,
    StreamFeatureView,
)

log = logging.getLogger(__name__)

Mode = Literal["ingestion", "event"]
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
TILE_MIN_HOP_US = DAY_US


class TrainingSetError(ValueError):
    """The labels or the request cannot produce a training set; the message says what to fix."""


@dataclass(frozen=True)
class _Spec:
    """All aggregations of one view that share (hop, window): they share every join."""

    view: StreamFeatureView
    hop_us: int
    window_us: int
    aggs: tuple[Aggregation, ...]
    refs: tuple[FeatureRef, ...]

    @property
    def name(self) -> str:
        return f"s_{self.view.name}_v{self.view.version}_{self.hop_us // 1_000_000}_{self.window_us // 1_000_000}"

    @property
    def key(self) -> str:
        return self.view.entity.join_key

    def uses_tiles(self, mode: Mode) -> bool:
        closed_possible = mode == "event" or self.window_us > self.view.source.allowed_lateness_us
        return self.hop_us >= TILE_MIN_HOP_US and closed_possible


def _coerce_labels(labels: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(labels, pd.DataFrame):
        return pa.Table.from_pandas(labels, preserve_index=False)
    if isinstance(labels, pa.Table):
        return labels
    raise TrainingSetError(f"labels must be a pandas DataFrame or a pyarrow Table, got {type(labels).__name__}")


def get_historical_features(store: OfflineStore, labels: pd.DataFrame | pa.Table, refs: list[FeatureRef],
                            mode: Mode = "ingestion") -> pa.Table:
    """The label rows, in order, plus one `<view>__<feature>` column per requested feature."""
    if mode not in ("ingestion", "event"):
        raise TrainingSetError(f"mode must be 'ingestion' or 'event', got {mode!r}")
    table = _coerce_labels(labels)
    if not refs:
        raise TrainingSetError("no features requested")
    views = {(r.view, r.version): store.registry.view(r.view, r.version) for r in refs}
    needed_keys = sorted({v.entity.join_key for v in views.values()})
    missing = [k for k in [EVENT_TIME, *needed_keys] if k not in table.column_names]
    if missing:
        raise TrainingSetError(
            f"labels lack columns {missing}: a label row needs {EVENT_TIME} (the prediction time) and the keys "
            f"{needed_keys} of the requested views; it has {table.column_names}")
    clash = [r.column for r in refs if r.column in table.column_names]
    if clash:
        raise TrainingSetError(f"labels already have columns {clash}; rename them or drop them before joining")

    con = connect(memory_limit=os.environ.get("FP_DUCKDB_MEMORY_LIMIT", "1500MB"),
                  temp_directory=store.settings.data_dir / "tmp" / "duckdb")
    try:
        con.register("labels_in", table.append_column("__row", pa.array(range(table.num_rows), pa.int64())))
        con.execute(_labels_sql(table, needed_keys, views))
        bad = con.execute("SELECT count(*) FILTER (WHERE __t IS NULL), min(__row) FILTER (WHERE __t IS NULL) FROM labels").fetchone()
        if bad[0]:
            raise TrainingSetError(
                f"{bad[0]} label rows have a missing or unparseable {EVENT_TIME} (first: row {bad[1]}); "
                f"every label needs a UTC timestamp")
        for k in needed_keys:
            bad = con.execute(f"""SELECT count(*), min(l.__row), any_value(CAST(i."{k}" AS VARCHAR)) FROM labels l
                JOIN labels_in_rows i USING (__row) WHERE l."{k}" IS NULL AND i."{k}" IS NOT NULL""").fetchone()
            if bad[0]:
                raise TrainingSetError(
                    f"{bad[0]} label rows have a {k} that is not a valid key (first: row {bad[1]}, value {bad[2]!r}); "
                    f"fix the labels or drop those rows (a null key is allowed and gives no-data features)")
        if con.execute("SELECT count(*) FROM labels").fetchone()[0] == 0:
            return _empty_result(table, refs, views)
        t_min, t_max = con.execute("SELECT min(__t), max(__t) FROM labels").fetchone()

        parts: list[tuple[str, list[str]]] = []  # (relation name, [select expressions])
        stream_specs = _stream_specs(refs, views)
        if stream_specs:
            _load_events(con, store, stream_specs, t_min, t_max, mode)
        for spec in stream_specs:
            parts.append((spec.name, _stream_spec(con, spec, mode)))
        for (name, version), view in views.items():
            if isinstance(view, BatchFeatureView):
                wanted = [r for r in refs if (r.view, r.version) == (name, version)]
                parts.append(_batch_part(con, store, view, wanted, t_min, t_max))

        joins = " ".join(f"LEFT JOIN {rel} USING (__row)" for rel, _ in parts)
        exprs = {}
        for _, cols in parts:
            for c in cols:
                alias = c.rsplit(" AS ", 1)[1].strip('"')
                exprs[alias] = c
        select = ", ".join(exprs[r.column] for r in refs)
        result = con.sql(f"""
            SELECT labels_in.*, {select}
            FROM labels JOIN labels_in_rows labels_in USING (__row) {joins}
            ORDER BY __row""").to_arrow_table()
        result = result.drop_columns(["__row"]) if "__row" in result.column_names else result
        return _cast_result(result, table, refs, views)
    finally:
        con.close()


def _labels_sql(table: pa.Table, keys: list[str], views: dict) -> str:
    from feature_platform.offline.ingest import _time_expr

    t_type = table.schema.field(EVENT_TIME).type
    key_exprs = []
    for k in keys:
        dtype = next(v.entity.dtype for v in views.values() if v.entity.join_key == k)
        key_exprs.append(f'TRY_CAST("{k}" AS {dtype.duckdb}) AS "{k}"')
    return f"""
        CREATE TEMP TABLE labels_in_rows AS SELECT * FROM labels_in;
        CREATE TEMP TABLE labels AS
        SELECT __row, {', '.join(key_exprs)}, epoch_us({_time_expr(EVENT_TIME, t_type)}) AS __t
        FROM labels_in_rows"""


def _stream_specs(refs: list[FeatureRef], views: dict) -> list[_Spec]:
    grouped: dict[tuple, list[tuple[Aggregation, FeatureRef]]] = defaultdict(list)
    for r in refs:
        view = views[(r.view, r.version)]
        if isinstance(view, StreamFeatureView):
            a = view.aggregation(r.feature)
            grouped[(r.view, r.version, a.hop_us, a.window_us)].append((a, r))
    specs = []
    for (name, version, hop, window), items in grouped.items():
        specs.append(_Spec(views[(name, version)], hop, window, tuple(a for a, _ in items), tuple(r for _, r in items)))
    return specs


def _load_events(con, store: OfflineStore, specs: list[_Spec], t_min: int, t_max: int, mode: Mode) -> None:
    """Materialise the needed slice of each source once, with integer microsecond times."""
    by_source: dict[str, list[_Spec]] = defaultdict(list)
    for s in specs:
        by_source[s.view.source.name].append(s)
    for source_name, sspecs in by_source.items():
        source = store.registry.source(source_name)
        reach = max(s.window_us + s.hop_us for s in sspecs)
        lo_us, hi_us = t_min - reach, t_max
        first = datetime.fromtimestamp(max(lo_us, 0) / 1e6, tz=timezone.utc).date()
        last = datetime.fromtimestamp(hi_us / 1e6, tz=timezone.utc).date()
        dates = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        cols = sorted({c for s in sspecs for a in s.aggs if a.column for c in [a.column]})
        keys = sorted({s.key for s in sspecs})
        col_sql = "".join(f', "{c}"' for c in cols)
        key_sql = ", ".join(f'"{k}"' for k in keys)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE ev_{source_name} AS
            SELECT {key_sql}, {EVENT_ID}, epoch_us({EVENT_TIME}) AS __et, epoch_us(ingested_at) AS __it,
                   is_too_late{col_sql}
            FROM {store.events_sql(source_name, dates=dates)}
            WHERE {EVENT_TIME} >= make_timestamptz({lo_us}) AND {EVENT_TIME} < make_timestamptz({hi_us})""")


def _partials(spec: _Spec, prefix: str, alias: str) -> list[str]:
    """Decomposable partial aggregates over rows of `alias` (events or tiles)."""
    out = []
    tiles = prefix == "c"
    for a in spec.aggs:
        col = a.column
        base = f"{prefix}_{a.name}"
        if a.function == "count":
            if tiles:
                out.append(f"sum({alias}.n_{col or 'all'}) AS {base}_n")
            else:
                target = f'{alias}."{col}"' if col else "*"
                out.append(f"count({target}) AS {base}_n")
        elif a.function in ("sum", "mean"):
            if tiles:
                out += [f"sum({alias}.s_{col}) AS {base}_s", f"sum({alias}.n_{col}) AS {base}_n"]
            else:
                out += [f'sum({alias}."{col}") AS {base}_s', f'count({alias}."{col}") AS {base}_n']
        elif a.function in ("min", "max"):
            src = f"{alias}.{a.function}_{col}" if tiles else f'{alias}."{col}"'
            out.append(f"{a.function}({src}) AS {base}_v")
        elif a.function == "last":
            if tiles:
                out.append(f"max({alias}.last_{col}) AS {base}_v")
            else:
                out.append(f'max({{"t": {alias}.__et, "id": {alias}.{EVENT_ID}, "v": {alias}."{col}"}}) '
                           f'FILTER (WHERE {alias}."{col}" IS NOT NULL) AS {base}_v')
    return out


def _tile_columns(spec: _Spec) -> list[str]:
    cols = []
    for a in spec.aggs:
        c = a.column
        if a.function == "count":
            target = f'"{c}"' if c else "*"
            cols.append(f'count({target}) AS n_{c or "all"}')
        elif a.function in ("sum", "mean"):
            cols += [f'sum("{c}") AS s_{c}', f'count("{c}") AS n_{c}']
        elif a.function in ("min", "max"):
            cols.append(f'{a.function}("{c}") AS {a.function}_{c}')
        elif a.function == "last":
            cols.append(f'max({{"t": __et, "id": {EVENT_ID}, "v": "{c}"}}) FILTER (WHERE "{c}" IS NOT NULL) AS last_{c}')
    return list(dict.fromkeys(cols))


def _stream_spec(con, spec: _Spec, mode: Mode) -> list[str]:
    """Create relation `spec.name(__row, partials...)`; return the final feature expressions."""
    h, w, key = spec.hop_us, spec.window_us, spec.key
    lateness = spec.view.source.allowed_lateness_us
    ev = f"ev_{spec.view.source.name}"
    use_tiles = spec.uses_tiles(mode)
    # Per label: window start tile k_lo, head tile kt, first non-closed tile kc.
    kc_expr = "kt" if mode == "event" else f"least(kt, (__t - {lateness}) // {h})"
    if not use_tiles:
        kc_expr = "kt - {0}".format(w // h)  # no closed tiles: everything is read event by event
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE lw AS
        SELECT __row, "{key}" AS k, __t, kt - {w // h} AS k_lo, kt, greatest(kt - {w // h}, {kc_expr}) AS kc
        FROM (SELECT __row, "{key}", __t, __t // {h} AS kt FROM labels WHERE "{key}" IS NOT NULL)""")
    ingest_filter = "" if mode == "event" else "AND e.__it < l.__t AND NOT e.is_too_late"

    # Open head: events with kc*h <= event_time < t, bucket-joined on (entity, event_time // B).
    open_len = w + h if not use_tiles else min(w + h, lateness + h) if mode == "ingestion" else h
    bucket = max(open_len, h)
    open_sql = f"""
        SELECT l.__row, {', '.join(_partials(spec, 'o', 'e'))}
        FROM (SELECT __row, k, __t, kc * {h} AS lo, unnest(range((kc * {h}) // {bucket}, (__t - 1) // {bucket} + 1)) AS b
              FROM lw WHERE kc * {h} < __t) l
        JOIN (SELECT *, "{key}" AS k, __et // {bucket} AS b FROM {ev}) e ON e.k = l.k AND e.b = l.b
        WHERE e.__et >= l.lo AND e.__et < l.__t {ingest_filter}
        GROUP BY l.__row"""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {spec.name}_o AS {open_sql}")

    parts = [f"{spec.name}_o"]
    if use_tiles:
        tile_filter = "" if mode == "event" else "WHERE NOT is_too_late"
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {spec.name}_tiles AS
            SELECT "{key}" AS k, __et // {h} AS tile, {', '.join(_tile_columns(spec))}
            FROM {ev} {tile_filter} GROUP BY ALL""")
        span = w // h  # closed range is at most W/h tiles; buckets of that many tiles => <= 2 probes
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {spec.name}_c AS
            SELECT l.__row, {', '.join(_partials(spec, 'c', 't'))}
            FROM (SELECT __row, k, k_lo, kc, unnest(range(k_lo // {span}, (kc - 1) // {span} + 1)) AS b
                  FROM lw WHERE kc > k_lo) l
            JOIN (SELECT *, tile // {span} AS b FROM {spec.name}_tiles) t ON t.k = l.k AND t.b = l.b
            WHERE t.tile >= l.k_lo AND t.tile < l.kc
            GROUP BY l.__row""")
        parts.append(f"{spec.name}_c")

    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {spec.name} AS
        SELECT __row, * EXCLUDE (__row) FROM {parts[0]}
        {'FULL JOIN ' + parts[1] + ' USING (__row)' if len(parts) > 1 else ''}""")
    return [_combine(spec, a, r, use_tiles) for a, r in zip(spec.aggs, spec.refs)]


def _combine(spec: _Spec, a: Aggregation, ref: FeatureRef, use_tiles: bool) -> str:
    rel = spec.name
    o, c = f"{rel}.o_{a.name}", f"{rel}.c_{a.name}"
    col = f'"{ref.column}"'
    if a.function == "count":
        parts = [f"coalesce({o}_n, 0)"] + ([f"coalesce({c}_n, 0)"] if use_tiles else [])
        return f"CAST({' + '.join(parts)} AS BIGINT) AS {col}"
    if a.function == "sum":
        parts = [f"coalesce({o}_s, 0.0)"] + ([f"coalesce({c}_s, 0.0)"] if use_tiles else [])
        return f"CAST({' + '.join(parts)} AS DOUBLE) AS {col}"
    if a.function == "mean":
        s = f"coalesce({o}_s, 0.0)" + (f" + coalesce({c}_s, 0.0)" if use_tiles else "")
        n = f"coalesce({o}_n, 0)" + (f" + coalesce({c}_n, 0)" if use_tiles else "")
        return f"CAST(({s}) / nullif({n}, 0) AS DOUBLE) AS {col}"
    if a.function in ("min", "max"):
        fn = "least" if a.function == "min" else "greatest"
        return (f"{fn}({o}_v, {c}_v) AS {col}" if use_tiles else f"{o}_v AS {col}")
    # last
    return (f"greatest({o}_v, {c}_v).v AS {col}" if use_tiles else f"{o}_v.v AS {col}")


def _batch_part(con, store: OfflineStore, view: BatchFeatureView, refs: list[FeatureRef],
                t_min: int, t_max: int) -> tuple[str, list[str]]:
    """ASOF-join the latest available row; rows of days not materialised are computed on the fly."""
    key = view.entity.join_key
    rel = f"b_{view.name}_v{view.version}"
    first_ft = t_min - view.ttl_us
    last_ft = t_max - view.availability_delay_us
    days = []
    d = datetime.fromtimestamp(max(first_ft, 0) / 1e6, tz=timezone.utc).date() - timedelta(days=1)
    while feature_timestamp(d).timestamp() * 1e6 <= last_ft:
        if feature_timestamp(d).timestamp() * 1e6 > first_ft:
            days.append(d)
        d += timedelta(days=1)
    stored = set(store.view_dates(view))
    usable, missing = [], []
    for day in days:
        if day in stored and read_parquet_metadata(store.view_partition_path(view, day)).get("fp.fingerprint") == view.fingerprint():
            usable.append(day)
        else:
            missing.append(day)
    pieces = [f"SELECT * FROM {store.view_sql(view, usable)}"] if usable else []
    if missing:
        log.info("%s v%s: computing %d day(s) not materialised: %s..%s", view.name, view.version, len(missing),
                 missing[0], missing[-1])
        for day in missing:
            events = store.events_sql(view.source.name, dates=lookback_dates(view, day))
            pieces.append(batch_sql(view, events, feature_timestamp(day)))
    if not pieces:
        pieces = [f"SELECT * FROM {store.view_sql(view, [])}"]
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {rel}_rows AS
        SELECT "{key}" AS k, epoch_us(feature_timestamp) AS __ft, * EXCLUDE ("{key}", feature_timestamp)
        FROM ({' UNION ALL '.join('(' + p + ')' for p in pieces)})""")
    feats = ", ".join(f'r."{r.feature}" AS "{r.feature}"' for r in refs)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {rel} AS
        SELECT l.__row, r.__ft, {feats}
        FROM (SELECT __row, "{key}" AS k, __t, __t - {view.availability_delay_us} AS __avail FROM labels
              WHERE "{key}" IS NOT NULL) l
        ASOF JOIN {rel}_rows r ON l.k = r.k AND l.__avail >= r.__ft
        WHERE l.__t < r.__ft + {view.ttl_us}""")
    return rel, [f'{rel}."{r.feature}" AS "{r.column}"' for r in refs]


def _cast_result(result: pa.Table, labels: pa.Table, refs: list[FeatureRef], views: dict) -> pa.Table:
    fields = list(labels.schema)
    for r in refs:
        fields.append(pa.field(r.column, _feature_type(views[(r.view, r.version)], r.feature)))
    return result.select([f.name for f in fields]).cast(pa.schema(fields))


def _feature_type(view, feature: str) -> pa.DataType:
    if isinstance(view, BatchFeatureView):
        return view_schema(view).field(feature).type
    a = view.aggregation(feature)
    if a.function == "count":
        return pa.int64()
    if a.function in ("sum", "mean"):
        return pa.float64()
    return arrow_type(view.source.column_types()[a.column])


def _empty_result(labels: pa.Table, refs: list[FeatureRef], views: dict) -> pa.Table:
    out = labels
    for r in refs:
        out = out.append_column(pa.field(r.column, _feature_type(views[(r.view, r.version)], r.feature)),
                                pa.nulls(0, _feature_type(views[(r.view, r.version)], r.feature)))
    return out
