"""Write events onto a source's Redis Stream (the documented message format, docs/streaming.md).

One stream entry per event, in one of two equivalent formats: a single field `event` holding a JSON
object (the default here: one bulk string per entry is the cheapest to read), or one field per
column. Either way the columns are `event_id`, the entity keys, the payload columns, `event_time`
as ISO-8601 UTC, plus `schema_version`, every value a string; a null value is left out. The platform stamps `ingested_at` from the entry id (the time Redis
accepted the XADD), so a producer never sends it and a replay of the stream gives the same value.

Columns are turned into strings with Arrow compute (vectorised); entries go out as pipelined XADDs
in chunks, optionally paced to a rate.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from feature_platform.config import Settings
from feature_platform.registry.model import EVENT_TIME, INGESTED_AT, Registry
from feature_platform.online.connection import connect_redis as connect
from feature_platform.streaming.keys import StreamKeys

SKIPPED_COLUMNS = (INGESTED_AT, "is_too_late", "event_date")


@dataclass(frozen=True)
class ProduceReport:
    source: str
    stream: str
    events: int
    seconds: float
    first_id: str | None
    last_id: str | None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def _as_strings(col: pa.ChunkedArray | pa.Array, name: str) -> pa.Array:
    """Stringify one column: timestamps as ISO-8601 UTC with microseconds, the rest by Arrow's cast."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_timestamp(t):
        if t.tz is None:
            col = pc.assume_timezone(col, "UTC")
        col = col.cast(pa.timestamp("us", tz="UTC"))
        return pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.cast(pa.string())
    if pa.types.is_dictionary(t):
        return col.cast(pa.string())
    return pc.cast(col, pa.string())


def encode_messages(table: pa.Table, schema_version: int | None, format: str = "json") -> list[dict[str, str]]:
    """Stream entries for the rows of `table`, nulls left out: `{"event": "<JSON object>"}` (format
    "json", one bulk string per entry: cheapest to read) or one field per column (format "fields")."""
    names = [n for n in table.column_names if n not in SKIPPED_COLUMNS]
    cols = {n: _as_strings(table.column(n), n).to_pylist() for n in names if n != "schema_version"}
    if "schema_version" in table.column_names:
        cols["schema_version"] = _as_strings(table.column("schema_version"), "schema_version").to_pylist()
    elif schema_version is not None:
        cols["schema_version"] = [str(schema_version)] * table.num_rows
    keys = list(cols)
    values = [cols[k] for k in keys]
    if format == "fields":
        return [{k: v for k, v in zip(keys, row) if v is not None} for row in zip(*values)]
    if format != "json":
        raise ValueError(f"unknown entry format {format!r}; use 'json' or 'fields'")
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return [{"event": dumps({k: v for k, v in zip(keys, row) if v is not None})} for row in zip(*values)]


def produce(settings: Settings, registry: Registry, source: str, table: pa.Table, *, rate: float | None = None,
            chunk: int = 1000, maxlen: int | None = None, client=None, format: str = "json",
            progress: Callable[[int, int], None] | None = None) -> ProduceReport:
    """XADD every row of `table` to the source's stream, in order; returns ids and timing.

    `rate` (events/s) paces the chunks so the stream sees a steady rate (chunks shrink to 1/100 s
    worth of events); `maxlen` trims the stream approximately (never do that while a worker lags).
    """
    src = registry.source(source)
    if EVENT_TIME not in table.column_names:
        raise ValueError(f"source {source!r}: the input has no {EVENT_TIME!r} column; it has {table.column_names}")
    r = client or connect(settings)
    keys = StreamKeys.of(settings, src.name)
    if rate:
        chunk = max(1, min(chunk, int(rate / 100) or 1))
    started = time.perf_counter()
    first_id = last_id = None
    sent = 0
    block = max(chunk, 10_000)  # encode in large blocks (vectorised casts), send in paced chunks
    for block_start in range(0, table.num_rows, block):
        encoded = encode_messages(table.slice(block_start, block), src.schema_version, format)
        for offset in range(0, len(encoded), chunk):
            messages = encoded[offset:offset + chunk]
            pipe = r.pipeline(transaction=False)
            for m in messages:
                if maxlen:
                    pipe.xadd(keys.stream, m, maxlen=maxlen, approximate=True)
                else:
                    pipe.xadd(keys.stream, m)
            ids = pipe.execute()
            if ids:
                first_id = first_id or _s(ids[0])
                last_id = _s(ids[-1])
            sent += len(messages)
            if progress:
                progress(sent, table.num_rows)
            if rate:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
    return ProduceReport(src.name, keys.stream, sent, time.perf_counter() - started, first_id, last_id)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
