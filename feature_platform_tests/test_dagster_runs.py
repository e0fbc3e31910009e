"""Materialize the real assets in-process (raw -> batch view -> online) on a small hand-made world,
then break things on purpose and watch the matching check fail with the right severity and
metadata, and pass again once repaired. Expected values come from plain Python over the events.

Kept lean: each Dagster run costs ~0.3 s in-process; checks-only runs are cheaper still.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass, replace
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from click.testing import CliRunner

from feature_platform.config import Settings
from feature_platform.defs.definitions import Parts, build_parts
from feature_platform.defs.resources import FeatureStoreResource
from feature_platform.feature_store import FeatureStore
from feature_platform.registry import Registry
from feature_platform.registry.model import BatchFeature

UTC = timezone.utc
TODAY = datetime.now(UTC).date()
DAYS = [TODAY - timedelta(days=i) for i in (4, 3, 2, 1)]
NOW = datetime.combine(TODAY, dtime(6, 0), tzinfo=UTC)  # every check and run sees this clock
H = timedelta(hours=1)


def make_events(seed: int = 7) -> list[dict]:
    """Deliveries: 6 users, 3 merchants, ~40 events a day, 10% too late, a few re-deliveries."""
    rng = random.Random(seed)
    rows = []
    n = 0
    for d in DAYS:
        start = datetime.combine(d, dtime(0), tzinfo=UTC)
        for _ in range(40):
            et = start + timedelta(seconds=rng.randrange(0, 86_400 - 60))
            late = rng.random() < 0.1
            ia = et + (timedelta(hours=2) if late else timedelta(seconds=rng.randrange(0, 120)))
            rows.append({"event_id": f"e{n}", "user_id": rng.randint(1, 6), "merchant_id": rng.randint(1, 3),
                         "amount": None if rng.random() < 0.05 else round(rng.uniform(1, 100), 2),
                         "country": "DE", "event_time": et, "ingested_at": ia})
            n += 1
    for r in rng.sample(rows, 5):  # re-deliveries: same event, later, other payload
        rows.append({**r, "ingested_at": r["ingested_at"] + timedelta(minutes=3), "amount": 999.0})
    return rows


def first_deliveries(rows: list[dict]) -> list[dict]:
    best: dict[str, dict] = {}
    for r in rows:
        if r["event_id"] not in best or r["ingested_at"] < best[r["event_id"]]["ingested_at"]:
            best[r["event_id"]] = r
    return list(best.values())


def too_late(r: dict) -> bool:
    return r["ingested_at"] - r["event_time"] > H


def expected_profile(events: list[dict], day: date) -> dict[int, tuple[int, float | None, int]]:
    """SPEC §5 user_daily_profile for `day`, by brute force: user -> (count 7d, mean 30d, distinct merchants 30d)."""
    ft = datetime.combine(day + timedelta(days=1), dtime(0), tzinfo=UTC)
    out = {}
    for u in sorted({e["user_id"] for e in events}):
        mine = [e for e in events if e["user_id"] == u and not too_late(e) and ft - timedelta(days=30) <= e["event_time"] < ft]
        if not mine:
            continue
        amounts = [e["amount"] for e in mine if e["amount"] is not None]
        out[u] = (sum(1 for e in mine if e["event_time"] >= ft - timedelta(days=7)),
                  statistics.fmean(amounts) if amounts else None, len({e["merchant_id"] for e in mine}))
    return out


def write_events(rows: list[dict], path: Path) -> None:
    ts = pa.timestamp("us", tz="UTC")
    pq.write_table(pa.table({
        "event_id": [r["event_id"] for r in rows], "user_id": pa.array([r["user_id"] for r in rows], pa.int64()),
        "merchant_id": pa.array([r["merchant_id"] for r in rows], pa.int64()),
        "amount": pa.array([r["amount"] for r in rows], pa.float64()), "country": [r["country"] for r in rows],
        "event_time": pa.array([r["event_time"] for r in rows], ts),
        "ingested_at": pa.array([r["ingested_at"] for r in rows], ts)}), path)


@dataclass
class World:
    settings: Settings
    registry: Registry
    parts: Parts
    instance: dg.DagsterInstance
    events: list[dict]  # first deliveries

    def resource(self, now: datetime = NOW) -> FeatureStoreResource:
        return FeatureStoreResource(data_dir=str(self.settings.data_dir), redis_url=self.settings.redis_url,
                                    key_prefix=self.settings.key_prefix, now_override=now.isoformat())

    def run(self, keys: list[str], *, days: list[date] | None = None, now: datetime = NOW, checks: bool = True,
            parts: Parts | None = None, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        parts = parts or self.parts
        sel = dg.AssetSelection.assets(*keys)
        sel = (sel | dg.AssetSelection.checks_for_assets(*keys)) if checks else sel.without_checks()
        tags = {}
        if days and len(days) > 1:
            tags = {"dagster/asset_partition_range_start": days[0].isoformat(),
                    "dagster/asset_partition_range_end": days[-1].isoformat()}
        return dg.materialize(parts.assets + parts.checks, selection=sel, instance=self.instance,
                              partition_key=days[0].isoformat() if days and len(days) == 1 else None,
                              tags=tags, resources={"fp": self.resource(now)}, raise_on_error=raise_on_error)

    def checks(self, asset: str, now: datetime = NOW, parts: Parts | None = None) -> dict[str, dg.AssetCheckEvaluation]:
        """Run only the checks of `asset` (no materialization)."""
        parts = parts or self.parts
        keys = [k for c in parts.checks_of(asset) for k in c.check_keys]
        res = dg.materialize(parts.assets + parts.checks, selection=dg.AssetSelection.checks(*keys),
                             instance=self.instance, resources={"fp": self.resource(now)}, raise_on_error=False)
        return {e.check_name: e for e in res.get_asset_check_evaluations()}


@pytest.fixture
def world(settings: Settings, registry: Registry, tmp_path: Path, monkeypatch) -> World:
    # The checks compare with a lock of the demo registry written here, not the committed one.
    lock = tmp_path / "lock.json"
    monkeypatch.setenv("FP_REGISTRY_LOCK", str(lock))
    from feature_platform.defs.registry_lock import write_lock

    write_lock(registry, lock)
    rows = make_events()
    landing = settings.data_dir / "landing" / "transactions"
    landing.mkdir(parents=True)
    write_events(rows, landing / "drop1.parquet")
    w = World(settings, registry, build_parts(registry), dg.DagsterInstance.ephemeral(), first_deliveries(rows))
    # Ingest through the raw asset (the landing folder), all four days in one run.
    res = w.run(["raw_transactions"], days=DAYS, checks=False)
    assert res.success
    return w


def _md(result: dg.ExecuteInProcessResult, key: str) -> dict:
    (mat,) = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == key][-1:]
    return {k: getattr(v, "value", v) for k, v in mat.materialization.metadata.items()}


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # raised inside dagster's automation tester
def test_raw_batch_online_materialize_and_agree_with_brute_force(world: World) -> None:
    # Raw: the landing file was ingested and moved; per-day metadata matches a plain count.
    landing = world.settings.data_dir / "landing" / "transactions"
    assert not (landing / "drop1.parquet").exists() and (landing / "done" / "drop1.parquet").exists()
    day = DAYS[2]
    raw = world.run(["raw_transactions"], days=[day])
    md = _md(raw, "raw_transactions")
    mine = [e for e in world.events if e["event_time"].date() == day]
    assert md["events"] == len(mine)
    assert md["too_late"] == sum(too_late(e) for e in mine)
    checks = {e.check_name: e for e in raw.get_asset_check_evaluations()}
    for name in ("raw_missing_days", "schema_version", "deadletter_jump"):
        assert checks[name].passed, (name, checks[name].description)

    # The automation sensor's first tick only records state (nothing is requested on it).
    defs = dg.Definitions(assets=world.parts.assets, asset_checks=world.parts.checks,
                          resources={"fp": world.resource()})
    first_tick = dg.evaluate_automation_conditions(defs=defs, instance=world.instance)
    assert first_tick.get_num_requested(dg.AssetKey("user_daily_profile_v1_online")) == 0

    # Batch view over all four days in one run (single-run backfill), checks included.
    batch = world.run(["user_daily_profile_v1"], days=DAYS)
    assert batch.success
    assert _md(batch, "user_daily_profile_v1")["rows"] == sum(len(expected_profile(world.events, d)) for d in DAYS)
    checks = {e.check_name: e for e in batch.get_asset_check_evaluations()}
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
    fs = FeatureStore(world.settings, world.registry)
    view = world.registry.view("user_daily_profile", 1)
    for d in DAYS:
        got = {r["user_id"]: (r["txn_count_7d"], r["amount_mean_30d"], r["distinct_merchants_30d"])
               for r in pq.read_table(fs.offline.view_partition_path(view, d)).to_pylist()}
        exp = expected_profile(world.events, d)
        assert got.keys() == exp.keys()
        for u, (c, m, dm) in exp.items():
            assert got[u][0] == c and got[u][2] == dm
            assert (got[u][1] is None and m is None) or got[u][1] == pytest.approx(m, rel=1e-9)

    # The batch update makes the online push due (declarative automation, evaluated for real).
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=world.instance, cursor=first_tick.cursor)
    assert evaluation.get_num_requested(dg.AssetKey("user_daily_profile_v1_online")) == 1

    online = world.run(["user_daily_profile_v1_online"])
    md = _md(online, "user_daily_profile_v1_online")
    newest = expected_profile(world.events, DAYS[-1])
    assert md["partition"] == DAYS[-1].isoformat()
    assert md["rows_written"] == len(newest)
    assert md["feature_timestamp"] == datetime.combine(TODAY, dtime(0), tzinfo=UTC).timestamp()
    online_checks = {e.check_name: e for e in online.get_asset_check_evaluations()}
    assert online_checks.keys() == {"online_freshness", "online_version"}
    assert all(c.passed for c in online_checks.values()), {n: c.description for n, c in online_checks.items()}
    u = next(iter(newest))
    served = fs.get_online_features(features=["user_daily_profile:v1:txn_count_7d"], entities={"user_id": [u]},
                                    as_of=NOW)
    assert served.rows[0]["user_daily_profile__txn_count_7d"].value == newest[u][0]


def test_skipped_partition_misses_its_deadline_then_passes_when_filled(world: World) -> None:
    gap = DAYS[1]
    for d in DAYS:
        if d != gap:
            assert world.run(["user_daily_profile_v1"], days=[d], checks=False).success
    check = world.checks("user_daily_profile_v1")["partition_deadline"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    md = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
    assert md["missing"] == [gap.isoformat()] and md["missing_days"] == 1
    assert md["latest_due_day"] == DAYS[-1].isoformat()
    assert md["measured_at"] == NOW.timestamp()
    assert world.run(["user_daily_profile_v1"], days=[gap], checks=False).success
    assert world.checks("user_daily_profile_v1")["partition_deadline"].passed


def test_injected_clock_ages_raw_and_online_copies(world: World) -> None:
    newest_event = max(e["event_time"] for e in world.events)
    # Raw events: SLA 1 h. Just inside, then 1 s past it.
    ok = world.checks("raw_transactions", now=newest_event + H)["raw_freshness"]
    assert ok.passed, ok.description
    late = world.checks("raw_transactions", now=newest_event + H + timedelta(seconds=1))["raw_freshness"]
    assert not late.passed and late.severity == dg.AssetCheckSeverity.WARN
    md = {k: getattr(v, "value", v) for k, v in late.metadata.items()}
    assert md["age_seconds"] == 3601 and md["sla_seconds"] == 3600
    assert md["newest_event_time"] == newest_event.timestamp()

    # Online copy: cadence (1 d) + grace (3 h) after its feature_timestamp.
    assert world.run(["user_daily_profile_v1"], days=[DAYS[-1]], checks=False).success
    assert world.run(["user_daily_profile_v1_online"], checks=False).success
    ft = datetime.combine(TODAY, dtime(0), tzinfo=UTC)
    assert world.checks("user_daily_profile_v1_online", now=ft + timedelta(hours=27))["online_freshness"].passed
    stale = world.checks("user_daily_profile_v1_online", now=ft + timedelta(hours=27, seconds=1))["online_freshness"]
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.ERROR
    md = {k: getattr(v, "value", v) for k, v in stale.metadata.items()}
    assert md["sla_seconds"] == 27 * 3600 and md["age_seconds"] == 27 * 3600 + 1
    assert md["online_feature_timestamp"] == ft.timestamp()


def test_events_under_another_schema_version_block_downstream(world: World) -> None:
    fs = FeatureStore(world.settings, world.registry)
    stored = fs.offline.event_files("transactions")[0]
    table = pq.read_table(stored)
    meta = dict(table.schema.metadata)
    meta[b"fp.schema_version"] = b"2"
    rogue = stored.with_name("rogue-v2.parquet")
    pq.write_table(table.replace_schema_metadata(meta), rogue)

    check = world.checks("raw_transactions")["schema_version"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    md = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
    assert md["files_with_other_version"] == 1 and md["registry_schema_version"] == 1
    assert "2" in md["stored_schema_versions"]
    # Blocking: the failed check fails raw's step, so nothing downstream runs on it.
    res = world.run(["raw_transactions"], days=[DAYS[-1]], raise_on_error=False)
    assert not res.success  # the blocking check fails the step
    rogue.unlink()
    assert world.checks("raw_transactions")["schema_version"].passed


def test_definition_changed_without_bump_is_caught_everywhere(world: World, tmp_path: Path, monkeypatch) -> None:
    # Someone edits v1 in place: the 7-day count becomes an 8-day count, version unchanged.
    v1 = world.registry.view("user_daily_profile", 1)
    edited = replace(v1, features=(BatchFeature("txn_count_7d", "count", None, timedelta(days=8)),) + v1.features[1:])
    reg2 = Registry(world.registry.entities, world.registry.sources,
                    tuple(edited if v is v1 else v for v in world.registry.views), world.registry.services)
    parts2 = build_parts(reg2)

    lock_check = world.checks("user_daily_profile_v1", parts=parts2)["definitions_match_lock"]
    assert not lock_check.passed and lock_check.severity == dg.AssetCheckSeverity.ERROR
    md = {k: getattr(v, "value", v) for k, v in lock_check.metadata.items()}
    assert '"lookback": "8d"' in md["diff"] and '"lookback": "7d"' in md["diff"]
    assert world.checks("feature_registry", parts=parts2)["definitions_match_lock"].passed is False
    assert world.checks("feature_registry")["definitions_match_lock"].passed

    # Data written by the edited definition fails the stored-version check of the registered one.
    assert world.run(["user_daily_profile_v1"], days=[DAYS[-1]], checks=False, parts=parts2).success
    stored = world.checks("user_daily_profile_v1")["stored_version"]
    assert not stored.passed and stored.severity == dg.AssetCheckSeverity.ERROR
    # ... and once pushed online, the online copy's fingerprint too.
    assert world.run(["user_daily_profile_v1_online"], checks=False, parts=parts2).success
    online = world.checks("user_daily_profile_v1_online")["online_version"]
    assert not online.passed and online.severity == dg.AssetCheckSeverity.ERROR
    assert {k: getattr(v, "value", v) for k, v in online.metadata.items()}["online_fingerprint"] == edited.fingerprint()
    # The registered definition refuses to push data the edited one wrote.
    assert not world.run(["user_daily_profile_v1_online"], checks=False, raise_on_error=False).success
    # Repair: re-materialize and re-push under the registered definition.
    assert world.run(["user_daily_profile_v1"], days=[DAYS[-1]], checks=False).success
    assert world.checks("user_daily_profile_v1")["stored_version"].passed
    assert world.run(["user_daily_profile_v1_online"], checks=False).success
    assert world.checks("user_daily_profile_v1_online")["online_version"].passed

    # The CLI: `registry check` exits 1 with the diff, `registry diff` shows it, `registry list` flags it.
    import sys

    from feature_platform.cli import main

    module = tmp_path / "edited_repo.py"
    module.write_text(
        "from dataclasses import replace\nfrom datetime import timedelta\n"
        "from feature_platform.registry.demo import build_registry as _b\n"
        "from feature_platform.registry.model import BatchFeature, Registry\n"
        "def build_registry():\n    r = _b()\n    v1 = r.view('user_daily_profile', 1)\n"
        "    e = replace(v1, features=(BatchFeature('txn_count_7d', 'count', None, timedelta(days=8)),) + v1.features[1:])\n"
        "    return Registry(r.entities, r.sources, tuple(e if v is v1 else v for v in r.views), r.services)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FP_REGISTRY", "edited_repo:build_registry")
    cli = CliRunner()
    res = cli.invoke(main, ["registry", "check"])
    assert res.exit_code == 1, res.output
    assert "user_daily_profile" in res.output and "without a version bump" in res.output
    assert '-      "lookback": "7d"' in res.output and '+      "lookback": "8d"' in res.output
    listed = cli.invoke(main, ["registry", "list"])
    assert listed.exit_code == 0 and "CHANGED" in listed.output
    monkeypatch.setenv("FP_REGISTRY", "feature_platform.registry.demo:build_registry")
    assert cli.invoke(main, ["registry", "check"]).exit_code == 0
    sys.modules.pop("edited_repo", None)


def test_deadletter_jump_warns_on_the_newest_day(world: World) -> None:
    assert world.checks("raw_transactions")["deadletter_jump"].passed
    day = DAYS[-1]
    bad = [{"event_id": f"bad{i}", "user_id": "not-a-number", "merchant_id": "1", "amount": "1.0", "country": "DE",
            "event_time": f"{day.isoformat()}T12:00:{i:02d}+00:00"} for i in range(12)]
    good = [{"event_id": "good1", "user_id": "1", "merchant_id": "1", "amount": "2.0", "country": "DE",
             "event_time": f"{day.isoformat()}T13:00:00+00:00"}]
    landing = world.settings.data_dir / "landing" / "transactions"
    import csv

    with open(landing / "drop2.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(bad[0]))
        wr.writeheader()
        wr.writerows(bad + good)
    res = world.run(["raw_transactions"], days=[day])
    md = _md(res, "raw_transactions")
    assert md["landing_deadletter_rows"] == 12 and md["landing_accepted"] == 1
    jump = {e.check_name: e for e in res.get_asset_check_evaluations()}["deadletter_jump"]
    assert not jump.passed and jump.severity == dg.AssetCheckSeverity.WARN
    jmd = {k: getattr(v, "value", v) for k, v in jump.metadata.items()}
    events_that_day = sum(1 for e in world.events if e["event_time"].date() == day) + 1
    assert jmd["rows"] == 12 and jmd["day"] == day.isoformat()
    assert jmd["rate"] == pytest.approx(12 / (events_that_day + 12))
    assert jmd["baseline_median_rate"] == 0.0


def test_landing_sensor_requests_one_run_over_the_files_dates(world: World) -> None:
    from feature_platform.defs.automation import RANGE_END, RANGE_START

    landing = world.settings.data_dir / "landing" / "transactions"
    sensor = next(s for s in world.parts.sensors if s.name == "landing_transactions")
    ctx = dg.build_sensor_context(instance=world.instance, resources={"fp": world.resource()})
    assert isinstance(sensor(ctx), dg.SkipReason)  # the fixture's file was already ingested
    write_events([e for e in world.events if e["event_time"].date() in DAYS[1:3]], landing / "drop3.parquet")
    ctx = dg.build_sensor_context(instance=world.instance, resources={"fp": world.resource()})
    req = sensor(ctx)
    assert isinstance(req, dg.RunRequest), req
    assert req.asset_selection == [dg.AssetKey("raw_transactions")]
    assert (req.tags[RANGE_START], req.tags[RANGE_END]) == (DAYS[1].isoformat(), DAYS[2].isoformat())
    again = dg.build_sensor_context(instance=world.instance, resources={"fp": world.resource()}, cursor=ctx.cursor)
    assert isinstance(sensor(again), dg.SkipReason)  # same file, not requested twice


def test_stream_worker_heartbeat_check_fails_when_the_worker_stops(world: World) -> None:
    """Reads the heartbeat the stream worker writes (streaming.metrics); a stopped worker is an ERROR."""
    from feature_platform.streaming.keys import StreamKeys

    first = world.checks("raw_transactions")["stream_heartbeat"]
    assert not first.passed and first.severity == dg.AssetCheckSeverity.ERROR  # never ran
    client = redis.Redis.from_url(world.settings.redis_url)
    keys = StreamKeys.of(world.settings, "transactions")
    beat = NOW.timestamp() - 5
    client.hset(keys.workers, "w1", json.dumps({"heartbeat": beat, "events_per_s": 10.0, "delay_p50_ms": 3.0,
                                                "delay_p99_ms": 12.0, "stopped": False}))
    checks = world.checks("raw_transactions")
    assert checks["stream_heartbeat"].passed, checks["stream_heartbeat"].description
    assert checks["stream_delay_p99"].passed
    aged = world.checks("raw_transactions", now=NOW + timedelta(seconds=30))["stream_heartbeat"]
    md = {k: getattr(v, "value", v) for k, v in aged.metadata.items()}
    assert not aged.passed and md["age_seconds"] == pytest.approx(35) and md["sla_seconds"] == 30
    client.hset(keys.workers, "w1", json.dumps({"heartbeat": beat, "delay_p99_ms": 1500.0, "stopped": True}))
    checks = world.checks("raw_transactions")
    assert not checks["stream_heartbeat"].passed  # it said it stopped


def test_new_version_materializes_side_by_side_offline_and_online(world: World) -> None:
    v1 = world.registry.view("user_daily_profile", 1)
    v2 = replace(v1, version=2, features=v1.features + (BatchFeature("amount_sum_7d", "sum", "amount", timedelta(days=7)),))
    reg2 = Registry(world.registry.entities, world.registry.sources, world.registry.views + (v2,),
                    world.registry.services)
    parts2 = build_parts(reg2)
    day = DAYS[-1]
    assert world.run(["user_daily_profile_v1", "user_daily_profile_v2"], days=[day], checks=False, parts=parts2).success
    assert world.run(["user_daily_profile_v1_online", "user_daily_profile_v2_online"], checks=False, parts=parts2).success
    fs = FeatureStore(world.settings, reg2)
    assert fs.offline.view_partition_path(v1, day).exists() and fs.offline.view_partition_path(v2, day).exists()
    exp = expected_profile(world.events, day)
    ft = datetime.combine(day + timedelta(days=1), dtime(0), tzinfo=UTC)
    sums = {u: sum(e["amount"] for e in world.events if e["user_id"] == u and not too_late(e) and e["amount"] is not None
                   and ft - timedelta(days=7) <= e["event_time"] < ft) for u in exp}
    u = next(iter(exp))
    got = fs.get_online_features(features=["user_daily_profile:v1:txn_count_7d"], entities={"user_id": [u]}, as_of=NOW)
    got2 = fs.get_online_features(features=["user_daily_profile:v2:txn_count_7d", "user_daily_profile:v2:amount_sum_7d"],
                                  entities={"user_id": [u]}, as_of=NOW)
    assert got.rows[0]["user_daily_profile__txn_count_7d"].value == exp[u][0]
    assert got2.rows[0]["user_daily_profile__txn_count_7d"].value == exp[u][0]
    assert got2.rows[0]["user_daily_profile__amount_sum_7d"].value == pytest.approx(sums[u], rel=1e-9)
    live = fs.online.materialized_versions()
    assert live[("user_daily_profile", 1)]["fingerprint"] == v1.fingerprint()
    assert live[("user_daily_profile", 2)]["fingerprint"] == v2.fingerprint()
    # The v1 checks are untouched by v2's data, and v2's stored version matches v2.
    assert world.checks("user_daily_profile_v1", parts=parts2)["stored_version"].passed
    assert world.checks("user_daily_profile_v2", parts=parts2)["stored_version"].passed
