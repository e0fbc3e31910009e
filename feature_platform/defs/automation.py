"""What runs without clicks: the daily schedule, the landing sensors and the automation sensor.

* `daily_batch_views_schedule` runs day D's batch views once D's lateness horizon has closed:
  D+1 00:00 UTC + the longest allowed lateness + a margin, well before the shortest availability
  delay (demo: 01:30 UTC; lateness 1 h, availability delay 2 h).
* `landing_<source>` sensors turn files dropped into `<data>/landing/<source>/` into a run of
  `raw_<source>` for the event dates they contain.
* `feature_platform_automation` evaluates the declarative conditions: the online push after each
  batch-view update and the asset checks every 15 minutes.
All default to RUNNING, so a fresh `dagster dev` (with its daemon) alerts and pushes with no clicks.
"""


import hashlib
import json
from datetime import date, datetime, timedelta, timezone

import dagster as dg

from feature_platform.defs.assets import partition_start, raw_key, view_key
from feature_platform.defs.landing import file_event_dates, waiting_files
from feature_platform.defs.resources import FeatureStoreResource
from feature_platform.registry.model import BatchFeatureView, Registry, RegistryError, Source

RUNNING = dg.DefaultSensorStatus.RUNNING
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def schedule_time(views: list[BatchFeatureView]) -> tuple[int, int]:
    """(hour, minute) after midnight UTC: the longest lateness + min(30 min, half the slack before
    the shortest availability delay). Raises when no such time exists."""
    lateness = max(v.source.allowed_lateness for v in views)
    delay = min(v.availability_delay for v in views)
    if lateness >= delay:
        raise RegistryError(f"batch views {[v.name for v in views]}: allowed lateness {lateness} leaves no time "
                            f"before the availability delay {delay}; raise the delay")
    at = lateness + min(timedelta(minutes=30), (delay - lateness) / 2)
    minutes = int(at.total_seconds() // 60)
    if minutes >= 24 * 60:
        raise RegistryError(f"the daily job would start {at} after midnight; keep lateness + margin under a day")
    return minutes // 60, minutes % 60


def build_daily_schedule(registry: Registry) -> tuple | None:
    views = [v for v in registry.views if isinstance(v, BatchFeatureView)]
    if not views:
        return None
    hour, minute = schedule_time(views)
    job = dg.define_asset_job(
        "daily_batch_views", selection=dg.AssetSelection.assets(*[view_key(v) for v in views]),
        description="Every batch view for one day; the schedule runs day D after its lateness horizon closes.")
    schedule = dg.build_schedule_from_partitioned_job(
        job, hour_of_day=hour, minute_of_hour=minute, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(f"Day D's batch views at D+1 {hour:02d}:{minute:02d} UTC: after the lateness horizon, before "
                     f"the availability delay, so each row is final when computed and online when served."))
    return job, schedule


def _file_key(path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def build_landing_sensor(registry: Registry, source: Source) -> dg.SensorDefinition:
    key = raw_key(source)

    @dg.sensor(name=f"landing_{source.name}", target=[key], default_status=RUNNING, minimum_interval_seconds=30,
               description=f"Starts a run of {key.to_user_string()} when files land in <data>/landing/{source.name}/.")
    def _landing(context: dg.SensorEvaluationContext, fp: FeatureStoreResource):
        offline = fp.store(registry).offline
        files = waiting_files(offline, source.name)
        if not files:
            return dg.SkipReason(f"no files waiting in {offline.settings.data_dir / 'landing' / source.name}")
        seen = set(json.loads(context.cursor)) if context.cursor else set()
        keyed = {_file_key(f): f for f in files}
        new = sorted(k for k in keyed if k not in seen)
        # Remember only files still waiting, so the cursor stays small.
        context.update_cursor(json.dumps(sorted(keyed)))
        if not new:
            return dg.SkipReason(f"{len(files)} file(s) waiting, already requested")
        return landing_run_request(source, [keyed[k] for k in new], datetime.now(timezone.utc).date(), new)

    return _landing


def landing_run_request(source: Source, files, today: date, file_keys: list[str]) -> dg.RunRequest:
    """One run of raw_<source> over the event dates the new files hold (today when unreadable)."""
    spans = [s for s in (file_event_dates(f) for f in files) if s]
    start = date.fromisoformat(partition_start())
    lo = max(min((s[0] for s in spans), default=today), start)
    hi = min(max((s[1] for s in spans), default=today), today)
    lo = min(lo, hi)
    run_key = hashlib.sha256("|".join(file_keys).encode()).hexdigest()[:20]
    if lo == hi:
        return dg.RunRequest(run_key=run_key, asset_selection=[raw_key(source)], partition_key=lo.isoformat())
    return dg.RunRequest(run_key=run_key, asset_selection=[raw_key(source)],
                         tags={RANGE_START: lo.isoformat(), RANGE_END: hi.isoformat()})


def build_automation_sensor(keys: list[dg.AssetKey], check_keys: list[dg.AssetCheckKey]
                            ) -> dg.AutomationConditionSensorDefinition:
    """Our assets and every one of our checks (including those on the streaming location's assets)."""
    return dg.AutomationConditionSensorDefinition(
        "feature_platform_automation",
        target=dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks(*check_keys),
        default_status=RUNNING,
        minimum_interval_seconds=30,
        description="Online pushes after batch updates, asset checks every 15 minutes.",
    )
