"""Stream health as one dataclass, read from Redis by `feature-platform status`, HTTP /metrics and Dagster.

Workers write two things (docs/streaming.md):
* `<p>:stream:<source>:totals` — exact counters moved inside the claim/dead-letter Lua scripts, so a
  replayed entry never counts twice: events (first deliveries accepted), late, too_late,
  duplicates, dead_letter.
* `<p>:stream:<source>:workers` — per consumer, a JSON heartbeat every second: time, events/s over
  the last 10 s, event-to-online delay p50/p99 over the last 30 s (XADD time -> tiles written).
Consumer-group lag and pending counts come from XINFO GROUPS at read time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import redis

from feature_platform.config import Settings
from feature_platform.registry.model import Registry
from feature_platform.online.connection import connect_redis as connect
from feature_platform.streaming.keys import StreamKeys


@dataclass(frozen=True)
class WorkerStatus:
    consumer: str
    heartbeat: float            # epoch seconds of its last heartbeat
    age_seconds: float
    events_per_s: float
    delay_p50_ms: float | None
    delay_p99_ms: float | None
    stopped: bool
    pid: int | None = None
    host: str | None = None


@dataclass(frozen=True)
class StreamMetrics:
    source: str
    stream: str
    stream_length: int
    lag: int | None                 # entries not yet delivered to the group (XINFO GROUPS lag); None = unknown
    pending: int                    # delivered, not yet acknowledged (applied online, archive not yet flushed)
    heartbeat: float | None         # newest worker heartbeat, epoch seconds; None = never ran
    heartbeat_age_seconds: float | None
    events_per_s: float             # sum over live workers
    delay_p50_ms: float | None      # worst live worker
    delay_p99_ms: float | None
    events: int                     # first deliveries accepted (too late included)
    late: int                       # accepted after their finest tile had closed (but not too late)
    too_late: int
    duplicates: int
    dead_letter: int
    workers: list[WorkerStatus] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """A worker has beaten in the last 10 seconds and did not say it stopped."""
        return any(not w.stopped and w.age_seconds < 10 for w in self.workers)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["running"] = self.running
        return d


def read_stream_metrics(settings: Settings, registry: Registry, source: str,
                        client: redis.Redis | None = None) -> StreamMetrics:
    """Everything the dashboards and checks need about one source's stream, in one pipelined trip."""
    src = registry.source(source)
    keys = StreamKeys.of(settings, src.name)
    r = client or connect(settings)
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.totals)
    pipe.hgetall(keys.workers)
    pipe.xlen(keys.stream)
    pipe.xinfo_groups(keys.stream)
    totals, workers, length, groups = pipe.execute(raise_on_error=False)
    if isinstance(groups, Exception):
        groups = []  # no stream yet
    if isinstance(length, Exception):
        length = 0
    totals = {_s(k): int(v) for k, v in (totals or {}).items()}
    now = time.time()
    statuses = []
    for name, blob in (workers or {}).items():
        try:
            w = json.loads(blob)
        except ValueError:
            continue
        statuses.append(WorkerStatus(
            consumer=_s(name), heartbeat=w["heartbeat"], age_seconds=max(0.0, now - w["heartbeat"]),
            events_per_s=w.get("events_per_s") or 0.0, delay_p50_ms=w.get("delay_p50_ms"),
            delay_p99_ms=w.get("delay_p99_ms"), stopped=bool(w.get("stopped")), pid=w.get("pid"),
            host=w.get("host")))
    statuses.sort(key=lambda w: -w.heartbeat)
    live = [w for w in statuses if not w.stopped and w.age_seconds < 10]
    lag, pending = None, 0
    for g in groups or []:
        if _s(g["name"]) == keys.group:
            lag = g.get("lag")
            pending = int(g.get("pending") or 0)
    heartbeat = statuses[0].heartbeat if statuses else None
    p50 = [w.delay_p50_ms for w in live if w.delay_p50_ms is not None]
    p99 = [w.delay_p99_ms for w in live if w.delay_p99_ms is not None]
    return StreamMetrics(
        source=src.name, stream=keys.stream, stream_length=int(length or 0), lag=lag, pending=pending,
        heartbeat=heartbeat, heartbeat_age_seconds=(now - heartbeat) if heartbeat else None,
        events_per_s=sum(w.events_per_s for w in live), delay_p50_ms=max(p50) if p50 else None,
        delay_p99_ms=max(p99) if p99 else None, events=totals.get("events", 0), late=totals.get("late", 0),
        too_late=totals.get("too_late", 0), duplicates=totals.get("duplicates", 0),
        dead_letter=totals.get("dead_letter", 0), workers=statuses)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class StreamMetricsCollector:
    """A prometheus_client collector for HTTP /metrics: every stream source's StreamMetrics, read from
    Redis at scrape time (one pipelined round trip per source). Register it on the app's registry:
    `registry.register(StreamMetricsCollector(settings, feature_registry))`. A Redis error yields
    `fp_stream_up{source} 0` instead of failing the scrape."""

    def __init__(self, settings: Settings, registry: Registry, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self._client = client
        self.sources = sorted({v.source.name for v in registry.views if v.kind == "stream"})

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("fp_stream_up", "1 when the stream metrics could be read from Redis", labels=["source"])
        running = GaugeMetricFamily("fp_stream_worker_running", "1 when a worker beat in the last 10 s", labels=["source"])
        age = GaugeMetricFamily("fp_stream_heartbeat_age_seconds", "Seconds since the newest worker heartbeat",
                                labels=["source"])
        lag = GaugeMetricFamily("fp_stream_consumer_lag", "Entries not yet delivered to the consumer group",
                                labels=["source"])
        pending = GaugeMetricFamily("fp_stream_pending", "Entries delivered but not yet acknowledged", labels=["source"])
        rate = GaugeMetricFamily("fp_stream_events_per_second", "Entries processed per second (live workers)",
                                 labels=["source"])
        delay = GaugeMetricFamily("fp_stream_delay_seconds", "Event-to-online delay over the last 30 s",
                                  labels=["source", "quantile"])
        events = CounterMetricFamily("fp_stream_events", "Exact event counts by kind", labels=["source", "kind"])
        client = self._client or connect(self.settings)
        for s in self.sources:
            try:
                m = read_stream_metrics(self.settings, self.registry, s, client=client)
            except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is away
                up.add_metric([s], 0)
                continue
            up.add_metric([s], 1)
            running.add_metric([s], 1 if m.running else 0)
            if m.heartbeat_age_seconds is not None:
                age.add_metric([s], m.heartbeat_age_seconds)
            if m.lag is not None:
                lag.add_metric([s], m.lag)
            pending.add_metric([s], m.pending)
            rate.add_metric([s], m.events_per_s)
            for q, v in (("0.5", m.delay_p50_ms), ("0.99", m.delay_p99_ms)):
                if v is not None:
                    delay.add_metric([s, q], v / 1000)
            for kind in ("events", "late", "too_late", "duplicates", "dead_letter"):
                events.add_metric([s, kind], getattr(m, kind))
        yield from (up, running, age, lag, pending, rate, delay, events)
