"""Point-in-time training sets against the brute-force reference (random and edge-case data)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from feature_platform.config import Settings
from feature_platform.feature_store import FeatureStore
from feature_platform.offline.batch import materialize_partition
from feature_platform.offline.ingest import ingest_table
from feature_platform.offline.training import TrainingSetError
from feature_platform_tests import reference as ref

US = 1_000_000
MIN = 60 * US
HOUR = 60 * MIN
DAY = 24 * HOUR
BASE = int(datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp()) * US  # a midnight


def to_table(events: list[ref.Ev]) -> pa.Table:
    ts = pa.timestamp("us", tz="UTC")
    return pa.table({
        "event_id": pa.array([e.event_id for e in events], pa.string()),
        "user_id": pa.array([e.user_id for e in events], pa.int64()),
        "merchant_id": pa.array([e.merchant_id for e in events], pa.int64()),
        "amount": pa.array([e.amount for e in events], pa.float64()),
        "country": pa.array([e.country for e in events], pa.string()),
        "event_time": pa.array([e.et for e in events], pa.int64()).cast(ts),
        "ingested_at": pa.array([e.it for e in events], pa.int64()).cast(ts),
    })


def labels_frame(labels: list[tuple[int | None, int | None, int]]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": pd.array([u for u, _, _ in labels], dtype="Int64"),
        "merchant_id": pd.array([m for _, m, _ in labels], dtype="Int64"),
        "event_time": pd.to_datetime([t for _, _, t in labels], unit="us", utc=True),
        "label_id": list(range(len(labels))),
    })


def check_against_reference(fs: FeatureStore, deliveries: list[ref.Ev],
                            labels: list[tuple[int | None, int | None, int]], mode: str) -> None:
    events = ref.dedupe(deliveries)
    refs = list(fs.registry.service("fraud_detection").features)
    got = fs.get_historical_features(labels_frame(labels), service="fraud_detection", mode=mode)
    assert list(got["label_id"]) == list(range(len(labels))), "rows must keep their order"
    assert len(got) == len(labels)
    for i, (user, merchant, t) in enumerate(labels):
        for r in refs:
            view = fs.registry.view(r.view, r.version)
            key = user if view.entity.join_key == "user_id" else merchant
            if view.kind == "stream":
                expected = ref.stream_value(events, view, r.feature, key, t, mode) if key is not None else (
                    ref.stream_value([], view, r.feature, key, t, mode))
            else:
                expected = ref.batch_value(events, view, r.feature, key, t) if key is not None else None
            value = got[r.column].iloc[i]
            value = None if pd.isna(value) else (value.item() if hasattr(value, "item") else value)
            assert ref.close(value, expected), (
                f"row {i} (user={user}, merchant={merchant}, t={t - BASE}us after base, mode={mode}) "
                f"{r.column}: got {value!r}, reference {expected!r}")


# ---- strategies --------------------------------------------------------------------------------
# Times cluster on tile edges (multiples of 1 min .. 1 day) with +-1 us nudges, where off-by-one bugs live.
offsets = st.one_of(
    st.integers(0, 3 * DAY),
    st.builds(lambda k, unit, nudge: k * unit + nudge, st.integers(0, 72), st.sampled_from([MIN, 5 * MIN, HOUR, DAY // 4]),
              st.sampled_from([-1, 0, 1])),
)
delays = st.sampled_from([0, 1, 30 * MIN, HOUR - 1, HOUR, HOUR + 1, 3 * HOUR, 2 * DAY])
amounts = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.5, 100.0, 1e6, 0.1, -3.0]),
                    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False))


@st.composite
def worlds(draw):
    n = draw(st.integers(0, 30))
    ids = draw(st.lists(st.sampled_from([f"e{i}" for i in range(40)]), min_size=n, max_size=n))
    deliveries = []
    for eid in ids:
        et = BASE + DAY + draw(offsets)
        deliveries.append(ref.Ev(eid, draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(amounts),
                                 "DE", et, et + draw(delays)))
    candidates = [e.et for e in deliveries] + [e.it for e in deliveries]
    nlab = draw(st.integers(1, 12))
    labels = []
    for _ in range(nlab):
        if candidates and draw(st.booleans()):
            t = draw(st.sampled_from(candidates)) + draw(st.sampled_from([0, 1, -1, HOUR, 2 * HOUR, DAY + 2 * HOUR]))
        else:
            t = BASE + draw(st.integers(0, 6 * DAY))
        labels.append((draw(st.one_of(st.integers(1, 4), st.none())), draw(st.integers(1, 3)), t))
    return deliveries, labels


def fresh_store(tmp_path_factory) -> FeatureStore:
    data = tmp_path_factory.mktemp("pit")
    return FeatureStore(Settings(data_dir=data, redis_url=None, key_prefix="unused"))


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(world=worlds(), mode=st.sampled_from(["ingestion", "event"]))
def test_random_worlds_match_reference(tmp_path_factory, world, mode):
    deliveries, labels = world
    fs = fresh_store(tmp_path_factory)
    # Deliveries arrive in two imports, in an order unrelated to ingested_at, as in real life.
    half = len(deliveries) // 2
    for chunk in (deliveries[:half], deliveries[half:]):
        if chunk:
            ingest_table(fs.offline, "transactions", to_table(chunk))
    check_against_reference(fs, deliveries, labels, mode)


def edge_world() -> tuple[list[ref.Ev], list[tuple]]:
    t0 = BASE + DAY + 10 * HOUR  # a 5-minute, 1-hour and 1-minute tile edge
    d = [
        ref.Ev("a", 1, 1, 10.0, "DE", t0, t0),                      # exactly at a label time
        ref.Ev("b", 1, 1, 20.0, "DE", t0 - 1, t0 - 1),              # 1 us before
        ref.Ev("c", 1, 1, None, "DE", t0 - 5 * MIN, t0 - 5 * MIN),  # null amount on a tile edge
        ref.Ev("d", 1, 1, 5.0, "DE", t0 - 30 * MIN, t0 + 10 * MIN), # late, within lateness
        ref.Ev("e", 1, 2, 7.0, "DE", t0 - 2 * HOUR, t0 + 10 * MIN), # too late (2h10m)
        ref.Ev("f", 1, 2, 99.0, "DE", t0 - 10 * MIN, t0 - 9 * MIN), # duplicate id below: first delivery wins
        ref.Ev("f", 1, 2, 1.0, "DE", t0 - 10 * MIN, t0 - 8 * MIN),
        ref.Ev("g", 2, 2, 3.0, "DE", t0 - DAY - HOUR, t0 - DAY - HOUR),
        ref.Ev("h", 1, 1, 4.0, "DE", t0 - HOUR, t0 - HOUR),         # exactly one window back
        ref.Ev("i", 1, 1, 4.5, "DE", t0 - HOUR - 1, t0 - HOUR),     # 1 us outside a 1h window at t0
        ref.Ev("j", 1, 1, 8.0, "DE", t0 - 6 * DAY, t0 - 6 * DAY),   # only in 7d/30d windows
        ref.Ev("k", 1, 1, 6.0, "DE", t0 - 10 * MIN, t0 - 10 * MIN + HOUR),  # lateness exactly 1h: not too late
        ref.Ev("l", 1, 1, 6.5, "DE", t0 - 11 * MIN, t0 - 11 * MIN + HOUR + 1),  # 1h + 1us: too late
    ]
    ts = [t0, t0 + 1, t0 - 1, t0 + 10 * MIN, t0 + 10 * MIN + 1, t0 + HOUR, t0 + 2 * HOUR,
          BASE + 2 * DAY, BASE + 2 * DAY + 2 * HOUR - 1, BASE + 2 * DAY + 2 * HOUR, BASE + 4 * DAY - 1,
          BASE + 4 * DAY, BASE - DAY]
    labels = [(u, m, t) for t in ts for u, m in ((1, 1), (2, 2), (None, 1), (99, 99))]
    return d, labels


@pytest.mark.parametrize("mode", ["ingestion", "event"])
def test_edge_cases_match_reference(tmp_path_factory, mode):
    deliveries, labels = edge_world()
    fs = fresh_store(tmp_path_factory)
    ingest_table(fs.offline, "transactions", to_table(deliveries))
    check_against_reference(fs, deliveries, labels, mode)


def test_materialized_partitions_give_the_same_values(tmp_path_factory):
    deliveries, labels = edge_world()
    fs = fresh_store(tmp_path_factory)
    ingest_table(fs.offline, "transactions", to_table(deliveries))
    view = fs.registry.view("user_daily_profile")
    for day in (date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4)):
        materialize_partition(fs.offline, view, day)
    assert fs.offline.view_dates(view)
    check_against_reference(fs, deliveries, labels, "ingestion")


def test_nothing_timed_or_learned_at_or_after_t_leaks(tmp_path_factory):
    """Events timed at/after t never change row t; in ingestion mode neither do events ingested at/after t."""
    deliveries, labels = edge_world()
    base = fresh_store(tmp_path_factory)
    ingest_table(base.offline, "transactions", to_table(deliveries))
    for t in sorted({t for _, _, t in labels})[::2]:
        rows = [(u, m, tt) for u, m, tt in labels if tt == t]
        lf = labels_frame(rows)
        timed_after = [ref.Ev(f"z{u}{m}{off}", u or 1, m, 1e9, "DE", t + off, t + off)
                       for u, m, _ in rows for off in (0, 1, DAY)]
        learned_after = [ref.Ev(f"y{u}{m}{off}", u or 1, m, 1e9, "DE", t - off, t) for u, m, _ in rows
                         for off in (1, MIN, 30 * MIN)]
        fs = fresh_store(tmp_path_factory)
        ingest_table(fs.offline, "transactions", to_table(deliveries + timed_after + learned_after))
        for mode in ("ingestion", "event"):
            a = base.get_historical_features(lf, service="fraud_detection", mode=mode)
            b = fs.get_historical_features(lf, service="fraud_detection", mode=mode)
            if mode == "ingestion":
                pd.testing.assert_frame_equal(a, b)
            else:  # events timed before t but learned later are history: event mode must see them
                col = "user_txn_stats__txn_count_1h"
                generated = [u or 1 for u, _, _ in rows]
                for i, (u, _, _) in enumerate(rows):
                    if u is not None:
                        assert b[col].iloc[i] == a[col].iloc[i] + 3 * generated.count(u), (t, u)


def test_label_errors_are_clear(tmp_path_factory):
    fs = fresh_store(tmp_path_factory)
    with pytest.raises(TrainingSetError, match="lack columns.*merchant_id"):
        fs.get_historical_features(pd.DataFrame({"user_id": [1], "event_time": [pd.Timestamp.now(tz="UTC")]}),
                                   service="fraud_detection")
    with pytest.raises(TrainingSetError, match="unparseable event_time"):
        fs.get_historical_features(pd.DataFrame({"user_id": [1], "merchant_id": [1], "event_time": ["yesterday"]}),
                                   service="fraud_detection")
    with pytest.raises(TrainingSetError, match="user_id that is not a valid key.*'abc'"):
        fs.get_historical_features(pd.DataFrame({"user_id": ["abc"], "merchant_id": [1], "event_time": ["2026-01-01"]}),
                                   service="fraud_detection")
    with pytest.raises(TrainingSetError, match="mode must be"):
        fs.get_historical_features(labels_frame([(1, 1, BASE)]), service="fraud_detection", mode="wall")


def test_empty_labels_give_empty_frame_with_columns(tmp_path_factory):
    fs = fresh_store(tmp_path_factory)
    got = fs.get_historical_features(labels_frame([]), service="fraud_detection")
    assert len(got) == 0
    assert "user_txn_stats__txn_count_1h" in got.columns


def test_cli_and_python_api_give_the_same_frame(tmp_path):
    """`feature-platform training-set` writes exactly what FeatureStore.get_historical_features returns."""
    import subprocess
    import sys

    from feature_platform.offline.demo_data import generate_demo_data

    data = tmp_path / "data"
    demo = generate_demo_data(data / "demo", days=3, users=50, merchants=10, events=3000, seed=3, end=date(2026, 3, 5))
    fs = FeatureStore(Settings(data_dir=data, redis_url=None))
    fs.ingest("transactions", demo.events_path)
    env = {"FP_DATA_DIR": str(data), "PATH": "/usr/bin:/bin"}
    for mode in ("ingestion", "event"):
        out = tmp_path / f"ts_{mode}.parquet"
        p = subprocess.run([sys.executable, "-m", "feature_platform.cli", "training-set", "--labels", str(demo.labels_path),
                            "--service", "fraud_detection", "--mode", mode, "--out", str(out)],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        from_cli = pd.read_parquet(out)
        from_api = fs.get_historical_features(pd.read_parquet(demo.labels_path), service="fraud_detection", mode=mode)
        pd.testing.assert_frame_equal(from_cli, from_api)
        assert from_api["user_txn_stats__txn_count_1h"].sum() > 0
