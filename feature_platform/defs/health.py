"""Health measurements behind the Dagster asset checks and `feature-platform status`.

Plain Python over DuckDB and Parquet metadata: nothing here imports Dagster, so the same verdicts
are printed by the CLI, asserted in tests, and reported as asset-check results. Every function
takes `now` explicitly, so a test (or a fire drill) can age the data with an injected clock.

A `Verdict` carries what a person needs when a check fails: the measured value, the SLA it was
held to, and when it was measured (all in `metadata`), plus the severity the failure deserves:

* WARN  - worth a look, nothing served is wrong yet (stale raw stream, a jump in bad events);
* ERROR - features are or will be wrong or missing (a lost day, a partition past its deadline,
          an online copy past cycle + grace, data written under another schema or version).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from feature_platform.offline.store import OfflineStore, connect, sql_str
from feature_platform.registry.model import BatchFeatureView, SourceSLA

WARN = "WARN"
ERROR = "ERROR"
_LIST_LIMIT = 20  # how many offending days/files a verdict names before it says "and N more"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one health check; `metadata` values are plain Python (datetimes allowed)."""

    name: str
    passed: bool
    severity: str  # severity the failure deserves (reported even when passed, for the docs/status)
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "PASS" if self.passed else f"FAIL({self.severity})"


