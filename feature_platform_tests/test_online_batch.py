"""Batch rows in the real Redis: TTL boundaries, availability delay, newer-wins, real key expiry."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from feature_platform.online.errors import BadRowsError
from feature_platform.online.layout import from_us
from feature_platform.online.store import OnlineStore
from feature_platform.registry.model import (
    BatchFeature, BatchFeatureView, Column, Dtype, Entity, FeatureRef, Registry, Source,
)

US = 1_000_000
HOUR = 3600 * US
DAY = 24 * HOUR
TS = pa.timestamp("us", tz="UTC")


def today_midnight_us() -> int:
    """A feature_timestamp near the real clock, so the real key TTL (ft + 2 d) lies in the future."""
    return (int(time.time()) * US // DAY) * DAY


def rows(ft: int, users: list[int], count: list, mean: list, distinct: list) -> pa.Table:
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "feature_timestamp": pa.array([ft] * len(users), pa.int64()).cast(TS),
        "txn_count_7d": pa.array(count, pa.int64()),
        "amount_mean_30d": pa.array(mean, pa.float64()),
        "distinct_merchants_30d": pa.array(distinct, pa.int64()),
    })


def values(store: OnlineStore, view, users: list[int], t: int) -> list[tuple]:
    refs = [FeatureRef(view.name, view.version, f) for f in view.feature_names]
    out = store.read(refs, {"user_id": users}, as_of=from_us(t))
    return [tuple(row[r.column].value for r in refs) for row in out.rows]


def ages(store: OnlineStore, view, users: list[int], t: int) -> list:
    out = store.read([FeatureRef(view.name, view.version, "txn_count_7d")], {"user_id": users}, as_of=from_us(t))
    return [row[f"{view.name}__txn_count_7d"].age_seconds for row in out.rows]


def test_ttl_and_availability_boundaries(settings, registry):
    view = registry.view("user_daily_profile")          # delay 2 h, ttl 2 d
    store = OnlineStore.from_settings(settings, registry)
    ft = today_midnight_us()
    prev = ft - DAY
    store.push_batch_rows(view, rows(prev, [1, 2], [3, 4], [1.5, None], [1, 2]), now=from_us(prev + HOUR))
    rep = store.push_batch_rows(view, rows(ft, [1], [30], [15.25], [10]), now=from_us(ft + HOUR))
    assert (rep.rows, rep.written, rep.skipped_older) == (1, 1, 0)
    assert rep.feature_timestamp == from_us(ft)
    delay, ttl = 2 * HOUR, 2 * DAY
    # The new row is written before its availability delay: the previous row is served until then.
    assert values(store, view, [1, 2], ft + delay - 1) == [(3, 1.5, 1), (4, None, 2)]
    assert values(store, view, [1, 2], ft + delay) == [(30, 15.25, 10), (4, None, 2)]
    assert ages(store, view, [1], ft + delay) == [delay / US]
    # The previous row of user 2 ends at prev + ttl = ft + 1 d; nothing newer replaces it.
    assert values(store, view, [2], prev + ttl - 1) == [(4, None, 2)]
    assert values(store, view, [2], prev + ttl) == [(None, None, None)]
    assert ages(store, view, [2], prev + ttl) == [None]
    # Served just before ft + ttl, never at or after.
    assert values(store, view, [1], ft + ttl - 1) == [(30, 15.25, 10)]
    assert values(store, view, [1], ft + ttl) == [(None, None, None)]
    assert values(store, view, [1], ft + ttl + 5 * DAY) == [(None, None, None)]
    # Not before ft + delay of the first row either.
    assert values(store, view, [2], prev + delay - 1) == [(None, None, None)]
    # Key-level TTL ends exactly at the newest feature_timestamp + ttl.
    assert store.client.pexpiretime(store.key(view, 1)) == (ft + ttl) // 1000
    assert store.client.pexpiretime(store.key(view, 2)) == (prev + ttl) // 1000


def test_rows_already_expired_are_skipped(settings, registry):
    view = registry.view("user_daily_profile")
    store = OnlineStore.from_settings(settings, registry)
    ft = today_midnight_us() - 5 * DAY
    rep = store.push_batch_rows(view, rows(ft, [1, 2], [1, 1], [1.0, 1.0], [1, 1]), now=from_us(ft + 2 * DAY))
    assert (rep.written, rep.skipped_older) == (0, 2)
    assert not store.client.exists(store.key(view, 1))


def test_repush_of_an_older_partition_never_rolls_back(settings, registry):
    view = registry.view("user_daily_profile")
    store = OnlineStore.from_settings(settings, registry)
    new = today_midnight_us()
    old = new - DAY
    store.push_batch_rows(view, rows(new, [1], [20], [2.0], [2]), now=from_us(new + HOUR))
    expiry = store.client.pexpiretime(store.key(view, 1))
    # Re-running yesterday's partition (with changed values) after today's was pushed.
    rep = store.push_batch_rows(view, rows(old, [1, 7], [10, 70], [1.0, 7.0], [1, 7]), now=from_us(new + 3 * HOUR))
    assert (rep.written, rep.skipped_older) == (2, 0)
    assert values(store, view, [1], new + 3 * HOUR) == [(20, 2.0, 2)]        # the newer row still wins
    assert values(store, view, [1], new + HOUR) == [(10, 1.0, 1)]            # yesterday's, before today's is due
    assert store.client.pexpiretime(store.key(view, 1)) == expiry            # TTL not lowered
    assert store.client.pexpiretime(store.key(view, 7)) == (old + 2 * DAY) // 1000  # a new key still gets one
    # A partition older than the one sharing its slot (3 slots: new and new - 3 d collide) is refused.
    far = new - 3 * DAY
    rep = store.push_batch_rows(view, rows(far, [1], [99], [9.9], [9]), now=from_us(far + HOUR))
    assert (rep.written, rep.skipped_older) == (0, 1)
    assert values(store, view, [1], new + 3 * HOUR) == [(20, 2.0, 2)]


def test_several_partitions_in_one_push_and_string_bool_values(settings):
    user = Entity("user", "user_id", Dtype.STRING)
    src = Source("s", 1, (user,), (Column("country", Dtype.STRING), Column("ok", Dtype.BOOL)),
                 allowed_lateness=timedelta(0))
    view = BatchFeatureView("prof", 1, user, src, (BatchFeature("top", "max", "country", timedelta(days=1)),
                                                   BatchFeature("any_ok", "max", "ok", timedelta(days=1))),
                            availability_delay=timedelta(hours=1), ttl=timedelta(days=2))
    store = OnlineStore.from_settings(settings, Registry((user,), (src,), (view,), ()))
    ft = today_midnight_us()
    table = pa.table({"user_id": ["u1", "u1", "u2"],
                      "feature_timestamp": pa.array([ft - DAY, ft, ft], pa.int64()).cast(TS),
                      "top": ["DE", "", None], "any_ok": [True, False, None]})
    rep = store.push_batch_rows(view, table, now=from_us(ft + 30 * 60 * US))
    assert (rep.written, rep.skipped_older) == (3, 0)
    refs = [FeatureRef("prof", 1, "top"), FeatureRef("prof", 1, "any_ok")]
    out = store.read(refs, {"user_id": ["u1", "u2", "u3"]}, as_of=from_us(ft + HOUR))
    assert [(r["prof__top"].value, r["prof__any_ok"].value) for r in out.rows] == [("", False), (None, None), (None, None)]
    out = store.read(refs, {"user_id": ["u1"]}, as_of=from_us(ft + HOUR - 1))
    assert (out.rows[0]["prof__top"].value, out.rows[0]["prof__any_ok"].value) == ("DE", True)


def test_the_key_really_expires_at_ft_plus_ttl(settings):
    """The one real-clock check: a view whose ttl ends 300 ms from now; its key is gone 0.5 s later."""
    user = Entity("user", "user_id", Dtype.INT64)
    src = Source("s", 1, (user,), (Column("x", Dtype.FLOAT64),), allowed_lateness=timedelta(0))
    ft = today_midnight_us()
    ttl = timedelta(microseconds=int(time.time() * US) - ft + 300_000)
    view = BatchFeatureView("short", 1, user, src, (BatchFeature("n", "count", None, timedelta(days=1)),),
                            availability_delay=timedelta(seconds=1), ttl=ttl)
    store = OnlineStore.from_settings(settings, Registry((user,), (src,), (view,), ()))
    table = pa.table({"user_id": [1], "feature_timestamp": pa.array([ft], pa.int64()).cast(TS), "n": [5]})
    assert store.push_batch_rows(view, table).written == 1
    assert store.client.exists(store.key(view, 1))
    time.sleep(0.5)
    assert not store.client.exists(store.key(view, 1))


def test_bad_rows_are_refused_with_a_clear_message(settings, registry):
    view = registry.view("user_daily_profile")
    store = OnlineStore.from_settings(settings, registry)
    ft = today_midnight_us()
    good = rows(ft, [1], [1], [1.0], [1])
    with pytest.raises(BadRowsError, match=r"missing columns \['txn_count_7d'\]"):
        store.push_batch_rows(view, good.drop(["txn_count_7d"]))
    off = good.set_column(1, "feature_timestamp", pa.array([ft + HOUR], pa.int64()).cast(TS))
    with pytest.raises(BadRowsError, match="not on the view's daily cadence"):
        store.push_batch_rows(view, off)
    with pytest.raises(BadRowsError, match="'user_id'.*null"):
        store.push_batch_rows(view, good.set_column(0, "user_id", pa.array([None], pa.int64())))
    with pytest.raises(BadRowsError, match="cannot be read as"):
        store.push_batch_rows(view, good.set_column(2, "txn_count_7d", pa.array(["many"])))
    with pytest.raises(BadRowsError, match="stream views are written by apply_events"):
        store.push_batch_rows(registry.view("user_txn_stats"), good)


def test_racing_pushes_never_lower_the_key_ttl(settings, registry):
    """Two pushes that both believed they were the newest (a race): with expiry flags the older one's
    PEXPIREAT NX/GT cannot lower the TTL the newer one set."""
    from feature_platform.online.layout import BatchLayout

    view = registry.view("user_daily_profile")
    store = OnlineStore.from_settings(settings, registry)
    if not store.capabilities.expire_flags:
        pytest.skip(f"no PEXPIREAT flags on {store.capabilities.describe()}; the compare-and-set script covers it")
    new = today_midnight_us()
    store.push_batch_rows(view, rows(new, [1], [20], [2.0], [2]), now=from_us(new + HOUR))
    store._push_newest(view, BatchLayout(view), rows(new - DAY, [1, 2], [10, 5], [1.0, 5.0], [1, 5]), new - DAY)
    assert store.client.pexpiretime(store.key(view, 1)) == (new + 2 * DAY) // 1000
    assert store.client.pexpiretime(store.key(view, 2)) == (new + DAY) // 1000   # a new key still gets its TTL
