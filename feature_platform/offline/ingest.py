"""Ingest: validate events against their source schema, deduplicate, flag lateness, store.

The same `validate_events` serves file imports (`feature-platform ingest`) and the stream worker,
so a row is judged the same way whichever door it came in by. Validation is one DuckDB query
over the whole batch: each row gets either typed values or a reason, and rejected rows go to a
dead-letter file with that reason while the valid rows beside them are kept.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_platform.offline.store import (
    OfflineStore,
    connect,
    event_schema,
    sql_str,
    write_parquet_atomic,
)
from feature_platform.registry.model import EVENT_ID, EVENT_TIME, INGESTED_AT, Dtype, Source


class IngestError(ValueError):
    """The input as a whole cannot be ingested (unreadable file, missing columns); nothing was written."""


@dataclass(frozen=True)
class Validated:
    accepted: pa.Table  # event_schema(source), is_too_late and schema_version set
    rejected: pa.Table  # original values as strings + row_number + reason


@dataclass
class IngestReport:
    source: str
    input_path: str
    input_rows: int
    accepted: int
    duplicates: int
    replaced_later_deliveries: int
    too_late: int
    rejected: int
    deadletter_path: str | None
    files: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rejected == 0

    def summary(self) -> str:
        lines = [
            f"{self.input_path}: {self.input_rows} rows -> {self.accepted} new events stored "
            f"({self.too_late} flagged too late), {self.duplicates} duplicates dropped, "
            f"{self.rejected} rejected in {self.seconds:.1f}s",
        ]
        if self.replaced_later_deliveries:
            lines.append(f"  {self.replaced_later_deliveries} stored events replaced by an earlier delivery of the same event_id")
        if self.ignored_columns:
            lines.append(f"  ignored columns not in the schema: {self.ignored_columns}")
        if self.rejected:
            lines.append(f"  rejected rows and their reasons: {self.deadletter_path}")
        return "\n".join(lines)


def _input_sql(path: Path) -> str:
    """A query over a Parquet or CSV file; CSV columns stay strings so validation sees what was written."""
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return f"SELECT * FROM read_parquet({sql_str(path)})"
    if suffix in (".csv", ".tsv", ".txt"):
        return f"SELECT * FROM read_csv({sql_str(path)}, all_varchar=true, header=true)"
    raise IngestError(f"{path}: unsupported file type {suffix!r}; use .parquet or .csv")


def read_input(path: Path) -> pa.Table:
    """The whole file as one Arrow table (labels, small inputs); see _read_chunks for big ones."""
    sql = _input_sql(path)
    con = connect()
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise IngestError(f"{path}: cannot read as {path.suffix.lower()[1:]}: {exc}") from exc
    finally:
        con.close()


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _typed(col: str, arrow_t: pa.DataType, dtype: Dtype) -> tuple[str, str]:
    """(typed expression, validity expression) for one input column; validity is true for NULL input."""
    q = f'"{col}"'
    if dtype == Dtype.INT64:
        if _is_string(arrow_t):
            return (f"TRY_CAST(trim({q}) AS BIGINT)",
                    f"({q} IS NULL OR regexp_full_match(trim({q}), '[+-]?[0-9]+') AND TRY_CAST(trim({q}) AS BIGINT) IS NOT NULL)")
        if pa.types.is_floating(arrow_t):
            return (f"TRY_CAST({q} AS BIGINT)", f"({q} IS NULL OR (isfinite({q}) AND {q} = round({q}) AND TRY_CAST({q} AS BIGINT) IS NOT NULL))")
        return (f"TRY_CAST({q} AS BIGINT)", f"({q} IS NULL OR TRY_CAST({q} AS BIGINT) IS NOT NULL)")
    if dtype == Dtype.FLOAT64:
        src = f"trim({q})" if _is_string(arrow_t) else q
        if _is_string(arrow_t):
            null_like = f"({q} IS NULL OR trim({q}) = '')"
            return (f"CASE WHEN trim({q}) = '' THEN NULL ELSE TRY_CAST({src} AS DOUBLE) END",
                    f"({null_like} OR isfinite(TRY_CAST({src} AS DOUBLE)))")
        return (f"TRY_CAST({src} AS DOUBLE)", f"({q} IS NULL OR isfinite(TRY_CAST({src} AS DOUBLE)))")
    if dtype == Dtype.BOOL:
        return (f"TRY_CAST({q} AS BOOLEAN)", f"({q} IS NULL OR TRY_CAST({q} AS BOOLEAN) IS NOT NULL)")
    return (f"CAST({q} AS VARCHAR)", "true")


def _time_expr(col: str, arrow_t: pa.DataType) -> str:
    q = f'"{col}"'
    if pa.types.is_timestamp(arrow_t):
        if arrow_t.tz is None:  # naive timestamps are UTC by contract
            return f"CAST({q} AS TIMESTAMP)::TIMESTAMPTZ"
        return f"CAST({q} AS TIMESTAMPTZ)"
    if _is_string(arrow_t):
        return f"TRY_CAST(trim({q}) AS TIMESTAMPTZ)"
    if pa.types.is_date(arrow_t):
        return f"CAST({q} AS TIMESTAMPTZ)"
    return f"TRY_CAST({q} AS TIMESTAMPTZ)"


def validate_events(source: Source, table: pa.Table, now: datetime | None = None,
                    default_ingested_at: str = "now", row_offset: int = 0,
                    con: duckdb.DuckDBPyConnection | None = None) -> Validated:
    """Split a batch into typed, flagged events and rejected rows with a reason each.

    `con`: a DuckDB connection or cursor to use (and close) instead of a new one; the stream worker
    passes a cursor of a long-lived connection, since opening a connection costs ~30 ms per batch.

    `ingested_at` is kept where the input has it; where it is missing it is `now` (live
    ingest) or, with default_ingested_at="event_time", the event time (historical import,
    SPEC §1). Raises IngestError when required columns are absent altogether.
    """
    types = source.column_types()
    required = [EVENT_ID, *source.join_keys, EVENT_TIME]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise IngestError(
            f"source {source.name!r} (schema v{source.schema_version}): input lacks required columns {missing}; "
            f"it has {table.column_names}. Expected columns: {[*types, EVENT_TIME, '(ingested_at)']}")
    now = now or datetime.now(timezone.utc)
    now_lit = f"TIMESTAMPTZ '{now.astimezone(timezone.utc).isoformat()}'"
    con = con if con is not None else connect()
    rows = pa.array(range(row_offset, row_offset + table.num_rows), pa.int64())
    con.register("raw", table.append_column("__row", rows))
    schema = {f.name: f.type for f in table.schema}

    typed: dict[str, str] = {}
    checks: list[tuple[str, str]] = []  # (condition that means invalid, reason SQL expression)
    for col, dtype in types.items():
        if col not in schema:
            typed[col] = f"CAST(NULL AS {dtype.duckdb})"
            continue
        expr, valid = _typed(col, schema[col], dtype)
        typed[col] = expr
        checks.append((f"NOT coalesce({valid}, false)", f"'{col}: ' || coalesce(CAST(\"{col}\" AS VARCHAR), '') || ' is not a valid {dtype.value}'"))
    for key in (EVENT_ID, *source.join_keys):
        checks.append((f"{typed[key]} IS NULL", f"'missing {key}'"))
    checks.append((f"trim({typed[EVENT_ID]}) = ''", f"'missing {EVENT_ID}'"))
    et = _time_expr(EVENT_TIME, schema[EVENT_TIME])
    checks.append((f"\"{EVENT_TIME}\" IS NULL", f"'missing {EVENT_TIME}'"))
    checks.append((f"{et} IS NULL AND \"{EVENT_TIME}\" IS NOT NULL",
                   f"'{EVENT_TIME}: ' || CAST(\"{EVENT_TIME}\" AS VARCHAR) || ' is not a timestamp (use ISO-8601, UTC)'"))
    checks.append((f"{et} < TIMESTAMPTZ '1970-01-01 00:00:00+00'", f"'{EVENT_TIME} before 1970 is not supported'"))
    if INGESTED_AT in schema:
        ia_raw = _time_expr(INGESTED_AT, schema[INGESTED_AT])
        checks.append((f"{ia_raw} IS NULL AND \"{INGESTED_AT}\" IS NOT NULL AND CAST(\"{INGESTED_AT}\" AS VARCHAR) <> ''",
                       f"'{INGESTED_AT}: ' || CAST(\"{INGESTED_AT}\" AS VARCHAR) || ' is not a timestamp'"))
    else:
        ia_raw = "CAST(NULL AS TIMESTAMPTZ)"
    fallback = et if default_ingested_at == "event_time" else now_lit
    ia = f"coalesce({ia_raw}, {fallback})"
    skew_us = int(source.max_clock_skew.total_seconds() * 1_000_000)
    checks.append((f"epoch_us({et}) - epoch_us({ia}) > {skew_us}",
                   f"'{EVENT_TIME} ' || CAST({et} AS VARCHAR) || ' is after {INGESTED_AT} ' || CAST({ia} AS VARCHAR) "
                   f"|| ' by more than max_clock_skew: fix the producer clock'"))
    if "schema_version" in schema:
        checks.append((f"TRY_CAST(\"schema_version\" AS INTEGER) IS DISTINCT FROM {source.schema_version} AND \"schema_version\" IS NOT NULL",
                       f"'unknown schema_version ' || CAST(\"schema_version\" AS VARCHAR) || ' (source {source.name} is v{source.schema_version})'"))
    reason = "concat_ws('; ', " + ", ".join(f"CASE WHEN ({cond}) THEN {msg} END" for cond, msg in checks) + ")"

    lateness_us = source.allowed_lateness_us
    sel = ", ".join(f'{typed[c]} AS "{c}"' for c in types)
    con.execute(f"""
        CREATE TEMP TABLE judged AS
        SELECT __row, {reason} AS __reason, {sel},
               {et} AS "{EVENT_TIME}", {ia} AS "{INGESTED_AT}"
        FROM raw""")
    accepted = con.sql(f"""
        SELECT * EXCLUDE (__row, __reason),
               epoch_us("{INGESTED_AT}") - epoch_us("{EVENT_TIME}") > {lateness_us} AS is_too_late,
               CAST({source.schema_version} AS INTEGER) AS schema_version
        FROM judged WHERE __reason = '' ORDER BY __row""").to_arrow_table()
    raw_cols = ", ".join(f'CAST(r."{c}" AS VARCHAR) AS "{c}"' for c in table.column_names)
    rejected = con.sql(f"""
        SELECT {raw_cols}, j.__row AS row_number, j.__reason AS reason
        FROM judged j JOIN raw r USING (__row) WHERE j.__reason <> '' ORDER BY j.__row""").to_arrow_table()
    con.close()
    return Validated(accepted.cast(event_schema(source)), rejected)


def dedupe_batch(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep the first delivery (smallest ingested_at, then input order) of each event_id in a batch."""
    if table.num_rows == 0:
        return table, 0
    con = connect()
    con.register("t", table.append_column("__ord", pa.array(range(table.num_rows), pa.int64())))
    out = con.sql(f"""
        SELECT * EXCLUDE (__ord) FROM t
        QUALIFY row_number() OVER (PARTITION BY {EVENT_ID} ORDER BY {INGESTED_AT}, __ord) = 1
        ORDER BY __ord""").to_arrow_table()
    con.close()
    return out.cast(table.schema), table.num_rows - out.num_rows


