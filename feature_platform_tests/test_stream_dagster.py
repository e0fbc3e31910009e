"""The Dagster side of streaming: the job runs the real worker and observes the online stream views,
the op refuses a second worker per source (Redis lease), the sensor launches a worker only when
none is alive and none is queued or running."""

from __future__ import annotations

import threading

import dagster as dg
import redis

from feature_platform.defs.resources import FeatureStoreResource
from feature_platform.defs.streaming import (
    JOB_NAME,
    OP_NAME,
    STREAM_SOURCE_TAG,
    build_stream_sensor,
    build_streaming_defs,
    build_streaming_job,
)
from feature_platform.streaming.metrics import read_stream_metrics
from feature_platform.streaming.producer import produce
from feature_platform.streaming.worker import StreamWorker, WorkerConfig
from feature_platform_tests import reference as ref
from feature_platform_tests.test_stream_helpers import random_log, stream_events, wait_for


def _resource(settings) -> FeatureStoreResource:
    return FeatureStoreResource(data_dir=str(settings.data_dir), redis_url=settings.redis_url,
                                key_prefix=settings.key_prefix)


def _run_config(**cfg) -> dict:
    return {"ops": {OP_NAME: {"config": {"source": "transactions", **cfg}}}}


def test_job_runs_the_worker_and_observes_online_views(settings, registry):
    log = random_log(seed=2, n=400)
    produce(settings, registry, "transactions", log.table)
    job = build_streaming_job(registry)
    result = job.execute_in_process(run_config=_run_config(max_seconds=2.0, observe_every_seconds=0.5),
                                    resources={"fp": _resource(settings)}, instance=dg.DagsterInstance.ephemeral(),
                                    tags={STREAM_SOURCE_TAG: "transactions"})
    assert result.success
    firsts = ref.dedupe(stream_events(settings))
    obs = [e.event_specific_data.asset_observation for e in result.all_events
           if e.event_type_value == "ASSET_OBSERVATION"]
    keys = {o.asset_key.to_user_string() for o in obs}
    assert keys == {"user_txn_stats_v1_online", "merchant_txn_stats_v1_online"}
    final = obs[-1].metadata
    assert final["events"].value == len(firsts)
    assert final["consumer_lag"].value == 0 and final["dead_letter"].value == log.invalid
    m = read_stream_metrics(settings, registry, "transactions")
    assert m.lag == 0 and m.pending == 0 and not m.running  # stopped cleanly, lease released
    assert redis.Redis.from_url(settings.redis_url).get(f"{settings.key_prefix}:stream:transactions:lease") is None


def test_op_refuses_a_second_worker_for_the_source(settings, registry):
    produce(settings, registry, "transactions", random_log(seed=4, n=50).table)
    r = redis.Redis.from_url(settings.redis_url)
    r.set(f"{settings.key_prefix}:stream:transactions:lease", "another-worker", px=20_000)
    result = build_streaming_job(registry).execute_in_process(
        run_config=_run_config(max_seconds=1.0), resources={"fp": _resource(settings)},
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "already has a worker (another-worker)" in str(failure.event_specific_data.error)
    assert read_stream_metrics(settings, registry, "transactions").events == 0  # it consumed nothing


def test_sensor_launches_only_when_no_worker_is_alive(settings, registry):
    sensor = build_stream_sensor(registry)
    instance = dg.DagsterInstance.ephemeral()

    def evaluate():
        ctx = dg.build_sensor_context(instance=instance, resources={"fp": _resource(settings)})
        res = sensor(ctx)
        return res if isinstance(res, dg.SkipReason) else list(res)

    # nothing ever ran: launch, tagged with the source
    out = evaluate()
    assert isinstance(out, list) and len(out) == 1
    assert out[0].tags[STREAM_SOURCE_TAG] == "transactions"
    assert out[0].run_config == _run_config()

    # a live worker (here outside Dagster): skip
    worker = StreamWorker(settings, registry, WorkerConfig(consumer="live", max_seconds=30))
    t = threading.Thread(target=worker.run)
    t.start()
    try:
        wait_for(lambda: read_stream_metrics(settings, registry, "transactions").running, what="heartbeat")
        out = evaluate()
        assert isinstance(out, dg.SkipReason) and "alive" in out.skip_message
    finally:
        worker.stop()
        t.join(timeout=30)
    # stopped again: launch again
    assert isinstance(evaluate(), list)


def test_streaming_defs_load_and_merge(registry, settings):
    defs = build_streaming_defs(registry, resource=_resource(settings))
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def(JOB_NAME) is not None
    assert {s.key.to_user_string() for s in defs.assets} == {"user_txn_stats_v1_online", "merchant_txn_stats_v1_online"}
    from feature_platform.defs import defs as top

    assert top.resolve_job_def(JOB_NAME).name == JOB_NAME
