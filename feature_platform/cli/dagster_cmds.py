"""Control-plane commands: demo, backfill, status, registry check|diff|list|lock|retire.

Backfills and the demo run the real Dagster assets in-process (`dagster.materialize`) against the
Dagster instance in $DAGSTER_HOME (default: <FP_DATA_DIR>/dagster), so every run, materialization
and check result shows up in `dagster dev` started with the same DAGSTER_HOME.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import click

from feature_platform.registry import RegistryError


def _registry():
    from feature_platform.registry import load_registry

    try:
        return load_registry()
    except RegistryError as exc:
        raise click.ClickException(f"cannot load the feature repo: {exc}") from exc


INSTANCE_YAML = """\
# Dagster instance of feature_platform (written by `feature-platform demo/backfill`; SQLite storage here).
# At most one streaming_update run per source (see feature_platform/defs/streaming.py).
concurrency:
  runs:
    tag_concurrency_limits:
      - key: "fp/stream_source"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""


def _instance(settings):
    """The persistent Dagster instance: $DAGSTER_HOME, else <data>/dagster (created)."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        home = settings.data_dir / "dagster"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(INSTANCE_YAML)
    return dg.DagsterInstance.get()


class Runner:
    """Runs selected assets of the registry's Dagster graph in-process, one run per call."""

    def __init__(self, registry, settings, quiet: bool = True) -> None:
        import dagster as dg

        from feature_platform.defs.definitions import build_parts
        from feature_platform.defs.resources import FeatureStoreResource

        self.dg = dg
        self.registry = registry
        self.parts = build_parts(registry)
        self.resource = FeatureStoreResource(data_dir=str(settings.data_dir), redis_url=settings.redis_url,
                                             key_prefix=settings.key_prefix)
        self.instance = _instance(settings)
        self.quiet = quiet

    def run(self, keys: list[str], *, partition: str | None = None, start: str | None = None,
            end: str | None = None, with_checks: bool = False, run_config: dict | None = None):
        dg = self.dg
        selection = dg.AssetSelection.assets(*keys)
        defs = list(self.parts.assets)
        if with_checks:
            defs += self.parts.checks
            selection = selection | dg.AssetSelection.checks_for_assets(*keys)
        else:
            selection = selection.without_checks()
        tags = {"fp/launched_by": "feature-platform"}
        if start and end and start != end:
            tags.update({"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end})
        elif start:
            partition = start
        config = dict(run_config or {})
        if self.quiet:  # Dagster's own event log stays in the instance (and the UI), not on the terminal
            config.setdefault("loggers", {"console": {"config": {"log_level": "ERROR"}}})
        return dg.materialize(defs, selection=selection, partition_key=partition, instance=self.instance,
                              resources={"fp": self.resource}, tags=tags, raise_on_error=False,
                              run_config=config)

    def metadata(self, result, key: str) -> dict:
        mats = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == key]
        if not mats:
            return {}
        return {k: getattr(v, "value", v) for k, v in mats[-1].materialization.metadata.items()}

    def failure(self, result) -> str:
        for e in result.all_events:
            if e.is_step_failure and e.step_failure_data and e.step_failure_data.error:
                err = e.step_failure_data.error
                msg = err.message.strip()
                if err.cause is not None:
                    msg += " | " + err.cause.message.strip()
                return f"{e.step_key}: {msg}"
        return "run failed (see the Dagster UI)"

    def check_lines(self, result) -> list[str]:
        out = []
        for ev in result.get_asset_check_evaluations():
            mark = "PASS" if ev.passed else f"FAIL({ev.severity.value})"
            out.append(f"  check {ev.asset_key.to_user_string()}:{ev.check_name} {mark} {ev.description or ''}")
        return out


def _parse_day(ctx, param, value):
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD") from exc


def backfill_range(runner: Runner, start: date, end: date, views: list, *, raw: bool = True,
                   online: bool = True, echo=click.echo) -> list[str]:
    """Materialize raw events and batch views day by day through Dagster; returns failures."""
    from feature_platform.defs.assets import online_key, raw_key, view_key
    from feature_platform.offline.batch import feature_timestamp

    now = datetime.now(timezone.utc)
    failures: list[str] = []
    sources = sorted({v.source.name for v in views}) if views else [s.name for s in runner.registry.sources]
    today = now.date()
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    echo(f"backfill {start}..{end} ({len(days)} days): "
         + ", ".join(([raw_key(s).to_user_string() for s in sources] if raw else []) + [view_key(v).to_user_string() for v in views]))
    total_started = time.perf_counter()
    check_lines: list[str] = []
    lateness = max((v.source.allowed_lateness for v in views), default=timedelta(0))
    for i, day in enumerate(days):
        started = time.perf_counter()
        parts = []
        last = i == len(days) - 1
        if raw:
            if day > today:
                parts.append("raw: in the future, skipped")
            else:
                keys = [raw_key(s).to_user_string() for s in sources]
                res = runner.run(keys, partition=day.isoformat(), with_checks=last)
                if not res.success:
                    failures.append(f"{day} raw: {runner.failure(res)}")
                    parts.append("raw FAILED")
                else:
                    for k in keys:
                        md = runner.metadata(res, k)
                        parts.append(f"{k} {md.get('events', 0):,} events ({md.get('too_late', 0)} too late)")
                if last:
                    check_lines += runner.check_lines(res)
        final = [v for v in views if feature_timestamp(day) + v.source.allowed_lateness <= now]
        if views and not final:
            parts.append("batch: day not final yet (lateness horizon open), skipped")
        if final:
            keys = [view_key(v).to_user_string() for v in final]
            batch_last = day == max(d for d in days if feature_timestamp(d) + lateness <= now)
            res = runner.run(keys, partition=day.isoformat(), with_checks=batch_last)
            if not res.success:
                failures.append(f"{day} batch: {runner.failure(res)}")
                parts.append("batch FAILED")
            else:
                for k in keys:
                    parts.append(f"{k} {runner.metadata(res, k).get('rows', 0):,} rows")
            if batch_last:
                check_lines += runner.check_lines(res)
        echo(f"[{i + 1}/{len(days)}] {day}  " + " · ".join(parts) + f"  ({time.perf_counter() - started:.1f}s)")
    for line in check_lines:
        echo(line)
    if online and views:
        keys = [online_key(v).to_user_string() for v in views]
        res = runner.run(keys, with_checks=True)
        if not res.success:
            failures.append(f"online push: {runner.failure(res)}")
            echo(f"online push FAILED: {runner.failure(res)}")
        else:
            for k in keys:
                md = runner.metadata(res, k)
                ft = md.get("feature_timestamp")
                ft_s = datetime.fromtimestamp(ft, timezone.utc).strftime("%Y-%m-%d %H:%M") if ft else "?"
                echo(f"online: {k} pushed partition {md.get('partition')} ({md.get('rows_written', 0):,} rows written, "
                     f"{md.get('rows_per_second', 0):,.0f} rows/s, feature_timestamp {ft_s} UTC)")
    echo(f"done in {time.perf_counter() - total_started:.1f}s: {len(days)} day(s), {len(failures)} failure(s)")
    for f in failures:
        echo(f"  FAILED {f}", err=True)
    return failures


@click.command()
@click.option("--start", required=True, callback=_parse_day, help="First day (YYYY-MM-DD, UTC).")
@click.option("--end", required=True, callback=_parse_day, help="Last day, inclusive.")
@click.option("--view", "view_names", multiple=True, help="Only these batch views (repeatable) [default: all].")
@click.option("--version", type=int, default=None, help="Version of --view [default: every version].")
@click.option("--no-raw", is_flag=True, help="Do not re-run the raw-events partitions.")
@click.option("--no-online", is_flag=True, help="Do not push the newest partition to the online store afterwards.")
def backfill(start: date, end: date, view_names: tuple[str, ...], version: int | None, no_raw: bool,
             no_online: bool) -> None:
    """Materialize raw events and batch views for START..END through Dagster, day by day.

    Each day is a Dagster run (recorded in $DAGSTER_HOME, default <FP_DATA_DIR>/dagster); the
    checks run with the last day; then the newest partition is pushed online. Days whose
    lateness horizon has not closed are skipped for batch views. Exits 1 when any day failed.
    """
    from feature_platform.config import Settings
    from feature_platform.registry.model import BatchFeatureView

    if end < start:
        raise click.BadParameter(f"--end {end} is before --start {start}", param_hint="--end")
    registry = _registry()
    try:
        if view_names:
            views = [v for n in view_names for v in registry.views if v.name == n and (version is None or v.version == version)]
            for n in view_names:
                registry.view(n, version)
        else:
            views = list(registry.views)
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from exc
    not_batch = [v.name for v in views if not isinstance(v, BatchFeatureView)]
    if view_names and not_batch:
        raise click.UsageError(f"{not_batch} are stream views: they are computed by the stream worker, not backfilled; "
                               f"pass batch views only")
    views = [v for v in views if isinstance(v, BatchFeatureView)]
    runner = Runner(registry, Settings.from_env())
    failures = backfill_range(runner, start, end, views, raw=not no_raw, online=not no_online)
    if failures:
        sys.exit(1)


@click.command()
@click.option("--days", default=14, show_default=True, help="Days of demo data, ending today.")
@click.option("--events", default=100_000, show_default=True)
@click.option("--users", default=2000, show_default=True)
@click.option("--seed", default=0, show_default=True)
def demo(days: int, events: int, users: int, seed: int) -> None:
    """Set up and run everything on a fresh machine: demo data, ingest, backfill, online push, training set.

    Deterministic and idempotent: re-running the same day generates the same world and adds nothing.
    """
    from feature_platform.config import Settings
    from feature_platform.defs.assets import training_key, training_set_path
    from feature_platform.defs.landing import landing_dir
    from feature_platform.feature_store import FeatureStore
    from feature_platform.offline.demo_data import generate_demo_data
    from feature_platform.registry.model import BatchFeatureView

    started = time.perf_counter()
    settings = Settings.from_env()
    registry = _registry()
    click.echo(f"data dir: {settings.data_dir}")
    data = generate_demo_data(settings.data_dir / "demo", days=days, users=users, events=events, seed=seed)
    click.echo(f"1/4 demo data: {data.deliveries:,} deliveries of {data.events:,} events, {data.start}..{data.end - timedelta(days=1)}; "
               f"{data.labels:,} labels ({data.fraud_labels} fraud) -> {settings.data_dir / 'demo'}")
    fs = FeatureStore(settings, registry)
    source = registry.sources[0].name if len(registry.sources) == 1 else "transactions"
    land = landing_dir(fs.offline, source)
    land.mkdir(parents=True, exist_ok=True)
    shutil.copy(data.events_path, land / f"demo-{data.start}-{data.end}.parquet")
    click.echo(f"2/4 dropped the events into {land} (the raw asset ingests them; duplicates are dropped on re-runs)")
    runner = Runner(registry, settings)
    views = [v for v in registry.views if isinstance(v, BatchFeatureView)]
    click.echo("3/4 backfill through Dagster:")
    failures = backfill_range(runner, data.start, data.end - timedelta(days=1), views, echo=lambda m, err=False: click.echo("    " + m, err=err))
    stream_sources = sorted({v.source.name for v in registry.views if v.kind == "stream"})
    for src in stream_sources:
        t0 = time.perf_counter()
        try:
            totals = fs.bootstrap_stream_views(src)
        except Exception as exc:  # noqa: BLE001 - reported, counted as a failure
            failures.append(f"stream views of {src}: {exc}")
            click.echo(f"    stream views of {src} FAILED to bootstrap online: {exc}", err=True)
            continue
        click.echo(f"    stream views of {src}: {totals['applied']:,} events into their online tiles from the offline "
                   f"store ({totals['too_late']} too late, {totals['duplicates']} already there) in "
                   f"{time.perf_counter() - t0:.1f}s; live updates come from `feature-platform stream run`")
    click.echo("4/4 training sets:")
    for service in registry.services:
        key = training_key(service).to_user_string()
        res = runner.run([key], with_checks=True)
        if not res.success:
            failures.append(f"{key}: {runner.failure(res)}")
            click.echo(f"    {key} FAILED: {runner.failure(res)}", err=True)
            continue
        md = runner.metadata(res, key)
        click.echo(f"    {key}: {md.get('rows', 0):,} rows, positive rate {md.get('positive_rate', 0):.2%} "
                   f"-> {training_set_path(settings.data_dir, service.name)}")
    click.echo(f"demo finished in {time.perf_counter() - started:.0f}s" + (f" with {len(failures)} failure(s)" if failures else ""))
    click.echo("open the Dagster UI on these runs:  .venv/bin/feature-platform ui  (then http://127.0.0.1:3000; "
               "it starts the sensors, so the stream worker comes up and the stream_heartbeat check turns green)")
    for v in views:
        days_done = fs.offline.view_dates(v)
        if days_done:
            import pyarrow.parquet as pq

            key = v.entity.join_key
            first = pq.read_table(fs.offline.view_partition_path(v, days_done[-1]), columns=[key]).column(key)
            if len(first):
                refs = " ".join(f"--feature {v.name}:v{v.version}:{f}" for f in v.feature_names)
                click.echo(f"read batch features online:  feature-platform online get {refs} --entity {key}={first[0].as_py()}")
    for svc in registry.services:
        keys = sorted({r for ref in svc.features for r in registry.view(ref.view, ref.version).source.join_keys
                       if r == registry.view(ref.view, ref.version).entity.join_key})
        click.echo(f"read a whole service:  feature-platform online get --service {svc.name} "
                   + " ".join(f"--entity {k}=1" for k in keys))
    click.echo("health:  feature-platform status")
    if failures:
        sys.exit(1)


# ---- status ---------------------------------------------------------------------------------------------

@click.command()
@click.option("--now", "now_text", default=None, help="Judge freshness at this time (ISO-8601, UTC) instead of now.")
@click.option("--no-online", is_flag=True, help="Do not contact Redis.")
def status(now_text: str | None, no_online: bool) -> None:
    """Per source and view: newest event or row, freshness against its SLA, versions, last check results."""
    from feature_platform.config import Settings
    from feature_platform.defs import health
    from feature_platform.feature_store import FeatureStore
    from feature_platform.registry.model import BatchFeatureView

    now = health.utc(datetime.fromisoformat(now_text)) if now_text else health.wall_clock()
    settings = Settings.from_env()
    registry = _registry()
    fs = FeatureStore(settings, registry)
    off = fs.offline
    click.echo(f"feature_platform status at {now:%Y-%m-%d %H:%M:%S} UTC  (data: {settings.data_dir})")
    worst = 0
    for s in registry.sources:
        newest, ingested = health.newest_event(off, s.name, now)
        days = off.event_dates(s.name)
        click.echo(f"\nsource {s.name} (schema v{s.schema_version}, lateness {s.allowed_lateness}): "
                   f"{len(days)} day(s) stored" + (f", {days[0]}..{days[-1]}" if days else ""))
        click.echo(f"  newest event {newest:%Y-%m-%d %H:%M:%S} UTC" if newest else "  no events")
        for v in (health.raw_freshness(off, s.name, now), health.raw_missing_days(off, s.name, now),
                  health.rate_jump(off, s.name, now, "deadletter"), health.rate_jump(off, s.name, now, "too_late"),
                  health.raw_schema_version(off, s.name, now)):
            worst = max(worst, _print_verdict(v))
    for v in sorted(registry.views, key=lambda v: (v.name, v.version)):
        pins = registry.services_using(v.name, v.version)
        click.echo(f"\nview {v.name} v{v.version} ({v.kind}, fingerprint {v.fingerprint()}, pinned by {pins or 'nothing'})")
        if isinstance(v, BatchFeatureView):
            days = off.view_dates(v)
            click.echo(f"  {len(days)} partition(s)" + (f", newest {days[-1]} (rows at {days[-1] + timedelta(days=1)} 00:00 UTC)" if days else ""))
            for verdict in (health.batch_deadline(off, v, now), health.view_stored_version(off, v, now)):
                worst = max(worst, _print_verdict(verdict))
            if not no_online:
                worst = max(worst, _print_verdict(_online_verdict(fs, v, now)))
                try:
                    entry = fs.online.materialized_versions().get((v.name, v.version))
                    worst = max(worst, _print_verdict(health.online_version(v, entry, now)))
                except Exception as exc:  # noqa: BLE001 - printed by online_freshness already
                    click.echo(f"  (online version: cannot read the online store: {exc})")
        else:
            worst = max(worst, _stream_status(fs, v, now, no_online))
    from feature_platform.defs.checks import lock_verdict

    click.echo("\nregistry")
    worst = max(worst, _print_verdict(lock_verdict(registry, None, now)))
    _last_checks(settings)
    sys.exit(0 if worst < 2 else 1)


def _print_verdict(v) -> int:
    mark = "ok  " if v.passed else ("WARN" if v.severity == "WARN" else "FAIL")
    click.echo(f"  [{mark}] {v.name}: {v.description}")
    return 0 if v.passed else (1 if v.severity == "WARN" else 2)


def _online_verdict(fs, view, now):
    """Online freshness as the online store records it (newest feature_timestamp pushed)."""
    from feature_platform.defs import health
    from feature_platform.defs.checks import online_verdict
    from feature_platform.defs.resources import FeatureStoreResource

    fp = FeatureStoreResource(data_dir=str(fs.settings.data_dir), redis_url=fs.settings.redis_url,
                              key_prefix=fs.settings.key_prefix, now_override=now.isoformat())
    return online_verdict(fp, fs.registry, view)


def _stream_status(fs, view, now, no_online: bool) -> int:
    """Stream views: the worker health of their source (printed once per source)."""
    from feature_platform.defs import stream_health

    if no_online:
        return 0
    seen = _stream_status.__dict__.setdefault("seen", set())
    if view.source.name in seen:
        click.echo(f"  (stream worker of {view.source.name}: see above)")
        return 0
    seen.add(view.source.name)
    worst = 0
    for v in stream_health.read_verdicts(fs.settings, fs.registry, view.source.name, now):
        worst = max(worst, _print_verdict(v))
    return worst


def _last_checks(settings) -> None:
    """The newest recorded result of every asset check, from the Dagster instance (if there is one)."""
    home = os.environ.get("DAGSTER_HOME") or str(settings.data_dir / "dagster")
    if not Path(home).exists():
        click.echo(f"\nno Dagster instance at {home}: run `feature-platform demo` or a backfill to record check results")
        return
    try:
        instance = _instance(settings)
        from feature_platform.defs.definitions import build_parts

        reg = _registry()
        keys = [k for c in build_parts(reg).checks for k in c.check_keys]
        try:  # where `dagster dev` puts the stream checks when the streaming location is merged in
            from feature_platform.defs.streaming import stream_online_key

            keys += [k for c in build_parts(reg, stream_online_key).checks for k in c.check_keys if k not in keys]
        except ImportError:
            pass
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    except Exception as exc:  # noqa: BLE001
        click.echo(f"\ncannot read the last check results from {home}: {exc}")
        return
    click.echo(f"\nlast recorded check results (Dagster instance {home}):")
    if not latest:
        click.echo("  none yet")
    for key in keys:
        rec = latest.get(key)
        if rec is None:
            continue
        ev = rec.event.dagster_event.event_specific_data if rec.event and rec.event.dagster_event else None
        when = datetime.fromtimestamp(rec.create_timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M")
        if ev is not None and hasattr(ev, "passed"):
            mark = "PASS" if ev.passed else f"FAIL({ev.severity.value})"
            desc = ev.description or ""
        else:
            mark, desc = rec.status.value, ""
        click.echo(f"  {when} {key.asset_key.to_user_string()}:{key.name} {mark} {desc[:120]}")


# ---- registry --------------------------------------------------------------------------------------------

@click.group()
def registry() -> None:
    """Definitions and their versions: check against the lock, diff, list, lock, retire."""


@registry.command("check")
def registry_check() -> None:
    """Exit 1, printing the diff, when a definition changed without a version bump (vs the lock file)."""
    from feature_platform.defs.registry_lock import compare, lock_path

    report = compare(_registry(), lock_path())
    click.echo(report.render())
    if not report.ok:
        sys.exit(1)


@registry.command("diff")
@click.argument("view", required=False)
def registry_diff(view: str | None) -> None:
    """What changed: code vs the lock file, and each view's consecutive versions."""
    from feature_platform.defs.registry_lock import compare, lock_path, version_diffs

    reg = _registry()
    report = compare(reg, lock_path())
    click.echo(f"# code vs {report.path}")
    click.echo(report.render())
    diffs = version_diffs(reg, view)
    if diffs:
        click.echo("\n# between versions")
        for d in diffs:
            click.echo(d)
    elif view:
        click.echo(f"\n{view} has a single version")


@registry.command("list")
def registry_list() -> None:
    """Views, versions, fingerprints and the services that pin them."""
    from feature_platform.defs.registry_lock import load_lock, lock_path

    reg = _registry()
    lock = load_lock(lock_path()) or {}
    click.echo(f"{'view':<24} {'ver':>3} {'kind':<6} {'fingerprint':<17} {'lock':<8} pinned by")
    for v in sorted(reg.views, key=lambda v: (v.name, v.version)):
        locked = lock.get("views", {}).get(v.name, {}).get(str(v.version))
        state = "-" if locked is None else ("ok" if locked["fingerprint"] == v.fingerprint() else "CHANGED")
        pins = reg.services_using(v.name, v.version)
        click.echo(f"{v.name:<24} {v.version:>3} {v.kind:<6} {v.fingerprint():<17} {state:<8} "
                   f"{', '.join(pins) if pins else '(nothing: can be retired)'}")
    for name, versions in sorted(lock.get("views", {}).items()):
        for ver, entry in sorted(versions.items()):
            if not any(v.name == name and str(v.version) == ver for v in reg.views):
                click.echo(f"{name:<24} {ver:>3} {entry['kind']:<6} {entry['fingerprint']:<17} "
                           f"{'retired' if entry.get('retired') else 'removed':<8} (not in the code)")
    for s in reg.sources:
        click.echo(f"source {s.name} schema v{s.schema_version} fingerprint {s.fingerprint()}")
    for svc in reg.services:
        click.echo(f"service {svc.name}: " + ", ".join(f"{k} v{n}" for k, n in sorted(svc.pinned_versions.items())))


@registry.command("lock")
@click.option("--force", is_flag=True, help="Overwrite locked definitions that changed (only for versions never shipped).")
def registry_lock(force: bool) -> None:
    """Record the current definitions in the lock file (commit it with the code)."""
    from feature_platform.defs.registry_lock import lock_path, write_lock

    try:
        report = write_lock(_registry(), lock_path(), force=force)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"locked {report.path}")


@registry.command("retire")
@click.argument("view")
@click.argument("version", type=int)
def registry_retire(view: str, version: int) -> None:
    """Mark VIEW VERSION retired in the lock; refused while any feature service pins it."""
    from feature_platform.defs.registry_lock import lock_path, retire

    try:
        click.echo(retire(_registry(), lock_path(), view, version))
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option("--port", default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def ui(port: int, host: str) -> None:
    """Open the Dagster UI (`dagster dev`) on the platform's own instance.

    Uses $DAGSTER_HOME, else <FP_DATA_DIR>/dagster: the instance where `demo` and `backfill`
    record their runs, so their history, materializations and check results are all there.
    """
    import shutil
    import sys

    from feature_platform.config import Settings

    _instance(Settings.from_env())
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    click.echo(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']}: http://{host}:{port}", err=True)
    os.execvp(dagster, [dagster, "dev", "-m", "feature_platform.defs", "-h", host, "-p", str(port)])


commands: list[click.Command] = [backfill, demo, status, registry, ui]