def ingest_table(store: OfflineStore, source_name: str, table: pa.Table, *, input_name: str = "<table>",
                 now: datetime | None = None, default_ingested_at: str = "event_time",
                 batch_name: str | None = None, row_offset: int = 0) -> IngestReport:
    """Validate, deduplicate (within the batch and against the store), flag and store a batch."""
    started = time.perf_counter()
    source = store.registry.source(source_name)
    known = set(source.column_types()) | {EVENT_TIME, INGESTED_AT, "schema_version"}
    ignored = [c for c in table.column_names if c not in known]
    validated = validate_events(source, table, now=now, default_ingested_at=default_ingested_at, row_offset=row_offset)
    batch_name = batch_name or _batch_name(table)

    deadletter_path = None
    if validated.rejected.num_rows:
        path = store.settings.deadletter_dir / source.name / f"{batch_name}.parquet"
        rejected = validated.rejected.append_column(
            "input", pa.array([input_name] * validated.rejected.num_rows, pa.string()))
        write_parquet_atomic(rejected, path, {"fp.source": source.name, "fp.input": input_name})
        deadletter_path = str(path)

    batch, dup_in_batch = dedupe_batch(validated.accepted)
    fresh, dup_stored, replaced = _against_store(store, source, batch)
    files = store.write_events(source.name, fresh, batch_name=batch_name)
    too_late = (pc.sum(fresh.column("is_too_late")).as_py() or 0) if fresh.num_rows else 0
    return IngestReport(
        source=source.name, input_path=input_name, input_rows=table.num_rows, accepted=fresh.num_rows,
        duplicates=dup_in_batch + dup_stored, replaced_later_deliveries=replaced, too_late=int(too_late),
        rejected=validated.rejected.num_rows, deadletter_path=deadletter_path, files=[str(f) for f in files],
        ignored_columns=ignored, seconds=time.perf_counter() - started)


