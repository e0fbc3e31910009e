"""The Dagster code location as a whole: it loads, every asset has its checks, every check has a
target, and what must run without clicks (sensors, schedule, automation) defaults to RUNNING."""

from __future__ import annotations

import warnings
from dataclasses import replace
from datetime import timedelta

import dagster as dg
import pytest

from feature_platform.defs.definitions import build_definitions, build_parts
from feature_platform.registry import Registry
from feature_platform.registry.model import BatchFeature

RAW_CHECKS = {"raw_freshness", "raw_missing_days", "deadletter_jump", "too_late_jump", "schema_version",
              "stream_heartbeat", "stream_lag", "stream_delay_p99"}
BATCH_CHECKS = {"partition_deadline", "stored_version", "definitions_match_lock"}


def _check_names(defs: dg.Definitions) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for c in defs.asset_checks:
        for k in c.check_keys:
            out.setdefault(k.asset_key.to_user_string(), set()).add(k.name)
    return out


def test_definitions_load_without_dagster_warnings(registry: Registry) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defs = build_definitions(registry)
        dg.Definitions.validate_loadable(defs)
    ours = [w for w in caught if issubclass(w.category, (dg.BetaWarning, dg.PreviewWarning, DeprecationWarning))]
    assert not ours, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in ours]


def test_code_location_module_exposes_loadable_defs() -> None:
    """What `dagster dev` loads: the module named in pyproject's [tool.dagster]."""
    import feature_platform.defs as location

    assert "defs" in dir(location)
    dg.Definitions.validate_loadable(location.defs)
    keys = {a.key.to_user_string() for a in location.defs.assets if isinstance(a, dg.AssetsDefinition)}
    assert {"raw_transactions", "user_daily_profile_v1", "user_daily_profile_v1_online",
            "fraud_training_set", "feature_registry"} <= keys
    # Every asset of the merged location (the streaming engineer's stream views included) has checks,
    # and every check's target exists.
    all_keys = {(a.key if isinstance(a, dg.AssetSpec) else a.key).to_user_string() for a in location.defs.assets}
    checks = _check_names(location.defs)
    assert set(checks) <= all_keys
    assert all_keys - set(checks) == set(), f"assets without checks: {all_keys - set(checks)}"
    stream_views = [v for v in location.defs.assets if isinstance(v, dg.AssetSpec)]
    for spec in stream_views:
        assert checks[spec.key.to_user_string()] == {"stream_heartbeat", "stream_lag", "stream_delay_p99", "online_version"}
    # ... and our automation sensor (running by default) is the one that schedules all of them.
    sensor = next(s for s in location.defs.sensors if s.name == "feature_platform_automation")
    targeted = sensor.asset_selection.resolve_checks(location.defs.resolve_asset_graph())
    assert {k for c in location.defs.asset_checks for k in c.check_keys} <= set(targeted)


def test_every_asset_has_its_checks_and_every_check_a_target(registry: Registry) -> None:
    defs = build_definitions(registry)
    checks = _check_names(defs)
    expected = {
        "raw_transactions": RAW_CHECKS,
        "user_daily_profile_v1": BATCH_CHECKS,
        "user_daily_profile_v1_online": {"online_freshness", "online_version"},
        "fraud_training_set": {"rows_match_labels"},
        "feature_registry": {"definitions_match_lock"},
    }
    assert checks == expected
    asset_keys = {a.key.to_user_string() for a in defs.assets}
    assert set(checks) <= asset_keys
    blocking = {(k.asset_key.to_user_string(), k.name) for c in defs.asset_checks for k in c.check_keys
                if c.get_spec_for_check_key(k).blocking}
    assert blocking == {("raw_transactions", "schema_version"), ("user_daily_profile_v1", "stored_version"),
                        ("user_daily_profile_v1", "definitions_match_lock"), ("feature_registry", "definitions_match_lock")}


def test_sensors_schedule_and_automation_run_by_default(registry: Registry) -> None:
    defs = build_definitions(registry)
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"landing_transactions", "feature_platform_automation"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    assert isinstance(sensors["feature_platform_automation"], dg.AutomationConditionSensorDefinition)
    (unresolved,) = defs.schedules
    schedule = defs.resolve_schedule_def(unresolved.name)
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    # Day D runs at D+1 00:00 + lateness (1 h) + min(30 min, half the 1 h slack before the 2 h delay).
    assert schedule.cron_schedule == "30 1 * * *"
    assert schedule.execution_timezone in (None, "UTC")
    job = defs.resolve_job_def(schedule.job_name)
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {"user_daily_profile_v1"}


def test_online_push_follows_batch_updates_and_checks_run_on_a_cron(registry: Registry) -> None:
    parts = build_parts(registry)
    online = parts.asset("user_daily_profile_v1_online")
    assert online.automation_conditions_by_key[online.key] is not None  # evaluated for real in test_dagster_runs
    for c in parts.checks:
        for k in c.check_keys:
            assert c.get_spec_for_check_key(k).automation_condition is not None, k


def test_batch_view_reads_its_lookback_and_backfills_in_one_run(registry: Registry) -> None:
    parts = build_parts(registry)
    batch = parts.asset("user_daily_profile_v1")
    raw_key = dg.AssetKey("raw_transactions")
    mapping = batch.get_partition_mapping(raw_key)
    assert isinstance(mapping, dg.TimeWindowPartitionMapping)
    # 30-day lookback: day D reads event days D-29 .. D.
    assert (mapping.start_offset, mapping.end_offset) == (-29, 0)
    assert batch.backfill_policy == dg.BackfillPolicy.single_run()
    assert parts.asset("raw_transactions").backfill_policy == dg.BackfillPolicy.single_run()


def test_two_versions_of_a_view_get_their_own_assets(registry: Registry) -> None:
    v1 = registry.view("user_daily_profile", 1)
    v2 = replace(v1, version=2, features=v1.features + (BatchFeature("amount_sum_7d", "sum", "amount", timedelta(days=7)),))
    reg2 = Registry(registry.entities, registry.sources, registry.views + (v2,), registry.services)
    defs = build_definitions(reg2)
    keys = {a.key.to_user_string() for a in defs.assets}
    assert {"user_daily_profile_v1", "user_daily_profile_v2", "user_daily_profile_v1_online",
            "user_daily_profile_v2_online"} <= keys
    dg.Definitions.validate_loadable(defs)
    # Both versions are in the daily job.
    job = defs.resolve_job_def("daily_batch_views")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {"user_daily_profile_v1",
                                                                                 "user_daily_profile_v2"}


@pytest.mark.parametrize("lateness_h,delay_h,expected", [(1, 2, (1, 30)), (1, 1.5, (1, 15)), (0, 2, (0, 30))])
def test_schedule_time_sits_between_lateness_and_availability(registry: Registry, lateness_h, delay_h, expected) -> None:
    from feature_platform.defs.automation import schedule_time

    v1 = registry.view("user_daily_profile", 1)
    src = replace(v1.source, allowed_lateness=timedelta(hours=lateness_h))
    view = replace(v1, source=src, availability_delay=timedelta(hours=delay_h))
    assert schedule_time([view]) == expected
