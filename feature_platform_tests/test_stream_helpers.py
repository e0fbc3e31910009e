"""Shared pieces of the streaming tests (no tests here): a random event log, a worker subprocess,
and the three readings of the same events that must agree — online tiles, the offline
`ingestion`-mode training set over the archive, and a brute-force Python computation over the
stream entries themselves (feature_platform_tests/reference.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import redis

from feature_platform.config import Settings
from feature_platform.offline.store import OfflineStore
from feature_platform.offline.training import get_historical_features
from feature_platform.registry import Registry, StreamFeatureView, all_features
from feature_platform_tests import reference as ref

BAD_PREFIX = "bad-"


@dataclass
class EventLog:
    table: pa.Table          # every column a string, as a producer would send it
    users: list[int]
    merchants: list[int]
    invalid: int
    duplicates: int


def random_log(seed: int, n: int, users: int = 25, merchants: int = 8, now: datetime | None = None) -> EventLog:
    """Events timed over the last two hours (most recent, some late, some too late for the 1 h lateness),
    some delivered twice with a different payload, some null amounts, a few invalid rows."""
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    rows: list[dict] = []
    for i in range(n):
        u = rng.random()
        if u < 0.7:
            age = rng.uniform(0, 50 * 60)          # on time (some arrive after their 1-min tile closed: late)
        elif u < 0.85:
            age = rng.uniform(50 * 60, 59 * 60)    # late but inside the allowed hour
        else:
            age = rng.uniform(61 * 60, 120 * 60)   # too late
        et = now - timedelta(seconds=age)
        amount = None if rng.random() < 0.05 else f"{rng.uniform(1, 500):.2f}"
        rows.append({"event_id": f"ev-{seed}-{i}", "user_id": str(rng.randrange(users)),
                     "merchant_id": str(rng.randrange(merchants)), "amount": amount,
                     "country": rng.choice(["DE", "FR", "US"]), "event_time": et.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
    rng.shuffle(rows)  # out of event-time order
    dups = rng.sample(rows, k=max(1, n // 20))
    for d in dups:  # a re-delivery later in the stream, with another payload: the first one must stand
        again = dict(d, amount=f"{rng.uniform(1000, 2000):.2f}")
        rows.insert(rng.randrange(rows.index(d) + 1, len(rows) + 1), again)
    bad = [
        {"event_id": f"{BAD_PREFIX}1", "user_id": "abc", "merchant_id": "1", "amount": "1.0", "country": "DE",
         "event_time": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
        {"event_id": f"{BAD_PREFIX}2", "user_id": "1", "merchant_id": "1", "amount": "1.0", "country": "DE",
         "event_time": "yesterday"},
        {"event_id": f"{BAD_PREFIX}3", "user_id": "2", "merchant_id": None, "amount": "x", "country": "DE",
         "event_time": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
    ]
    for b in bad:
        rows.insert(rng.randrange(len(rows) + 1), b)
    cols = ["event_id", "user_id", "merchant_id", "amount", "country", "event_time"]
    table = pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in cols})
    return EventLog(table, list(range(users)), list(range(merchants)), len(bad), len(dups))


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FP_DATA_DIR=str(settings.data_dir), FP_REDIS_URL=settings.redis_url or "",
               FP_KEY_PREFIX=settings.key_prefix, FP_REGISTRY="feature_platform.registry.demo:build_registry")
    env.pop("FP_STREAM_CRASH_AT", None)
    env.update(extra)
    return env


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "feature_platform.cli", "stream", "run", "--consumer", "w1", *args]


def run_worker_until_idle(settings: Settings, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_cmd("--until-idle", *args), env=worker_env(settings, **env), capture_output=True,
                          text=True, timeout=timeout)


def stream_events(settings: Settings, source: str = "transactions", url: str | None = None) -> list[ref.Ev]:
    """Every valid entry of the stream, read back with its id (ingested_at = the id's millisecond)."""
    r = redis.Redis.from_url(url or settings.redis_url, decode_responses=True)
    out = []
    for entry_id, f in r.xrange(f"{settings.key_prefix}:stream:{source}"):
        if "event" in f:  # the JSON entry format
            f = json.loads(f["event"])
        if f["event_id"].startswith(BAD_PREFIX):
            continue
        it = int(entry_id.split("-")[0]) * 1000
        et_dt = datetime.fromisoformat(f["event_time"].replace("Z", "+00:00"))
        et = (et_dt - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
        out.append(ref.Ev(f["event_id"], int(f["user_id"]), int(f["merchant_id"]),
                          float(f["amount"]) if f.get("amount") not in (None, "") else None, f.get("country"), et, it))
    return out


def brute_force(events: list[ref.Ev], registry: Registry, as_of: datetime, log: EventLog) -> dict:
    t = (as_of - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    evs = ref.dedupe(events)
    out = {}
    for view in registry.views:
        if not isinstance(view, StreamFeatureView):
            continue
        keys = log.users if view.entity.join_key == "user_id" else log.merchants
        for f in view.feature_names:
            out[f"{view.name}__{f}"] = [ref.stream_value(evs, view, f, k, t, "ingestion") for k in keys]
    return out


def online_values(online, registry: Registry, as_of: datetime, log: EventLog) -> dict:
    out = {}
    for view in registry.views:
        if not isinstance(view, StreamFeatureView):
            continue
        keys = log.users if view.entity.join_key == "user_id" else log.merchants
        res = online.read(list(all_features(view)), {view.entity.join_key: keys}, as_of=as_of)
        for f in view.feature_names:
            col = f"{view.name}__{f}"
            out[col] = [row[col].value for row in res.rows]
    return out


def offline_values(settings: Settings, registry: Registry, as_of: datetime, log: EventLog) -> dict:
    store = OfflineStore(settings, registry)
    out = {}
    for view in registry.views:
        if not isinstance(view, StreamFeatureView):
            continue
        keys = log.users if view.entity.join_key == "user_id" else log.merchants
        labels = pa.table({view.entity.join_key: pa.array(keys, pa.int64()),
                           "event_time": pa.array([as_of] * len(keys), pa.timestamp("us", tz="UTC"))})
        table = get_historical_features(store, labels, list(all_features(view)), mode="ingestion")
        for f in view.feature_names:
            col = f"{view.name}__{f}"
            out[col] = table.column(col).to_pylist()
    return out


def assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for col in a:
        bad = [(i, x, y) for i, (x, y) in enumerate(zip(a[col], b[col])) if not ref.close(x, y)]
        assert len(a[col]) == len(b[col]) and not bad, f"{what}: {col} differs at (index, left, right) {bad[:5]}"


def wait_for(predicate, timeout: float = 60, every: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def archive_rows(settings: Settings, registry: Registry) -> list[tuple]:
    """Every archived event as a sorted list of plain tuples."""
    store = OfflineStore(settings, registry)
    from feature_platform.offline.store import connect

    con = connect()
    rows = con.execute(f"SELECT * FROM {store.events_sql('transactions')} ORDER BY event_id").fetchall()
    con.close()
    return rows
