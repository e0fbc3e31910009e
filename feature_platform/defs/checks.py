"""Asset checks: thin wrappers turning `health.py` verdicts into Dagster check results.

Every check runs after each materialization of its asset (it is part of the asset's run) and on a
cron via declarative automation (`CHECK_CRON`), so freshness alerts fire even when nothing runs.
Blocking checks (schema version, stored version, registry lock) fail the step and keep downstream
assets from running on data written under another definition.
"""


from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import dagster as dg
import pyarrow.parquet as pq

from feature_platform.defs import health
from feature_platform.defs.assets import (
    REGISTRY_KEY,
    online_key,
    raw_key,
    training_key,
    training_set_path,
    view_key,
)
from feature_platform.defs.registry_lock import compare, lock_path
from feature_platform.defs.resources import FeatureStoreResource
from feature_platform.registry.model import BatchFeatureView, FeatureService, Registry, Source, StreamFeatureView

CHECK_CRON = "*/15 * * * *"
CHECK_AUTOMATION = dg.AutomationCondition.cron_tick_passed(CHECK_CRON, "UTC").with_label(f"every 15 minutes")


def to_metadata(meta: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    out: dict[str, dg.MetadataValue] = {}
    for k, v in meta.items():
        if isinstance(v, datetime):
            out[k] = dg.MetadataValue.timestamp(v)
        elif v is None:
            out[k] = dg.MetadataValue.null()
        elif isinstance(v, bool):
            out[k] = dg.MetadataValue.bool(v)
        elif isinstance(v, int):
            out[k] = dg.MetadataValue.int(v)
        elif isinstance(v, float):
            out[k] = dg.MetadataValue.float(v)
        elif isinstance(v, (list, dict)):
            out[k] = dg.MetadataValue.json(v)
        else:
            out[k] = dg.MetadataValue.text(str(v))
    return out


def to_result(verdict: health.Verdict) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.ERROR if verdict.severity == health.ERROR else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(passed=verdict.passed, severity=severity, description=verdict.description,
                               metadata=to_metadata(verdict.metadata))


def _check(asset: dg.AssetKey, name: str, description: str, blocking: bool,
           measure: Callable[[FeatureStoreResource, dg.AssetCheckExecutionContext], health.Verdict]
           ) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset, name=name, description=description, blocking=blocking,
                    automation_condition=CHECK_AUTOMATION)
    def _fn(context: dg.AssetCheckExecutionContext, fp: FeatureStoreResource) -> dg.AssetCheckResult:
        return to_result(measure(fp, context))

    return _fn


def raw_checks(registry: Registry, source: Source) -> list[dg.AssetChecksDefinition]:
    key, s = raw_key(source), source.name
    off = lambda fp: fp.store(registry).offline  # noqa: E731
    sla = source.sla
    return [
        _check(key, "raw_freshness", f"WARN when the newest {s} event is older than {sla.freshness} (SourceSLA.freshness).",
               False, lambda fp, _: health.raw_freshness(off(fp), s, fp.now())),
        _check(key, "raw_missing_days", f"ERROR when a day between the first stored {s} day and yesterday has no events.",
               False, lambda fp, _: health.raw_missing_days(off(fp), s, fp.now())),
        _check(key, "deadletter_jump", f"WARN when the newest day's dead-letter rate jumps above {sla.rate_jump}x its 7-day median.",
               False, lambda fp, _: health.rate_jump(off(fp), s, fp.now(), "deadletter")),
        _check(key, "too_late_jump", f"WARN when the newest day's too-late rate jumps above {sla.rate_jump}x its 7-day median.",
               False, lambda fp, _: health.rate_jump(off(fp), s, fp.now(), "too_late")),
        _check(key, "schema_version", f"ERROR (blocking) when stored {s} Parquet was written under another schema "
               f"version than the registry's v{source.schema_version} (fp.schema_version metadata and column).",
               True, lambda fp, _: health.raw_schema_version(off(fp), s, fp.now())),
    ]


