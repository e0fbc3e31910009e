"""Stream-worker health (heartbeat, consumer lag, event-to-online delay p99) against StreamSLA.

Reads the metrics the stream worker writes to Redis (`feature_platform.streaming.metrics`), per
source; the SLA of a source's stream is the strictest StreamSLA among its stream views. No Dagster.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from feature_platform.defs.health import ERROR, WARN, Verdict, human_duration, utc
from feature_platform.registry.model import Registry, StreamFeatureView, StreamSLA


def stream_sla(registry: Registry, source: str) -> StreamSLA | None:
    views = [v for v in registry.views_of_source(source) if isinstance(v, StreamFeatureView)]
    if not views:
        return None
    return StreamSLA(heartbeat=min(v.sla.heartbeat for v in views),
                     consumer_lag_events=min(v.sla.consumer_lag_events for v in views),
                     delay_p99=min(v.sla.delay_p99 for v in views))


def stream_verdicts(metrics: Any, sla: StreamSLA, now: datetime) -> list[Verdict]:
    """Three verdicts from one StreamMetrics: heartbeat (ERROR), lag (WARN), delay p99 (WARN)."""
    now = utc(now)
    base = {"stream": metrics.stream, "measured_at": now}
    hb = datetime.fromtimestamp(metrics.heartbeat, now.tzinfo) if metrics.heartbeat else None
    age = (now - hb).total_seconds() if hb else None
    stopped = bool(metrics.workers) and all(w.stopped for w in metrics.workers)
    meta = {**base, "last_heartbeat": hb, "age_seconds": age, "sla_seconds": sla.heartbeat.total_seconds(),
            "workers": len(metrics.workers), "stopped": stopped}
    if hb is None:
        heartbeat = Verdict("stream_heartbeat", False, ERROR, f"no stream worker has ever run for {metrics.source}: "
                            f"start one with `feature-platform stream run`; streaming features are not updated", meta)
    else:
        ok = age <= sla.heartbeat.total_seconds() and not stopped
        heartbeat = Verdict("stream_heartbeat", ok, ERROR,
                            f"newest worker heartbeat {human_duration(age)} ago (SLA {human_duration(sla.heartbeat.total_seconds())})"
                            + ("" if ok else (" - the worker stopped" if stopped else " - the worker is down or stuck")
                               + ": restart `feature-platform stream run`; streaming features are going stale"), meta)
    lag_meta = {**base, "lag_events": metrics.lag, "pending": metrics.pending, "sla_events": sla.consumer_lag_events}
    if metrics.lag is None:
        lag = Verdict("stream_lag", True, WARN, "consumer lag unknown (no consumer group yet)", lag_meta)
    else:
        ok = metrics.lag <= sla.consumer_lag_events
        lag = Verdict("stream_lag", ok, WARN, f"consumer lag {metrics.lag} events (SLA {sla.consumer_lag_events})"
                      + ("" if ok else ": the worker is falling behind; add workers or find the slow step"), lag_meta)
    p99 = metrics.delay_p99_ms
    d_meta = {**base, "delay_p99_ms": p99, "delay_p50_ms": metrics.delay_p50_ms,
              "sla_ms": sla.delay_p99.total_seconds() * 1000}
    if p99 is None:
        delay = Verdict("stream_delay_p99", True, WARN, "no event-to-online delay measured (no live worker traffic)", d_meta)
    else:
        ok = p99 <= sla.delay_p99.total_seconds() * 1000
        delay = Verdict("stream_delay_p99", ok, WARN, f"event-to-online delay p99 {p99:.0f} ms "
                        f"(SLA {sla.delay_p99.total_seconds() * 1000:.0f} ms)"
                        + ("" if ok else ": online features lag the events; check Redis latency and worker load"), d_meta)
    return [heartbeat, lag, delay]


def read_verdicts(settings, registry: Registry, source: str, now: datetime,
                  sla: StreamSLA | None = None) -> list[Verdict]:
    """Read the metrics from Redis and judge them (against `sla`, default the source's strictest);
    a Redis error is an ERROR verdict, not an exception."""
    sla = sla or stream_sla(registry, source)
    if sla is None:
        return []
    try:
        from feature_platform.streaming.metrics import read_stream_metrics

        metrics = read_stream_metrics(settings, registry, source)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the check or `status`
        v = Verdict("stream_heartbeat", False, ERROR, f"cannot read stream metrics of {source}: {exc}",
                    {"measured_at": utc(now)})
        return [v]
    return stream_verdicts(metrics, sla, now)


