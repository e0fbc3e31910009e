"""Dagster side of streaming: a long-running `streaming_update` job per source, a sensor that keeps it
running, and observations of the online stream views carrying throughput and lag.

Thin wrappers only: the worker is feature_platform.streaming.worker.StreamWorker, the numbers come
from feature_platform.streaming.metrics.read_stream_metrics.

At most one run per source, twice over:
* the run carries the tag `fp/stream_source=<source>`; dagster.yaml limits it to one run per value:

      concurrency:
        runs:
          tag_concurrency_limits:
            - key: "fp/stream_source"
              value: {applyLimitPerUniqueValue: true}
              limit: 1

* the op itself takes the source's Redis lease (`<prefix>:stream:<source>:lease`, renewed with every
  heartbeat, 15 s ttl) and fails with a clear message when another exclusive worker holds it, so even
  a launch that bypasses the queue (or a second Dagster instance) cannot run two.

`streaming_defs` carries no resources: it is merged into the top-level definitions, which provide
the `fp` FeatureStoreResource. `build_streaming_defs(resource=...)` gives a standalone copy (tests).
"""


import time
from typing import Optional

import dagster as dg

from feature_platform.defs.resources import FeatureStoreResource
from feature_platform.registry import Registry, StreamFeatureView, load_registry

STREAM_SOURCE_TAG = "fp/stream_source"
JOB_NAME = "streaming_update"
OP_NAME = "stream_worker"
ACTIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                   dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def stream_online_key(view: StreamFeatureView) -> dg.AssetKey:
    """`<view>_v<version>_online`, the same spelling as the batch views' online assets."""
    return dg.AssetKey(f"{view.name}_v{view.version}_online")


def stream_sources(registry: Registry) -> list[str]:
    return sorted({v.source.name for v in registry.views if isinstance(v, StreamFeatureView)})


class StreamWorkerConfig(dg.Config):
    source: str = "transactions"
    consumer: Optional[str] = None       # default: dagster-<run id>
    batch: int = 1000
    block_ms: int = 100
    flush_interval: float = 1.0
    observe_every_seconds: float = 30.0  # how often to log AssetObservations with throughput and lag
    max_seconds: Optional[float] = None  # stop after this long (tests, drills); None = until terminated


def _observation_metadata(m) -> dict:
    def num(v):
        return dg.MetadataValue.float(float(v)) if v is not None else dg.MetadataValue.text("n/a")

    return {
        "events_per_s": num(m.events_per_s),
        "consumer_lag": dg.MetadataValue.int(int(m.lag)) if m.lag is not None else dg.MetadataValue.text("n/a"),
        "pending": dg.MetadataValue.int(m.pending),
        "delay_p50_ms": num(m.delay_p50_ms),
        "delay_p99_ms": num(m.delay_p99_ms),
        "heartbeat_age_s": num(m.heartbeat_age_seconds),
        "events": dg.MetadataValue.int(m.events),
        "late": dg.MetadataValue.int(m.late),
        "too_late": dg.MetadataValue.int(m.too_late),
        "duplicates": dg.MetadataValue.int(m.duplicates),
        "dead_letter": dg.MetadataValue.int(m.dead_letter),
    }


