"""Stream tiles in the real Redis: window reads equal a brute-force computation over random events.

The brute force below shares nothing with feature_platform.online: it re-reads SPEC §1-2 in plain
Python (first delivery stands, too-late never counts, only events ingested before t, the
sawtooth window floor(t/h)*h - W <= event_time < t). Times sit just after the real clock, so no
key-level or dedupe expiry can fire during a test; field expiry is driven by the explicit `now`.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
import redis
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from feature_platform.online.layout import from_us
from feature_platform.online.store import OnlineStore
from feature_platform.registry.model import (
    Aggregation, Column, Dtype, Entity, FeatureRef, FeatureService, Registry, Source, StreamFeatureView,
)

US = 1_000_000
MIN = 60 * US
M = timedelta(minutes=1)

user = Entity("user", "user_id", Dtype.INT64)
shop = Entity("shop", "shop_id", Dtype.STRING)
LATENESS = 10 * MIN
tx = Source("tx", 1, (user, shop), (Column("amount", Dtype.FLOAT64), Column("qty", Dtype.INT64),
                                    Column("tag", Dtype.STRING)), allowed_lateness=timedelta(minutes=10))
AGGS = (
    Aggregation("n_3m", "count", None, 3 * M, M),
    Aggregation("n_amount_2m", "count", "amount", 2 * M, M),
    Aggregation("sum_4m", "sum", "amount", 4 * M, 2 * M),
    Aggregation("mean_4m", "mean", "amount", 4 * M, 2 * M),
    Aggregation("min_qty_3m", "min", "qty", 3 * M, M),
    Aggregation("max_tag_3m", "max", "tag", 3 * M, M),
    Aggregation("max_amount_3m", "max", "amount", 3 * M, M),
    Aggregation("last_amount_10m", "last", "amount", 10 * M, 5 * M),
    Aggregation("last_tag_10m", "last", "tag", 10 * M, 5 * M),
)
user_view = StreamFeatureView("u_stats", 1, user, tx, AGGS)
shop_view = StreamFeatureView("s_stats", 1, shop, tx, (Aggregation("n_4m", "count", None, 4 * M, 2 * M),
                                                    Aggregation("sum_4m", "sum", "amount", 4 * M, 2 * M)))
REGISTRY = Registry((user, shop), (tx,), (user_view, shop_view),
                    (FeatureService("svc", tuple(FeatureRef(v.name, 1, f) for v in (user_view, shop_view)
                                                 for f in v.feature_names)),))
REFS = list(REGISTRY.service("svc").features)


@dataclass(frozen=True)
class Delivery:
    event_id: str
    user_id: int
    shop_id: str
    amount: float | None
    qty: int | None
    tag: str | None
    et: int
    it: int


def base_time() -> int:
    """The next 10-minute boundary after the real clock: tile edges fall on whole minutes from here."""
    now = int(time.time()) * US
    return (now // (10 * MIN) + 1) * 10 * MIN


def events_table(ds: list[Delivery]) -> pa.Table:
    ts = pa.timestamp("us", tz="UTC")
    return pa.table({
        "event_id": pa.array([d.event_id for d in ds], pa.string()),
        "user_id": pa.array([d.user_id for d in ds], pa.int64()),
        "shop_id": pa.array([d.shop_id for d in ds], pa.string()),
        "amount": pa.array([d.amount for d in ds], pa.float64()),
        "qty": pa.array([d.qty for d in ds], pa.int64()),
        "tag": pa.array([d.tag for d in ds], pa.string()),
        "event_time": pa.array([d.et for d in ds], pa.int64()).cast(ts),
        "ingested_at": pa.array([d.it for d in ds], pa.int64()).cast(ts),
        "is_too_late": pa.array([d.it - d.et > LATENESS for d in ds], pa.bool_()),
        "schema_version": pa.array([1] * len(ds), pa.int32()),
    })


# ---- the brute force ---------------------------------------------------------------------------------
def first_deliveries(ds: list[Delivery]) -> list[Delivery]:
    best: dict[str, tuple[int, int, Delivery]] = {}
    for order, d in enumerate(ds):
        if d.event_id not in best or (d.it, order) < best[d.event_id][:2]:
            best[d.event_id] = (d.it, order, d)
    return [b[2] for b in best.values()]


def brute(ds: list[Delivery], view: StreamFeatureView, feature: str, key, t: int):
    """(value, age_seconds) of one feature at t, ingestion mode."""
    a = view.aggregation(feature)
    start = (t // a.hop_us) * a.hop_us - a.window_us
    rows = [d for d in first_deliveries(ds)
            if getattr(d, view.entity.join_key) == key and start <= d.et < t and d.it < t and d.it - d.et <= LATENESS]
    age = (t - max(d.et for d in rows)) / US if rows else None
    vals = [] if a.column is None else [(d.et, d.event_id, getattr(d, a.column)) for d in rows
                                        if getattr(d, a.column) is not None]
    if a.function == "count":
        return (len(rows) if a.column is None else len(vals)), age
    if a.function == "sum":
        return (math.fsum(v for *_, v in vals) if vals else 0.0), age
    if a.function == "mean":
        return (math.fsum(v for *_, v in vals) / len(vals) if vals else None), age
    if a.function == "max":
        return max((v for *_, v in vals), default=None), age
    if a.function == "min":
        return min((v for *_, v in vals), default=None), age
    if a.function == "last":
        return (max(vals)[2] if vals else None), age
    raise AssertionError(a.function)


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def check_reads(store: OnlineStore, ds: list[Delivery], users: list[int], shops: list[str], t: int) -> None:
    out = store.read(REFS, {"user_id": users, "shop_id": shops}, as_of=from_us(t))
    assert len(out.rows) == len(users)
    for row, u, s in zip(out.rows, users, shops):
        for r in REFS:
            view = REGISTRY.view(r.view, r.version)
            key = u if view is user_view else s
            want, want_age = brute(ds, view, r.feature, key, t)
            got = row[r.column]
            assert same(got.value, want), (r.column, key, from_us(t), got, want)
            assert (got.age_seconds is None) == (want_age is None), (r.column, key, got, want_age)
            if want_age is not None:
                assert math.isclose(got.age_seconds, want_age, abs_tol=1e-6), (r.column, got, want_age)


def simulate(store: OnlineStore, ds: list[Delivery], as_ofs: list[int], rng: random.Random) -> None:
    """The stream worker at each as_of: apply what was ingested before it (in random batches), then read."""
    pending = sorted(ds, key=lambda d: d.it)
    users = sorted({d.user_id for d in ds}) + [999]
    shops = [rng.choice(["a", "b", "zz"]) for _ in users]
    for t in sorted(as_ofs):
        ready = [d for d in pending if d.it < t]
        pending = [d for d in pending if d.it >= t]
        while ready:
            cut = rng.randint(1, len(ready))
            batch = ready[:cut]
            ready = ready[cut:]
            store.apply_events("tx", events_table(batch), now=from_us(t))
            if rng.random() < 0.3:  # a replay after a crash changes nothing
                store.apply_events("tx", events_table(batch), now=from_us(t))
        check_reads(store, ds, users, shops, t)


def make_store(settings, sub: str, **kw) -> OnlineStore:
    store = OnlineStore.from_settings(replace(settings, key_prefix=f"{settings.key_prefix}:{sub}"), REGISTRY, **kw)
    for v in (user_view, shop_view):
        store.mark_materialized(v)   # what the stream worker does when it starts
    return store


# ---- tests -----------------------------------------------------------------------------------------
delivery = st.tuples(
    st.integers(0, 7),                                   # event id number (collisions = re-deliveries)
    st.integers(1, 3),                                   # user
    st.sampled_from(["a", "b"]),                         # shop
    st.one_of(st.none(), st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 3))),
    st.one_of(st.none(), st.integers(-5, 5)),
    st.one_of(st.none(), st.sampled_from(["", "x", "y", "ä", "Z"])),
    st.one_of(st.integers(0, 40).map(lambda m: m * MIN),            # on a tile edge
              st.sampled_from([90 * US, 150 * US]),                 # ties on event_time
              st.integers(0, 40 * 60).map(lambda s: s * US)),       # anywhere
    st.one_of(st.just(0), st.integers(0, 15 * 60).map(lambda s: s * US)),  # ingestion delay (> 10 min = too late)
)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(delivery, min_size=1, max_size=25),
       as_of_offsets=st.lists(st.one_of(st.integers(1, 60).map(lambda m: m * MIN),
                                        st.integers(1, 3600).map(lambda s: s * US)), min_size=1, max_size=4),
       seed=st.integers(0, 2**16))
def test_window_reads_equal_brute_force(settings, raw, as_of_offsets, seed):
    base = base_time()
    ds, first_et = [], {}
    for n, u, s, amt, q, tag, et, delay in raw:
        # A re-delivery (same event_id) is the same event: same key and event_time, maybe another
        # payload and a later ingestion (the first delivery must stand, with its payload).
        u, s, et = first_et.setdefault(n, (u, s, et))
        ds.append(Delivery(f"e{n}", u, s, amt, q, tag, base + et, base + et + delay))
    store = make_store(settings, uuid.uuid4().hex[:8], force_fallback=True)
    simulate(store, ds, [base + o for o in as_of_offsets], random.Random(seed))


def test_late_duplicate_and_too_late_events_by_hand(settings):
    base = base_time()
    ds = [
        Delivery("a", 1, "a", 5.0, 1, "x", base + 1 * MIN, base + 1 * MIN),
        Delivery("a", 1, "a", 500.0, 9, "z", base + 1 * MIN, base + 2 * MIN),        # duplicate: ignored
        Delivery("b", 1, "a", None, None, None, base + 2 * MIN, base + 2 * MIN),      # null payload: count only
        Delivery("c", 1, "a", 7.0, 3, "y", base + 90 * US, base + 9 * MIN),           # late (in lateness): own tile
        Delivery("d", 1, "a", 100.0, -4, "zz", base + 2 * MIN, base + 13 * MIN),      # too late: never
        Delivery("e", 1, "a", 1.0, 2, "a", base + 2 * MIN, base + 2 * MIN + US),      # same et as b: id breaks ties
        Delivery("g", 2, "b", 8.0, 1, "g", base + 5 * MIN, base + 5 * MIN),           # tie on event_time: the
        Delivery("f", 2, "b", 9.0, 1, "f", base + 5 * MIN, base + 6 * MIN),           # greater id wins, not the later
    ]
    store = make_store(settings, "hand", force_fallback=True)
    simulate(store, ds, [base + 2 * MIN, base + 3 * MIN, base + 10 * MIN, base + 14 * MIN, base + 20 * MIN],
             random.Random(1))
    # Spot values, computed by hand from the list above, at t = base + 14 min (everything but 'd' counts).
    out = store.read(REFS, {"user_id": [1], "shop_id": ["a"]}, as_of=from_us(base + 14 * MIN)).rows[0]
    assert out["u_stats__last_amount_10m"].value == 1.0      # 'e' at 2:00 beats 'b' (null) and 'c' (1:30)
    assert out["u_stats__n_3m"].value == 0                    # window [11 min, 14 min) is empty
    out = store.read(REFS, {"user_id": [2], "shop_id": ["b"]}, as_of=from_us(base + 14 * MIN)).rows[0]
    assert (out["u_stats__last_amount_10m"].value, out["u_stats__last_tag_10m"].value) == (8.0, "g")


def test_demo_views_against_brute_force(settings, registry):
    """The real demo windows (1m..1d hops, 7 d last) on random events around the real clock."""
    rng = random.Random(7)
    base = base_time()
    view = registry.view("user_txn_stats")
    ds = []
    for i in range(300):
        amount = rng.choice([None, round(rng.uniform(1, 500), 2)])
        if ds and rng.random() < 0.15:   # a re-delivery of an earlier event, maybe with another payload
            d = rng.choice(ds)
            ds.append(replace(d, amount=amount, it=d.it + rng.choice([0, 10 * US, 20 * MIN])))
            continue
        et = base + rng.randrange(0, 3 * 3600) * US
        it = et + rng.choice([0, 0, 5 * US, 30 * MIN, 61 * MIN])
        ds.append(Delivery(f"ev{i}", rng.randint(1, 4), "x", amount, None, None, et, it))
    tbl = events_table(ds).drop(["shop_id", "qty", "tag", "is_too_late"])
    tbl = tbl.append_column("merchant_id", pa.array([7] * len(ds), pa.int64()))
    tbl = tbl.append_column("country", pa.array(["DE"] * len(ds), pa.string()))
    tbl = tbl.append_column("is_too_late", pa.array([d.it - d.et > 60 * MIN for d in ds], pa.bool_()))
    store = OnlineStore.from_settings(settings, registry, force_fallback=True)
    store.mark_materialized(view)
    order = sorted(range(len(ds)), key=lambda i: ds[i].it)
    applied = 0
    for t in [base + 20 * MIN, base + 95 * MIN + 30 * US, base + 3 * 3600 * US, base + 5 * 3600 * US]:
        idx = [i for i in order[applied:] if ds[i].it < t]
        applied += len(idx)
        store.apply_events("transactions", tbl.take(idx), now=from_us(t))
        refs = [FeatureRef(view.name, 1, f) for f in view.feature_names]
        out = store.read(refs, {"user_id": [1, 2, 3, 4, 5]}, as_of=from_us(t))
        for row, u in zip(out.rows, [1, 2, 3, 4, 5]):
            for r in refs:
                a = view.aggregation(r.feature)
                start = (t // a.hop_us) * a.hop_us - a.window_us
                rows = [d for d in first_deliveries(ds) if d.user_id == u and start <= d.et < t and d.it < t
                        and d.it - d.et <= 60 * MIN]
                vals = [(d.et, d.event_id, d.amount) for d in rows if d.amount is not None]
                want = {"count": len(rows), "sum": math.fsum(v for *_, v in vals) if vals else 0.0,
                        "mean": math.fsum(v for *_, v in vals) / len(vals) if vals else None,
                        "max": max((v for *_, v in vals), default=None),
                        "last": max(vals)[2] if vals else None}[a.function]
                assert same(row[r.column].value, want), (r.column, u, from_us(t), row[r.column], want)


def test_apply_is_idempotent_and_counts(settings):
    base = base_time()
    ds = [Delivery(f"e{i % 3}", 1, "a", float(i), i, "t", base + i * MIN, base + i * MIN + (11 * MIN if i == 4 else 0))
          for i in range(5)]
    store = make_store(settings, "idem", force_fallback=True)
    rep = store.apply_events("tx", events_table(ds), now=from_us(base + 5 * MIN))
    # e0, e1, e2 are new; i=3 (e0) and i=4 (e1, too late) are a duplicate and a too-late one
    assert (rep.events, rep.applied, rep.duplicates, rep.too_late) == (5, 3, 1, 1)
    client = store.client
    keys = [store.key(user_view, 1), store.key(shop_view, "a")]
    before = {k: client.hgetall(k) for k in keys}
    assert all(before.values())
    rep2 = store.apply_events("tx", events_table(ds), now=from_us(base + 5 * MIN))
    assert (rep2.applied, rep2.duplicates, rep2.too_late) == (0, 4, 1)
    assert {k: client.hgetall(k) for k in keys} == before


def test_fallback_field_expiry(settings):
    """Forced fallback: an expired tile is never served and is deleted by the next write to its hash."""
    base = base_time()
    store = make_store(settings, "fallback", force_fallback=True)
    assert not store.native_field_ttl
    early = Delivery("e1", 1, "a", 2.0, 1, "x", base, base)
    store.apply_events("tx", events_table([early]), now=from_us(base + US))
    key = store.key(user_view, 1)
    hop1 = f"60:{base // MIN}"          # tile k of the 1-minute hop: expires at (k+1)*1m + 3m + 10m
    assert store.client.hexists(key, hop1)
    expiry = base + MIN + 3 * MIN + LATENESS
    gc = int(store.client.hget(key, "_gc"))
    assert gc == expiry                # the earliest expiry in the hash: the 1-minute tile
    # Just before its expiry the tile is still kept; at its expiry a write sweeps it away.
    later = Delivery("e2", 1, "a", 3.0, 1, "x", base + 12 * MIN, base + 12 * MIN)
    store.apply_events("tx", events_table([later]), now=from_us(expiry - 1))
    assert store.client.hexists(key, hop1)
    last = Delivery("e3", 1, "a", 4.0, 1, "x", base + 13 * MIN, base + 13 * MIN)
    store.apply_events("tx", events_table([last]), now=from_us(expiry))
    assert not store.client.hexists(key, hop1)
    assert store.client.hexists(key, f"60:{(base + 13 * MIN) // MIN}")
    assert store.client.hexists(key, f"300:{base // (5 * MIN)}")   # the 10-minute last tile lives longer
    assert int(store.client.hget(key, "_gc")) > expiry
    # An event whose every tile has already expired at `now` writes nothing (and is still deduplicated).
    old = Delivery("e4", 2, "b", 1.0, 1, "x", base, base)
    rep = store.apply_events("tx", events_table([old]), now=from_us(base + 60 * MIN))
    assert rep.applied == 1 and rep.tile_writes == 0
    assert not store.client.exists(store.key(user_view, 2))
    # An expired tile that is still physically there (no write has swept it yet) is never served.
    lone = Delivery("e5", 3, "b", 1.0, 1, "x", base, base)
    store.apply_events("tx", events_table([lone]), now=from_us(base + US))
    refs = [FeatureRef("u_stats", 1, "n_3m"), FeatureRef("u_stats", 1, "max_amount_3m")]
    before = store.read(refs, {"user_id": [3]}, as_of=from_us(base + 3 * MIN)).rows[0]
    assert (before["u_stats__n_3m"].value, before["u_stats__max_amount_3m"].value) == (1, 1.0)
    for t in (expiry - 1, expiry, expiry + 10 * MIN):
        out = store.read(refs, {"user_id": [3]}, as_of=from_us(t)).rows[0]
        assert (out["u_stats__n_3m"].value, out["u_stats__max_amount_3m"].value) == (0, None)
        assert out["u_stats__n_3m"].age_seconds is None
    assert store.client.hexists(store.key(user_view, 3), hop1)


def test_native_field_expiry_when_supported(settings):
    store = make_store(settings, "native")
    if not store.capabilities.native_field_ttl:
        pytest.skip(f"server has no hash-field expiry ({store.capabilities.describe()}); the fallback is tested above")
    base = base_time()
    store.apply_events("tx", events_table([Delivery("e1", 1, "a", 2.0, 1, "x", base, base)]), now=from_us(base))
    key = store.key(user_view, 1)
    field = f"60:{base // MIN}"
    ms = store.client.execute_command("HPEXPIRETIME", key, "FIELDS", 1, field)
    assert ms == [(base + MIN + 3 * MIN + LATENESS) // 1000]


def test_bad_events_are_refused_with_the_column(settings):
    store = make_store(settings, "bad")
    good = events_table([Delivery("e1", 1, "a", 2.0, 1, "x", base_time(), base_time())])
    with pytest.raises(Exception, match="missing columns \\['event_id'\\]"):
        store.apply_events("tx", good.drop(["event_id"]))
    with pytest.raises(Exception, match="'user_id'.*null"):
        store.apply_events("tx", good.set_column(1, "user_id", pa.array([None], pa.int64())))