def utc(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _ts(value: Any) -> datetime | None:
    return utc(value) if isinstance(value, datetime) else None


def _limited(items: list[Any]) -> list[str]:
    out = [str(i) for i in items[:_LIST_LIMIT]]
    if len(items) > _LIST_LIMIT:
        out.append(f"... and {len(items) - _LIST_LIMIT} more")
    return out


def source_sla(source) -> SourceSLA:
    return getattr(source, "sla", None) or SourceSLA()


# ---- raw events -------------------------------------------------------------------------------------

def newest_event(offline: OfflineStore, source: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """(newest event_time, newest ingested_at) at or before `now`, reading only the newest stored days."""
    dates = [d for d in offline.event_dates(source) if d <= now.date()]
    if not dates:
        return None, None
    con = connect()
    try:
        # The newest day can hold only events after `now` (injected clock): look back a few days.
        rel = offline.events_sql(source, dates=dates[-3:])
        row = con.execute(
            f"SELECT max(event_time), max(ingested_at) FROM {rel} WHERE event_time <= ?", [utc(now)]).fetchone()
    finally:
        con.close()
    return _ts(row[0]), _ts(row[1])


def raw_freshness(offline: OfflineStore, source_name: str, now: datetime) -> Verdict:
    """WARN when the newest stored event is older than the source's freshness SLA."""
    source = offline.registry.source(source_name)
    sla = source_sla(source).freshness
    newest, ingested = newest_event(offline, source_name, now)
    age = (utc(now) - newest).total_seconds() if newest else None
    meta = {"newest_event_time": newest, "newest_ingested_at": ingested, "age_seconds": age,
            "sla_seconds": sla.total_seconds(), "measured_at": utc(now)}
    if newest is None:
        return Verdict("raw_freshness", False, WARN, f"no {source_name} events stored at or before {now:%Y-%m-%d %H:%M} UTC; "
                       f"ingest some (feature-platform ingest, the landing folder or the stream worker)", meta)
    ok = age <= sla.total_seconds()
    desc = (f"newest {source_name} event is {_human(age)} old (SLA {_human(sla.total_seconds())})"
            + ("" if ok else ": the source looks stalled; check the producer, the landing folder and the stream worker"))
    return Verdict("raw_freshness", ok, WARN, desc, meta)


def raw_missing_days(offline: OfflineStore, source_name: str, now: datetime) -> Verdict:
    """ERROR when a day between the first stored day and yesterday has no events at all (a lost day)."""
    stored = offline.event_dates(source_name)
    yesterday = utc(now).date() - timedelta(days=1)
    meta: dict[str, Any] = {"measured_at": utc(now), "sla": "one partition per day, from the first stored day to yesterday"}
    if not stored:
        return Verdict("raw_missing_days", True, ERROR, f"no {source_name} events stored yet: nothing to check", meta)
    first = stored[0]
    have = set(stored)
    missing = [first + timedelta(days=i) for i in range((yesterday - first).days + 1)
               if first + timedelta(days=i) not in have]
    meta.update({"first_day": first.isoformat(), "last_day_checked": yesterday.isoformat(),
                 "missing_days": len(missing), "missing": _limited([d.isoformat() for d in missing])})
    if missing:
        return Verdict("raw_missing_days", False, ERROR,
                       f"{len(missing)} day(s) of {source_name} have no events: {', '.join(meta['missing'][:5])}; "
                       f"re-ingest them (feature-platform ingest {source_name} FILE) then re-run the batch views", meta)
    return Verdict("raw_missing_days", True, ERROR, f"every day from {first} to {yesterday} has {source_name} events", meta)


def daily_quality(offline: OfflineStore, source_name: str) -> list[dict[str, Any]]:
    """Per event day: stored events, too-late events, dead-lettered rows (oldest day first).

    Dead-letter rows are dated by their event_time where it parses, else by the day the
    dead-letter file was written.
    """
    con = connect()
    try:
        rel = offline.events_sql(source_name)
        con.execute(f"""CREATE TEMP TABLE stored AS SELECT CAST(event_time AS DATE) AS day, count(*) AS events,
                        count(*) FILTER (WHERE is_too_late) AS too_late FROM {rel} GROUP BY 1""")
        dl_dir = offline.settings.deadletter_dir / source_name
        dl_files = sorted(dl_dir.glob("*.parquet")) if dl_dir.exists() else []
        if dl_files:
            mdays = [(str(f), datetime.fromtimestamp(f.stat().st_mtime, timezone.utc).date()) for f in dl_files]
            con.execute("CREATE TEMP TABLE fdays(filename VARCHAR, fday DATE)")
            con.executemany("INSERT INTO fdays VALUES (?, ?)", mdays)
            files = "[" + ", ".join(sql_str(f) for f in dl_files) + "]"
            con.execute(f"""CREATE TEMP TABLE dl AS
                SELECT coalesce(CAST(TRY_CAST(d.event_time AS TIMESTAMPTZ) AS DATE), f.fday) AS day, count(*) AS deadletter
                FROM read_parquet({files}, union_by_name=true, filename=true, hive_partitioning=false) d
                JOIN fdays f USING (filename) GROUP BY 1""")
        else:
            con.execute("CREATE TEMP TABLE dl(day DATE, deadletter BIGINT)")
        rows = con.execute("""
            SELECT day, coalesce(s.events, 0), coalesce(s.too_late, 0), coalesce(d.deadletter, 0)
            FROM stored s FULL OUTER JOIN dl d USING (day) ORDER BY day""").fetchall()
    finally:
        con.close()
    return [{"day": r[0], "events": int(r[1]), "too_late": int(r[2]), "deadletter": int(r[3])} for r in rows]


def rate_jump(offline: OfflineStore, source_name: str, now: datetime, kind: str) -> Verdict:
    """WARN when the newest day's dead-letter (kind='deadletter') or too-late (kind='too_late') rate jumps.

    A jump: at least `min_jump_rows` such rows and a rate above `rate_jump` times the median rate
    of the previous (up to) 7 days, with a floor of 0.1% so a clean history does not turn every
    single bad row into an alert.
    """
    assert kind in ("deadletter", "too_late")
    sla = source_sla(offline.registry.source(source_name))
    days = [d for d in daily_quality(offline, source_name) if d["day"] <= utc(now).date()]
    name = f"{kind}_jump"
    meta: dict[str, Any] = {"measured_at": utc(now), "sla": f"<= {sla.rate_jump}x the 7-day median rate "
                            f"(floor 0.1%) or < {sla.min_jump_rows} rows"}
    if not days:
        return Verdict(name, True, WARN, f"no {source_name} data yet", meta)

    def rate(d: dict) -> float:
        total = d["events"] + (d["deadletter"] if kind == "deadletter" else 0)
        return d[kind] / total if total else 0.0

    newest, history = days[-1], days[-8:-1]
    baseline = statistics.median([rate(d) for d in history]) if history else 0.0
    limit = sla.rate_jump * max(baseline, 0.001)
    measured = rate(newest)
    meta.update({"day": newest["day"].isoformat(), "rows": newest[kind], "events": newest["events"],
                 "rate": measured, "baseline_median_rate": baseline, "limit_rate": limit,
                 "per_day": {d["day"].isoformat(): d[kind] for d in days[-8:]}})
    jumped = newest[kind] >= sla.min_jump_rows and measured > limit
    what = "dead-lettered rows" if kind == "deadletter" else "too-late events"
    if jumped:
        hint = ("look at the reasons in the dead-letter files under "
                f"{offline.settings.deadletter_dir / source_name}" if kind == "deadletter"
                else "the producer or the pipeline is delivering late; check delivery delays")
        return Verdict(name, False, WARN, f"{newest[kind]} {what} on {newest['day']} ({measured:.2%}) vs a median of "
                       f"{baseline:.2%} over the previous days: {hint}", meta)
    return Verdict(name, True, WARN, f"{newest[kind]} {what} on {newest['day']} ({measured:.2%}), "
                   f"median {baseline:.2%}", meta)


def _kv_metadata(files: list[Path]) -> dict[str, dict[str, str]]:
    """fp.* Parquet key-value metadata per file, read in one DuckDB query."""
    if not files:
        return {}
    con = connect()
    try:
        rows = con.execute(
            f"SELECT file_name, decode(key), decode(value) FROM parquet_kv_metadata("
            f"[{', '.join(sql_str(f) for f in files)}]) WHERE decode(key) LIKE 'fp.%'").fetchall()
    finally:
        con.close()
    out: dict[str, dict[str, str]] = {str(f): {} for f in files}
    for fname, key, value in rows:
        out.setdefault(fname, {})[key] = value
    return out


def raw_schema_version(offline: OfflineStore, source_name: str, now: datetime) -> Verdict:
    """ERROR (blocking) when stored event files were written under another schema version."""
    source = offline.registry.source(source_name)
    files = offline.event_files(source_name)
    meta: dict[str, Any] = {"registry_schema_version": source.schema_version, "files_checked": len(files),
                            "measured_at": utc(now)}
    kv = _kv_metadata(files)
    wrong = {f: m.get("fp.schema_version", "<missing>") for f, m in kv.items()
             if m.get("fp.schema_version") != str(source.schema_version)}
    col_versions: list[int] = []
    if files:
        con = connect()
        try:
            col_versions = [r[0] for r in con.execute(
                f"SELECT DISTINCT schema_version FROM {offline.events_sql(source_name)} ORDER BY 1").fetchall()]
        finally:
            con.close()
    found = sorted(set(wrong.values()) | {str(v) for v in col_versions} | ({str(source.schema_version)} if files and len(wrong) < len(files) else set()))
    meta.update({"stored_schema_versions": found, "files_with_other_version": len(wrong),
                 "examples": _limited([f"{Path(f).parent.name}/{Path(f).name}: v{v}" for f, v in sorted(wrong.items())])})
    bad_col = [v for v in col_versions if v != source.schema_version]
    if wrong or bad_col:
        return Verdict("schema_version", False, ERROR,
                       f"{len(wrong)} stored {source_name} file(s) carry fp.schema_version {sorted(set(wrong.values()))} "
                       f"(column values {sorted(set(col_versions))}) but the registry says v{source.schema_version}: "
                       f"migrate or re-ingest them, or bump the registry to match; downstream views are blocked", meta)
    return Verdict("schema_version", True, ERROR, f"all {len(files)} {source_name} files are schema v{source.schema_version}", meta)


# ---- batch views ------------------------------------------------------------------------------------

def view_partition_due(view: BatchFeatureView, day: date) -> datetime:
    """When day D's partition must exist: D+1 00:00 UTC + the view's SLA deadline."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc) + view.sla.deadline


def batch_deadline(offline: OfflineStore, view: BatchFeatureView, now: datetime) -> Verdict:
    """ERROR when a partition past its deadline (from the source's first day on) is not materialized."""
    now = utc(now)
    events = offline.event_dates(view.source.name)
    have = set(offline.view_dates(view))
    latest_due = now.date() - timedelta(days=1)
    while latest_due >= date(1970, 1, 2) and view_partition_due(view, latest_due) > now:
        latest_due -= timedelta(days=1)
    meta: dict[str, Any] = {"deadline": f"D+1 00:00 UTC + {_human(view.sla.deadline.total_seconds())}",
                            "latest_due_day": latest_due.isoformat(), "measured_at": now,
                            "newest_materialized_day": max(have).isoformat() if have else None}
    if not events or events[0] > latest_due:
        return Verdict("partition_deadline", True, ERROR, f"no partition of {view.name} v{view.version} is due yet", meta)
    first = events[0]
    missing = [first + timedelta(days=i) for i in range((latest_due - first).days + 1)
               if first + timedelta(days=i) not in have]
    meta.update({"first_day": first.isoformat(), "missing_days": len(missing),
                 "missing": _limited([d.isoformat() for d in missing])})
    if missing:
        return Verdict("partition_deadline", False, ERROR,
                       f"{len(missing)} partition(s) of {view.name} v{view.version} missed their deadline "
                       f"(latest due: {latest_due}); run `feature-platform backfill --start {missing[0]} "
                       f"--end {missing[-1]} --view {view.name}`", meta)
    return Verdict("partition_deadline", True, ERROR,
                   f"every partition of {view.name} v{view.version} from {first} to {latest_due} is materialized", meta)


def view_stored_version(offline: OfflineStore, view: BatchFeatureView, now: datetime) -> Verdict:
    """ERROR (blocking) when a stored partition was written by another version/fingerprint of the view."""
    days = offline.view_dates(view)
    files = [offline.view_partition_path(view, d) for d in days]
    kv = _kv_metadata(files)
    expected = {"fp.view": view.name, "fp.version": str(view.version), "fp.fingerprint": view.fingerprint(),
                "fp.source_schema_version": str(view.source.schema_version)}
    wrong = {}
    for f, m in kv.items():
        diff = {k: m.get(k, "<missing>") for k, v in expected.items() if m.get(k) != v}
        if diff:
            wrong[f] = diff
    meta: dict[str, Any] = {"registry_version": view.version, "registry_fingerprint": view.fingerprint(),
                            "partitions_checked": len(files), "partitions_wrong": len(wrong), "measured_at": utc(now),
                            "examples": _limited([f"{Path(f).parent.name}: {d}" for f, d in sorted(wrong.items())])}
    if wrong:
        return Verdict("stored_version", False, ERROR,
                       f"{len(wrong)} stored partition(s) of {view.name} v{view.version} were written by another "
                       f"definition ({meta['examples'][0]}); re-materialize them "
                       f"(feature-platform backfill --view {view.name}) or bump the view version", meta)
    return Verdict("stored_version", True, ERROR,
                   f"all {len(files)} partitions of {view.name} carry v{view.version} / {view.fingerprint()}", meta)


def online_freshness(view: BatchFeatureView, online_feature_timestamp: datetime | None, now: datetime,
                     pushed_at: datetime | None = None) -> Verdict:
    """ERROR when the online copy's feature_timestamp is older than the view's cadence + grace."""
    sla = view.cadence + view.sla.grace
    ft = _ts(online_feature_timestamp)
    age = (utc(now) - ft).total_seconds() if ft else None
    meta = {"online_feature_timestamp": ft, "pushed_at": _ts(pushed_at), "age_seconds": age,
            "sla_seconds": sla.total_seconds(), "measured_at": utc(now)}
    if ft is None:
        return Verdict("online_freshness", False, ERROR,
                       f"{view.name} v{view.version} was never pushed to the online store; materialize "
                       f"{view.name}_v{view.version}_online", meta)
    ok = age <= sla.total_seconds()
    desc = (f"online {view.name} v{view.version} rows are from {ft:%Y-%m-%d %H:%M} UTC, {_human(age)} old "
            f"(SLA cadence + grace = {_human(sla.total_seconds())})")
    if not ok:
        desc += ": the daily job or the online push is behind; models are being served stale or expired values"
    return Verdict("online_freshness", ok, ERROR, desc, meta)


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 120:
        return f"{sign}{s:.0f}s"
    if s < 7200:
        return f"{sign}{s / 60:.0f}m"
    if s < 172800:
        return f"{sign}{s / 3600:.1f}h"
    return f"{sign}{s / 86400:.1f}d"


def human_duration(seconds: float | None) -> str:
    return _human(seconds)


def wall_clock() -> datetime:
    """The clock every check uses unless one is injected (resource `now_override`, `status --now`)."""
    return datetime.now(timezone.utc)


def online_version(view, entry: dict | None, now: datetime) -> Verdict:
    """ERROR when the online store's record of (view, version) carries another fingerprint.

    `entry` is the online store's marker for the view version (OnlineStore.materialized_versions()).
    """
    meta: dict[str, Any] = {"registry_version": view.version, "registry_fingerprint": view.fingerprint(),
                            "online_fingerprint": (entry or {}).get("fingerprint"), "measured_at": utc(now)}
    if not entry:
        return Verdict("online_version", True, ERROR, f"{view.name} v{view.version} is not online yet: nothing to compare", meta)
    if entry.get("fingerprint") != view.fingerprint():
        return Verdict("online_version", False, ERROR,
                       f"the online copy of {view.name} v{view.version} was written by fingerprint "
                       f"{entry.get('fingerprint')}, the registry says {view.fingerprint()}: re-push it "
                       f"(materialize {view.name}_v{view.version}_online) or bump the version", meta)
    return Verdict("online_version", True, ERROR, f"online {view.name} v{view.version} carries {view.fingerprint()}", meta)