CHUNK_ROWS = int(os.environ.get("FP_INGEST_CHUNK_ROWS", "2000000"))


def ingest_file(store: OfflineStore, source_name: str, path: Path, *, now: datetime | None = None,
                stamp_now: bool = False, chunk_rows: int | None = None,
                progress: Callable[[IngestReport], None] | None = None) -> IngestReport:
    """`feature-platform ingest`: a historical import; missing ingested_at becomes event_time unless stamp_now.

    Large files are read and stored in chunks, which bounds memory; a chunk is checked against
    everything stored before it, so duplicates across chunks still count once (first delivery wins).
    """
    path = Path(path)
    started = time.perf_counter()
    chunk_rows = chunk_rows or CHUNK_ROWS
    total: IngestReport | None = None
    offset = 0
    dead: list[str] = []
    for i, table in enumerate(_read_chunks(path, chunk_rows)):
        name = _batch_name(table, salt=f"{path.resolve()}#{i}")
        r = ingest_table(store, source_name, table, input_name=str(path), now=now,
                         default_ingested_at="now" if stamp_now else "event_time", batch_name=name, row_offset=offset)
        offset += table.num_rows
        if progress is not None:
            progress(r)
        if r.deadletter_path:
            dead.append(r.deadletter_path)
        if total is None:
            total = r
        else:
            total.input_rows += r.input_rows
            total.accepted += r.accepted
            total.duplicates += r.duplicates
            total.replaced_later_deliveries += r.replaced_later_deliveries
            total.too_late += r.too_late
            total.rejected += r.rejected
            total.files += r.files
    assert total is not None
    total.deadletter_path = ", ".join(dead) if dead else None
    total.seconds = time.perf_counter() - started
    return total


