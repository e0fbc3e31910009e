"""The landing folder and the per-day profile of raw events (no Dagster here).

Files dropped into `<data>/landing/<source>/` (Parquet or CSV) are ingested by the raw-events
asset (the landing sensor starts it): each file goes through the same `ingest_file` as the CLI,
then moves to `done/` (or, when it cannot be read at all, to `failed/` with a `.error.txt`
beside it saying why). Rows that fail validation go to the dead-letter folder as usual; the
valid rows next to them are kept. A lock file serialises concurrent ingests of one source.
"""

from __future__ import annotations

import fcntl
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterator

from feature_platform.offline.ingest import IngestError, IngestReport, ingest_file
from feature_platform.offline.store import OfflineStore, connect, sql_str

LANDING_SUFFIXES = (".parquet", ".pq", ".csv")


def landing_dir(offline: OfflineStore, source: str) -> Path:
    offline.registry.source(source)
    return offline.settings.data_dir / "landing" / source


def waiting_files(offline: OfflineStore, source: str) -> list[Path]:
    d = landing_dir(offline, source)
    if not d.exists():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in LANDING_SUFFIXES
                  and not p.name.startswith("."))


@dataclass
class LandingResult:
    reports: list[IngestReport] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # file -> why it could not be ingested

    @property
    def accepted(self) -> int:
        return sum(r.accepted for r in self.reports)

    @property
    def duplicates(self) -> int:
        return sum(r.duplicates for r in self.reports)

    @property
    def too_late(self) -> int:
        return sum(r.too_late for r in self.reports)

    @property
    def rejected(self) -> int:
        return sum(r.rejected for r in self.reports)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ingest_landing(offline: OfflineStore, source: str, stamp_now: bool = True) -> LandingResult:
    """Ingest every file waiting in the landing folder of `source`; move each out of the way after.

    Dropped files are live data by default: a missing ingested_at becomes the time of ingest.
    """
    result = LandingResult()
    d = landing_dir(offline, source)
    with _locked(d / ".lock"):
        for path in waiting_files(offline, source):
            try:
                report = ingest_file(offline, source, path, stamp_now=stamp_now)
            except IngestError as exc:
                (d / "failed").mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), d / "failed" / path.name)
                (d / "failed" / f"{path.name}.error.txt").write_text(str(exc) + "\n")
                result.failed[path.name] = str(exc)
                continue
            (d / "done").mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), d / "done" / path.name)
            result.reports.append(report)
    return result


def file_event_dates(path: Path) -> tuple[date, date] | None:
    """First and last event date in a landing file (None when it has none or cannot be read)."""
    con = connect()
    try:
        reader = (f"read_parquet({sql_str(path)})" if path.suffix.lower() in (".parquet", ".pq")
                  else f"read_csv({sql_str(path)}, all_varchar=true, header=true)")
        row = con.execute(f"SELECT min(CAST(TRY_CAST(event_time AS TIMESTAMPTZ) AS DATE)), "
                          f"max(CAST(TRY_CAST(event_time AS TIMESTAMPTZ) AS DATE)) FROM {reader}").fetchone()
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the ingest run, not here
        return None
    finally:
        con.close()
    return (row[0], row[1]) if row and row[0] else None


def day_profiles(offline: OfflineStore, source: str, days: list[date]) -> list[dict]:
    """Per day: events stored, too late, distinct entities, first/last event, events per hour."""
    if not days:
        return []
    con = connect()
    try:
        rel = offline.events_sql(source, dates=days)
        keys = offline.registry.source(source).join_keys
        distinct = ", ".join(f'count(DISTINCT "{k}")' for k in keys)
        con.execute(f"CREATE TEMP TABLE ev AS SELECT * FROM {rel}")
        rows = con.execute(f"""
            SELECT CAST(event_time AS DATE) AS day, count(*), count(*) FILTER (WHERE is_too_late), {distinct},
                   min(event_time), max(event_time), max(ingested_at)
            FROM ev GROUP BY 1 ORDER BY 1""").fetchall()
        hours = con.execute("SELECT CAST(event_time AS DATE), hour(event_time), count(*) FROM ev GROUP BY 1, 2").fetchall()
    finally:
        con.close()
    per_hour: dict[date, list[int]] = {}
    for d, h, n in hours:
        per_hour.setdefault(d, [0] * 24)[h] = n
    out = {}
    k = len(keys)
    for r in rows:
        out[r[0]] = {"day": r[0], "events": r[1], "too_late": r[2],
                     **{f"distinct_{key}": r[3 + i] for i, key in enumerate(keys)},
                     "first_event": r[3 + k], "last_event": r[4 + k], "newest_ingested_at": r[5 + k],
                     "events_per_hour": per_hour.get(r[0], [0] * 24)}
    return [out.get(d, {"day": d, "events": 0, "too_late": 0, "events_per_hour": [0] * 24}) for d in days]
