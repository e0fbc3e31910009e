"""`feature-platform bench online`: the online store and the serving layer against raw redis-py,
measured in the same run on the same Redis.

Phases (each prints a row of the final table):
1. Materialization: N users of `user_daily_profile` through `OnlineStore.push_batch_rows` vs a
   raw pipelined redis-py HSET + PEXPIREAT of the same rows (same number of keys and fields; the
   raw side also pays for turning the Arrow table into Python values, as any writer must).
2. Reads: single-entity p50/p99 and 1000-entity batch p50 through
   `FeatureStore.get_online_features` vs a raw pipelined HMGET of exactly the keys and fields the
   online store asked Redis for (captured from the wire on one call per request, then replayed),
   so the ratio is the pure cost of our Python around the same round trip.
3. HTTP: p50/p99 at 1 and 16 concurrent keep-alive clients, single entity, against a
   `feature-platform serve` child process (the client runs here, on asyncio raw sockets, so it
   does not share a GIL with the server).

Everything lives under a unique key prefix that is deleted at the end (also on failure).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import click
import numpy as np

# ---- small helpers ---------------------------------------------------------------------------


def _pct(samples_s: list[float] | np.ndarray, q: float) -> float:
    """Percentile in milliseconds."""
    return float(np.percentile(np.asarray(samples_s, dtype=np.float64), q) * 1000.0)


@dataclass
class Row:
    metric: str
    ours: str
    baseline: str
    ratio: str
    target: str
    ok: str

    def cells(self) -> list[str]:
        return [self.metric, self.ours, self.baseline, self.ratio, self.target, self.ok]


def _table(rows: list[Row]) -> str:
    head = ["measure", "feature_platform", "raw baseline", "ratio", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its children (uvicorn workers)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            t = proc.cpu_times()
            total += t.user + t.system
    except psutil.NoSuchProcess:
        pass
    return total


def _delete_prefix(client, prefix: str) -> int:
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            n += client.unlink(*batch)
            batch = []
    if batch:
        n += client.unlink(*batch)
    return n


# ---- capturing what the online store sends ---------------------------------------------------


def parse_resp_commands(payload: bytes) -> list[tuple[bytes, ...]]:
    """Split a client->server RESP payload (arrays of bulk strings) back into commands."""
    out: list[tuple[bytes, ...]] = []
    i, n = 0, len(payload)
    while i < n:
        if payload[i:i + 1] != b"*":
            raise ValueError(f"not a RESP command array at byte {i}: {payload[i:i + 20]!r}")
        j = payload.index(b"\r\n", i)
        count = int(payload[i + 1:j])
        i = j + 2
        args = []
        for _ in range(count):
            j = payload.index(b"\r\n", i)
            size = int(payload[i + 1:j])
            args.append(payload[j + 2:j + 2 + size])
            i = j + 2 + size + 2
        out.append(tuple(args))
    return out


@contextmanager
def capture_commands() -> Iterator[list[tuple]]:
    """Record every command sent to Redis, from the bytes on the wire.

    Patching the socket write (not redis-py's packing) also sees payloads the online store packs
    itself (online/resp.py), for TCP and unix-socket connections alike.
    """
    from redis.connection import AbstractConnection

    seen: list[tuple] = []
    orig = AbstractConnection.send_packed_command

    def send_packed_command(self, command, check_health=True):
        chunks = [command] if isinstance(command, (bytes, bytearray, memoryview, str)) else list(command)
        payload = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        seen.extend(parse_resp_commands(payload))
        return orig(self, chunks, check_health)

    AbstractConnection.send_packed_command = send_packed_command
    try:
        yield seen
    finally:
        AbstractConnection.send_packed_command = orig


def _reads_of(commands: list[tuple]) -> list[tuple]:
    """The data-reading commands of one request (drop connection chatter such as CLIENT SETINFO)."""
    skip = {b"CLIENT", b"HELLO", b"PING", b"SELECT", b"INFO", b"COMMAND", b"AUTH"}
    return [c for c in commands if bytes(c[0]).upper() not in skip]


# ---- HTTP load generator ---------------------------------------------------------------------


async def _client(host: str, port: int, bodies: list[bytes], start_at: int, n: int, out: list[float],
                  errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in range(n):
            body = bodies[(start_at + i) % len(bodies)]
            req = (b"POST /v1/features HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            payload = await reader.readexactly(length)
            out.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode() + " " + payload[:200].decode(errors="replace"))
    finally:
        writer.close()


def http_load(host: str, port: int, bodies: list[bytes], clients: int, requests_per_client: int,
              warmup_per_client: int = 50) -> tuple[list[float], float, list[str]]:
    """Closed loop: `clients` keep-alive connections, each sending its next request when the last
    answer arrived. Returns latencies (s), wall time of the measured part (s), and error lines."""

    async def run(n: int, out: list[float], errors: list[str]) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(host, port, bodies, k * n, n, out, errors) for k in range(clients)))
        return time.perf_counter() - t0

    warm: list[float] = []
    errs: list[str] = []
    asyncio.run(run(warmup_per_client, warm, errs))
    lat: list[float] = []
    wall = asyncio.run(run(requests_per_client, lat, errs))
    return lat, wall, errs


@contextmanager
def server_process(env: dict[str, str], port: int, workers: int = 1) -> Iterator[subprocess.Popen]:
    """`feature-platform serve` as a child process; waits for /healthz, kills its group on exit."""
    import httpx

    cmd = [sys.executable, "-m", "feature_platform.cli", "serve", "--port", str(port), "--log-level", "warning"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not answer /healthz within 60 s")
            time.sleep(0.1)
        yield proc
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


# ---- data --------------------------------------------------------------------------------------


def batch_rows(view, n_users: int, ft: datetime, seed: int = 1):
    """N users of a batch view at one feature_timestamp, random values, typed by view_schema."""
    import pyarrow as pa

    from feature_platform.offline.store import view_schema

    rng = np.random.default_rng(seed)
    schema = view_schema(view)
    cols: dict[str, Any] = {view.entity.join_key: np.arange(n_users, dtype=np.int64),
                            "feature_timestamp": pa.array(np.full(n_users, int(ft.timestamp() * 1e6)),
                                                          pa.int64()).cast(schema.field("feature_timestamp").type)}
    for f in schema.names[2:]:
        t = schema.field(f).type
        if pa.types.is_integer(t):
            cols[f] = rng.integers(0, 500, n_users)
        else:
            cols[f] = np.round(rng.uniform(1, 1000, n_users), 2)
    return pa.table(cols, schema=schema)


def stream_events(source, n_events: int, n_users: int, n_merchants: int, now: datetime, seed: int = 2):
    """Events over the last 24 h (a tenth in the last hour), ingested a second after they happened."""
    import pyarrow as pa

    from feature_platform.offline.store import event_schema

    rng = np.random.default_rng(seed)
    now_us = int(now.timestamp() * 1e6)
    recent = rng.random(n_events) < 0.1
    age_us = np.where(recent, rng.integers(1_000_000, 3_600_000_000, n_events),
                      rng.integers(1_000_000, 86_400_000_000, n_events))
    et = now_us - age_us
    ts = event_schema(source).field("event_time").type
    return pa.table({
        "event_id": pa.array([f"b{i}" for i in range(n_events)]),
        "user_id": rng.integers(0, n_users, n_events),
        "merchant_id": rng.integers(0, n_merchants, n_events),
        "amount": np.round(rng.uniform(1, 500, n_events), 2),
        "country": pa.array(rng.choice(["DE", "FR", "NL"], n_events)),
        "event_time": pa.array(et, pa.int64()).cast(ts),
        "ingested_at": pa.array(np.minimum(et + 1_000_000, now_us - 1), pa.int64()).cast(ts),
        "is_too_late": np.zeros(n_events, dtype=bool),
        "schema_version": pa.array(np.ones(n_events, dtype=np.int32)),
    }, schema=event_schema(source))


# ---- phases ------------------------------------------------------------------------------------


def raw_push(client, prefix: str, table, view, chunk: int = 10_000) -> float:
    """The baseline writer: the same rows as HSET (same field count) + PEXPIREAT, pipelined.

    It pays for Arrow -> Python conversion like any writer fed an Arrow table; returns seconds."""
    t0 = time.perf_counter()
    users = table.column(view.entity.join_key).to_pylist()
    fts = [int(x.timestamp()) for x in table.column("feature_timestamp").to_pylist()]
    cols = [table.column(f).to_pylist() for f in view.feature_names]
    names = list(view.feature_names)
    ttl_ms = view.ttl_us // 1000
    for i in range(0, len(users), chunk):
        pipe = client.pipeline(transaction=False)
        for u, ft, *vals in zip(users[i:i + chunk], fts[i:i + chunk], *[c[i:i + chunk] for c in cols]):
            key = f"{prefix}:raw:{u}"
            args = ["HSET", key, "ft", ft]
            for n, v in zip(names, vals):
                args += [n, "" if v is None else v]
            pipe.execute_command(*args)
            pipe.execute_command("PEXPIREAT", key, ft * 1000 + ttl_ms)
        pipe.execute()
    return time.perf_counter() - t0


def capture_reads(fs, entities: dict[str, list], service: str, prefix: str) -> list[tuple]:
    """The exact HMGETs one get_online_features call sends (minus the occasional metadata check)."""
    with capture_commands() as seen:
        fs.get_online_features(entities=entities, service=service)
    meta = f"{prefix}:meta:".encode()
    out = [c for c in _reads_of(seen) if not c[1].startswith(meta)]
    if not out or any(c[0].upper() != b"HMGET" for c in out):
        raise RuntimeError(f"expected only HMGETs from one read, saw {[c[0] for c in out][:5]}; "
                           f"the raw baseline would not be comparable")
    return out


def raw_read(client, commands: list[tuple]) -> list:
    pipe = client.pipeline(transaction=False)
    for c in commands:
        pipe.execute_command(*c)
    return pipe.execute()


def time_reads(fs, client, samples: list[dict[str, list]], service: str, prefix: str,
               warmup: int = 100) -> tuple[list[float], list[float]]:
    """Interleaved ours/raw timings over the same entity samples (same Redis, same moment)."""
    cmds = [capture_reads(fs, e, service, prefix) for e in samples]
    for e, c in list(zip(samples, cmds))[:warmup]:
        fs.get_online_features(entities=e, service=service)
        raw_read(client, c)
    ours, raw = [], []
    pc = time.perf_counter
    for e, c in zip(samples, cmds):
        t0 = pc()
        fs.get_online_features(entities=e, service=service)
        t1 = pc()
        raw_read(client, c)
        t2 = pc()
        ours.append(t1 - t0)
        raw.append(t2 - t1)
    return ours, raw


def _redis_url_for_child(fs) -> str:
    """The Redis the child server must use: FP_REDIS_URL, or the embedded server's unix socket."""
    if fs.settings.redis_url:
        return fs.settings.redis_url
    path = fs.online.client.connection_pool.connection_kwargs.get("path")
    return f"unix://{path}"


# ---- the command -------------------------------------------------------------------------------


@dataclass
class Params:
    users: int
    stream_users: int
    merchants: int
    events: int
    single_reads: int
    batches: int
    batch_size: int
    http_requests: int
    http_workers: tuple[int, ...]


def run(p: Params, echo=print) -> tuple[list[Row], dict]:
    import redis as redis_mod

    from feature_platform.config import Settings
    from feature_platform.feature_store import FeatureStore
    from feature_platform.registry import load_registry

    base = Settings.from_env()
    prefix = f"fpbench:{uuid.uuid4().hex[:10]}"
    tmp = Path(tempfile.mkdtemp(prefix="fp-bench-online-"))
    settings = replace(base, key_prefix=prefix, data_dir=base.data_dir if not base.redis_url else tmp)
    registry = load_registry("feature_platform.registry.demo:build_registry")
    fs = FeatureStore(settings, registry)
    client = fs.online.client
    rows: list[Row] = []
    raw_numbers: dict[str, Any] = {"redis": fs.online.capabilities.describe(), "prefix": prefix}
    rng = np.random.default_rng(7)
    try:
        # 1. materialization ------------------------------------------------------------------
        view = registry.view("user_daily_profile")
        now = datetime.now(timezone.utc)
        ft = datetime(now.year, now.month, now.day, tzinfo=timezone.utc) - timedelta(days=1)
        table = batch_rows(view, p.users, ft)
        echo(f"materialization: {p.users:,} users of {view.name} ...")
        raw_s = raw_push(client, prefix, table, view)
        _delete_prefix(client, f"{prefix}:raw")
        report = fs.online.push_batch_rows(view, table, now=now)
        assert report.written == p.users, report
        ours_rate, raw_rate = p.users / report.seconds, p.users / raw_s
        raw_numbers.update(push_s=report.seconds, raw_push_s=raw_s)
        rows.append(Row(f"batch materialization, {p.users:,} users (rows/s)", f"{ours_rate:,.0f}",
                        f"{raw_rate:,.0f}", f"{ours_rate / raw_rate:.0%} of raw", ">= 70% of raw",
                        "yes" if ours_rate >= 0.7 * raw_rate else "NO"))
        echo(f"  push_batch_rows {report.seconds:.2f} s, raw HSET+PEXPIREAT {raw_s:.2f} s")

        # 2. stream tiles for the read phase ---------------------------------------------------
        src = registry.source("transactions")
        ev = stream_events(src, p.events, p.stream_users, p.merchants, now)
        echo(f"stream tiles: {p.events:,} events for {p.stream_users:,} users / {p.merchants:,} merchants ...")
        ap = fs.online.apply_events("transactions", ev, now=now)
        raw_numbers.update(apply_s=ap.seconds, apply_events_per_s=p.events / ap.seconds)
        echo(f"  apply_events {ap.seconds:.2f} s ({p.events / ap.seconds:,.0f} events/s; not a target, for context)")

        service = "fraud_detection"
        n_read_users = min(p.users, p.stream_users)

        def sample(n: int) -> dict[str, list]:
            return {"user_id": rng.integers(0, n_read_users, n).tolist(),
                    "merchant_id": rng.integers(0, p.merchants, n).tolist()}

        # 3. single-entity reads ----------------------------------------------------------------
        echo(f"reads: {p.single_reads:,} single-entity, {p.batches} x {p.batch_size}-entity batches ...")
        singles = [sample(1) for _ in range(p.single_reads)]
        got = fs.get_online_features(entities=singles[0], service=service)
        assert len(got.rows) == 1
        ours1, raw1 = time_reads(fs, client, singles, service, prefix)
        o50, o99, r50, r99 = _pct(ours1, 50), _pct(ours1, 99), _pct(raw1, 50), _pct(raw1, 99)
        raw_numbers.update(single_ours_p50_ms=o50, single_ours_p99_ms=o99, single_raw_p50_ms=r50,
                           single_raw_p99_ms=r99, hmget_fields_per_entity=sum(len(c) - 2 for c in
                                                                             capture_reads(fs, singles[0], service, prefix)))
        rows.append(Row("single-entity read p50 (ms)", f"{o50:.3f}", f"{r50:.3f}", f"{o50 / r50:.2f}x",
                        "<= 1.5x raw", "yes" if o50 <= 1.5 * r50 else "NO"))
        rows.append(Row("single-entity read p99 (ms)", f"{o99:.3f}", f"{r99:.3f}", f"{o99 / r99:.2f}x",
                        "<= 1.5x raw", "yes" if o99 <= 1.5 * r99 else "NO"))

        # 4. batch reads ------------------------------------------------------------------------
        batches = [sample(p.batch_size) for _ in range(p.batches)]
        oursb, rawb = time_reads(fs, client, batches, service, prefix, warmup=3)
        b50, rb50 = _pct(oursb, 50), _pct(rawb, 50)
        raw_numbers.update(batch_ours_p50_ms=b50, batch_raw_p50_ms=rb50, batch_ours_p99_ms=_pct(oursb, 99))
        rows.append(Row(f"{p.batch_size}-entity batch read p50 (ms)", f"{b50:.2f}", f"{rb50:.2f}", f"{b50 / rb50:.2f}x",
                        "<= 1.5x raw", "yes" if b50 <= 1.5 * rb50 else "NO"))

        # 5. HTTP -------------------------------------------------------------------------------
        from feature_platform.serving.server import free_port

        env = {"FP_DATA_DIR": str(settings.data_dir), "FP_REDIS_URL": _redis_url_for_child(fs),
               "FP_KEY_PREFIX": prefix, "FP_REGISTRY": "feature_platform.registry.demo:build_registry"}
        bodies = [json.dumps({"service": service, "entities": sample(1)}).encode() for _ in range(2000)]
        for workers in p.http_workers:
            port = free_port()
            echo(f"http: serve --workers {workers} on port {port} ...")
            with server_process(env, port, workers=workers) as proc:
                for clients in ((1, 16) if workers == 1 else (16,)):
                    per_client = max(p.http_requests // clients, 50)
                    http_load("127.0.0.1", port, bodies, clients, 200 // clients + 1)  # warm every worker
                    cpu0 = _tree_cpu(proc.pid)
                    lat, wall, errs = http_load("127.0.0.1", port, bodies, clients, per_client, warmup_per_client=0)
                    cpu_us = (_tree_cpu(proc.pid) - cpu0) / max(len(lat), 1) * 1e6
                    if errs:
                        raise RuntimeError(f"HTTP errors during the benchmark: {errs[:3]}")
                    h50, h99, rps = _pct(lat, 50), _pct(lat, 99), len(lat) / wall
                    raw_numbers[f"http_w{workers}_c{clients}"] = {"p50_ms": h50, "p99_ms": h99, "rps": rps,
                                                                  "server_cpu_us_per_request": cpu_us}
                    target = "p99 < 5 ms" if clients == 16 else "-"
                    ok = ("yes" if h99 < 5.0 else "NO") if clients == 16 else "-"
                    rows.append(Row(f"HTTP single entity, {clients} client{'s' if clients > 1 else ''}, "
                                    f"{workers} worker{'s' if workers > 1 else ''}: p50 / p99 (ms), req/s, "
                                    f"server CPU per request",
                                    f"{h50:.2f} / {h99:.2f}, {rps:,.0f}/s, {cpu_us:,.0f} us",
                                    f"{o50:.2f} / {o99:.2f} (in-process read)", f"{h99 / o99:.1f}x p99",
                                    target, ok))
                    echo(f"  {clients:>2} clients: p50 {h50:.2f} ms  p99 {h99:.2f} ms  {rps:,.0f} req/s  "
                         f"server CPU {cpu_us:,.0f} us/request")
    finally:
        try:
            n = _delete_prefix(client, prefix)
            echo(f"cleanup: deleted {n:,} keys under {prefix}:*")
        except redis_mod.RedisError as exc:  # pragma: no cover - report, do not mask the real error
            echo(f"cleanup failed: {exc}; delete keys matching {prefix}:* by hand")
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return rows, raw_numbers


@click.command("online")
@click.option("--users", default=1_000_000, show_default=True, help="Users pushed in the materialization phase.")
@click.option("--quick", is_flag=True, help="100k users and fewer reads: a ~30 s smoke run.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None, help="Also write the raw numbers here.")
def command(users: int, quick: bool, json_out: Path | None) -> None:
    """Online store and serving vs raw redis-py: materialization rows/s, read p50/p99, HTTP p50/p99.

    Uses FP_REDIS_URL (or the embedded Redis) under a unique key prefix, deleted afterwards.
    """
    if quick:
        users = min(users, 100_000)
    p = Params(users=users, stream_users=min(users, 50_000), merchants=2_000,
               events=50_000 if quick else 200_000, single_reads=1_000 if quick else 5_000,
               batches=20 if quick else 60, batch_size=1000, http_requests=1_600 if quick else 8_000,
               http_workers=(1, 2) if (os.cpu_count() or 1) >= 2 else (1,))
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows, raw = run(p, echo=click.echo)
    raw["load_avg_1m"] = [load_before, os.getloadavg()[0]]
    from redis.utils import HIREDIS_AVAILABLE

    click.echo("")
    click.echo(f"Redis: {raw['redis']}; HMGET fields per single-entity request: {raw['hmget_fields_per_entity']}; "
               f"hiredis: {'yes' if HIREDIS_AVAILABLE else 'no'}; {os.cpu_count()} CPUs, load average "
               f"{load_before:.1f} -> {raw['load_avg_1m'][1]:.1f} (other work on the machine skews every number); "
               f"{time.perf_counter() - started:.0f} s total")
    click.echo(_table(rows))
    if json_out:
        json_out.write_text(json.dumps({"params": p.__dict__, "numbers": raw,
                                        "rows": [r.__dict__ for r in rows]}, indent=2, default=str))
