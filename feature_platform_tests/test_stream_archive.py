"""The stream archive never stores an event_id twice: not from a replayed flush (overlapping entry-id
range), not from one entry buffered twice, not from a too-late re-delivery; and it never overwrites
a stored file."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa

from feature_platform.offline.store import OfflineStore, connect, event_schema
from feature_platform.streaming.archive import StreamArchive, parse_range


def _events(ids: list[str], too_late: bool = False, amount: float = 1.0) -> pa.Table:
    now = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
    n = len(ids)
    return pa.table({
        "event_id": ids, "user_id": [1] * n, "merchant_id": [2] * n, "amount": [amount] * n, "country": ["DE"] * n,
        "event_time": pa.array([now - timedelta(minutes=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        "ingested_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        "is_too_late": [too_late] * n, "schema_version": pa.array([1] * n, pa.int32()),
    }).cast(_schema())


def _schema():
    from feature_platform.registry import load_registry

    return event_schema(load_registry().source("transactions"))


def _stored(store: OfflineStore) -> list[tuple]:
    con = connect()
    rows = con.execute(f"SELECT event_id, amount FROM {store.events_sql('transactions')} ORDER BY 1").fetchall()
    con.close()
    return rows


def test_archive_is_idempotent(settings, registry):
    store = OfflineStore(settings, registry)
    arch = StreamArchive(store, "transactions")
    first = arch.write(_events(["a", "b", "c"]), (100, 0), (100, 2))
    assert first.written == 3 and [parse_range(f.name) for f in first.files] == [((100, 0), (100, 2))]
    # a replay of b and c (crash before XACK) plus a new entry d, in a wider range
    again = arch.write(_events(["b", "c", "d"]), (100, 1), (101, 0))
    assert (again.written, again.replayed) == (1, 2)
    # the same entry twice in one flush
    twice = arch.write(_events(["e", "e", "f"]), (102, 0), (102, 1))
    assert twice.written == 2
    # a too-late re-delivery of a stored event, outside any overlapping range
    late = arch.write(_events(["a"], too_late=True, amount=99.0), (500, 0), (500, 0))
    assert (late.written, late.duplicates) == (0, 1)
    # the exact same range again with nothing new: nothing written, no file overwritten
    files_before = sorted(store.event_files("transactions"))
    assert arch.write(_events(["a", "b", "c"]), (100, 0), (100, 2)).written == 0
    assert sorted(store.event_files("transactions")) == files_before
    assert _stored(store) == [(x, 1.0) for x in "abcdef"]