def build_stream_op(registry: Registry) -> dg.OpDefinition:
    @dg.op(name=OP_NAME, description="Run the stream worker of one source until the run is terminated.")
    def stream_worker(context: dg.OpExecutionContext, config: StreamWorkerConfig, fp: FeatureStoreResource) -> None:
        from feature_platform.streaming.metrics import read_stream_metrics
        from feature_platform.streaming.worker import LeaseHeld, StreamWorker, WorkerConfig

        settings = fp.settings()
        src = registry.source(config.source)
        views = [v for v in registry.views_of_source(src.name) if isinstance(v, StreamFeatureView)]
        cfg = WorkerConfig(source=src.name, batch=config.batch, block_ms=config.block_ms,
                           flush_interval=config.flush_interval, exclusive=True, max_seconds=config.max_seconds)
        cfg.consumer = config.consumer or f"dagster-{context.run_id[:8]}"
        last = {"t": 0.0}

        def observe(force: bool = False) -> None:
            now = time.monotonic()
            if not force and now - last["t"] < config.observe_every_seconds:
                return
            last["t"] = now
            try:
                m = read_stream_metrics(settings, registry, src.name, client=worker.r)
            except Exception as exc:  # noqa: BLE001 - Redis away: the worker is retrying, try next beat
                context.log.warning(f"could not read stream metrics: {exc}")
                return
            meta = _observation_metadata(m)
            for v in views:
                context.log_event(dg.AssetObservation(asset_key=stream_online_key(v), metadata=meta))

        worker = StreamWorker(settings, registry, cfg, on_heartbeat=lambda _s: observe())
        context.log.info(f"stream worker {cfg.consumer} on {worker.keys.stream}")
        try:
            report = worker.run()
        except LeaseHeld as exc:
            raise dg.Failure(description=str(exc)) from exc
        observe(force=True)
        context.log.info(f"worker stopped: {report}")

    return stream_worker


def build_streaming_job(registry: Registry) -> dg.JobDefinition:
    op = build_stream_op(registry)

    @dg.job(name=JOB_NAME, tags={"fp/kind": "streaming"},
            description="Long-running stream worker; one run per source (tag fp/stream_source, Redis lease).")
    def streaming_update():
        op()

    return streaming_update


def build_stream_sensor(registry: Registry) -> dg.SensorDefinition:
    sources = stream_sources(registry)

    @dg.sensor(name="streaming_update_keeper", job_name=JOB_NAME, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Launch the stream worker of a source whose heartbeat is stale and which has no active run.")
    def keeper(context: dg.SensorEvaluationContext, fp: FeatureStoreResource):
        from feature_platform.streaming.metrics import read_stream_metrics

        settings = fp.settings()
        requests, skipped = [], []
        for source in sources:
            active = context.instance.get_runs(
                filters=dg.RunsFilter(job_name=JOB_NAME, statuses=ACTIVE_STATUSES, tags={STREAM_SOURCE_TAG: source}),
                limit=1)
            if active:
                skipped.append(f"{source}: run {active[0].run_id[:8]} is {active[0].status.value}")
                continue
            try:
                m = read_stream_metrics(settings, registry, source)
            except Exception as exc:  # noqa: BLE001 - Redis down: a worker could not run either
                skipped.append(f"{source}: cannot read metrics ({exc})")
                continue
            if m.running:
                skipped.append(f"{source}: a worker outside Dagster is alive (heartbeat {m.heartbeat_age_seconds:.0f}s ago)")
                continue
            requests.append(dg.RunRequest(
                run_key=None, tags={STREAM_SOURCE_TAG: source},
                run_config={"ops": {OP_NAME: {"config": {"source": source}}}}))
        if requests:
            return requests
        return dg.SkipReason("; ".join(skipped) or "no stream sources")

    return keeper


def build_streaming_defs(registry: Registry | None = None, resource: FeatureStoreResource | None = None) -> dg.Definitions:
    registry = registry or load_registry()
    specs = [dg.AssetSpec(stream_online_key(v), group_name="streaming", kinds={"redis"},
                          description=f"Online tiles of stream view {v.name} v{v.version}, kept fresh by the "
                                      f"streaming_update job; observations carry throughput and lag.",
                          metadata={"source": v.source.name, "features": ", ".join(v.feature_names)})
             for v in registry.views if isinstance(v, StreamFeatureView)]
    return dg.Definitions(assets=specs, jobs=[build_streaming_job(registry)], sensors=[build_stream_sensor(registry)],
                          resources={"fp": resource} if resource is not None else None)


streaming_defs = build_streaming_defs()
