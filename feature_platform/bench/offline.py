"""`feature-platform bench offline`: ingest and training-set speed and peak memory, against a naive
baseline measured in the same run (one DuckDB range join of labels to raw events per feature).

Each phase runs in its own child process, so its peak RSS is its own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

PHASES = ("generate", "ingest", "batch", "train", "baseline")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _phase(name: str, data: Path, args: dict) -> dict:
    """Run one phase in this process (called in the child)."""
    from datetime import timedelta

    import pyarrow.parquet as pq

    from feature_platform.config import Settings
    from feature_platform.feature_store import FeatureStore

    fs = FeatureStore(Settings(data_dir=data, redis_url=None))
    demo = data / "demo"
    started = time.perf_counter()
    out: dict = {}
    if name == "generate":
        from feature_platform.offline.demo_data import generate_demo_data

        d = generate_demo_data(demo, days=args["days"], users=args["users"], merchants=args["merchants"],
                               events=args["events"], labels=args["labels"], seed=1)
        out = {"events": d.events, "deliveries": d.deliveries, "labels": d.labels, "start": str(d.start), "end": str(d.end)}
    elif name == "ingest":
        from feature_platform.offline.ingest import ingest_file

        r = ingest_file(fs.offline, "transactions", demo / "transactions.parquet")
        out = {"accepted": r.accepted, "duplicates": r.duplicates, "too_late": r.too_late}
    elif name == "batch":
        from feature_platform.offline.batch import materialize_partition

        view = fs.registry.view("user_daily_profile")
        days = fs.offline.event_dates("transactions")
        rows = sum(materialize_partition(fs.offline, view, d).rows for d in days)
        out = {"days": len(days), "rows": rows}
    elif name == "train":
        from feature_platform.offline.training import get_historical_features

        labels = pq.read_table(demo / "labels.parquet")
        refs = list(fs.registry.service("fraud_detection").features)
        t = get_historical_features(fs.offline, labels, refs, mode=args["mode"])
        pq.write_table(t, data / f"train_{args['mode']}.parquet")
        out = {"rows": t.num_rows, "mode": args["mode"]}
    elif name == "baseline":
        out = _baseline(fs, demo, args["mode"], args["baseline_labels"], data)
    out["seconds"] = time.perf_counter() - started
    out["peak_mb"] = _peak_mb()
    return out


def _baseline(fs, demo: Path, mode: str, n_labels: int, data: Path) -> dict:
    """The obvious approach: per feature, a range join of labels to raw events, grouped by label."""
    import pyarrow.parquet as pq

    from feature_platform.offline.store import connect
    from feature_platform.offline.training import get_historical_features

    labels = pq.read_table(demo / "labels.parquet").slice(0, n_labels)
    con = connect()
    con.register("labels_in", labels)
    con.execute("CREATE TABLE labels AS SELECT row_number() OVER () AS __row, user_id, merchant_id, "
                "epoch_us(event_time) AS t FROM labels_in")
    con.execute(f"CREATE TABLE ev AS SELECT user_id, merchant_id, event_id, amount, epoch_us(event_time) AS et, "
                f"epoch_us(ingested_at) AS it, is_too_late FROM {fs.offline.events_sql('transactions')}")
    ingest = "" if mode == "event" else "AND e.it < l.t AND NOT e.is_too_late"
    started = time.perf_counter()
    cols = []
    for ref in fs.registry.service("fraud_detection").features:
        view = fs.registry.view(ref.view, ref.version)
        if view.kind != "stream":
            continue
        a = view.aggregation(ref.feature)
        key = view.entity.join_key
        agg = {"count": "count(e.et)", "sum": "coalesce(sum(e.amount), 0.0)", "mean": "avg(e.amount)",
               "max": "max(e.amount)", "min": "min(e.amount)",
               "last": "arg_max(e.amount, (e.et, e.event_id)) FILTER (WHERE e.amount IS NOT NULL)"}[a.function]
        name = f"f_{len(cols)}"
        con.execute(f"""CREATE TABLE {name} AS SELECT l.__row, {agg} AS v FROM labels l LEFT JOIN ev e
            ON e.{key} = l.{key} AND e.et >= (l.t // {a.hop_us}) * {a.hop_us} - {a.window_us} AND e.et < l.t {ingest}
            GROUP BY l.__row""")
        cols.append((name, ref))
    stream_seconds = time.perf_counter() - started
    # Check the baseline computes the same values as ours on these labels (a benchmark of wrong code is worthless).
    refs = [r for _, r in cols]
    ours = get_historical_features(fs.offline, labels, refs, mode=mode)
    con.register("ours", ours.append_column("__row", __import__("pyarrow").array(range(1, labels.num_rows + 1))))
    mismatches = 0
    for name, ref in cols:
        mismatches += con.execute(f"""SELECT count(*) FROM {name} b JOIN ours o USING (__row)
            WHERE NOT (b.v IS NOT DISTINCT FROM o."{ref.column}" OR abs(b.v - o."{ref.column}") <= 1e-9 * abs(b.v))""").fetchone()[0]
    return {"labels": labels.num_rows, "stream_features": len(cols), "stream_seconds": stream_seconds,
            "mismatches": mismatches}


def _run_child(name: str, data: Path, args: dict) -> dict:
    cmd = [sys.executable, "-m", "feature_platform.bench.offline", name, str(data), json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@click.command("offline")
@click.option("--events", default=10_000_000, show_default=True)
@click.option("--labels", default=1_000_000, show_default=True)
@click.option("--users", default=200_000, show_default=True)
@click.option("--merchants", default=20_000, show_default=True)
@click.option("--days", default=30, show_default=True)
@click.option("--baseline-labels", default=None, type=int,
              help="Labels for the naive baseline [default: all, capped at 100k since it is slow].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Keep the data here [default: a temp dir].")
def command(events: int, labels: int, users: int, merchants: int, days: int, baseline_labels: int | None,
            data_dir: Path | None) -> None:
    """Time ingest and the fraud_detection training set (both modes) with peak memory, vs a naive baseline."""
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fp-bench-offline-")
        data_dir = Path(tmp.name)
    args = {"events": events, "labels": labels, "users": users, "merchants": merchants, "days": days}
    bl = baseline_labels or min(labels, 100_000)
    click.echo(f"bench offline: {events:,} events, {labels:,} labels, {users:,} users, {days} days -> {data_dir}")
    gen = _run_child("generate", data_dir, args)
    click.echo(f"  generate        {gen['seconds']:7.2f} s  peak {gen['peak_mb']:7.0f} MB  ({gen['deliveries']:,} deliveries)")
    ing = _run_child("ingest", data_dir, args)
    click.echo(f"  ingest          {ing['seconds']:7.2f} s  peak {ing['peak_mb']:7.0f} MB  "
               f"({ing['accepted']:,} events, {gen['deliveries'] / ing['seconds']:,.0f} rows/s)")
    bat = _run_child("batch", data_dir, args)
    click.echo(f"  batch view      {bat['seconds']:7.2f} s  peak {bat['peak_mb']:7.0f} MB  ({bat['days']} days, {bat['rows']:,} rows)")
    rows = []
    for mode in ("ingestion", "event"):
        tr = _run_child("train", data_dir, {**args, "mode": mode})
        base = _run_child("baseline", data_dir, {**args, "mode": mode, "baseline_labels": bl})
        ours_rate = tr["rows"] / tr["seconds"]
        base_rate = base["labels"] / base["stream_seconds"]
        rows.append((mode, tr, base, ours_rate / base_rate))
        click.echo(f"  training/{mode:9s} {tr['seconds']:7.2f} s  peak {tr['peak_mb']:7.0f} MB  ({tr['rows']:,} rows x 11 features, "
                   f"{ours_rate:,.0f} rows/s)")
        click.echo(f"  baseline/{mode:9s} {base['stream_seconds']:7.2f} s  peak {base['peak_mb']:7.0f} MB  ({base['labels']:,} rows x "
                   f"{base['stream_features']} stream features only, {base_rate:,.0f} rows/s; "
                   f"{base['mismatches']} values differ from ours)")
        click.echo(f"  => ours / baseline throughput ({mode}): {ours_rate / base_rate:.1f}x")
    click.echo("targets: 10M/1M training set < 10 s and < 2048 MB peak, both modes")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    _name, _data, _args = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps(_phase(_name, _data, _args), default=str))
