"""Dagster assets generated from the registry; each is a thin wrapper over the core.

* `raw_<source>`                daily (event date) - ingests the landing folder, measures the day(s)
* `<view>_v<version>`           daily batch view, 30-day (max lookback) window over `raw_<source>`
* `<view>_v<version>_online`    pushes the newest partition to Redis whenever the view updates
* `<service>_training_set`      point-in-time training set of a service (demo: `fraud_training_set`)
* `feature_registry`            the registry itself: versions, fingerprints, pins

Versions are part of the asset key so two versions of a view materialize side by side.
"""


import os
import time
import warnings
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from feature_platform.defs.landing import day_profiles, ingest_landing
from feature_platform.offline.compact import closed_days, compact_partition
from feature_platform.defs.resources import FeatureStoreResource
from feature_platform.offline.batch import feature_timestamp, materialize_partition, profile
from feature_platform.offline.store import read_parquet_metadata
from feature_platform.registry.model import BatchFeatureView, FeatureService, Registry, Source

DEFAULT_PARTITION_START = "2025-01-01"
TRAINING_SET_NAMES = {"fraud_detection": "fraud_training_set"}



@contextmanager
def beta_backfill_policy() -> Iterator[None]:
    """BackfillPolicy.single_run() (and the asset parameter taking it) are beta in Dagster 1.13, but
    it is what `dagster asset materialize --partition-range` needs (FACTS.md): we use it on purpose
    and silence exactly that BetaWarning, around the two asset definitions that take it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")
        warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*BackfillPolicy.*")
        yield


with beta_backfill_policy():
    SINGLE_RUN = dg.BackfillPolicy.single_run()


def partition_start() -> str:
    return os.environ.get("FP_PARTITION_START") or DEFAULT_PARTITION_START


def raw_partitions() -> dg.DailyPartitionsDefinition:
    """Event dates up to and including today: today's raw partition fills up as events land."""
    return dg.DailyPartitionsDefinition(start_date=partition_start(), end_offset=1, timezone="UTC")


def batch_partitions() -> dg.DailyPartitionsDefinition:
    """Feature dates up to yesterday: day D's rows (feature_timestamp D+1 00:00) need D to be over."""
    return dg.DailyPartitionsDefinition(start_date=partition_start(), timezone="UTC")


def raw_key(source: Source | str) -> dg.AssetKey:
    return dg.AssetKey(f"raw_{source if isinstance(source, str) else source.name}")


def view_key(view: BatchFeatureView) -> dg.AssetKey:
    return dg.AssetKey(f"{view.name}_v{view.version}")


def online_key(view: BatchFeatureView) -> dg.AssetKey:
    return dg.AssetKey(f"{view.name}_v{view.version}_online")


def training_key(service: FeatureService | str) -> dg.AssetKey:
    name = service if isinstance(service, str) else service.name
    return dg.AssetKey(TRAINING_SET_NAMES.get(name, f"{name}_training_set"))


REGISTRY_KEY = dg.AssetKey("feature_registry")

# The online copy follows every batch update (any partition: re-running an old day is harmless,
# the online store never rolls back to an older feature_timestamp), but never while one is running.
ONLINE_PUSH_CONDITION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after each batch-view update")


def md_table(rows: list[dict[str, Any]], limit: int = 10) -> str:
    """A small markdown table for asset pages."""
    if not rows:
        return "_(no rows)_"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in rows[:limit]:
        out.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    if len(rows) > limit:
        out.append(f"\n_{len(rows) - limit} more rows_")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return "" if v is None else str(v)


def bar_chart(labels: list[str], values: list[int], width: int = 30) -> str:
    """A text bar chart in markdown (Dagster metadata has no plot type): events per hour and the like."""
    peak = max(values) if values and max(values) > 0 else 1
    lines = [f"{lab:>5} {'█' * round(width * v / peak):<{width}} {v}" for lab, v in zip(labels, values)]
    return "```\n" + "\n".join(lines) + "\n```"


def _days(context: dg.AssetExecutionContext) -> list[date]:
    return [date.fromisoformat(k) for k in context.partition_keys]


# ---- raw events ---------------------------------------------------------------------------------------

def build_raw_asset(registry: Registry, source: Source) -> dg.AssetsDefinition:
    sla = source.sla
    with beta_backfill_policy():
        return _raw_asset(registry, source, sla)


