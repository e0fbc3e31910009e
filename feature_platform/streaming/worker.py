"""The stream worker: Redis Stream -> validated events -> online tiles + offline archive, effectively once.

Per batch read with XREADGROUP (docs/streaming.md has the whole story):

1. build an Arrow table from the entries; `ingested_at` = the entry id's time (replays agree);
2. `validate_events` (the same judge as file ingest); rejects go to the dead-letter stream, once
   per entry id (Lua: SADD seen + XADD);
3. claim each accepted event_id in Redis (Lua: HSETNX event_id -> entry id): the first delivery
   wins; a replay of the winning entry wins again, any other entry with that event_id is a
   duplicate. Exact counters (events, late, too_late, duplicates) move only on a first claim;
4. `OnlineStore.apply_events` with the winners (idempotent per event_id, atomic per call);
5. keep the winners in an archive buffer; every `flush_interval` seconds write them to the offline
   store (`StreamArchive`, idempotent per entry-id range) and only then XACK the entries.

A kill -9 anywhere leaves the entries unacknowledged; the next life reads its own pending entries
first (XREADGROUP from id 0) and every step above is idempotent, so nothing is lost and nothing is
counted twice. Dead workers' entries are taken over with XAUTOCLAIM. Redis errors are retried with
backoff, re-creating the consumer group if the server came back empty.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import redis

from feature_platform.config import Settings
from feature_platform.offline.ingest import validate_events
from feature_platform.offline.store import TS, OfflineStore
from feature_platform.offline.store import connect as connect_duckdb
from feature_platform.registry.model import EVENT_ID, EVENT_TIME, INGESTED_AT, Registry, StreamFeatureView
from feature_platform.streaming.archive import StreamArchive
from feature_platform.online.connection import connect_redis as connect
from feature_platform.streaming.keys import StreamKeys, parse_id

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, ConnectionResetError, OSError)

# KEYS: totals, claim buckets...   ARGV: n, pexpireat per bucket..., then (bucket#, event_id, entry_id, flag) * n
# flag: 0 on time, 1 late (its finest tile had closed), 2 too late.
CLAIM_LUA = """
local n = tonumber(ARGV[1])
local nb = #KEYS - 1
local base = nb + 2
local out = {}
local new, late, toolate, dups = 0, 0, 0, 0
for i = 0, n - 1 do
  local j = base + i * 4
  local key = KEYS[tonumber(ARGV[j]) + 1]
  local eid, mid, flag = ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  if redis.call('HSETNX', key, eid, mid) == 1 then
    out[i + 1] = 1
    new = new + 1
    if flag == '1' then late = late + 1 elseif flag == '2' then toolate = toolate + 1 end
  elseif redis.call('HGET', key, eid) == mid then
    out[i + 1] = 1
  else
    out[i + 1] = 0
    if redis.call('HSETNX', key, '\\1' .. mid, 1) == 1 then dups = dups + 1 end
  end
end
for b = 1, nb do redis.call('PEXPIREAT', KEYS[b + 1], ARGV[b + 1]) end
if new > 0 then redis.call('HINCRBY', KEYS[1], 'events', new) end
if late > 0 then redis.call('HINCRBY', KEYS[1], 'late', late) end
if toolate > 0 then redis.call('HINCRBY', KEYS[1], 'too_late', toolate) end
if dups > 0 then redis.call('HINCRBY', KEYS[1], 'duplicates', dups) end
return out
"""

# KEYS: deadletter stream, seen set, totals   ARGV: n, then (entry_id, reason, payload) * n
DEADLETTER_LUA = """
local n = tonumber(ARGV[1])
local added = 0
for i = 0, n - 1 do
  local mid, reason, payload = ARGV[2 + i * 3], ARGV[3 + i * 3], ARGV[4 + i * 3]
  if redis.call('SADD', KEYS[2], mid) == 1 then
    redis.call('XADD', KEYS[1], '*', 'message_id', mid, 'reason', reason, 'payload', payload)
    added = added + 1
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[3], 'dead_letter', added) end
return added
"""

# Lease: KEYS lease  ARGV owner, ttl_ms.  Take it when free or ours; 1 = held by us.
LEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_END = object()
_TRACE = os.environ.get("FP_STREAM_TRACE")  # debugging aid: per-batch delays as JSON lines


@dataclass
class _Prepared:
    ids: list[str]          # every entry of the batch (acknowledged after the flush)
    winners: pa.Table       # first deliveries, to apply and archive


class LeaseHeld(RuntimeError):
    """Another worker holds this source's exclusive lease."""


