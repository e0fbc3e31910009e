"""Ingest keeps every valid row, dead-letters the rest with a reason, and never stores an event twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feature_platform.config import Settings
from feature_platform.feature_store import FeatureStore
from feature_platform.offline.ingest import IngestError, ingest_file
from feature_platform.offline.store import connect, read_parquet_metadata

CSV = """event_id,user_id,merchant_id,amount,country,event_time,ingested_at
e1,1,10,12.5,DE,2026-11-01T10:00:00Z,
e2,1,10,,DE,2026-11-01T10:05:00Z,2026-11-01T12:00:00Z
e3,abc,10,1,DE,2026-11-01T10:05:00Z,
e4,2,10,xx,DE,not-a-time,
e1,1,10,99,DE,2026-11-01T10:00:00Z,2026-11-01T10:00:05Z
e5,2.5,10,1,FR,2026-11-02T00:00:00Z,
,3,10,1,FR,2026-11-02T00:00:00Z,
e6,3,11,7,FR,2026-11-02T00:00:00Z,2026-11-01T23:00:00Z
e7,3,11,8,FR,2026-11-02T23:59:59.999999Z,
"""


@pytest.fixture
def fs(tmp_path: Path) -> FeatureStore:
    return FeatureStore(Settings(data_dir=tmp_path / "data", redis_url=None))


def stored(fs: FeatureStore):
    return connect().sql(f"SELECT * FROM {fs.offline.events_sql('transactions')} ORDER BY event_id").to_arrow_table().to_pylist()


def test_valid_rows_kept_bad_rows_dead_lettered(fs, tmp_path):
    f = tmp_path / "in.csv"
    f.write_text(CSV)
    r = ingest_file(fs.offline, "transactions", f)
    rows = stored(fs)
    assert [x["event_id"] for x in rows] == ["e1", "e2", "e7"]
    e1 = rows[0]
    assert e1["amount"] == 12.5, "first delivery (smallest ingested_at) wins with its payload"
    assert rows[1]["is_too_late"] is True and rows[1]["amount"] is None
    assert rows[0]["ingested_at"] == rows[0]["event_time"], "historical import: ingested_at = event_time"
    assert (r.accepted, r.duplicates, r.too_late, r.rejected) == (3, 1, 1, 5)
    dead = pq.read_table(r.deadletter_path).to_pylist()
    reasons = {d["event_id"] or "<empty>": d["reason"] for d in dead}
    assert "user_id: abc is not a valid int64" in reasons["e3"]
    assert "amount: xx is not a valid float64" in reasons["e4"] and "event_time: not-a-time" in reasons["e4"]
    assert "user_id: 2.5 is not a valid int64" in reasons["e5"]
    assert "missing event_id" in reasons["<empty>"]
    assert "by more than max_clock_skew" in reasons["e6"]
    assert {d["row_number"] for d in dead} == {2, 3, 5, 6, 7}


def test_reingest_adds_nothing(fs, tmp_path):
    f = tmp_path / "in.csv"
    f.write_text(CSV)
    ingest_file(fs.offline, "transactions", f)
    before = stored(fs)
    r = ingest_file(fs.offline, "transactions", f)
    assert r.accepted == 0
    assert stored(fs) == before
    assert len(list((fs.settings.deadletter_dir / "transactions").glob("*.parquet"))) == 1


def test_earlier_delivery_arriving_later_replaces_stored_copy(fs, tmp_path):
    late = tmp_path / "a.csv"
    late.write_text("event_id,user_id,merchant_id,amount,country,event_time,ingested_at\n"
                    "x,1,1,5,DE,2026-11-01T10:00:00Z,2026-11-01T10:30:00Z\n")
    early = tmp_path / "b.csv"
    early.write_text("event_id,user_id,merchant_id,amount,country,event_time,ingested_at\n"
                     "x,1,1,6,DE,2026-11-01T10:00:00Z,2026-11-01T10:00:01Z\n")
    ingest_file(fs.offline, "transactions", late)
    r = ingest_file(fs.offline, "transactions", early)
    assert r.replaced_later_deliveries == 1
    rows = stored(fs)
    assert len(rows) == 1 and rows[0]["amount"] == 6.0


def test_partitioned_by_event_date_with_schema_version(fs, tmp_path):
    f = tmp_path / "in.csv"
    f.write_text(CSV)
    r = ingest_file(fs.offline, "transactions", f)
    dirs = sorted(Path(p).parent.name for p in r.files)
    assert dirs == ["event_date=2026-11-01", "event_date=2026-11-02"]
    assert read_parquet_metadata(Path(r.files[0]))["fp.schema_version"] == "1"


def test_missing_columns_is_a_clear_error_and_writes_nothing(fs, tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("event_id,user_id,amount\ne1,1,2\n")
    with pytest.raises(IngestError, match=r"lacks required columns \['merchant_id', 'event_time'\]"):
        ingest_file(fs.offline, "transactions", f)
    assert fs.offline.event_files("transactions") == []


def test_cli_exit_codes(tmp_path):
    f = tmp_path / "in.csv"
    f.write_text(CSV)
    env = {"FP_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "feature_platform.cli"]
    p = subprocess.run(cli + ["ingest", "transactions", str(f)], capture_output=True, text=True, env=env)
    assert p.returncode == 1, p.stderr
    assert "5 rejected" in p.stdout and "5 rows rejected" in p.stderr
    p = subprocess.run(cli + ["ingest", "nope", str(f)], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "unknown source 'nope'" in p.stderr
    p = subprocess.run(cli + ["ingest", "transactions", str(tmp_path / "missing.parquet")], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "no such file" in p.stderr


def test_chunked_ingest_stores_the_same_as_one_chunk(tmp_path):
    """Chunks bound memory; duplicates across chunks still count once and row numbers stay file-relative."""
    f = tmp_path / "in.csv"
    f.write_text(CSV)
    whole = FeatureStore(Settings(data_dir=tmp_path / "a", redis_url=None))
    chunked = FeatureStore(Settings(data_dir=tmp_path / "b", redis_url=None))
    r1 = ingest_file(whole.offline, "transactions", f)
    r2 = ingest_file(chunked.offline, "transactions", f, chunk_rows=2)
    assert stored(whole) == stored(chunked)
    assert (r1.accepted, r1.duplicates, r1.rejected, r1.too_late) == (r2.accepted, r2.duplicates, r2.rejected, r2.too_late)
    dead = [row for p in r2.deadletter_path.split(", ") for row in pq.read_table(p).to_pylist()]
    assert sorted(d["row_number"] for d in dead) == [2, 3, 5, 6, 7]
