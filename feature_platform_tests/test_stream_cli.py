"""The streaming commands end to end, as a user runs them: produce a CSV, run the worker until idle,
read the status and the dead letters."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from feature_platform_tests.test_stream_helpers import worker_env


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feature_platform.cli", *args], env=worker_env(settings),
                          capture_output=True, text=True, timeout=120)


def test_produce_csv_run_status_deadletters(settings, tmp_path):
    now = datetime.now(timezone.utc)
    rows = ["event_id,user_id,merchant_id,amount,country,event_time"]
    for i in range(40):
        et = (now - timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(f"c{i},{i % 4},{i % 3},{i}.5,DE,{et}")
    rows.append("c0,0,0,999.0,DE," + now.strftime("%Y-%m-%dT%H:%M:%SZ"))      # duplicate of c0
    rows.append("bad,x,1,1.0,DE," + now.strftime("%Y-%m-%dT%H:%M:%SZ"))       # user_id not an int
    rows.append("old,1,1,1.0,DE," + (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ"))  # too late
    csv = tmp_path / "events.csv"
    csv.write_text("\n".join(rows) + "\n")

    p = _cli(settings, "produce", "transactions", str(csv), "--rate", "2000")
    assert p.returncode == 0, p.stderr
    assert "produced 43 events" in p.stdout
    p = _cli(settings, "stream", "run", "--until-idle")
    assert p.returncode == 0, p.stderr
    assert "43 entries" in p.stderr and "41 events applied online" in p.stderr and "1 dead-lettered" in p.stderr

    p = _cli(settings, "stream", "status", "--json")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert (m["events"], m["duplicates"], m["too_late"], m["dead_letter"], m["lag"], m["pending"]) == (41, 1, 1, 1, 0, 0)
    assert m["running"] is False and m["workers"][0]["stopped"] is True

    p = _cli(settings, "stream", "deadletters")
    assert p.returncode == 0, p.stderr
    dl = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(dl) == 1 and "user_id: x is not a valid int64" in dl[0]["reason"]
    assert json.loads(json.loads(dl[0]["payload"])["event"])["event_id"] == "bad"

    p = _cli(settings, "produce", "nosuchsource", str(csv))
    assert p.returncode == 2 and "unknown source 'nosuchsource'" in p.stderr


def test_prometheus_collector_exposes_the_stream_metrics(settings, registry):
    from prometheus_client import CollectorRegistry, generate_latest

    from feature_platform.streaming.metrics import StreamMetricsCollector
    from feature_platform.streaming.producer import produce
    from feature_platform.streaming.worker import StreamWorker, WorkerConfig
    from feature_platform_tests.test_stream_helpers import random_log

    log = random_log(seed=5, n=200)
    produce(settings, registry, "transactions", log.table)
    StreamWorker(settings, registry, WorkerConfig(consumer="p", stop_when_idle=True)).run()
    reg = CollectorRegistry()
    reg.register(StreamMetricsCollector(settings, registry))
    text = generate_latest(reg).decode()
    assert 'fp_stream_up{source="transactions"} 1.0' in text
    assert 'fp_stream_consumer_lag{source="transactions"} 0.0' in text
    assert f'fp_stream_events_total{{kind="duplicates",source="transactions"}} {float(log.duplicates)}' in text
    assert f'fp_stream_events_total{{kind="dead_letter",source="transactions"}} {float(log.invalid)}' in text
    assert 'fp_stream_worker_running{source="transactions"} 0.0' in text  # it stopped

    from dataclasses import replace

    down = CollectorRegistry()
    down.register(StreamMetricsCollector(replace(settings, redis_url="redis://127.0.0.1:1/0"), registry))
    assert 'fp_stream_up{source="transactions"} 0.0' in generate_latest(down).decode()