def _raw_asset(registry: Registry, source: Source, sla) -> dg.AssetsDefinition:
    @dg.asset(
        key=raw_key(source),
        partitions_def=raw_partitions(),
        backfill_policy=SINGLE_RUN,
        group_name="raw",
        kinds={"parquet", "duckdb"},
        description=(f"Raw `{source.name}` events (schema v{source.schema_version}) by event date. Materializing "
                     f"ingests the files waiting in `<data>/landing/{source.name}/`, then measures the day(s) stored."),
        metadata={"fp.source": source.name, "fp.schema_version": source.schema_version,
                  "allowed_lateness": str(source.allowed_lateness)},
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=max(sla.freshness, timedelta(minutes=1))),
    )
    def _raw(context: dg.AssetExecutionContext, fp: FeatureStoreResource) -> dg.MaterializeResult:
        store = fp.store(registry)
        landed = ingest_landing(store.offline, source.name)
        for r in landed.reports:
            context.log.info(r.summary())
        days = _days(context)
        # Closed days (lateness horizon passed) get their many small files merged into one.
        closed = set(closed_days(store.offline, source.name, int(fp.now().timestamp() * 1_000_000)))
        compacted = [compact_partition(store.offline, source.name, d) for d in days if d in closed]
        for c in compacted:
            context.log.info(c.summary())
        profiles = day_profiles(store.offline, source.name, days)
        if landed.failed:
            raise dg.Failure(
                description=(f"{len(landed.failed)} landing file(s) could not be ingested (moved to "
                             f"landing/{source.name}/failed/ with the reason beside them): "
                             + "; ".join(f"{k}: {v}" for k, v in landed.failed.items())
                             + f". {landed.accepted} events from the other files were stored."))
        per_day = [{"day": p["day"].isoformat(), "events": p["events"], "too_late": p["too_late"],
                    **{k: v for k, v in p.items() if k.startswith("distinct_")}} for p in profiles]
        events = sum(p["events"] for p in profiles)
        metadata: dict[str, Any] = {
            "dagster/row_count": events,
            "events": events,
            "too_late": sum(p["too_late"] for p in profiles),
            "landing_files_ingested": len(landed.reports),
            "landing_accepted": landed.accepted,
            "landing_duplicates": landed.duplicates,
            "landing_too_late": landed.too_late,
            "landing_deadletter_rows": landed.rejected,
            "deadletter_files": dg.MetadataValue.json([r.deadletter_path for r in landed.reports if r.deadletter_path]),
            "per_day": dg.MetadataValue.md(md_table(per_day, limit=62)),
            "files_compacted": sum(c.files_before - c.files_after for c in compacted),
            "duplicates_removed_by_compaction": sum(c.duplicates_removed for c in compacted),
        }
        if len(profiles) == 1:
            metadata["events_per_hour"] = dg.MetadataValue.md(
                bar_chart([f"{h:02d}h" for h in range(24)], profiles[0]["events_per_hour"]))
            if profiles[0].get("last_event"):
                metadata["newest_event_time"] = dg.MetadataValue.timestamp(profiles[0]["last_event"])
        else:
            metadata["events_per_day"] = dg.MetadataValue.md(
                bar_chart([p["day"].strftime("%m-%d") for p in profiles], [p["events"] for p in profiles]))
        return dg.MaterializeResult(metadata=metadata)

    return _raw


# ---- batch views --------------------------------------------------------------------------------------

def build_batch_asset(registry: Registry, view: BatchFeatureView) -> dg.AssetsDefinition:
    lookback_days = view.max_lookback.days
    deadline = view.sla.deadline
    with beta_backfill_policy():
        return _batch_asset(registry, view, lookback_days, deadline)