def _read_chunks(path: Path, chunk_rows: int):
    """Yield the input as Arrow tables of at most chunk_rows rows (at least one, possibly empty)."""
    sql = _input_sql(path)
    suffix = path.suffix.lower()
    con = connect()
    try:
        try:
            reader = con.sql(sql).to_arrow_reader(batch_size=min(chunk_rows, 1_000_000))
        except duckdb.Error as exc:
            raise IngestError(f"{path}: cannot read as {suffix[1:]}: {exc}") from exc
        pending: list[pa.RecordBatch] = []
        rows = 0
        yielded = False
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= chunk_rows:
                yield pa.Table.from_batches(pending)
                yielded = True
                pending, rows = [], 0
        if pending or not yielded:
            yield pa.Table.from_batches(pending, schema=reader.schema)
    finally:
        con.close()


def _batch_name(table: pa.Table, salt: str = "") -> str:
    """Deterministic per input content, so re-ingesting the same file rewrites the same dead-letter file."""
    h = hashlib.sha256(salt.encode())
    h.update(str(table.schema).encode())
    h.update(str(table.num_rows).encode())
    sink = pa.BufferOutputStream()
    if table.num_rows:
        pq.write_table(table.slice(0, min(table.num_rows, 10_000)), sink)
        h.update(sink.getvalue().to_pybytes())
    return f"ingest-{h.hexdigest()[:16]}"


def _against_store(store: OfflineStore, source: Source, batch: pa.Table) -> tuple[pa.Table, int, int]:
    """Drop events already stored; where the stored copy was delivered later, replace it (SPEC §1)."""
    files = store.event_files(source.name)
    if not files or batch.num_rows == 0:
        return batch, 0, 0
    con = connect()
    con.register("batch", batch)
    file_list = "[" + ", ".join(sql_str(f) for f in files) + "]"
    con.execute(f"""
        CREATE TEMP TABLE stored AS
        SELECT s.{EVENT_ID}, s.{INGESTED_AT}, s.filename
        FROM read_parquet({file_list}, filename=true, hive_partitioning=false) s SEMI JOIN batch b USING ({EVENT_ID})""")
    fresh = con.sql(f"""
        SELECT b.* FROM batch b LEFT JOIN stored s USING ({EVENT_ID})
        WHERE s.{EVENT_ID} IS NULL OR b.{INGESTED_AT} < s.{INGESTED_AT}""").to_arrow_table()
    to_replace = con.execute(f"""
        SELECT s.filename, list(s.{EVENT_ID}) FROM batch b JOIN stored s USING ({EVENT_ID})
        WHERE b.{INGESTED_AT} < s.{INGESTED_AT} GROUP BY s.filename""").fetchall()
    replaced = 0
    for filename, ids in to_replace:
        # Rare path: an earlier delivery arrived after a later one was stored; rewrite that file without it.
        con.execute("CREATE OR REPLACE TEMP TABLE drop_ids AS SELECT unnest(?) AS id", [ids])
        kept = con.sql(f"SELECT * FROM read_parquet({sql_str(filename)}, hive_partitioning=false) WHERE {EVENT_ID} NOT IN (SELECT id FROM drop_ids)").to_arrow_table()
        meta = {k.decode(): v.decode() for k, v in (pq.read_schema(filename).metadata or {}).items() if k.startswith(b"fp.")}
        if kept.num_rows:
            write_parquet_atomic(kept.cast(event_schema(source)), Path(filename), meta)
        else:
            Path(filename).unlink()
        replaced += len(ids)
    con.close()
    duplicates = batch.num_rows - fresh.num_rows
    return fresh.cast(batch.schema), duplicates, replaced