class _Stop(Exception):
    pass


@dataclass
class WorkerConfig:
    source: str = "transactions"
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    batch: int = 1000
    block_ms: int = 100
    flush_interval: float = 1.0      # seconds between archive flushes (and XACKs); longer: fewer files, burstier CPU
    flush_events: int = 50_000       # flush earlier when this many events are buffered
    claim_idle_ms: int = 30_000      # XAUTOCLAIM entries idle this long (their worker died)
    claim_every: float = 5.0
    claim_margin: timedelta = timedelta(days=1)  # keep first-delivery claims this long past the lateness horizon
    exclusive: bool = False          # hold the source's lease (one worker per source)
    lease_ttl_ms: int = 15_000
    stop_when_idle: bool = False     # exit once the group has no lag and nothing pending (tests, catch-up runs)
    max_seconds: float | None = None
    pipelined: bool = True           # read/validate/claim the next batch while this one is applied


@dataclass
class WorkerReport:
    messages: int = 0
    accepted: int = 0
    winners: int = 0
    applied: int = 0
    rejected: int = 0
    archived: int = 0
    replayed: int = 0
    batches: int = 0
    flushes: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    # where the time went (wall seconds, summed over threads): the bench prints them per 1000 events
    read_s: float = 0.0       # XREADGROUP / XAUTOCLAIM and parsing the reply
    validate_s: float = 0.0   # entries -> table, validate_events, dead letters
    claim_s: float = 0.0      # first-delivery claims (Lua)
    apply_s: float = 0.0      # OnlineStore.apply_events
    archive_s: float = 0.0    # Parquet archive + XACK