def _batch_asset(registry: Registry, view: BatchFeatureView, lookback_days: int, deadline: timedelta) -> dg.AssetsDefinition:
    @dg.asset(
        key=view_key(view),
        partitions_def=batch_partitions(),
        backfill_policy=SINGLE_RUN,
        ins={"raw": dg.AssetIn(key=raw_key(view.source), dagster_type=dg.Nothing,
                               partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-(lookback_days - 1)))},
        group_name="batch_views",
        kinds={"parquet", "duckdb"},
        description=(f"Batch view `{view.name}` v{view.version}: one row per {view.entity.join_key} per day "
                     f"(feature_timestamp = end of the day), over a {lookback_days}-day lookback. "
                     f"{view.description}"),
        metadata={"fp.view": view.name, "fp.version": view.version, "fp.fingerprint": view.fingerprint(),
                  "availability_delay": str(view.availability_delay), "ttl": str(view.ttl),
                  "deadline": f"D+1 00:00 UTC + {deadline}"},
        freshness_policy=dg.FreshnessPolicy.cron(
            deadline_cron=f"{int(deadline.total_seconds() // 60) % 60} {int(deadline.total_seconds() // 3600)} * * *",
            lower_bound_delta=deadline),
    )
    def _batch(context: dg.AssetExecutionContext, fp: FeatureStoreResource) -> dg.MaterializeResult:
        store = fp.store(registry)
        now = fp.now()
        days = _days(context)
        not_final = [d for d in days if feature_timestamp(d) + view.source.allowed_lateness > now]
        if not_final:
            raise dg.Failure(description=(
                f"{view.name} v{view.version}: day(s) {[d.isoformat() for d in not_final]} are not final yet: "
                f"late events may arrive until the end of the day + {view.source.allowed_lateness} "
                f"(allowed lateness of {view.source.name}). The daily schedule runs each day after that."))
        reports = []
        for d in days:
            report = materialize_partition(store.offline, view, d)
            context.log.info(f"{view.name} v{view.version} {d}: {report.rows} rows in {report.seconds:.2f}s")
            reports.append(report)
        last = reports[-1]
        sample = pq.read_table(last.path).slice(0, 5).to_pylist()
        profile_rows = [{"feature": f, "null_rate": last.null_rates.get(f, 0.0),
                         "min": last.value_ranges.get(f, (None, None))[0],
                         "max": last.value_ranges.get(f, (None, None))[1]} for f in view.feature_names]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": sum(r.rows for r in reports),
            "rows": sum(r.rows for r in reports),
            "per_day": dg.MetadataValue.md(md_table(
                [{"day": r.day.isoformat(), "rows": r.rows, "seconds": round(r.seconds, 3),
                  "lookback_days_with_events": r.source_event_days} for r in reports], limit=62)),
            "feature_timestamp": dg.MetadataValue.timestamp(last.feature_timestamp),
            "null_rates": dg.MetadataValue.json(last.null_rates),
            "features": dg.MetadataValue.md(md_table(profile_rows)),
            "sample": dg.MetadataValue.md(md_table(sample, limit=5)),
            "path": dg.MetadataValue.path(str(last.path)),
            "fp.version": view.version,
            "fp.fingerprint": view.fingerprint(),
        })

    return _batch


def build_online_asset(registry: Registry, view: BatchFeatureView) -> dg.AssetsDefinition:
    @dg.asset(
        key=online_key(view),
        deps=[view_key(view)],
        group_name="online",
        kinds={"redis"},
        automation_condition=ONLINE_PUSH_CONDITION,
        description=(f"The newest partition of `{view.name}` v{view.version} in Redis (one hash per "
                     f"{view.entity.join_key}, key TTL ending at feature_timestamp + {view.ttl}). Runs after "
                     f"every update of the batch view; never rolls a newer value back."),
        metadata={"fp.view": view.name, "fp.version": view.version, "fp.fingerprint": view.fingerprint()},
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=view.cadence + view.sla.grace),
    )
    def _online(context: dg.AssetExecutionContext, fp: FeatureStoreResource) -> dg.MaterializeResult:
        store = fp.store(registry)
        days = store.offline.view_dates(view)
        if not days:
            raise dg.Failure(description=(f"{view.name} v{view.version} has no materialized partition to push; "
                                          f"materialize {view_key(view).to_user_string()} first"))
        day = days[-1]
        path = store.offline.view_partition_path(view, day)
        stored = read_parquet_metadata(path)
        if stored.get("fp.fingerprint") != view.fingerprint() or stored.get("fp.version") != str(view.version):
            raise dg.Failure(description=(
                f"{path} was written by {view.name} v{stored.get('fp.version')} fingerprint "
                f"{stored.get('fp.fingerprint')}, not the registered v{view.version} {view.fingerprint()}: "
                f"refusing to push it online; re-materialize {view_key(view).to_user_string()} for {day}"))
        table = pq.read_table(path)
        table = table.replace_schema_metadata(None)
        started = time.perf_counter()
        report = store.online.push_batch_rows(view, table, now=fp.now())
        store.online.mark_materialized(view)
        seconds = getattr(report, "seconds", None) or (time.perf_counter() - started)
        ft = getattr(report, "feature_timestamp", None) or feature_timestamp(day)
        context.log.info(f"pushed {view.name} v{view.version} {day}: {report}")
        return dg.MaterializeResult(metadata={
            "partition": day.isoformat(),
            "rows": table.num_rows,
            "rows_written": int(getattr(report, "written", table.num_rows)),
            "skipped_older": int(getattr(report, "skipped_older", 0)),
            "seconds": float(seconds),
            "rows_per_second": float(getattr(report, "rows_per_second", 0.0) or (table.num_rows / seconds if seconds else 0.0)),
            "feature_timestamp": dg.MetadataValue.timestamp(ft),
            "expires_at": dg.MetadataValue.timestamp(ft + view.ttl),
        })

    return _online


