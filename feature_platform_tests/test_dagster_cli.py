"""The control-plane commands end to end: backfill through Dagster (progress, summary, exit code),
status, and retiring a version only when nothing pins it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from feature_platform.cli import main
from feature_platform.config import Settings
from feature_platform.registry import Registry, RegistryError
from feature_platform_tests.test_dagster_runs import DAYS, NOW, first_deliveries, make_events, write_events


@pytest.fixture
def cli_env(settings: Settings, tmp_path: Path, monkeypatch) -> Settings:
    monkeypatch.setenv("FP_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("FP_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("FP_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("FP_REGISTRY", "feature_platform.registry.demo:build_registry")
    return settings


def test_backfill_runs_each_day_through_dagster_and_reports(cli_env: Settings) -> None:
    rows = make_events()
    landing = cli_env.data_dir / "landing" / "transactions"
    landing.mkdir(parents=True)
    write_events(rows, landing / "drop.parquet")
    res = CliRunner().invoke(main, ["backfill", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat()])
    assert res.exit_code == 0, res.output
    events = first_deliveries(rows)
    for i, d in enumerate(DAYS):
        line = next(l for l in res.output.splitlines() if l.startswith(f"[{i + 1}/{len(DAYS)}] {d}"))
        assert f"raw_transactions {sum(1 for e in events if e['event_time'].date() == d):,} events" in line
        assert "user_daily_profile_v1" in line
    assert "online: user_daily_profile_v1_online pushed partition " + DAYS[-1].isoformat() in res.output
    assert f"{len(DAYS)} day(s), 0 failure(s)" in res.output
    # The runs are in the Dagster instance the UI would read.
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) == 2 * len(DAYS) + 1 and all(r.is_success for r in runs)
    mats = instance.fetch_materializations(dg.AssetKey("user_daily_profile_v1"), limit=100).records
    assert {m.partition_key for m in mats} == {d.isoformat() for d in DAYS}

    status = CliRunner().invoke(main, ["status", "--now", NOW.isoformat()])
    assert "[ok  ] partition_deadline" in status.output and "[ok  ] online_freshness" in status.output
    assert "last recorded check results" in status.output


def test_backfill_bad_arguments_and_failures_exit_non_zero(cli_env: Settings) -> None:
    cli = CliRunner()
    bad = cli.invoke(main, ["backfill", "--start", "2026-13-01", "--end", "2026-01-02"])
    assert bad.exit_code == 2 and "is not a date" in bad.output
    reversed_ = cli.invoke(main, ["backfill", "--start", "2026-01-05", "--end", "2026-01-02"])
    assert reversed_.exit_code == 2 and "before --start" in reversed_.output
    unknown = cli.invoke(main, ["backfill", "--start", "2026-01-01", "--end", "2026-01-02", "--view", "nope"])
    assert unknown.exit_code == 2 and "unknown feature view 'nope'" in unknown.output
    # A landing file that cannot be read fails the raw run of that day; the summary says so; exit 1.
    landing = cli_env.data_dir / "landing" / "transactions"
    landing.mkdir(parents=True)
    (landing / "broken.parquet").write_text("not parquet")
    day = DAYS[-1].isoformat()
    res = cli.invoke(main, ["backfill", "--start", day, "--end", day, "--no-online"])
    assert res.exit_code == 1
    assert "1 failure(s)" in res.output and "broken.parquet" in res.output
    assert (landing / "failed" / "broken.parquet.error.txt").exists()


def test_retire_only_when_nothing_pins_the_version(registry: Registry, tmp_path: Path) -> None:
    from feature_platform.defs.registry_lock import compare, retire, write_lock

    lock = tmp_path / "lock.json"
    v1 = registry.view("user_daily_profile", 1)
    v2 = replace(v1, version=2, availability_delay=timedelta(hours=3))
    both = Registry(registry.entities, registry.sources, registry.views + (v2,), registry.services)
    write_lock(both, lock)
    assert json.loads(lock.read_text())["views"]["user_daily_profile"].keys() == {"1", "2"}
    with pytest.raises(RegistryError, match="pinned by feature service"):
        retire(both, lock, "user_daily_profile", 1)  # fraud_detection pins v1
    with pytest.raises(RegistryError, match="still defined"):
        retire(both, lock, "user_daily_profile", 2)  # nothing pins v2, but it is still in the code
    only_v1 = registry
    assert compare(only_v1, lock).removed == ["view user_daily_profile v2"]
    assert "retired" in retire(only_v1, lock, "user_daily_profile", 2)
    report = compare(only_v1, lock)
    assert report.removed == [] and report.retired == ["view user_daily_profile v2"] and report.ok


def test_registry_diff_shows_what_a_new_version_changes(registry: Registry, cli_env: Settings, tmp_path: Path,
                                                        monkeypatch) -> None:
    module = tmp_path / "two_versions_repo.py"
    module.write_text(
        "from dataclasses import replace\nfrom datetime import timedelta\n"
        "from feature_platform.registry.demo import build_registry as _b\n"
        "from feature_platform.registry.model import Registry\n"
        "def build_registry():\n    r = _b()\n    v1 = r.view('user_daily_profile', 1)\n"
        "    v2 = replace(v1, version=2, ttl=timedelta(days=3))\n"
        "    return Registry(r.entities, r.sources, r.views + (v2,), r.services)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FP_REGISTRY", "two_versions_repo:build_registry")
    monkeypatch.setenv("FP_REGISTRY_LOCK", str(tmp_path / "lock.json"))
    cli = CliRunner()
    assert cli.invoke(main, ["registry", "check"]).exit_code == 1  # no lock yet: says how to make one
    assert cli.invoke(main, ["registry", "lock"]).exit_code == 0
    check = cli.invoke(main, ["registry", "check"])
    assert check.exit_code == 0, check.output
    diff = cli.invoke(main, ["registry", "diff", "user_daily_profile"])
    assert '-  "ttl": "2d"' in diff.output and '+  "ttl": "3d"' in diff.output
    listed = cli.invoke(main, ["registry", "list"]).output
    v2_line = next(l for l in listed.splitlines() if l.startswith("user_daily_profile") and " 2 " in l)
    assert "(nothing: can be retired)" in v2_line and "ok" in v2_line
