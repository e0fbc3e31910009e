"""Crash tests with real processes: kill -9 the worker at chosen and at random points, restart it,
and get exactly the online and offline result of an uninterrupted run over the same entries; and a
Redis restart under a running worker."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone

import redis

from feature_platform.online.store import OnlineStore
from feature_platform.streaming.metrics import read_stream_metrics
from feature_platform.streaming.producer import produce
from feature_platform_tests.test_stream_helpers import (
    archive_rows,
    assert_same,
    brute_force,
    online_values,
    random_log,
    run_worker_until_idle,
    stream_events,
    wait_for,
    worker_cmd,
    worker_env,
)

KILLED = -signal.SIGKILL


def _copy_stream(src_settings, dst_settings) -> None:
    """The same entries, same ids (so the same ingested_at), under another prefix."""
    r = redis.Redis.from_url(src_settings.redis_url)
    pipe = r.pipeline(transaction=False)
    for entry_id, fields in r.xrange(f"{src_settings.key_prefix}:stream:transactions"):
        pipe.xadd(f"{dst_settings.key_prefix}:stream:transactions", fields, id=entry_id)
    pipe.execute()


def _totals(settings, registry) -> tuple:
    m = read_stream_metrics(settings, registry, "transactions")
    return m.events, m.late, m.too_late, m.duplicates, m.dead_letter, m.lag, m.pending


def test_kill9_anywhere_then_restart_equals_uninterrupted_run(settings, registry, tmp_path):
    log = random_log(seed=11, n=1000)
    produce(settings, registry, "transactions", log.table)
    ref_settings = replace(settings, data_dir=tmp_path / "uninterrupted", key_prefix=settings.key_prefix + ":ref")
    _copy_stream(settings, ref_settings)
    assert run_worker_until_idle(ref_settings, "--batch", "100").returncode == 0

    small = ("--batch", "100", "--flush-interval", "0")  # a flush (archive + XACK) after every batch
    # Deterministic kills at each step of a batch: after claiming, between tiles and archive, between
    # archive and XACK (the dangerous one), right after XACK.
    for point in ("after_claims:2", "after_apply:3", "after_archive:2", "after_ack:2"):
        proc = run_worker_until_idle(settings, *small, FP_STREAM_CRASH_AT=point)
        assert proc.returncode == KILLED, (point, proc.returncode, proc.stderr[-2000:])
    # Random kills.
    rng = random.Random(5)
    for _ in range(2):
        p = subprocess.Popen(worker_cmd("--until-idle", *small), env=worker_env(settings),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 1.2))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    # A different consumer finishes: it must take the dead one's pending entries over (XAUTOCLAIM).
    final = run_worker_until_idle(settings, *small, "--consumer", "w2", "--claim-idle-ms", "1")
    assert final.returncode == 0, final.stderr

    as_of = datetime.now(timezone.utc)
    on = online_values(OnlineStore.from_settings(settings, registry), registry, as_of, log)
    on_ref = online_values(OnlineStore.from_settings(ref_settings, registry), registry, as_of, log)
    assert_same(on, on_ref, "crashed run vs uninterrupted run (online)")
    assert_same(on, brute_force(stream_events(settings), registry, as_of, log), "crashed run vs brute force")
    rows, rows_ref = archive_rows(settings, registry), archive_rows(ref_settings, registry)
    assert max(Counter(r[0] for r in rows).values()) == 1, "an event_id archived twice"
    assert rows == rows_ref
    assert _totals(settings, registry) == _totals(ref_settings, registry)
    assert _totals(settings, registry)[5:] == (0, 0)


def test_worker_survives_redis_restart(private_settings, private_redis, registry):
    settings = private_settings
    log = random_log(seed=21, n=1200)
    n = log.table.num_rows
    r = redis.Redis.from_url(settings.redis_url)
    produce(settings, registry, "transactions", log.table.slice(0, n // 3))
    worker = subprocess.Popen(worker_cmd("--batch", "50"), env=worker_env(settings),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def caught_up(length: int) -> bool:
            m = read_stream_metrics(settings, registry, "transactions")
            return m.lag == 0 and m.pending == 0 and m.stream_length == length
        wait_for(lambda: caught_up(n // 3), what="the first third")
        # Restart Redis with persistence (an RDB written at shutdown, loaded at start) while the worker is
        # busy with the second third.
        r.config_set("save", "3600 1")
        produce(settings, registry, "transactions", log.table.slice(n // 3, n // 3))
        private_redis.stop()
        time.sleep(0.5)  # the worker meets a dead server and backs off
        private_redis.start()
        produce(settings, registry, "transactions", log.table.slice(2 * (n // 3)))
        wait_for(lambda: caught_up(n), what="the rest")
        assert worker.poll() is None, "the worker died with Redis"
        m = read_stream_metrics(settings, registry, "transactions")
        assert m.workers[0].stopped is False
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "reconnects" in err and " 0 reconnects" not in err, err  # it did meet the outage

    as_of = datetime.now(timezone.utc)
    on = online_values(OnlineStore.from_settings(settings, registry), registry, as_of, log)
    assert_same(on, brute_force(stream_events(settings), registry, as_of, log), "after a Redis restart")
    rows = archive_rows(settings, registry)
    assert max(Counter(r[0] for r in rows).values()) == 1
    assert len(rows) == len({e.event_id for e in stream_events(settings)})