def lock_verdict(registry: Registry, view: BatchFeatureView | None, now: datetime) -> health.Verdict:
    path = lock_path()
    report = compare(registry, path)
    meta: dict[str, Any] = {"lock_file": str(path), "measured_at": now}
    if not report.exists:
        return health.Verdict("definitions_match_lock", False, health.WARN, report.render(), meta)
    changed = report.changed
    if view is not None:
        changed = [c for c in changed if c.kind == "view" and c.name == view.name and c.version == str(view.version)]
        meta.update({"fingerprint": view.fingerprint(), "version": view.version})
    meta.update({"changed": [c.headline() for c in changed], "new_unlocked": report.new, "removed": report.removed,
                 "diff": "\n".join(c.diff for c in changed)})
    if changed:
        return health.Verdict("definitions_match_lock", False, health.ERROR,
                              "; ".join(c.headline() for c in changed)
                              + ". Give the changed definition a new version, or revert it (`feature-platform registry diff`)",
                              meta)
    return health.Verdict("definitions_match_lock", True, health.ERROR,
                          f"definitions match {path.name}" + (f" ({len(report.new)} new version(s) not locked yet)" if report.new else ""),
                          meta)


def view_checks(registry: Registry, view: BatchFeatureView) -> list[dg.AssetChecksDefinition]:
    key = view_key(view)
    off = lambda fp: fp.store(registry).offline  # noqa: E731
    return [
        _check(key, "partition_deadline", f"ERROR when a partition is not materialized by D+1 00:00 UTC + {view.sla.deadline}.",
               False, lambda fp, _: health.batch_deadline(off(fp), view, fp.now())),
        _check(key, "stored_version", f"ERROR (blocking) when stored partitions carry another fp.version/fp.fingerprint "
               f"than v{view.version}/{view.fingerprint()}.",
               True, lambda fp, _: health.view_stored_version(off(fp), view, fp.now())),
        _check(key, "definitions_match_lock", "ERROR (blocking) when this version's definition differs from the "
               "registry lock (changed without a version bump).",
               True, lambda fp, _: lock_verdict(registry, view, fp.now())),
    ]


def online_state(fp: FeatureStoreResource, registry: Registry, view: BatchFeatureView
                 ) -> tuple[datetime | None, datetime | None]:
    """(newest feature_timestamp pushed, pushed_at) as the online store itself records them."""
    entry = fp.store(registry).online.materialized_versions().get((view.name, view.version)) or {}
    ft = entry.get("max_feature_timestamp")
    pushed = entry.get("last_push_at")
    return (datetime.fromisoformat(ft) if ft else None, datetime.fromisoformat(pushed) if pushed else None)


def online_verdict(fp: FeatureStoreResource, registry: Registry, view: BatchFeatureView) -> health.Verdict:
    now = fp.now()
    try:
        ft, pushed = online_state(fp, registry, view)
    except Exception as exc:  # noqa: BLE001 - Redis down is itself the alert
        return health.Verdict("online_freshness", False, health.ERROR,
                              f"cannot read the online store: {exc}", {"measured_at": now})
    return health.online_freshness(view, ft, now, pushed_at=pushed)


def online_checks(registry: Registry, view: BatchFeatureView) -> list[dg.AssetChecksDefinition]:
    key = online_key(view)
    return [_check(key, "online_freshness", f"ERROR when the online copy's feature_timestamp (as recorded in Redis) is "
                   f"older than cadence + grace ({view.cadence + view.sla.grace}).", False,
                   lambda fp, _: online_verdict(fp, registry, view)),
            _check(key, "online_version", f"ERROR when the online copy was written under another fingerprint than "
                   f"v{view.version}'s {view.fingerprint()}.", False, _online_version_measure(registry, view))]


