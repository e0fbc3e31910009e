"""Offline commands: ingest, demo-data, training-set."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click

from feature_platform.registry import RegistryError


def _store():
    from feature_platform.feature_store import FeatureStore

    try:
        return FeatureStore()
    except RegistryError as exc:
        raise click.ClickException(f"cannot load the feature repo: {exc}") from exc


@click.command()
@click.argument("source")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--stamp-now", is_flag=True,
              help="Set a missing ingested_at to now (live data) instead of event_time (historical import).")
def ingest(source: str, files: tuple[Path, ...], stamp_now: bool) -> None:
    """Validate FILES (.parquet or .csv) against SOURCE's schema and add them to the offline store.

    Duplicate event_ids are dropped (the first delivery wins), too-late events are kept but
    flagged, rows that fail validation go to a dead-letter file with their reason. Exits 1 when
    any row was rejected (the valid rows are stored all the same), 2 when a file is unusable.
    Re-running the same ingest adds nothing.
    """
    from feature_platform.offline.ingest import IngestError, ingest_file

    fs = _store()
    try:
        fs.registry.source(source)
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from exc
    rejected = 0
    for f in files:
        try:
            done = [0]

            def progress(chunk) -> None:
                done[0] += chunk.input_rows
                click.echo(f"  {f.name}: {done[0]:,} rows read, {chunk.accepted:,} new in this chunk", err=True)

            report = ingest_file(fs.offline, source, f, stamp_now=stamp_now, progress=progress)
        except IngestError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        click.echo(report.summary())
        rejected += report.rejected
    if rejected:
        click.echo(f"{rejected} rows rejected; see the dead-letter files above for each row's reason.", err=True)
        sys.exit(1)


@click.command("demo-data")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for transactions.parquet and labels.parquet [default: $FP_DATA_DIR/demo].")
@click.option("--days", default=14, show_default=True)
@click.option("--users", default=2000, show_default=True)
@click.option("--merchants", default=200, show_default=True)
@click.option("--events", default=100_000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Exclusive end date (UTC) [default: tomorrow, so today's data looks live].")
def demo_data(out: Path | None, days: int, users: int, merchants: int, events: int, seed: int, end) -> None:
    """Write a deterministic synthetic payments world (raw deliveries with late and duplicate
    events, plus fraud labels that depend on the features)."""
    from feature_platform.config import Settings
    from feature_platform.offline.demo_data import generate_demo_data

    out = out or Settings.from_env().data_dir / "demo"
    d = generate_demo_data(out, days=days, users=users, merchants=merchants, events=events, seed=seed,
                           end=end.date() if end else None)
    click.echo(f"wrote {d.deliveries} deliveries of {d.events} events ({d.start}..{d.end}) to {d.events_path}")
    click.echo(f"wrote {d.labels} labels ({d.fraud_labels} fraud) to {d.labels_path}")


@click.command("training-set")
@click.option("--labels", "labels_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Parquet or CSV with entity keys and event_time (the prediction time).")
@click.option("--service", default=None, help="Feature service whose pinned features to join.")
@click.option("--feature", "features", multiple=True, help="Or single features, as view:vN:feature (repeatable).")
@click.option("--mode", type=click.Choice(["ingestion", "event"]), default="ingestion", show_default=True,
              help="ingestion: what the online store could serve at t (no skew); event: historical truth.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .parquet (or .csv).")
def training_set(labels_path: Path, service: str | None, features: tuple[str, ...], mode: str, out: Path) -> None:
    """Join point-in-time correct features to label rows, keeping their order."""
    import time

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from feature_platform.offline.ingest import IngestError, read_input
    from feature_platform.offline.training import TrainingSetError, get_historical_features

    if bool(service) == bool(features):
        raise click.UsageError("pass either --service or one or more --feature")
    fs = _store()
    started = time.perf_counter()
    try:
        labels = read_input(labels_path)
        refs = fs.resolve_features(service=service or None, features=list(features) or None)
        table = get_historical_features(fs.offline, labels, refs, mode=mode)
    except (IngestError, TrainingSetError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        pacsv.write_csv(table, out)
    else:
        pq.write_table(table, out, compression="zstd")
    click.echo(f"wrote {table.num_rows} rows x {len(refs)} features ({mode} mode) to {out} "
               f"in {time.perf_counter() - started:.1f}s")


@click.command("bootstrap-online")
@click.argument("source")
def bootstrap_online(source: str) -> None:
    """Load the online tiles of SOURCE's stream views from the offline store.

    Use it after deploying on historical data, after a Redis flush, or when a new version of a
    stream view goes live beside the old one (the worker only feeds it new events). Safe to
    repeat, and safe while the stream worker runs: every event counts once.
    """
    import time

    fs = _store()
    try:
        fs.registry.source(source)
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from exc
    started = time.perf_counter()
    t = fs.bootstrap_stream_views(source)
    click.echo(f"{source}: {t['events']:,} events read, {t['applied']:,} applied to the tiles, "
               f"{t['duplicates']:,} already there, {t['too_late']:,} too late (skipped) "
               f"in {time.perf_counter() - started:.1f}s")


@click.command()
@click.argument("source")
@click.option("--day", "days", multiple=True, type=click.DateTime(["%Y-%m-%d"]),
              help="Event date(s) to compact [default: every day whose lateness horizon has closed].")
def compact(source: str, days) -> None:
    """Merge each closed event-date partition of SOURCE into one deduplicated Parquet file.

    The stream worker writes about one file per second; the daily raw asset in Dagster runs this
    for closed days, and this command does it by hand.
    """
    import time as _time

    from feature_platform.offline.compact import closed_days, compact_partition

    fs = _store()
    try:
        fs.registry.source(source)
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from exc
    wanted = [d.date() for d in days] or closed_days(fs.offline, source, int(_time.time() * 1_000_000))
    for day in wanted:
        click.echo(compact_partition(fs.offline, source, day).summary())


commands = [ingest, demo_data, training_set, bootstrap_online, compact]
