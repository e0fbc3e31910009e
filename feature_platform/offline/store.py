"""The offline store: raw events and batch-view rows as hive-partitioned Parquet, read by DuckDB.

Layout under FP_DATA_DIR (see docs/architecture.md):

    offline/events/<source>/event_date=YYYY-MM-DD/<batch>.parquet     accepted events
    offline/views/<view>/v<version>/feature_date=YYYY-MM-DD/data.parquet   batch-view rows
    deadletter/<source>/<batch>.parquet                              rejected rows + reason

Every events file carries the columns of `event_schema(source)` and Parquet key-value metadata
(`fp.source`, `fp.schema_version`); every view file carries `fp.view`, `fp.version`,
`fp.fingerprint`. Files are written to a temporary name and renamed, so a reader never sees a
half-written file and a crash leaves nothing behind but a `.tmp` file that is ignored.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from feature_platform.config import Settings
from feature_platform.registry.model import (
    EVENT_ID,
    EVENT_TIME,
    INGESTED_AT,
    BatchFeatureView,
    Dtype,
    Registry,
    Source,
)

TS = pa.timestamp("us", tz="UTC")
_ARROW = {Dtype.INT64: pa.int64(), Dtype.FLOAT64: pa.float64(), Dtype.STRING: pa.string(), Dtype.BOOL: pa.bool_()}


def arrow_type(dtype: Dtype) -> pa.DataType:
    return _ARROW[dtype]


def event_schema(source: Source) -> pa.Schema:
    """The stored columns of a source's events, in order."""
    fields = [pa.field(EVENT_ID, pa.string(), nullable=False)]
    fields += [pa.field(e.join_key, arrow_type(e.dtype), nullable=False) for e in source.entities]
    fields += [pa.field(c.name, arrow_type(c.dtype)) for c in source.columns]
    fields += [
        pa.field(EVENT_TIME, TS, nullable=False),
        pa.field(INGESTED_AT, TS, nullable=False),
        pa.field("is_too_late", pa.bool_(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
    return pa.schema(fields)


def view_schema(view: BatchFeatureView) -> pa.Schema:
    """Stored columns of a batch view's rows."""
    fields = [pa.field(view.entity.join_key, arrow_type(view.entity.dtype), nullable=False),
              pa.field("feature_timestamp", TS, nullable=False)]
    for f in view.features:
        if f.function in ("count", "count_distinct"):
            t = pa.int64()
        elif f.function in ("sum", "mean"):
            t = pa.float64()
        else:
            t = arrow_type(view.source.column_types()[f.column]) if f.column else pa.int64()
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def connect(threads: int | None = None, memory_limit: str | None = None,
            temp_directory: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC; the store is the Parquet files, not a database file.

    A memory limit makes DuckDB spill to `temp_directory` instead of growing past it.
    """
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone='UTC'")
    if temp_directory is not None:
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory={sql_str(temp_directory)}")
    if threads:
        con.execute(f"SET threads={int(threads)}")
    if memory_limit:
        con.execute(f"SET memory_limit='{memory_limit}'")
    return con


def sql_str(value: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class OfflineStore:
    """Paths and readers of the offline store; all heavy lifting happens in DuckDB SQL."""

    settings: Settings
    registry: Registry

    # ---- events -------------------------------------------------------------------------------
    def events_dir(self, source: str) -> Path:
        self.registry.source(source)
        return self.settings.events_dir / source

    def event_files(self, source: str) -> list[Path]:
        d = self.events_dir(source)
        return sorted(d.glob("event_date=*/*.parquet")) if d.exists() else []

    def event_dates(self, source: str) -> list[date]:
        d = self.events_dir(source)
        if not d.exists():
            return []
        return sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in d.glob("event_date=*") if any(p.glob("*.parquet")))

    def events_sql(self, source: str, dates: list[date] | None = None) -> str:
        """A FROM-able SQL expression over the stored events (an empty relation when none)."""
        src = self.registry.source(source)
        files = self.event_files(source)
        if dates is not None:
            wanted = {f"event_date={d.isoformat()}" for d in dates}
            files = [f for f in files if f.parent.name in wanted]
        if not files:
            return _empty_relation(event_schema(src))
        cols = ", ".join(f'"{n}"' for n in event_schema(src).names)
        file_list = "[" + ", ".join(sql_str(f) for f in files) + "]"
        return f"(SELECT {cols} FROM read_parquet({file_list}, hive_partitioning=false))"

    def write_events(self, source: str, table: pa.Table, batch_name: str | None = None) -> list[Path]:
        """Append accepted events (already validated, deduplicated, flagged), one file per event date."""
        src = self.registry.source(source)
        table = table.select(event_schema(src).names).cast(event_schema(src))
        if table.num_rows == 0:
            return []
        batch_name = batch_name or f"{uuid.uuid4().hex}"
        con = connect()
        con.register("incoming", table)
        dates = [r[0] for r in con.execute(
            f"SELECT DISTINCT CAST({EVENT_TIME} AS DATE) FROM incoming ORDER BY 1").fetchall()]
        written = []
        meta = {"fp.source": src.name, "fp.schema_version": str(src.schema_version)}
        for d in dates:
            part = con.sql(
                f"SELECT * FROM incoming WHERE CAST({EVENT_TIME} AS DATE) = DATE '{d.isoformat()}' "
                f"ORDER BY {EVENT_TIME}, {EVENT_ID}").to_arrow_table()
            path = self.events_dir(source) / f"event_date={d.isoformat()}" / f"{batch_name}.parquet"
            write_parquet_atomic(part, path, meta)
            written.append(path)
        con.close()
        return written

    # ---- batch views --------------------------------------------------------------------------
    def view_dir(self, view: BatchFeatureView) -> Path:
        return self.settings.views_dir / view.name / f"v{view.version}"

    def view_partition_path(self, view: BatchFeatureView, day: date) -> Path:
        return self.view_dir(view) / f"feature_date={day.isoformat()}" / "data.parquet"

    def view_dates(self, view: BatchFeatureView) -> list[date]:
        d = self.view_dir(view)
        if not d.exists():
            return []
        return sorted(date.fromisoformat(p.parent.name.split("=", 1)[1]) for p in d.glob("feature_date=*/data.parquet"))

    def write_view_partition(self, view: BatchFeatureView, day: date, table: pa.Table) -> Path:
        """Replace the rows of one day of a batch view (idempotent: re-running a day rewrites it)."""
        table = table.select(view_schema(view).names).cast(view_schema(view))
        path = self.view_partition_path(view, day)
        meta = {"fp.view": view.name, "fp.version": str(view.version), "fp.fingerprint": view.fingerprint(),
                "fp.source_schema_version": str(view.source.schema_version)}
        write_parquet_atomic(table, path, meta)
        return path

    def view_sql(self, view: BatchFeatureView, dates: list[date] | None = None) -> str:
        files = [self.view_partition_path(view, d) for d in (self.view_dates(view) if dates is None else dates)]
        files = [f for f in files if f.exists()]
        if not files:
            return _empty_relation(view_schema(view))
        cols = ", ".join(f'"{n}"' for n in view_schema(view).names)
        return f"(SELECT {cols} FROM read_parquet([{', '.join(sql_str(f) for f in files)}], hive_partitioning=false))"


def write_parquet_atomic(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write via a temp file and rename, with key-value metadata, so readers never see partial files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=1_000_000)
    os.replace(tmp, path)


def read_parquet_metadata(path: Path) -> dict[str, str]:
    md = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if k.startswith(b"fp.")}


def _empty_relation(schema: pa.Schema) -> str:
    types = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
             pa.int32(): "INTEGER", TS: "TIMESTAMPTZ"}
    cols = ", ".join(f'CAST(NULL AS {types[f.type]}) AS "{f.name}"' for f in schema)
    return f"(SELECT {cols} WHERE false)"