# ---- training sets and the registry --------------------------------------------------------------------

class TrainingSetConfig(dg.Config):
    """Which labels to join and how; defaults fit the demo (`feature-platform demo`)."""

    labels_path: str = ""  # default: <data>/demo/labels.parquet
    mode: str = "ingestion"


def training_set_path(data_dir: Path, service: str) -> Path:
    return data_dir / "training" / f"{service}.parquet"


def build_training_asset(registry: Registry, service: FeatureService) -> dg.AssetsDefinition:
    view_names = {r.view: r.version for r in service.features}
    deps = []
    for name, version in sorted(view_names.items()):
        v = registry.view(name, version)
        deps.append(view_key(v) if isinstance(v, BatchFeatureView) else raw_key(v.source))
    deps = list(dict.fromkeys(deps))

    @dg.asset(
        key=training_key(service),
        deps=deps,
        group_name="training",
        kinds={"parquet", "duckdb"},
        description=(f"Point-in-time correct training set of feature service `{service.name}`: the label rows "
                     f"in order plus one `<view>__<feature>` column per pinned feature."),
        metadata={"fp.service": service.name, "features": len(service.features),
                  "pinned_versions": dg.MetadataValue.json(service.pinned_versions)},
    )
    def _training(context: dg.AssetExecutionContext, config: TrainingSetConfig,
                  fp: FeatureStoreResource) -> dg.MaterializeResult:
        from feature_platform.offline.ingest import read_input
        from feature_platform.offline.training import get_historical_features

        store = fp.store(registry)
        labels_path = Path(config.labels_path) if config.labels_path else store.settings.data_dir / "demo" / "labels.parquet"
        if not labels_path.exists():
            raise dg.Failure(description=(f"labels file {labels_path} does not exist: run `feature-platform demo-data` "
                                          f"or set labels_path in the run config of {training_key(service).to_user_string()}"))
        if config.mode not in ("ingestion", "event"):
            raise dg.Failure(description=f"mode must be 'ingestion' or 'event', got {config.mode!r}")
        labels = read_input(labels_path)
        started = time.perf_counter()
        table = get_historical_features(store.offline, labels, list(service.features), mode=config.mode)
        seconds = time.perf_counter() - started
        out = training_set_path(store.settings.data_dir, service.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, out)
        feature_cols = [r.column for r in service.features]
        null_rates, _ = profile(table, feature_cols)
        metadata: dict[str, Any] = {
            "dagster/row_count": table.num_rows,
            "rows": table.num_rows,
            "labels_path": dg.MetadataValue.path(str(labels_path)),
            "label_rows": labels.num_rows,
            "mode": config.mode,
            "seconds": round(seconds, 3),
            "null_rates": dg.MetadataValue.md(md_table([{"column": c, "null_rate": r} for c, r in null_rates.items()], limit=50)),
            "sample": dg.MetadataValue.md(md_table(table.slice(0, 5).to_pylist(), limit=5)),
            "path": dg.MetadataValue.path(str(out)),
        }
        if "is_fraud" in table.column_names and table.num_rows:
            import pyarrow.compute as pc

            metadata["positive_rate"] = float(pc.mean(pc.cast(table.column("is_fraud"), pa.float64())).as_py() or 0.0)
        return dg.MaterializeResult(metadata=metadata)

    return _training


def build_registry_asset(registry: Registry) -> dg.AssetsDefinition:
    @dg.asset(
        key=REGISTRY_KEY,
        group_name="registry",
        kinds={"python"},
        description=("The feature repo as loaded: sources, view versions and fingerprints, and which services pin "
                     "them. Its check compares every definition with the registry lock file."),
    )
    def _registry(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        rows = [{"view": v.name, "version": v.version, "kind": v.kind, "fingerprint": v.fingerprint(),
                 "pinned_by": ", ".join(registry.services_using(v.name, v.version)) or "-"}
                for v in sorted(registry.views, key=lambda v: (v.name, v.version))]
        sources = [{"source": s.name, "schema_version": s.schema_version, "fingerprint": s.fingerprint(),
                    "allowed_lateness": str(s.allowed_lateness)} for s in registry.sources]
        return dg.MaterializeResult(metadata={
            "views": dg.MetadataValue.md(md_table(rows, limit=100)),
            "sources": dg.MetadataValue.md(md_table(sources, limit=100)),
            "services": dg.MetadataValue.json({s.name: [str(r) for r in s.features] for s in registry.services}),
        })

    return _registry
