"""The offline archive of streamed events: the same events the online tiles saw, as Parquet.

Idempotency (docs/streaming.md, "effectively once"): a flush covers the stream entries with ids
in [first, last] and is written as `stream-<first>-<last>.parquet` in each event-date partition
(ids spelt `ms.seq`). An entry can only be archived twice if a worker died after writing and
before XACK, and then its replay lies in an id range that overlaps the earlier file's range.
So before writing, the archive reads the event ids of exactly those stored stream files whose
range overlaps the flush (normally none: the cost is a directory listing) and drops the events
already there. Producer duplicates (a second entry with a known event_id) never get here: the
worker's claim table in Redis lets only the first delivery through. Too-late events, whose claim
may have expired, are also checked against every file of their event-date partition (rare path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from feature_platform.offline.store import OfflineStore, connect, event_schema, sql_str
from feature_platform.registry.model import EVENT_ID, EVENT_TIME

PREFIX = "stream-"


def _id_text(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}.{entry_id[1]}"


def batch_name(first: tuple[int, int], last: tuple[int, int]) -> str:
    return f"{PREFIX}{_id_text(first)}-{_id_text(last)}"


def parse_range(filename: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The entry-id range of a stream archive file name, or None for other files."""
    if not filename.startswith(PREFIX) or not filename.endswith(".parquet"):
        return None
    body = filename[len(PREFIX):-len(".parquet")]
    parts = body.split("-")
    if len(parts) < 2:
        return None
    try:
        a_ms, a_seq = parts[0].split(".")
        b_ms, b_seq = parts[1].split(".")
        return (int(a_ms), int(a_seq)), (int(b_ms), int(b_seq))
    except ValueError:
        return None


@dataclass
class ArchiveReport:
    written: int = 0
    replayed: int = 0          # already archived by an earlier (crashed) run of the same entries
    duplicates: int = 0        # too-late events whose event_id was already stored
    files: list[Path] = field(default_factory=list)


class StreamArchive:
    def __init__(self, offline: OfflineStore, source: str) -> None:
        self.offline = offline
        self.source = offline.registry.source(source)
        self.schema = event_schema(self.source)

    def _partition(self, day: date) -> Path:
        return self.offline.events_dir(self.source.name) / f"event_date={day.isoformat()}"

    def write(self, events: pa.Table, first: tuple[int, int], last: tuple[int, int]) -> ArchiveReport:
        """Store `events` (event_schema, first deliveries only) unless already stored; never twice."""
        report = ArchiveReport()
        if events.num_rows == 0:
            return report
        events = events.select(self.schema.names).cast(self.schema)
        # The same entry can be in one flush twice (re-read after a lost reply or a takeover while its
        # first copy was still buffered): identical rows, keep one.
        order = pa.array(range(events.num_rows), pa.int64())
        firsts = events.select([EVENT_ID]).append_column("__i", order).group_by(EVENT_ID).aggregate([("__i", "min")])
        if firsts.num_rows < events.num_rows:
            keep = firsts.column("__i_min")
            events = events.take(pc.take(keep, pc.sort_indices(keep)))
        days = pc.unique(pc.cast(events.column(EVENT_TIME), pa.date32())).to_pylist()
        overlapping: list[Path] = []
        for d in days:
            part = self._partition(d)
            if not part.exists():
                continue
            with os.scandir(part) as it:
                for entry in it:
                    rng = parse_range(entry.name)
                    if rng and rng[0] <= last and first <= rng[1]:
                        overlapping.append(Path(entry.path))
        late_mask = events.column("is_too_late")
        late_days = pc.unique(pc.cast(pc.filter(events.column(EVENT_TIME), late_mask), pa.date32())).to_pylist()
        late_files = [p for d in late_days if self._partition(d).exists() for p in sorted(self._partition(d).glob("*.parquet"))]

        if overlapping or late_files:
            con = connect()
            con.register("batch", events.select([EVENT_ID, "is_too_late"]))
            known_replayed: set[str] = set()
            if overlapping:
                files = "[" + ", ".join(sql_str(p) for p in overlapping) + "]"
                known_replayed = {r[0] for r in con.execute(
                    f"SELECT s.{EVENT_ID} FROM read_parquet({files}, hive_partitioning=false) s "
                    f"SEMI JOIN batch b USING ({EVENT_ID})").fetchall()}
            known_late: set[str] = set()
            if late_files:
                files = "[" + ", ".join(sql_str(p) for p in late_files) + "]"
                known_late = {r[0] for r in con.execute(
                    f"SELECT s.{EVENT_ID} FROM read_parquet({files}, hive_partitioning=false) s "
                    f"SEMI JOIN (SELECT * FROM batch WHERE is_too_late) b USING ({EVENT_ID})").fetchall()} - known_replayed
            con.close()
            drop = known_replayed | known_late
            if drop:
                keep = pc.invert(pc.is_in(events.column(EVENT_ID), pa.array(sorted(drop), pa.string())))
                report.replayed = len(known_replayed)
                report.duplicates = len(known_late)
                events = events.filter(keep)
        if events.num_rows == 0:
            return report
        name = batch_name(first, last)
        new_days = pc.unique(pc.cast(events.column(EVENT_TIME), pa.date32())).to_pylist()
        n = 0
        candidate = name
        while any((self._partition(d) / f"{candidate}.parquet").exists() for d in new_days):
            n += 1  # never overwrite a stored file: a clash would lose its events
            candidate = f"{name}-r{n}"
        report.files = self.offline.write_events(self.source.name, events, batch_name=candidate)
        report.written = events.num_rows
        return report
