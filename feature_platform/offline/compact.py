"""Compaction: one Parquet file per closed event-date partition, deduplicated.

The stream worker archives about one small file per second per worker, and file imports add
their own: tens of thousands of files per day would make every DuckDB scan slow. Once a day's
lateness horizon has closed (no on-time event of that day can still arrive), its files are
merged into one, keeping the first delivery of each event_id — which also removes the one kind
of duplicate the doors cannot see on their own: an event imported from a file *and* delivered on
the stream. The merged file is named `stream-<first id>-<last id>.parquet` over the union of the
stream archives' entry-id ranges, so the worker's replay check still finds those events.

Safe with concurrent writers: only the files read are deleted, after the merged file is in place
(a reader that lists the folder in between may see an event twice for that one query). Files
written under another schema version than the registry's are left alone, so the schema check
still sees them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from feature_platform.offline.store import OfflineStore, connect, read_parquet_metadata, sql_str
from feature_platform.registry.model import EVENT_ID, EVENT_TIME, INGESTED_AT


@dataclass
class CompactReport:
    source: str
    day: date
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int
    skipped_other_schema: int
    seconds: float

    @property
    def duplicates_removed(self) -> int:
        return self.rows_before - self.rows_after

    def summary(self) -> str:
        if self.files_before == self.files_after:
            return f"{self.source} {self.day}: {self.files_before} file(s), nothing to compact"
        return (f"{self.source} {self.day}: {self.files_before} files -> {self.files_after}, {self.rows_after:,} events "
                f"({self.duplicates_removed} duplicates removed) in {self.seconds:.1f}s")


def compact_partition(store: OfflineStore, source_name: str, day: date) -> CompactReport:
    """Merge the files of one event-date partition into one, first delivery of each event_id kept."""
    from feature_platform.streaming.archive import batch_name, parse_range

    started = time.perf_counter()
    source = store.registry.source(source_name)
    part = store.events_dir(source.name) / f"event_date={day.isoformat()}"
    files = sorted(part.glob("*.parquet")) if part.exists() else []
    current = [f for f in files if read_parquet_metadata(f).get("fp.schema_version") == str(source.schema_version)]
    other = len(files) - len(current)
    if len(current) < 2:
        return CompactReport(source.name, day, len(files), len(files), 0, 0, other, time.perf_counter() - started)

    con = connect()
    try:
        file_list = "[" + ", ".join(sql_str(f) for f in current) + "]"
        rows_before = con.execute(f"SELECT count(*) FROM read_parquet({file_list}, hive_partitioning=false)").fetchall()[0][0]
        merged = con.sql(f"""
            SELECT * EXCLUDE (filename) FROM read_parquet({file_list}, hive_partitioning=false, filename=true)
            QUALIFY row_number() OVER (PARTITION BY {EVENT_ID} ORDER BY {INGESTED_AT}, filename) = 1
            ORDER BY {EVENT_TIME}, {EVENT_ID}""").to_arrow_table()
    finally:
        con.close()

    ranges = [r for r in (parse_range(f.name) for f in current) if r]
    if ranges:
        name = batch_name(min(r[0] for r in ranges), max(r[1] for r in ranges))
    else:
        name = "compacted-" + hashlib.sha256("|".join(f.name for f in current).encode()).hexdigest()[:16]
    target = part / f"{name}.parquet"
    if target.exists() and target not in current:  # a writer took the name meanwhile: never overwrite it
        name = f"{name}-c{int(time.time())}"
    written = store.write_events(source.name, merged, batch_name=name)
    for f in current:
        if f not in written:
            f.unlink(missing_ok=True)
    return CompactReport(source.name, day, len(files), other + len(written), rows_before, merged.num_rows, other,
                         time.perf_counter() - started)


def closed_days(store: OfflineStore, source_name: str, now_us: int, margin_us: int = 3_600_000_000) -> list[date]:
    """Event dates whose lateness horizon (plus a margin) has passed: no on-time event can still land there."""
    from datetime import datetime, timedelta, timezone

    source = store.registry.source(source_name)
    horizon = datetime.fromtimestamp((now_us - source.allowed_lateness_us - margin_us) / 1e6, tz=timezone.utc)
    last_closed = horizon.date() - timedelta(days=1)
    return [d for d in store.event_dates(source.name) if d <= last_closed]


def file_count(store: OfflineStore, source_name: str, day: date) -> int:
    part: Path = store.events_dir(source_name) / f"event_date={day.isoformat()}"
    return len(list(part.glob("*.parquet"))) if part.exists() else 0
