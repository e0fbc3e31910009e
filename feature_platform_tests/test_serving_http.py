"""The HTTP API through a real uvicorn server on a free loopback port, against real Redis.

Expected values come from reference.py (brute force over the same events in plain Python) and
from the batch rows the test itself pushed, never from the serving code.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feature_platform.feature_store import FeatureStore
from feature_platform.offline.store import event_schema, view_schema
from feature_platform.registry.model import BatchFeatureView
from feature_platform.serving.http import FeaturesResponse
from feature_platform.serving.server import ServerThread
from feature_platform_tests.reference import Ev, close, stream_value

US = 1_000_000
DAY_US = 86_400 * US
USERS = [42, 43, 44]
MERCHANTS = [7, 8]


def to_us(dt: datetime) -> int:
    return int(round(dt.timestamp() * US))


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // US, tz=timezone.utc) + timedelta(microseconds=us % US)


@dataclass
class World:
    """What the test pushed: raw events, batch rows, and the instant the answers are computed at."""

    events: list[Ev]
    batch: dict[int, dict[str, Any]]   # user_id -> pushed row values
    ft_us: int                          # feature_timestamp of the pushed batch rows
    as_of: datetime


def make_events(now_us: int, seed: int = 5) -> list[Ev]:
    rng = random.Random(seed)
    out = []
    for i in range(60):
        # Mostly inside the last 3 hours (1 min .. 24 h windows), some days back (the 7-day `last_amount`).
        age = rng.randint(2 * US, 3 * 3600 * US) if i < 50 else rng.randint(1 * DAY_US, 5 * DAY_US)
        et = now_us - age
        out.append(Ev(event_id=f"e{i}", user_id=rng.choice(USERS), merchant_id=rng.choice(MERCHANTS),
                      amount=round(rng.uniform(1, 500), 2), country=rng.choice(["DE", "FR"]),
                      et=et, it=min(et + rng.randint(0, 20 * US), now_us - US)))
    return out


def events_table(events: list[Ev], fs: FeatureStore) -> pa.Table:
    schema = event_schema(fs.registry.source("transactions"))
    return pa.table({
        "event_id": [e.event_id for e in events],
        "user_id": [e.user_id for e in events],
        "merchant_id": [e.merchant_id for e in events],
        "amount": [e.amount for e in events],
        "country": [e.country for e in events],
        "event_time": [from_us(e.et) for e in events],
        "ingested_at": [from_us(e.it) for e in events],
        "is_too_late": [False] * len(events),
        "schema_version": [1] * len(events),
    }, schema=schema)


def batch_table(view: BatchFeatureView, ft_us: int, rows: dict[int, dict[str, Any]]) -> pa.Table:
    users = sorted(rows)
    cols: dict[str, list] = {"user_id": users, "feature_timestamp": [from_us(ft_us)] * len(users)}
    for f in view.feature_names:
        cols[f] = [rows[u][f] for u in users]
    return pa.table(cols, schema=view_schema(view))


def load_world(fs: FeatureStore, seed: int = 5) -> World:
    now = datetime.now(timezone.utc)
    now_us = to_us(now)
    events = make_events(now_us, seed)
    fs.online.apply_events("transactions", events_table(events, fs), now=now)
    view = fs.registry.view("user_daily_profile")
    # Yesterday's midnight: available (ft + 2 h) and alive (ft + 2 d) all of today, whatever the hour.
    ft_us = (now_us // DAY_US - 1) * DAY_US
    batch = {42: {"txn_count_7d": 12, "amount_mean_30d": 71.25, "distinct_merchants_30d": 3},
             43: {"txn_count_7d": 0, "amount_mean_30d": None, "distinct_merchants_30d": 0}}
    report = fs.online.push_batch_rows(view, batch_table(view, ft_us, batch), now=now)
    assert report.written == len(batch)
    return World(events, batch, ft_us, as_of=now)


def expected(world: World, registry, ref, key: int) -> tuple[Any, float | None]:
    """(value, age_seconds) by brute force: reference.py for stream views, the pushed row for batch."""
    view = registry.view(ref.view, ref.version)
    t = to_us(world.as_of)
    if isinstance(view, BatchFeatureView):
        served = world.ft_us + view.availability_delay_us <= t < world.ft_us + view.ttl_us
        row = world.batch.get(key) if served else None
        return (row[ref.feature], (t - world.ft_us) / US) if row else (None, None)
    value = stream_value(world.events, view, ref.feature, key, t, "ingestion")
    agg = view.aggregation(ref.feature)
    start = (t // agg.hop_us) * agg.hop_us - agg.window_us
    times = [e.et for e in world.events if getattr(e, view.entity.join_key) == key and start <= e.et < t and e.it < t]
    return value, ((t - max(times)) / US if times else None)


def assert_rows_match(body: dict, world: World, registry, refs, entities: dict[str, list]) -> int:
    """Every served value and age equals the brute-force one; returns how many were non-null."""
    resp = FeaturesResponse.model_validate(body)  # the body has the declared, typed shape
    assert resp.features == [r.column for r in refs]
    assert len(resp.rows) == len(next(iter(entities.values())))
    nonnull = 0
    for i, row in enumerate(resp.rows):
        assert row.entities == {k: v[i] for k, v in entities.items()}
        assert list(row.features) == [r.column for r in refs]
        for r in refs:
            key = entities[registry.view(r.view, r.version).entity.join_key][i]
            want, want_age = expected(world, registry, r, key)
            got = row.features[r.column]
            assert close(got.value, want), f"row {i} {r.column}: served {got.value!r}, expected {want!r}"
            if want_age is None:
                assert got.age_seconds is None, f"row {i} {r.column}: age {got.age_seconds}, expected none"
            else:
                assert got.age_seconds is not None and math.isclose(got.age_seconds, want_age, abs_tol=1e-5), (
                    f"row {i} {r.column}: age {got.age_seconds}, expected {want_age}")
            nonnull += want is not None
    return nonnull


@pytest.fixture
def fs(settings, registry) -> FeatureStore:
    return FeatureStore(settings, registry)


@pytest.fixture
def world(fs) -> World:
    return load_world(fs)


@pytest.fixture
def server(fs, world):
    with ServerThread(fs) as s:
        yield s


def post(server: ServerThread, body: Any, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/features", json=body, timeout=30, **kw)


# ---- happy path ------------------------------------------------------------------------------


def test_service_request_serves_the_pushed_values_and_ages(server, fs, world):
    entities = {"user_id": [42, 43, 44, 999_999], "merchant_id": [7, 8, 7, 999_999]}
    r = post(server, {"service": "fraud_detection", "entities": entities, "as_of": world.as_of.isoformat()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["service"] == "fraud_detection"
    assert datetime.fromisoformat(body["as_of"].replace("Z", "+00:00")) == world.as_of
    refs = list(fs.registry.service("fraud_detection").features)
    nonnull = assert_rows_match(body, world, fs.registry, refs, entities)
    assert nonnull >= 20  # the data really reached the answer, not just nulls matching nulls
    # Entity 999999 has nothing online: zero counts and sums, nulls elsewhere, no age.
    last = body["rows"][3]["features"]
    assert last["user_txn_stats__txn_count_1h"] == {"value": 0, "age_seconds": None}
    assert last["user_daily_profile__txn_count_7d"] == {"value": None, "age_seconds": None}


def test_explicit_features_in_request_order_with_string_ids(server, fs, world):
    features = ["user_daily_profile:v1:amount_mean_30d", "user_txn_stats:v1:txn_count_10m",
                "user_txn_stats:v1:last_amount"]
    entities = {"user_id": [43, 42]}
    # Integer keys sent as decimal strings are accepted and typed by the registry (user_id is int64).
    r = post(server, {"features": features, "entities": {"user_id": ["43", "42"]}, "as_of": world.as_of.isoformat()})
    assert r.status_code == 200, r.text
    refs = fs.registry.resolve(features)
    assert_rows_match(r.json(), world, fs.registry, refs, entities)
    assert r.json()["service"] is None


def test_http_answer_equals_python_api(server, fs, world):
    entities = {"user_id": [42, 44], "merchant_id": [8, 7]}
    r = post(server, {"service": "fraud_detection", "entities": entities, "as_of": world.as_of.isoformat()})
    py = fs.get_online_features(entities=entities, service="fraud_detection", as_of=world.as_of)
    served = [{c: (v["value"], v["age_seconds"]) for c, v in row["features"].items()} for row in r.json()["rows"]]
    assert served == [{c: (fv.value, fv.age_seconds) for c, fv in row.items()} for row in py.rows]


def test_registry_endpoint_lists_versions_fingerprints_and_pins(server, registry):
    doc = httpx.get(f"{server.url}/v1/registry").json()
    views = {(v["name"], v["version"]): v for v in doc["views"]}
    assert set(views) == {(v.name, v.version) for v in registry.views}
    for v in registry.views:
        assert views[(v.name, v.version)]["fingerprint"] == v.fingerprint()
        assert views[(v.name, v.version)]["features"] == list(v.feature_names)
    svc = {s["name"]: s for s in doc["services"]}["fraud_detection"]
    assert svc["pinned_versions"] == {"user_txn_stats": 1, "merchant_txn_stats": 1, "user_daily_profile": 1}
    assert svc["features"] == [str(f) for f in registry.service("fraud_detection").features]
    assert {e["join_key"]: e["dtype"] for e in doc["entities"]} == {"user_id": "int64", "merchant_id": "int64"}
    assert [s["name"] for s in doc["sources"]] == ["transactions"]


def test_healthz_ok(server):
    r = httpx.get(f"{server.url}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


# ---- bad input -------------------------------------------------------------------------------

BAD = [
    ({"service": "nope", "entities": {"user_id": [1]}}, 404, "unknown_service", "'nope'"),
    ({"features": ["user_txn_stats:v1:nope"], "entities": {"user_id": [1]}}, 404, "unknown_feature", "'nope'"),
    ({"features": ["user_txn_stats:v7:txn_count_1h"], "entities": {"user_id": [1]}}, 404, "unknown_feature",
     "no version 7"),
    ({"features": ["txn_count_1h"], "entities": {"user_id": [1]}}, 404, "unknown_feature", "view:vN:feature"),
    ({"service": "fraud_detection", "entities": {"user_id": [1]}}, 422, "missing_entity_key", "merchant_id"),
    ({"service": "fraud_detection", "entities": {"user_id": [1, 2], "merchant_id": [3]}}, 422, "unequal_lengths",
     "'user_id': 2, 'merchant_id': 1"),
    ({"service": "fraud_detection", "entities": {"user_id": ["abc"], "merchant_id": [3]}}, 422, "bad_entity_value",
     "entities.user_id[0]"),
    ({"service": "fraud_detection", "entities": {"user_id": [1, 2.5], "merchant_id": [3, 4]}}, 422,
     "bad_entity_value", "entities.user_id[1]"),
    ({"service": "fraud_detection", "entities": {"user_id": [1], "merchant_id": [True]}}, 422, "bad_entity_value",
     "merchant_id"),
    ({"service": "fraud_detection", "entities": {"user_id": [2**63], "merchant_id": [1]}}, 422, "bad_entity_value",
     "int64 range"),
    ({"service": "fraud_detection", "entities": {"user_id": [1], "merchant_id": [1], "userid": [1]}}, 422,
     "unknown_entity_key", "'userid'"),
    ({"service": "fraud_detection", "entities": {"user_id": [], "merchant_id": []}}, 422, "bad_entities", "empty"),
    ({"service": "fraud_detection", "entities": {"user_id": 1, "merchant_id": [1]}}, 422, "invalid_request",
     "entities.user_id"),
    ({"service": "fraud_detection"}, 422, "invalid_request", "entities: required field is missing"),
    ({"service": "fraud_detection", "features": ["user_txn_stats:v1:txn_count_1h"], "entities": {"user_id": [1]}},
     422, "bad_request", "not both"),
    ({"entities": {"user_id": [1]}}, 422, "bad_request", "'service'"),
    ({"service": "fraud_detection", "entity": {"user_id": [1]}, "entities": {"user_id": [1], "merchant_id": [1]}},
     422, "invalid_request", "entity: unknown field"),
    ({"service": "fraud_detection", "entities": {"user_id": [1], "merchant_id": [1]}, "as_of": "yesterday"}, 422,
     "invalid_request", "as_of"),
]


@pytest.mark.parametrize("body,status,kind,fragment", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_4xx_that_say_what_to_fix(server, body, status, kind, fragment):
    r = post(server, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["error"] == kind
    assert fragment in err["message"], err["message"]


@pytest.mark.parametrize("content,headers,kind,fragment", [
    (b'{"service": "fraud_detection", "entities": {"user_id": [1]', {"content-type": "application/json"},
     "malformed_json", "not valid JSON"),
    (b"", {"content-type": "application/json"}, "invalid_request", "body is empty"),
    (b'[1, 2]', {"content-type": "application/json"}, "invalid_request", "JSON object"),
    (b'"fraud_detection"', {}, "invalid_request", "JSON object"),
    (b'{"service": "fraud_detection"}', {"content-type": "text/plain"}, "invalid_request", "Content-Type"),
])
def test_malformed_bodies(server, content, headers, kind, fragment):
    r = httpx.post(f"{server.url}/v1/features", content=content, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"] == kind and fragment in r.json()["message"], r.text


def test_version_never_materialized_is_a_clear_409(settings, registry, tmp_path):
    # A fresh key prefix where nothing was ever pushed: reading must say so, not return nulls.
    from dataclasses import replace

    empty = FeatureStore(replace(settings, key_prefix=settings.key_prefix + ":empty"), registry)
    with ServerThread(empty) as s:
        r = post(s, {"features": ["user_daily_profile:v1:txn_count_7d"], "entities": {"user_id": [42]}})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "not_materialized"
    assert "never been materialized" in r.json()["message"] and "user_daily_profile" in r.json()["message"]


# ---- metrics ---------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_errors_and_served_ages(server, fs, world):
    entities = {"user_id": [42, 43, 44], "merchant_id": [7, 8, 8]}
    ok = [post(server, {"service": "fraud_detection", "entities": entities, "as_of": world.as_of.isoformat()})
          for _ in range(3)]
    assert all(r.status_code == 200 for r in ok)
    assert post(server, {"service": "nope", "entities": {"user_id": [1]}}).status_code == 404
    assert post(server, {"service": "fraud_detection", "entities": {"user_id": [1]}}).status_code == 422
    m = _samples(httpx.get(f"{server.url}/metrics").text)

    ep = (("endpoint", "/v1/features"),)
    assert m[("fp_http_request_duration_seconds_count", ep)] == 5
    assert m[("fp_http_requests_total", (("endpoint", "/v1/features"), ("status", "200")))] == 3
    assert m[("fp_http_errors_total", (("kind", "unknown_service"),))] == 1
    assert m[("fp_http_errors_total", (("kind", "missing_entity_key"),))] == 1
    assert m[("fp_served_rows_total", (("service", "fraud_detection"),))] == 9

    # Served ages per view: count and sum equal what the three answers carried (recomputed here).
    for view in ("user_txn_stats", "merchant_txn_stats", "user_daily_profile"):
        ages = [v["age_seconds"] for r in ok for row in r.json()["rows"] for c, v in row["features"].items()
                if c.startswith(view + "__")]
        present = [a for a in ages if a is not None]
        lab = (("version", "1"), ("view", view))
        assert m[("fp_served_feature_age_seconds_count", lab)] == len(present)
        assert math.isclose(m[("fp_served_feature_age_seconds_sum", lab)], sum(present), rel_tol=1e-9)
        assert m[("fp_served_feature_age_seconds_bucket", (("le", "+Inf"),) + lab)] == len(present)
        le_hour = m[("fp_served_feature_age_seconds_bucket", (("le", "3600.0"),) + lab)]
        assert le_hour == sum(a <= 3600.0 for a in present)
        nulls = len(ages) - len(present)
        assert m.get(("fp_served_features_null_total", lab), 0) == nulls


# ---- Redis down and back ---------------------------------------------------------------------


def test_redis_down_gives_503_and_the_server_recovers_without_restart(private_settings, private_redis, registry):
    fs = FeatureStore(private_settings, registry)
    world = load_world(fs, seed=9)
    entities = {"user_id": [42, 43], "merchant_id": [7, 8]}
    body = {"service": "fraud_detection", "entities": entities, "as_of": world.as_of.isoformat()}
    refs = list(registry.service("fraud_detection").features)
    with ServerThread(fs) as s:
        r = post(s, body)
        assert r.status_code == 200, r.text
        assert_rows_match(r.json(), world, fs.registry, refs, entities)

        private_redis.stop()
        for _ in range(2):  # the pooled connection dies first, then fresh connects are refused
            r = post(s, body)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "redis_unavailable"
            assert "Redis" in r.json()["message"]
        h = httpx.get(f"{s.url}/healthz")
        assert h.status_code == 503 and h.json()["error"] == "redis_unavailable"
        # Bad input is still judged without Redis: a 4xx, not a 503.
        assert post(s, {"service": "nope", "entities": {"user_id": [1]}}).status_code == 404

        private_redis.start()  # same port, empty (no persistence): push the data again
        assert httpx.get(f"{s.url}/healthz").status_code == 200
        world = load_world(fs, seed=9)
        body["as_of"] = world.as_of.isoformat()
        r = post(s, body)
        assert r.status_code == 200, r.text
        assert_rows_match(r.json(), world, fs.registry, refs, entities)
        m = _samples(httpx.get(f"{s.url}/metrics").text)
        assert m[("fp_http_errors_total", (("kind", "redis_unavailable"),))] == 3


def test_a_read_waiting_on_redis_does_not_block_other_requests(private_settings, private_redis, registry):
    """CLIENT PAUSE (on the private server only) holds every Redis reply: feature reads wait, but the
    event loop is free, so endpoints that do not need Redis still answer in the meantime."""
    import redis
    from concurrent.futures import ThreadPoolExecutor

    fs = FeatureStore(private_settings, registry)
    world = load_world(fs, seed=3)
    body = {"service": "fraud_detection", "entities": {"user_id": [42], "merchant_id": [7]},
            "as_of": world.as_of.isoformat()}
    with ServerThread(fs) as s, ThreadPoolExecutor(4) as pool:
        assert post(s, body).status_code == 200
        redis.Redis.from_url(private_redis.url).execute_command("CLIENT", "PAUSE", 1500, "ALL")
        reads = [pool.submit(post, s, body) for _ in range(3)]
        reg = httpx.get(f"{s.url}/v1/registry", timeout=30)
        assert reg.status_code == 200
        assert not any(f.done() for f in reads), "the reads should still be waiting for the paused Redis"
        assert [f.result().status_code for f in reads] == [200, 200, 200]


def test_fastapi_route_and_fast_path_give_the_same_answers(server, fs, world):
    """POST /v1/features is answered by ServingApp's fast path; the FastAPI route behind it (kept for
    OpenAPI and as fallback) must answer identically, errors included."""
    import asyncio

    from fastapi import FastAPI

    from feature_platform.serving.http import create_app

    app = create_app(fs)

    async def via_fastapi(body: dict) -> httpx.Response:
        transport = httpx.ASGITransport(app=lambda s, r, se: FastAPI.__call__(app, s, r, se))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post("/v1/features", json=body)

    bodies = [
        {"service": "fraud_detection", "entities": {"user_id": [42, 43], "merchant_id": [7, 8]},
         "as_of": world.as_of.isoformat()},
        {"service": "fraud_detection", "entities": {"user_id": ["x"], "merchant_id": [7]}},
        {"service": "nope", "entities": {"user_id": [1]}},
    ]
    for body in bodies:
        fast = post(server, body)
        slow = asyncio.run(via_fastapi(body))
        assert (slow.status_code, slow.json()) == (fast.status_code, fast.json())
    assert "/v1/features" in app.openapi()["paths"]
    schema = app.openapi()["paths"]["/v1/features"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"service", "features", "entities", "as_of"}


def test_metrics_carry_the_stream_worker_state(server):
    """Issue 4: worker heartbeat, lag and event counts are in /metrics, read from Redis at scrape time."""
    m = _samples(httpx.get(f"{server.url}/metrics").text)
    src = (("source", "transactions"),)
    assert m[("fp_stream_up", src)] == 1
    assert m[("fp_stream_worker_running", src)] == 0, "no worker runs in this test"
    assert m[("fp_stream_events_total", (("kind", "dead_letter"), ("source", "transactions")))] == 0
