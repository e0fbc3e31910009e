"""Compaction merges a day's files into one, keeps the first delivery of every event_id (also across
the file and stream doors), keeps the stream replay check working, and changes no feature value."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_platform.config import Settings
from feature_platform.feature_store import FeatureStore
from feature_platform.offline.compact import closed_days, compact_partition, file_count
from feature_platform.offline.ingest import ingest_table, validate_events
from feature_platform.offline.store import connect, write_parquet_atomic
from feature_platform.streaming.archive import StreamArchive
from feature_platform_tests import reference as ref
from feature_platform_tests.test_training_pit import labels_frame, to_table

US = 1_000_000
DAY0 = datetime(2026, 3, 3, tzinfo=timezone.utc)
T0 = int(DAY0.timestamp()) * US


def ev(i: int, minute: int, delay_s: int = 1, amount: float = 1.0, user: int = 1) -> ref.Ev:
    et = T0 + minute * 60 * US
    return ref.Ev(f"e{i}", user, 1, amount, "DE", et, et + delay_s * US)


def stored_ids(fs: FeatureStore) -> list[tuple[str, float]]:
    return connect().sql(f"SELECT event_id, amount FROM {fs.offline.events_sql('transactions')} ORDER BY ALL").fetchall()


def test_compaction_merges_dedupes_across_doors_and_keeps_values(tmp_path):
    fs = FeatureStore(Settings(data_dir=tmp_path / "d", redis_url=None))
    src = fs.registry.source("transactions")
    imported = [ev(i, 10 * i, amount=float(i)) for i in range(6)]
    for chunk in (imported[:3], imported[3:]):
        ingest_table(fs.offline, "transactions", to_table(chunk))
    # The stream archive then gets e7, e8 and a later delivery of e2 with another payload (a second door).
    streamed = [ev(7, 70), ev(8, 80), ref.Ev("e2", 1, 1, 999.0, "DE", imported[2].et, imported[2].it + 60 * US)]
    accepted = validate_events(src, to_table(streamed)).accepted
    StreamArchive(fs.offline, "transactions").write(accepted, (100, 0), (100, 2))
    assert file_count(fs.offline, "transactions", DAY0.date()) == 3
    assert len(stored_ids(fs)) == 9, "before compaction the cross-door duplicate is stored twice"

    label_rows = [(1, 1, T0 + 2 * 60 * 60 * US), (1, 1, T0 + 20 * 60 * 60 * US)]
    labels = labels_frame(label_rows)
    expected_events = ref.dedupe(imported + streamed)
    report = compact_partition(fs.offline, "transactions", DAY0.date())
    assert (report.files_before, report.files_after, report.duplicates_removed) == (3, 1, 1)
    assert file_count(fs.offline, "transactions", DAY0.date()) == 1
    assert stored_ids(fs) == sorted((e.event_id, e.amount) for e in expected_events)
    assert dict(stored_ids(fs))["e2"] == 2.0, "the first delivery (the import) wins"
    # The merged file carries the stream range, so a replay of those entries is still recognised.
    (merged,) = (fs.offline.events_dir("transactions") / "event_date=2026-03-03").glob("*.parquet")
    assert merged.name.startswith("stream-100.0-100.2")
    again = StreamArchive(fs.offline, "transactions").write(accepted.slice(0, 2), (100, 0), (100, 1))
    assert again.written == 0 and again.replayed == 2
    # Features equal the brute force on the deduplicated events.
    got = fs.get_historical_features(labels, service="fraud_detection", mode="event")
    view = fs.registry.view("user_txn_stats")
    for i, (_, _, t) in enumerate(label_rows):
        want = ref.stream_value(expected_events, view, "amount_mean_24h", 1, t, "event")
        assert want is not None and ref.close(float(got["user_txn_stats__amount_mean_24h"].iloc[i]), want)
    # Idempotent: a second run has nothing to do.
    assert compact_partition(fs.offline, "transactions", DAY0.date()).files_after == 1


def test_files_of_another_schema_version_are_left_alone(tmp_path):
    fs = FeatureStore(Settings(data_dir=tmp_path / "d", redis_url=None))
    for chunk in ([ev(1, 1)], [ev(2, 2)]):
        ingest_table(fs.offline, "transactions", to_table(chunk))
    part = fs.offline.events_dir("transactions") / "event_date=2026-03-03"
    old = pq.read_table(next(part.glob("*.parquet")))
    write_parquet_atomic(old.replace_schema_metadata({}), part / "old.parquet",
                         {"fp.source": "transactions", "fp.schema_version": "0"})
    r = compact_partition(fs.offline, "transactions", DAY0.date())
    assert r.skipped_other_schema == 1 and r.files_after == 2
    assert (part / "old.parquet").exists()


def test_only_days_past_their_lateness_horizon_are_closed(tmp_path):
    fs = FeatureStore(Settings(data_dir=tmp_path / "d", redis_url=None))
    ingest_table(fs.offline, "transactions", to_table([ev(1, 1), ev(2, 60 * 24 + 1)]))
    end_of_day0 = T0 + 24 * 60 * 60 * US
    lateness_and_margin = 2 * 60 * 60 * US
    assert closed_days(fs.offline, "transactions", end_of_day0 + lateness_and_margin - 1) == []
    assert closed_days(fs.offline, "transactions", end_of_day0 + lateness_and_margin) == [DAY0.date()]