def stream_checks(registry: Registry, source: Source,
                  stream_keys: Callable[[StreamFeatureView], dg.AssetKey] | None = None) -> list[dg.AssetChecksDefinition]:
    """Stream-worker health of a source: heartbeat (ERROR), lag and delay p99 (WARN).

    Without the streaming code location (`stream_keys` None) they sit on `raw_<source>` (the worker
    is that source's live door). With it, they sit on each stream view's online asset, next to an
    `online_version` check of that view's online fingerprint.
    """
    from feature_platform.defs import stream_health

    sla = stream_health.stream_sla(registry, source.name)
    if sla is None:
        return []

    def pick(name: str, view_sla=None):
        def measure(fp: FeatureStoreResource, _) -> health.Verdict:
            verdicts = stream_health.read_verdicts(fp.settings(), registry, source.name, fp.now(), sla=view_sla)
            return next((v for v in verdicts if v.name == name), verdicts[0])
        return measure

    def trio(key: dg.AssetKey, s, where: str) -> list[dg.AssetChecksDefinition]:
        return [
            _check(key, "stream_heartbeat", f"ERROR when the {where} stream worker's newest heartbeat is older than "
                   f"{s.heartbeat}, or it stopped.", False, pick("stream_heartbeat", s)),
            _check(key, "stream_lag", f"WARN when the consumer lag exceeds {s.consumer_lag_events} events.",
                   False, pick("stream_lag", s)),
            _check(key, "stream_delay_p99", f"WARN when the event-to-online delay p99 exceeds {s.delay_p99}.",
                   False, pick("stream_delay_p99", s)),
        ]

    if stream_keys is None:
        return trio(raw_key(source), sla, source.name)
    out: list[dg.AssetChecksDefinition] = []
    for view in registry.views_of_source(source.name):
        if isinstance(view, StreamFeatureView):
            key = stream_keys(view)
            out += trio(key, view.sla, source.name)
            out.append(_check(key, "online_version", f"ERROR when the online copy of {view.name} v{view.version} "
                              f"carries another fingerprint than {view.fingerprint()}.", False,
                              _online_version_measure(registry, view)))
    return out


def _online_version_measure(registry: Registry, view):
    def measure(fp: FeatureStoreResource, _) -> health.Verdict:
        try:
            entry = fp.store(registry).online.materialized_versions().get((view.name, view.version))
        except Exception as exc:  # noqa: BLE001 - Redis down is itself the alert
            return health.Verdict("online_version", False, health.ERROR, f"cannot read the online store: {exc}",
                                  {"measured_at": fp.now()})
        return health.online_version(view, entry, fp.now())
    return measure


def training_checks(registry: Registry, service: FeatureService) -> list[dg.AssetChecksDefinition]:
    key = training_key(service)

    def measure(fp: FeatureStoreResource, context: dg.AssetCheckExecutionContext) -> health.Verdict:
        from feature_platform.offline.ingest import read_input

        settings = fp.settings()
        path = training_set_path(settings.data_dir, service.name)
        now = fp.now()
        meta: dict[str, Any] = {"path": str(path), "measured_at": now}
        if not path.exists():
            return health.Verdict("rows_match_labels", False, health.ERROR, f"{path} does not exist", meta)
        event = context.instance.get_latest_materialization_event(key)
        labels_md = event.asset_materialization.metadata.get("labels_path") if event and event.asset_materialization else None
        labels_path = labels_md.value if labels_md is not None else str(settings.data_dir / "demo" / "labels.parquet")
        rows = pq.read_metadata(path).num_rows
        schema = pq.read_schema(path)
        missing = [r.column for r in service.features if r.column not in schema.names]
        label_rows = read_input(Path(labels_path)).num_rows
        meta.update({"rows": rows, "label_rows": label_rows, "missing_columns": missing})
        ok = rows == label_rows and not missing
        return health.Verdict("rows_match_labels", ok, health.ERROR,
                              f"{rows} rows for {label_rows} labels" + (f"; missing feature columns {missing}" if missing else ""),
                              meta)

    return [_check(key, "rows_match_labels", "ERROR when the training set lost or gained label rows, or lacks a "
                   "pinned feature column.", False, measure)]


def registry_checks(registry: Registry) -> list[dg.AssetChecksDefinition]:
    return [_check(REGISTRY_KEY, "definitions_match_lock", "ERROR (blocking) when any locked source schema version "
                   "or view version changed its definition without a version bump.", True,
                   lambda fp, _: lock_verdict(registry, None, fp.now()))]
