"""Streaming commands: `produce` (replay a file onto a source's stream) and `stream run|status|deadletters`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from feature_platform.registry import RegistryError


def _ctx():
    from feature_platform.config import Settings
    from feature_platform.registry import load_registry

    try:
        return Settings.from_env(), load_registry()
    except RegistryError as exc:
        raise click.ClickException(f"cannot load the feature repo: {exc}") from exc


@click.command()
@click.argument("source")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--chunk", type=int, default=1000, show_default=True, help="XADDs per pipelined round trip.")
@click.option("--maxlen", type=int, default=None, help="Trim the stream to about this many entries.")
def produce(source: str, file: Path, rate: float | None, chunk: int, maxlen: int | None) -> None:
    """Replay FILE (.parquet or .csv) onto SOURCE's Redis Stream, in file order.

    Every row becomes one stream entry in the documented format (docs/streaming.md); the
    worker validates it, so bad rows end up in the dead-letter stream, not here.
    """
    from feature_platform.offline.ingest import IngestError, read_input
    from feature_platform.streaming.producer import produce as do_produce

    settings, registry = _ctx()
    try:
        registry.source(source)
        table = read_input(file)
    except (RegistryError, IngestError) as exc:
        raise click.UsageError(str(exc)) from exc
    step = max(1, table.num_rows // 20)
    state = {"next": step}

    def progress(done: int, total: int) -> None:
        if done >= state["next"] or done == total:
            click.echo(f"  {done}/{total} events", err=True)
            state["next"] = done + step

    try:
        rep = do_produce(settings, registry, source, table, rate=rate, chunk=chunk, maxlen=maxlen, progress=progress)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"produced {rep.events} events to {rep.stream} in {rep.seconds:.2f}s "
               f"({rep.rate:,.0f}/s), ids {rep.first_id}..{rep.last_id}")


@click.group()
def stream() -> None:
    """Run and inspect the stream workers (events -> online tiles + offline archive)."""


@stream.command("run")
@click.option("--source", default="transactions", show_default=True)
@click.option("--consumer", default=None, help="Consumer name in the group [default: host-pid]. Reuse it after a "
              "crash to pick up its pending entries at once (others take them over after --claim-idle-ms).")
@click.option("--batch", type=int, default=1000, show_default=True, help="Entries per XREADGROUP.")
@click.option("--block-ms", type=int, default=100, show_default=True, help="How long a read waits for new entries.")
@click.option("--flush-interval", type=float, default=1.0, show_default=True,
              help="Seconds between offline archive flushes (entries are acknowledged after their flush).")
@click.option("--claim-idle-ms", type=int, default=30_000, show_default=True,
              help="Take over other consumers' entries pending this long (their worker died).")
@click.option("--exclusive", is_flag=True, help="Hold the source's lease: refuse to run beside another exclusive worker.")
@click.option("--until-idle", is_flag=True, help="Exit once the group has no lag and nothing pending.")
@click.option("-v", "--verbose", is_flag=True)
def run(source: str, consumer: str | None, batch: int, block_ms: int, flush_interval: float, claim_idle_ms: int,
        exclusive: bool, until_idle: bool, verbose: bool) -> None:
    """Consume SOURCE's stream: validate, update the tiles of every stream view, archive offline, XACK.

    Stops cleanly on SIGTERM/SIGINT (finishes the batch, flushes, acknowledges).
    """
    from feature_platform.streaming.worker import LeaseHeld, StreamWorker, WorkerConfig

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, registry = _ctx()
    try:
        registry.source(source)
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from exc
    cfg = WorkerConfig(source=source, batch=batch, block_ms=block_ms, flush_interval=flush_interval,
                       claim_idle_ms=claim_idle_ms, exclusive=exclusive, stop_when_idle=until_idle)
    if consumer:
        cfg.consumer = consumer
    worker = StreamWorker(settings, registry, cfg)
    worker.install_signal_handlers()
    click.echo(f"worker {cfg.consumer} consuming {worker.keys.stream} (group {worker.keys.group})", err=True)
    try:
        rep = worker.run()
    except LeaseHeld as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    click.echo(f"stopped after {rep.seconds:.1f}s: {rep.messages} entries, {rep.applied} events applied online, "
               f"{rep.archived} archived, {rep.rejected} dead-lettered, {rep.reconnects} reconnects", err=True)


@stream.command("status")
@click.option("--source", default="transactions", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def status(source: str, as_json: bool) -> None:
    """Heartbeat, lag, events/s, delay, late/too-late/duplicate/dead-letter counts of SOURCE's stream."""
    from feature_platform.streaming.metrics import read_stream_metrics

    settings, registry = _ctx()
    m = read_stream_metrics(settings, registry, source)
    if as_json:
        click.echo(json.dumps(m.as_dict(), indent=2))
        return
    hb = f"{m.heartbeat_age_seconds:.1f}s ago" if m.heartbeat_age_seconds is not None else "never"
    d = (f"{m.delay_p50_ms:.0f}/{m.delay_p99_ms:.0f} ms" if m.delay_p99_ms is not None else "-")
    click.echo(f"stream {m.stream}: {'running' if m.running else 'NOT RUNNING'}, heartbeat {hb}\n"
               f"  length {m.stream_length}, lag {m.lag}, pending {m.pending}, {m.events_per_s:,.0f} events/s, "
               f"delay p50/p99 {d}\n"
               f"  events {m.events}, late {m.late}, too late {m.too_late}, duplicates {m.duplicates}, "
               f"dead letters {m.dead_letter}")
    for w in m.workers:
        click.echo(f"  worker {w.consumer} (pid {w.pid}@{w.host}): {'stopped' if w.stopped else 'alive'}, "
                   f"beat {w.age_seconds:.1f}s ago")


@stream.command("deadletters")
@click.option("--source", default="transactions", show_default=True)
@click.option("--count", type=int, default=20, show_default=True)
def deadletters(source: str, count: int) -> None:
    """The newest dead-lettered entries with their reason and original payload."""
    from feature_platform.online.connection import connect_redis as connect
    from feature_platform.streaming.keys import StreamKeys

    settings, registry = _ctx()
    keys = StreamKeys.of(settings, registry.source(source).name)
    for entry_id, fields in connect(settings).xrevrange(keys.deadletter, count=count):
        f = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
             for k, v in fields.items()}
        click.echo(json.dumps({"dead_letter_id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id, **f}))


commands: list[click.Command] = [produce, stream]