class StreamWorker:
    """One consumer of one source's stream; `run()` loops until stopped (or idle, if asked)."""

    def __init__(self, settings: Settings, registry: Registry, config: WorkerConfig | None = None, *,
                 online: Any | None = None, client: redis.Redis | None = None,
                 on_heartbeat: Callable[[dict], None] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.cfg = config or WorkerConfig()
        self.src = registry.source(self.cfg.source)
        self.keys = StreamKeys.of(settings, self.src.name)
        self.r = client or connect(settings)
        self._online = online
        self.offline = OfflineStore(settings, registry)
        self.archive = StreamArchive(self.offline, self.src.name)
        self.report = WorkerReport()
        self._duck = connect_duckdb(threads=1)  # long-lived: a new DuckDB connection costs ~30 ms, a cursor ~0.2 ms
        self.stop_event = threading.Event()
        self.on_heartbeat = on_heartbeat
        views = [v for v in registry.views_of_source(self.src.name) if isinstance(v, StreamFeatureView)]
        hops = [a.hop_us for v in views for a in v.aggregations]
        self.finest_hop_us = min(hops) if hops else 60_000_000
        self._claim = self.r.register_script(CLAIM_LUA)
        self._deadletter = self.r.register_script(DEADLETTER_LUA)
        self._lease = self.r.register_script(LEASE_LUA)
        self._release = self.r.register_script(RELEASE_LUA)
        # archive buffer: (winners table, entry ids of every entry of the batch)
        self._buf_tables: list[pa.Table] = []
        self._buf_ids: list[str] = []
        self._buf_events = 0
        self._last_flush = time.monotonic()
        self._archive_q: queue.Queue | None = None
        self._archive_lock = threading.Lock()
        self._archive_pending = 0
        self._failures: list[BaseException] = []
        self._delays: deque[tuple[float, np.ndarray]] = deque()
        self._applied_log: deque[tuple[float, int]] = deque()
        self._last_beat = 0.0
        self._last_claim = 0.0
        self._claim_cursor = "0-0"
        self._claiming = False
        self._errors = 0        # Redis errors so far (any thread)
        self._errors_seen = 0   # ... as of the reader's last scan of its own pending entries
        self._pel_cursor: str | None = None
        self._clock_offset_ms = 0.0
        self._crash_at = _parse_crash(os.environ.get("FP_STREAM_CRASH_AT", ""))
        self._started = time.time()
        self._start_mono = time.monotonic()

    # ---- online store ------------------------------------------------------------------------
    @property
    def online(self):
        if self._online is None:
            from feature_platform.online.store import OnlineStore

            self._online = OnlineStore.from_settings(self.settings, self.registry)
        return self._online

    # ---- lifecycle ---------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> WorkerReport:
        started = time.monotonic()
        try:
            self._retry(self._ensure_group)
            self._retry(self._sync_clock)
            if self.cfg.exclusive and not self._retry(self._take_lease):
                holder = self.r.get(self.keys.lease)
                raise LeaseHeld(f"source {self.src.name!r} already has a worker ({_s(holder)}); "
                                f"one per source when run exclusively (Dagster). Stop it or wait "
                                f"{self.cfg.lease_ttl_ms / 1000:.0f}s for its lease to lapse.")
            self._warm_up()
            self._retry(self._tidy)
            self._recover_own_pending()
            if self.cfg.pipelined:
                self._run_pipelined(started)
            else:
                while not self.stop_event.is_set() and not self._timed_out(started):
                    entries = self._read()
                    if entries:
                        self._commit(self._prepare(entries))
                    if self._after_batch(idle=not entries):
                        break
        except _Stop:
            pass
        finally:
            try:
                if self._buf_ids:
                    self._flush(allow_stop=False)
            except Exception:  # noqa: BLE001 - entries stay pending and are replayed by the next run
                log.exception("final flush failed; the entries stay pending and will be replayed")
            try:
                self._beat(force=True, stopping=True)
                if self.cfg.exclusive:
                    self._release(keys=[self.keys.lease], args=[self.cfg.consumer])
            except Exception:  # noqa: BLE001
                pass
            self.report.seconds = time.monotonic() - started
        return self.report

    # ---- Redis plumbing ----------------------------------------------------------------------
    def _retry(self, fn: Callable[[], Any], allow_stop: bool = True) -> Any:
        delay = 0.05
        while True:
            try:
                return fn()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_group()
            except REDIS_ERRORS as exc:
                if allow_stop and self.stop_event.is_set():
                    raise _Stop() from exc
                self.report.reconnects += 1
                self._errors += 1  # a reply may have been lost: the reader re-reads its pending entries
                log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _sync_clock(self) -> None:
        """Offset of the Redis clock (which stamps entry ids) from ours, for delay measurement."""
        t0 = time.time()
        sec, usec = self.r.time()
        t1 = time.time()
        self._clock_offset_ms = (sec + usec / 1e6 - (t0 + t1) / 2) * 1000

    def _take_lease(self) -> bool:
        return bool(self._lease(keys=[self.keys.lease], args=[self.cfg.consumer, self.cfg.lease_ttl_ms]))

    # ---- reading -----------------------------------------------------------------------------
    def _recover_own_pending(self) -> None:
        """Entries this consumer read in an earlier life but never acknowledged: process them first."""
        last = "0"
        while not self.stop_event.is_set():
            resp = self._retry(lambda: self.r.xreadgroup(self.keys.group, self.cfg.consumer,
                                                         {self.keys.stream: last}, count=self.cfg.batch))
            page = resp[0][1] if resp else []
            if not page:
                break
            last = _s(page[-1][0])
            entries = [e for e in page if e[1]]  # deleted entries come back without fields
            if entries:
                self._process(entries)
            if self._should_flush(idle=False):
                self._flush()

    def _read(self) -> list:
        """The next entries: stale ones of dead consumers (XAUTOCLAIM), else new ones.

        A claim pass, due every claim_every seconds, runs to its end (cursor back at 0-0) before any
        new entry is read: stale entries are older than new ones, and the first delivery of an
        event_id must be claimed before a later re-delivery of it can be.
        """
        t0 = time.perf_counter()
        try:
            return self._read_entries()
        finally:
            self.report.read_s += time.perf_counter() - t0

    def _read_entries(self) -> list:
        if self._pel_cursor is not None or self._errors != self._errors_seen:
            return self._read_own_pending()
        entries = self._read_stale_or_new()
        if self._errors != self._errors_seen:
            # The connection broke during a read, so its reply (entries now pending for us) may be
            # lost: scan our pending entries in id order first; these come back with them.
            return self._read_own_pending()
        return entries

    def _read_own_pending(self) -> list:
        """One page of this consumer's pending entries, in id order, from the start of a scan."""
        if self._pel_cursor is None:
            self._errors_seen = self._errors
            self._pel_cursor = "0"
        resp = self._retry(lambda: self.r.xreadgroup(self.keys.group, self.cfg.consumer,
                                                     {self.keys.stream: self._pel_cursor}, count=self.cfg.batch))
        page = resp[0][1] if resp else []
        if not page:
            self._pel_cursor = None
            return []
        self._pel_cursor = _s(page[-1][0])
        return [e for e in page if e[1]]

    def _read_stale_or_new(self) -> list:
        now = time.monotonic()
        if self._claiming or now - self._last_claim >= self.cfg.claim_every:
            self._last_claim = now
            while True:
                claimed = self._retry(lambda: self.r.xautoclaim(
                    self.keys.stream, self.keys.group, self.cfg.consumer, self.cfg.claim_idle_ms,
                    start_id=self._claim_cursor, count=self.cfg.batch))
                self._claim_cursor = _s(claimed[0])
                self._claiming = self._claim_cursor != "0-0"
                entries = [e for e in claimed[1] if e[1]]
                if entries:
                    log.info("claimed %d stale entries", len(entries))
                    return entries
                if not self._claiming:
                    break
        resp = self._retry(lambda: self.r.xreadgroup(self.keys.group, self.cfg.consumer, {self.keys.stream: ">"},
                                                     count=self.cfg.batch, block=self.cfg.block_ms))
        return resp[0][1] if resp else []

    def _warm_up(self) -> None:
        """Pay the one-time costs (online store connection, DuckDB query planning, Arrow's JSON reader)
        before the first entry arrives, so the first events are not hundreds of ms late."""
        self._retry(lambda: self.online)
        now = datetime.now(timezone.utc)
        line = json.dumps({"event_id": "warm-up", **{k: "0" for k in self.src.join_keys},
                           EVENT_TIME: now.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
        table, *_ = self._table([(f"{int(now.timestamp() * 1000)}-0", {b"event": line})])
        validate_events(self.src, table, con=self._duck.cursor())

    def _tidy(self) -> None:
        """Forget consumers that left nothing pending an hour ago and heartbeats a day old, so names
        like host-pid do not pile up in the group and in the metrics."""
        for c in self.r.xinfo_consumers(self.keys.stream, self.keys.group):
            name = _s(c["name"])
            if name != self.cfg.consumer and int(c["pending"]) == 0 and int(c["idle"]) > 3_600_000:
                self.r.xgroup_delconsumer(self.keys.stream, self.keys.group, name)
        now = time.time()
        for name, blob in self.r.hgetall(self.keys.workers).items():
            try:
                old = now - float(json.loads(blob)["heartbeat"]) > 86_400
            except (ValueError, KeyError, TypeError):
                old = True
            if old and _s(name) != self.cfg.consumer:
                self.r.hdel(self.keys.workers, name)

    def _timed_out(self, started: float) -> bool:
        return self.cfg.max_seconds is not None and time.monotonic() - started > self.cfg.max_seconds

    def _after_batch(self, idle: bool) -> bool:
        """Flush when due, beat; True when the worker should stop because it has caught up."""
        if self._should_flush(idle=idle):
            self._flush()
        self._beat()
        return idle and self.cfg.stop_when_idle and self._caught_up()

    def _run_pipelined(self, started: float) -> None:
        """Two stages: a reader thread reads, validates and claims batch k+1 while this thread applies
        batch k to the online store (mostly waiting on Redis) and archives/acknowledges."""
        q: queue.Queue = queue.Queue()
        done = threading.Event()
        failure: list[BaseException] = []

        def reader() -> None:
            try:
                while not done.is_set():
                    while q.qsize() >= 1 and not done.is_set():
                        time.sleep(0.001)  # back-pressure: at most one prepared batch ahead
                    if done.is_set():
                        break
                    entries = self._read()
                    q.put(self._prepare(entries) if entries else None)
            except _Stop:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                failure.append(exc)
            finally:
                q.put(_END)

        t = threading.Thread(target=reader, name=f"fp-stream-reader-{self.src.name}", daemon=True)
        t.start()
        archiver = self._start_archiver()
        try:
            while True:
                if self._failures:
                    break
                if self.stop_event.is_set() or self._timed_out(started):
                    break
                try:
                    item = q.get(timeout=0.5)
                except queue.Empty:
                    self._beat()
                    continue
                if item is _END:
                    break
                if item is not None:
                    self._commit(item)
                if self._after_batch(idle=item is None):
                    break
        finally:
            done.set()
            self.stop_event.set()  # the run is over: a reader retrying a dead Redis gives up now
            # apply what the reader already prepared (its entries are read and claimed): nothing is left half-done
            while True:
                item = q.get()
                if item is _END:
                    break
                if item is not None:
                    self._commit(item)
            t.join()
            if self._buf_ids:
                self._flush()
            self._stop_archiver(archiver)
        if failure or self._failures:
            raise (failure or self._failures)[0]

    def _caught_up(self) -> bool:
        if self._buf_ids or self._archive_pending:
            return False
        for g in self._retry(lambda: self.r.xinfo_groups(self.keys.stream)):
            if _s(g["name"]) == self.keys.group:
                return (g.get("lag") or 0) == 0 and g["pending"] == 0
        return False

    # ---- one batch ---------------------------------------------------------------------------
    def _table(self, entries: list) -> tuple[pa.Table, list[str], list[dict], list[int], list[tuple[int, str]]]:
        """Entries -> (string table of the parseable ones, ids, raw fields, their row -> entry index, unparseable).

        Both documented formats become one JSON line per entry (the `event` field as is, or the
        per-column fields serialised), parsed by Arrow's JSON reader in one call; a batch it refuses
        (a value that is not a string, a malformed object) is parsed entry by entry instead.
        """
        ids = [_s(e[0]) for e in entries]
        fields = [e[1] for e in entries]
        lines = []
        for f in fields:
            ev = f.get(b"event", f.get("event"))
            if ev is None:
                lines.append(json.dumps({_s(k): _s(v) for k, v in f.items()}).encode())
            else:
                lines.append(ev if isinstance(ev, bytes) else ev.encode())
        cols = list(self.src.column_types()) + [EVENT_TIME, "schema_version"]
        schema = pa.schema([(c, pa.string()) for c in cols])
        good = list(range(len(ids)))
        bad: list[tuple[int, str]] = []
        try:
            if any(b"\n" in ln for ln in lines):
                raise pa.ArrowInvalid("newline inside an entry")
            table = pajson.read_json(io.BytesIO(b"\n".join(lines)),
                                     read_options=pajson.ReadOptions(use_threads=False, block_size=1 << 26),
                                     parse_options=pajson.ParseOptions(explicit_schema=schema,
                                                                       unexpected_field_behavior="ignore"))
            if table.num_rows != len(ids):
                raise pa.ArrowInvalid("row count mismatch")
        except pa.ArrowInvalid:
            rows, good = [], []
            for i, ln in enumerate(lines):
                try:
                    obj = json.loads(ln)
                except ValueError as exc:
                    bad.append((i, f"entry is not valid JSON: {exc}"))
                    continue
                if not isinstance(obj, dict):
                    bad.append((i, "entry's event is not a JSON object"))
                    continue
                rows.append({c: _text(obj.get(c)) for c in cols})
                good.append(i)
            table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in cols})
        if table.column("schema_version").null_count == table.num_rows:
            table = table.drop_columns(["schema_version"])
        ms = np.fromiter((int(ids[i].split("-", 1)[0]) for i in good), dtype=np.int64, count=len(good))
        table = table.append_column(INGESTED_AT, pa.array(ms * 1000, pa.int64()).cast(TS))
        return table, ids, fields, good, bad

    def _process(self, entries: list) -> None:
        self._commit(self._prepare(entries))

    def _prepare(self, entries: list) -> "_Prepared":
        """Validate, dead-letter and claim one batch (each step idempotent, retried on Redis errors)."""
        t0 = time.perf_counter()
        table, ids, fields, good, bad = self._table(entries)
        validated = validate_events(self.src, table, con=self._duck.cursor())
        self.report.messages += len(ids)
        self.report.batches += 1
        rejected_rows = validated.rejected.column("row_number").to_pylist() if validated.rejected.num_rows else []
        dead = bad + list(zip((good[r] for r in rejected_rows),
                              validated.rejected.column("reason").to_pylist() if rejected_rows else []))
        if dead:
            args: list[Any] = [len(dead)]
            for i, reason in dead:
                payload = json.dumps({_s(k): _s(v) for k, v in fields[i].items()}, sort_keys=True)
                args += [ids[i], reason, payload]
            self._retry(lambda: self._deadletter(keys=[self.keys.deadletter, self.keys.deadletter_seen,
                                                       self.keys.totals], args=args))
            self.report.rejected += len(dead)
        if rejected_rows:
            rejected = set(rejected_rows)
            acc_ids = [ids[g] for r, g in enumerate(good) if r not in rejected]
        else:
            acc_ids = [ids[g] for g in good]
        accepted = validated.accepted
        if rejected_rows:
            keep = np.ones(len(ids), dtype=bool)
            keep[rejected_rows] = False
            acc_ids = [i for i, k in zip(ids, keep) if k]
        else:
            acc_ids = ids
        self.report.accepted += accepted.num_rows
        winners = accepted
        t1 = time.perf_counter()
        self.report.validate_s += t1 - t0
        if accepted.num_rows:
            mask = self._retry(lambda: self._claims(accepted, acc_ids))
            self.report.claim_s += time.perf_counter() - t1
            self._crash_point("after_claims")
            winners = accepted.filter(pa.array(mask, pa.bool_()))
            self.report.winners += winners.num_rows
        return _Prepared(ids, winners)

    def _commit(self, prep: "_Prepared") -> None:
        """Apply the winners online, then buffer them for the archive; the entries are acked at the flush."""
        winners, ids = prep.winners, prep.ids
        if winners.num_rows:
            t0 = time.perf_counter()
            self._retry(lambda: self.online.apply_events(self.src.name, winners))
            self.report.apply_s += time.perf_counter() - t0
            self.report.applied += winners.num_rows
            self._crash_point("after_apply")
        now_ms = time.time() * 1000 + self._clock_offset_ms
        ms = np.fromiter((int(i.split("-", 1)[0]) for i in ids), dtype=np.int64, count=len(ids))
        wall = time.monotonic()
        self._delays.append((wall, now_ms - ms))
        self._applied_log.append((wall, len(ids)))
        if _TRACE:
            with open(_TRACE, "a") as fh:
                fh.write(json.dumps({"t": time.time(), "n": len(ids), "dmax": float((now_ms - ms).max()),
                                     "dmin": float((now_ms - ms).min())}) + "\n")
        if winners.num_rows:
            self._buf_tables.append(winners)
        self._buf_ids.extend(ids)
        self._buf_events += winners.num_rows

    def _claims(self, accepted: pa.Table, acc_ids: list[str]) -> list[bool]:
        et_us = pc.cast(accepted.column(EVENT_TIME), pa.int64()).to_numpy()
        it_us = pc.cast(accepted.column(INGESTED_AT), pa.int64()).to_numpy()
        too_late = accepted.column("is_too_late").to_numpy(zero_copy_only=False)
        h = self.finest_hop_us
        late = (et_us // h) < (it_us // h)
        flags = np.where(too_late, 2, np.where(late, 1, 0))
        day_idx = et_us // (DAY_MS * 1000)
        days, inv = np.unique(day_idx, return_inverse=True)
        now_ms = int(time.time() * 1000)
        lateness_ms = self.src.allowed_lateness_us // 1000
        margin_ms = int(self.cfg.claim_margin.total_seconds() * 1000)
        keys = [self.keys.totals] + [self.keys.claims(_day(int(d))) for d in days]
        expire = [max(int(d + 1) * DAY_MS + lateness_ms, now_ms) + margin_ms for d in days]
        eids = accepted.column(EVENT_ID).to_pylist()
        args: list[Any] = [len(eids), *expire]
        for b, eid, mid, fl in zip(inv.tolist(), eids, acc_ids, flags.tolist()):
            args += [b + 1, eid, mid, fl]
        out = self._claim(keys=keys, args=args)
        return [bool(x) for x in out]

    # ---- archive + ack -----------------------------------------------------------------------
    def _should_flush(self, idle: bool) -> bool:
        if not self._buf_ids:
            return False
        return (idle or self._buf_events >= self.cfg.flush_events
                or time.monotonic() - self._last_flush >= self.cfg.flush_interval)

    def _flush(self, allow_stop: bool = True) -> None:
        """Hand the buffer to the archiver (a thread when pipelined): archive, then XACK its entries."""
        job = (self._buf_tables, self._buf_ids)
        self._buf_tables, self._buf_ids, self._buf_events = [], [], 0
        self._last_flush = time.monotonic()
        if self._archive_q is not None:
            with self._archive_lock:
                self._archive_pending += 1
            self._archive_q.put(job)
        else:
            self._write_and_ack(job, allow_stop)

    def _write_and_ack(self, job: tuple[list[pa.Table], list[str]], allow_stop: bool = True) -> None:
        t_flush = time.monotonic()
        tables, ids = job
        parsed = sorted(parse_id(i) for i in ids)
        if tables:
            rep = self.archive.write(pa.concat_tables(tables), parsed[0], parsed[-1])
            self.report.archived += rep.written
            self.report.replayed += rep.replayed
            self._crash_point("after_archive")
        for i in range(0, len(ids), 10_000):
            chunk = ids[i:i + 10_000]
            self._retry(lambda: self.r.xack(self.keys.stream, self.keys.group, *chunk), allow_stop=allow_stop)
        self._crash_point("after_ack")
        if _TRACE:
            with open(_TRACE, "a") as fh:
                fh.write(json.dumps({"t": time.time(), "flush_s": time.monotonic() - t_flush}) + "\n")
        self.report.flushes += 1
        self.report.archive_s += time.monotonic() - t_flush

    def _start_archiver(self) -> threading.Thread:
        """Archive writes and XACKs off the apply path: a slow Parquet write never delays online updates."""
        self._archive_q = queue.Queue()

        def archiver() -> None:
            while True:
                job = self._archive_q.get()
                if job is _END:
                    return
                try:
                    self._write_and_ack(job)
                except _Stop:
                    pass  # stopping while Redis is away: the entries stay pending and are replayed
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self._failures.append(exc)
                    self.stop_event.set()
                finally:
                    with self._archive_lock:
                        self._archive_pending -= 1

        t = threading.Thread(target=archiver, name=f"fp-stream-archiver-{self.src.name}", daemon=True)
        t.start()
        return t

    def _stop_archiver(self, t: threading.Thread) -> None:
        self._archive_q.put(_END)
        t.join()
        self._archive_q = None

    # ---- metrics -----------------------------------------------------------------------------
    def stats(self) -> dict:
        now = time.monotonic()
        while self._delays and now - self._delays[0][0] > 30:
            self._delays.popleft()
        while self._applied_log and now - self._applied_log[0][0] > 10:
            self._applied_log.popleft()
        d = np.concatenate([x for _, x in self._delays]) if self._delays else np.empty(0)
        p50, p99 = np.percentile(d, [50, 99]) if d.size else (None, None)
        span = min(10.0, max(now - self._start_mono, 1e-3))
        return {
            "heartbeat": time.time(),
            "consumer": self.cfg.consumer,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "events_per_s": sum(n for _, n in self._applied_log) / span,
            "delay_p50_ms": float(p50) if d.size else None,
            "delay_p99_ms": float(p99) if d.size else None,
            "delay_samples": int(d.size),
            "messages": self.report.messages,
            "reconnects": self.report.reconnects,
            "buffered": len(self._buf_ids),
        }

    def _beat(self, force: bool = False, stopping: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < 1.0:
            return
        self._last_beat = now
        s = self.stats()
        s["stopped"] = stopping
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(self.keys.workers, self.cfg.consumer, json.dumps(s))
            if self.cfg.exclusive and not stopping:
                pipe.evalsha(self._lease.sha, 1, self.keys.lease, self.cfg.consumer, self.cfg.lease_ttl_ms)
            res = pipe.execute(raise_on_error=False)
            if self.cfg.exclusive and not stopping and res[-1] == 0:
                log.error("lost the exclusive lease of %s to another worker; stopping", self.src.name)
                self.stop_event.set()
            elif self.cfg.exclusive and not stopping and isinstance(res[-1], Exception):
                self._take_lease()
        except REDIS_ERRORS:
            pass
        if self.on_heartbeat:
            self.on_heartbeat(s)

    # ---- fault injection (tests) ---------------------------------------------------------------
    def _crash_point(self, name: str) -> None:
        if self._crash_at and self._crash_at[0] == name:
            self._crash_at[1] -= 1
            if self._crash_at[1] <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


def _parse_crash(spec: str) -> list | None:
    """FP_STREAM_CRASH_AT=point:n — SIGKILL ourselves the n-th time we pass `point` (crash tests)."""
    if not spec:
        return None
    point, _, n = spec.partition(":")
    return [point, int(n or 1)]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _text(v: Any) -> str | None:
    """A JSON value as the text validation expects (numbers in their JSON spelling)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    return json.dumps(v)


def _day(day_index: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(days=day_index)).date().isoformat()
