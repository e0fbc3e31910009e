"""The online store: batch rows and stream tiles in Redis, read back in one round trip.

Writers: `push_batch_rows` (the Dagster online asset of a batch view) and `apply_events` (the
stream worker). Reader: `read` (FeatureStore.get_online_features, the CLI and the HTTP server).
The values a read returns at `as_of` are, by construction, the offline `ingestion`-mode values at
t = as_of (SPEC §3-4) once the writers have caught up; docs/online-store.md has the layout.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import redis

from feature_platform.config import Settings
from feature_platform.offline.store import event_schema, view_schema
from feature_platform.online import lua, resp
from feature_platform.online.connection import Capabilities, capabilities, connect_redis
from feature_platform.online.errors import (
    BadRequestError,
    BadRowsError,
    NotMaterializedError,
    OnlineStoreUnavailable,
    StaleDefinitionError,
)
from feature_platform.online.layout import (
    BatchLayout,
    HopSpec,
    batch_feature_dtype,
    cast_value,
    decode_batch,
    dedupe_key,
    from_us,
    hop_specs,
    meta_field,
    meta_key,
    stream_feature_dtype,
    to_us,
    view_key_prefix,
)
from feature_platform.registry.model import (
    BatchFeatureView,
    Dtype,
    FeatureRef,
    FeatureView,
    Registry,
    RegistryError,
    StreamFeatureView,
)
from feature_platform.types import FeatureValue, OnlineFeatures

_META_CACHE_SECONDS = 10.0
_PUSH_CHUNK = 50_000
_APPLY_CHUNK = 5_000


@dataclass
class PushReport:
    """What one push did; the Dagster online asset records it as materialization metadata."""

    view: str
    version: int
    rows: int
    written: int
    skipped_older: int          # rows not written: already past ft + ttl, or older than the row in their slot
    seconds: float
    rows_per_second: float
    feature_timestamp: datetime | None   # the newest feature_timestamp pushed


@dataclass
class ApplyReport:
    """What one apply did: `applied` counts first deliveries only, so replays show up as duplicates."""

    events: int
    applied: int
    duplicates: int
    too_late: int
    seconds: float
    tile_writes: int = 0


@dataclass(frozen=True)
class _ViewPlan:
    """What one read needs from one view: its hash key prefix, the fields to HMGET, how to decode."""

    view: FeatureView
    refs: tuple[FeatureRef, ...]
    key_prefix: str
    fields: tuple[str, ...]
    decode: Any  # callable(values: list[bytes | None], t_us: int) -> list[FeatureValue], one per ref
    packed_fields: bytes = b""   # the HMGET field list in RESP, packed once and reused for every entity

    def hmget(self, entity_text: str) -> bytes:
        key = (self.key_prefix + entity_text).encode()
        return b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n" % (2 + len(self.fields), len(key), key) + self.packed_fields


class OnlineStore:
    """Reads and writes feature values in Redis under one key prefix."""

    def __init__(self, client: redis.Redis, registry: Registry, key_prefix: str = "fp", *,
                 force_fallback: bool = False) -> None:
        self.client = client
        self.registry = registry
        self.prefix = key_prefix
        # Tests (and servers with a broken HPEXPIREAT) can force the portable field-expiry fallback.
        self.force_fallback = force_fallback
        self._apply = client.register_script(lua.APPLY_EVENTS)
        self._push_older = client.register_script(lua.PUSH_OLDER)
        self._live: dict[tuple[str, int], float] = {}   # positive meta cache: (view, version) -> checked at
        self._static: dict[tuple, tuple[FeatureView, tuple[int, ...]]] = {}  # per (view, version, features)
        self._plans: dict[tuple, _ViewPlan] = {}          # per (view, version, features, tiles/candidates)

    @classmethod
    def from_settings(cls, settings: Settings, registry: Registry, *, force_fallback: bool = False) -> "OnlineStore":
        return cls(connect_redis(settings), registry, settings.key_prefix, force_fallback=force_fallback)

    # ---- capabilities -------------------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return capabilities(self.client)

    @property
    def native_field_ttl(self) -> bool:
        return self.capabilities.native_field_ttl and not self.force_fallback

    def key(self, view: FeatureView, entity_value: Any) -> str:
        """The hash of one (view, version, entity); public so tests and benchmarks can inspect it."""
        return view_key_prefix(self.prefix, view.name, view.version) + str(entity_value)

    # ---- versions ----------------------------------------------------------------------------------
    def mark_materialized(self, view: FeatureView, **extra: Any) -> None:
        """Record (view, version, fingerprint) as live, so reads of it are allowed."""
        self._guard(lambda: self._mark(view, extra))

    def _mark(self, view: FeatureView, extra: dict[str, Any]) -> None:
        mk, mf = meta_key(self.prefix), meta_field(view.name, view.version)
        raw = self.client.hget(mk, mf)
        entry = json.loads(raw) if raw else {}
        if entry.get("fingerprint") not in (None, view.fingerprint()):
            entry = {}  # a new definition under the same version starts over (its old data is stale)
        entry.update({"view": view.name, "version": view.version, "kind": view.kind,
                      "fingerprint": view.fingerprint(),
                      "marked_at": datetime.now(timezone.utc).isoformat()})
        entry.setdefault("first_marked_at", entry["marked_at"])
        entry.update(extra)
        self.client.hset(mk, mf, json.dumps(entry))
        self._live.pop((view.name, view.version), None)

    def materialized_versions(self) -> dict[tuple[str, int], dict]:
        """Every live (view, version) with its fingerprint, kind and times (as recorded when marked)."""
        raw = self._guard(lambda: self.client.hgetall(meta_key(self.prefix)))
        out = {}
        for k, v in raw.items():
            entry = json.loads(v)
            out[(entry["view"], int(entry["version"]))] = entry
        return out

    # ---- batch rows ---------------------------------------------------------------------------------
    def push_batch_rows(self, view: BatchFeatureView, rows: pa.Table, now: datetime | None = None) -> PushReport:
        """Write batch-view rows, newest wins per entity; rows already past ft + ttl are skipped.

        The common case (the newest partition) is plain pipelined HSET + PEXPIREAT, two commands per
        row and no Lua; a partition older than the newest one pushed goes through a compare-and-set
        script so it can never roll an entity back.
        """
        t0 = time.perf_counter()
        if not isinstance(view, BatchFeatureView):
            raise BadRowsError(f"push_batch_rows takes a batch view; {view.name!r} v{view.version} is a {view.kind} view "
                               f"(stream views are written by apply_events)")
        rows = _conform(rows, view_schema(view), f"rows for batch view {view.name!r} v{view.version}")
        layout = BatchLayout(view)
        now_us = to_us(now or datetime.now(timezone.utc))
        jk = view.entity.join_key
        n_in = rows.num_rows
        ft_us = pc.cast(rows.column("feature_timestamp"), pa.int64())
        bad = pc.not_equal(pc.subtract(ft_us, pc.multiply(pc.divide(ft_us, layout.cadence_us), layout.cadence_us)), 0)
        if n_in and pc.any(bad).as_py():
            first = rows.filter(bad).column("feature_timestamp")[0].as_py()
            raise BadRowsError(f"rows for batch view {view.name!r} v{view.version}: feature_timestamp {first} is not on "
                               f"the view's daily cadence (midnight UTC); batch rows carry the end of their day")
        alive = pc.greater(pc.add(ft_us, view.ttl_us), now_us)
        rows = rows.filter(alive).append_column("_ft_us", ft_us.filter(alive))
        skipped = n_in - rows.num_rows
        written = 0
        newest: int | None = None

        def run() -> None:
            nonlocal written, skipped, newest
            mk, mf = meta_key(self.prefix), meta_field(view.name, view.version)
            raw = self.client.hget(mk, mf)
            entry = json.loads(raw) if raw else {}
            if entry.get("fingerprint") not in (None, view.fingerprint()):
                entry = {}
            max_ft = entry.get("max_feature_timestamp_us")
            for ft in sorted(pc.unique(rows.column("_ft_us")).to_pylist()):
                part = rows.filter(pc.equal(rows.column("_ft_us"), ft))
                if max_ft is None or ft >= max_ft:
                    written += self._push_newest(view, layout, part, ft)
                    max_ft = ft
                else:
                    w, s = self._push_older_rows(view, layout, part, ft)
                    written += w
                    skipped += s
                newest = ft if newest is None else max(newest, ft)
            extra = {"max_feature_timestamp_us": max_ft,
                     "max_feature_timestamp": from_us(max_ft).isoformat() if max_ft is not None else None,
                     "last_push_at": datetime.now(timezone.utc).isoformat(), "last_push_rows": written}
            self._mark(view, extra)

        self._guard(run)
        seconds = time.perf_counter() - t0
        return PushReport(view.name, view.version, n_in, written, skipped, seconds,
                          (n_in / seconds) if seconds > 0 else 0.0, from_us(newest) if newest is not None else None)

    def _encoded_columns(self, view: BatchFeatureView, part: pa.Table) -> list[pa.Array]:
        """Every feature column as stored text, vectorised: null -> '', strings '=' + s, bools '1'/'0'."""
        out = []
        for f in view.features:
            col = part.column(f.name)
            if pa.types.is_string(col.type):
                text = pc.binary_join_element_wise("=", col, "")
            elif pa.types.is_boolean(col.type):
                text = pc.if_else(col, "1", "0")
            else:
                text = pc.cast(col, pa.string())
            text = pc.fill_null(text, "")
            out.append(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text)
        return out

    def _key_column(self, view: FeatureView, values: pa.ChunkedArray | pa.Array) -> pa.Array:
        prefix = view_key_prefix(self.prefix, view.name, view.version)
        keys = pc.binary_join_element_wise(prefix, pc.cast(values, pa.string()), "")
        return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys

    def _push_newest(self, view: BatchFeatureView, layout: BatchLayout, part: pa.Table, ft: int) -> int:
        """HSET + PEXPIREAT per row, packed for a whole chunk by Arrow and sent as one write.

        Plain PEXPIREAT is safe here: this is the newest feature_timestamp ever pushed for the view,
        so no key can hold a later expiry. Where the server has expiry flags (Redis >= 7.0) it sends
        `PEXPIREAT NX` + `PEXPIREAT GT` instead, which stays right even if two pushes race.
        """
        flags = self.capabilities.expire_flags
        slot = layout.slot(ft)
        keys = self._key_column(view, part.column(view.entity.join_key))
        cols = self._encoded_columns(view, part)
        ft_const = (resp.bulk(f"{slot}:ft") + resp.bulk(str(ft // 1_000_000))).decode()
        hset_head = f"*{4 + 2 * len(cols)}\r\n$4\r\nHSET\r\n"
        names = [resp.bulk(f"{slot}:{f.name}").decode() for f in view.features]
        exp_tail = resp.bulk(str((ft + view.ttl_us) // 1000)).decode()
        n = len(keys)
        for i in range(0, n, _PUSH_CHUNK):
            k = resp.bulk_column(keys.slice(i, _PUSH_CHUNK))
            parts: list[Any] = [hset_head, k, ft_const]
            for name, col in zip(names, cols):
                parts += [name, resp.bulk_column(col.slice(i, _PUSH_CHUNK))]
            if flags:
                parts += ["*4\r\n$9\r\nPEXPIREAT\r\n", k, exp_tail + "$2\r\nNX\r\n",
                          "*4\r\n$9\r\nPEXPIREAT\r\n", k, exp_tail + "$2\r\nGT\r\n"]
            else:
                parts += ["*3\r\n$9\r\nPEXPIREAT\r\n", k, exp_tail]
            resp.execute_counted(self.client, resp.concat(parts), (3 if flags else 2) * min(_PUSH_CHUNK, n - i))
        return n

    def _push_older_rows(self, view: BatchFeatureView, layout: BatchLayout, part: pa.Table, ft: int) -> tuple[int, int]:
        slot = layout.slot(ft)
        keys = self._key_column(view, part.column(view.entity.join_key)).to_pylist()
        cols = [c.to_pylist() for c in self._encoded_columns(view, part)]
        names = [f"{slot}:{f.name}" for f in view.features]
        ft_field, ft_s = f"{slot}:ft", str(ft // 1_000_000)
        exp_ms = (ft + view.ttl_us) // 1000
        written = skipped = 0
        for i in range(0, len(keys), _PUSH_CHUNK):
            batch = [[key, ft_field, ft_s, exp_ms, [x for pair in zip(names, vals) for x in pair]]
                     for key, *vals in zip(keys[i:i + _PUSH_CHUNK], *[c[i:i + _PUSH_CHUNK] for c in cols])]
            w, s = self._push_older(args=[json.dumps(batch)])
            written += int(w)
            skipped += int(s)
        return written, skipped

    # ---- stream tiles -------------------------------------------------------------------------------
    def stream_views(self, source: str) -> list[StreamFeatureView]:
        return [v for v in self.registry.views_of_source(source) if isinstance(v, StreamFeatureView)]

    def apply_events(self, source: str, events: pa.Table, now: datetime | None = None) -> ApplyReport:
        """Add events to the tiles of every stream view (every version) of `source`, idempotently.

        Events are applied in ingested_at order (the first delivery of an event_id stands), too-late
        ones are skipped, and a replay of already applied events changes nothing.
        """
        t0 = time.perf_counter()
        src = self.registry.source(source)
        events = _conform(events, event_schema(src), f"events of source {source!r}")
        n_in = events.num_rows
        views = self.stream_views(source)
        # Trust the flag, and recompute it too: an event ingested more than allowed_lateness after it
        # happened never counts online (SPEC §1), whoever produced the batch.
        delay_us = pc.subtract(pc.cast(events.column("ingested_at"), pa.int64()), pc.cast(events.column("event_time"), pa.int64()))
        late_mask = pc.or_(pc.fill_null(events.column("is_too_late"), False),
                           pc.greater(delay_us, src.allowed_lateness_us))
        too_late = pc.sum(late_mask).as_py() or 0
        events = events.filter(pc.invert(late_mask))
        events = events.take(pc.sort_indices(events, sort_keys=[("ingested_at", "ascending")]))
        if not views or events.num_rows == 0:
            return ApplyReport(n_in, 0, 0, too_late, time.perf_counter() - t0)

        now_us = to_us(now or datetime.now(timezone.utc))
        join_keys = list(src.join_keys)
        columns = [c.name for c in src.columns]
        cfg_views = []
        for v in views:
            hops = []
            for spec in hop_specs(v).values():
                comps, slot = [], 2  # Lua arrays are 1-based and slot 1 is the newest event time
                for kind, col in spec.components:
                    comps.append([kind, (columns.index(col) + 1) if col else 0, slot])
                    slot += 3 if kind == "last" else 1
                hops.append({"h_us": spec.hop_us, "h_s": spec.hop_s, "fp": f"{spec.hop_s}:", "w_us": spec.window_us,
                             "init": spec.initial(), "comps": comps})
            cfg_views.append({"prefix": view_key_prefix(self.prefix, v.name, v.version),
                              "jk": join_keys.index(v.entity.join_key) + 1,
                              "lateness_us": src.allowed_lateness_us, "hops": hops})
        retention = max(max(s.hop_us + s.retention_us(src.allowed_lateness_us) for s in hop_specs(v).values())
                        for v in views)
        cfg = json.dumps({"now_us": now_us, "native": self.native_field_ttl, "views": cfg_views,
                          "dedupe_key": dedupe_key(self.prefix, source),
                          "dedupe_retention_us": retention})

        # Columns -> plain lists (vectorised), then rows by zip: json.dumps serialises them in C.
        ids = events.column("event_id").to_pylist()
        ets = pc.cast(events.column("event_time"), pa.int64()).to_pylist()
        key_cols = [pc.cast(events.column(k), pa.string()).to_pylist() for k in join_keys]
        val_cols = []
        for c in src.columns:
            col = events.column(c.name)
            if c.dtype is Dtype.BOOL:
                col = pc.cast(col, pa.int64())
            val_cols.append(col.to_pylist())
        keys_rows = list(zip(*key_cols))
        vals_rows = list(zip(*val_cols)) if val_cols else [()] * len(ids)
        rows = list(zip(ids, ets, keys_rows, vals_rows))
        applied = dups = writes = 0

        def run() -> None:
            nonlocal applied, dups, writes
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, len(rows), _APPLY_CHUNK):
                self._apply(args=[cfg, json.dumps(rows[i:i + _APPLY_CHUNK])], client=pipe)
            for v in views:
                if (v.name, v.version) not in self._live:
                    self._mark(v, {})
                    self._live[(v.name, v.version)] = time.monotonic()
            for a, d, w in pipe.execute():
                applied += int(a)
                dups += int(d)
                writes += int(w)

        self._guard(run)
        return ApplyReport(n_in, applied, dups, too_late, time.perf_counter() - t0, writes)

    # ---- reads --------------------------------------------------------------------------------------
    def read(self, refs: list[FeatureRef], entities: dict[str, Sequence[Any]], as_of: datetime | None = None,
             service: str = "") -> OnlineFeatures:
        """Feature values at `as_of` (default now) for every entity row, in ONE pipelined round trip."""
        as_of = (as_of or datetime.now(timezone.utc))
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=timezone.utc)
        t_us = to_us(as_of)
        plans = self._plan(refs, t_us)
        n, key_values = _entity_rows(entities, plans, self.registry)

        now = time.monotonic()
        check_meta = [p for p in plans if now - self._live.get((p.view.name, p.view.version), -1e18) > _META_CACHE_SECONDS]
        parts: list[bytes] = []
        if check_meta:
            parts.append(resp.command("HMGET", meta_key(self.prefix),
                                      *[meta_field(p.view.name, p.view.version) for p in check_meta]))
        texts = [key_values[p.view.entity.join_key] for p in plans]
        for i in range(n):
            for p, tx in zip(plans, texts):
                parts.append(p.hmget(tx[i]))
        payload = b"".join(parts)
        replies = self._guard(lambda: resp.execute_arrays(self.client, payload, len(parts)))
        if check_meta:
            self._check_live(check_meta, replies[0])
            replies = replies[1:]
        replies = _decode_tiles(replies, [isinstance(p.view, StreamFeatureView) for p in plans])
        rows: list[dict[str, FeatureValue]] = []
        it = iter(replies)
        order = [r.column for r in refs]
        for _ in range(n):
            row: dict[str, FeatureValue] = {}
            for p in plans:
                for ref, fv in zip(p.refs, p.decode(next(it), t_us)):
                    row[ref.column] = fv
            rows.append({c: row[c] for c in order})
        return OnlineFeatures(as_of=as_of, service=service, rows=rows,
                              entities={k: list(v) for k, v in entities.items()})

    def _check_live(self, plans: list[_ViewPlan], raw: list[bytes | None]) -> None:
        live = None
        for p, entry in zip(plans, raw):
            v = p.view
            if entry is None:
                if live is None:
                    live = sorted(f"{name} v{ver}" for name, ver in self.materialized_versions())
                how = ("materialize its online asset in Dagster (or call OnlineStore.push_batch_rows)"
                       if v.kind == "batch" else "run the stream worker for source "
                       f"{v.source.name!r} (it writes every stream view version of the source)")
                raise NotMaterializedError(
                    f"feature view {v.name!r} v{v.version} has never been materialized to the online store "
                    f"(key prefix {self.prefix!r}); {how}, or pin a version that is live: {live or 'none'}")
            fp = json.loads(entry).get("fingerprint")
            if fp != v.fingerprint():
                raise StaleDefinitionError(
                    f"feature view {v.name!r} v{v.version}: the online data was written from definition {fp}, but the "
                    f"registry now defines it as {v.fingerprint()}; a changed definition needs a new version "
                    f"(bump {v.name!r} to v{v.version + 1}) and a fresh materialization")
            self._live[(v.name, v.version)] = time.monotonic()

    def _plan(self, refs: list[FeatureRef], t_us: int) -> list[_ViewPlan]:
        """Per view: the fields to read at t and how to decode them (cached: reads at nearby t share them)."""
        if not refs:
            raise BadRequestError("no features requested: pass a feature service or a list of 'view:vN:feature'")
        by_view: dict[tuple[str, int], list[FeatureRef]] = {}
        for r in refs:
            by_view.setdefault((r.view, r.version), []).append(r)
        plans = []
        for (name, version), vrefs in by_view.items():
            skey = (name, version, tuple(r.feature for r in vrefs))
            static = self._static.get(skey)
            if static is None:
                static = self._static[skey] = self._resolve(name, version, vrefs)
            view, hops = static
            if isinstance(view, BatchFeatureView):
                tkey = tuple(BatchLayout(view).candidates(t_us))
            else:
                tkey = tuple(t_us // h for h in hops)
            pkey = (skey, tkey)
            plan = self._plans.get(pkey)
            if plan is None:
                if len(self._plans) > 4096:
                    self._plans.clear()
                prefix = view_key_prefix(self.prefix, name, version)
                if isinstance(view, BatchFeatureView):
                    plan = _batch_plan(view, tuple(vrefs), prefix, t_us)
                else:
                    plan = _stream_plan(view, tuple(vrefs), prefix, t_us)
                plan = replace(plan, packed_fields=b"".join(resp.bulk(f) for f in plan.fields))
                self._plans[pkey] = plan
            plans.append(plan)
        return plans

    def _resolve(self, name: str, version: int, vrefs: list[FeatureRef]) -> tuple[FeatureView, tuple[int, ...]]:
        try:
            view = self.registry.view(name, version)
            for r in vrefs:
                if r.feature not in view.feature_names:
                    raise RegistryError(f"view {name!r} v{version} has no feature {r.feature!r}; "
                                        f"it has {list(view.feature_names)}")
        except RegistryError as exc:
            raise BadRequestError(str(exc)) from exc
        hops: tuple[int, ...] = ()
        if isinstance(view, StreamFeatureView):
            hops = tuple(sorted({view.aggregation(r.feature).hop_us for r in vrefs}))
        return view, hops

    # ---- plumbing -----------------------------------------------------------------------------------
    def _guard(self, fn):
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise OnlineStoreUnavailable(
                f"the online store (Redis) did not answer: {exc}. Check that Redis is running and FP_REDIS_URL "
                f"points at it; requests succeed again as soon as it is back") from exc


# ---- read plans ------------------------------------------------------------------------------------
def _batch_plan(view: BatchFeatureView, refs: tuple[FeatureRef, ...], prefix: str, t_us: int) -> _ViewPlan:
    layout = BatchLayout(view)
    cands = layout.candidates(t_us)
    names = [r.feature for r in refs]
    dtypes = [batch_feature_dtype(view, f) for f in names]
    fields: list[str] = []
    for ft in cands:
        slot = layout.slot(ft)
        fields += [f"{slot}:ft"] + [f"{slot}:{f}" for f in names]
    width = 1 + len(names)
    want = [(str(ft // 1_000_000).encode(), ft) for ft in cands]
    empty = [FeatureValue(None, None)] * len(names)

    def decode(values: list[bytes | None], t: int) -> list[FeatureValue]:
        # Candidates are newest first; the first whose slot still holds that feature_timestamp is served.
        for c, (ft_text, ft) in enumerate(want):
            base = c * width
            if values[base] == ft_text:
                age = (t - ft) / 1e6
                return [FeatureValue(decode_batch(values[base + 1 + j], dt), age) for j, dt in enumerate(dtypes)]
        return empty

    return _ViewPlan(view, refs, prefix, tuple(fields), decode)


def _stream_plan(view: StreamFeatureView, refs: tuple[FeatureRef, ...], prefix: str, t_us: int) -> _ViewPlan:
    specs = hop_specs(view)
    aggs = [view.aggregation(r.feature) for r in refs]
    # Per hop, read the tiles of the longest requested window: k0 - W/h .. k0 (k0 = the current, partial tile).
    fields: list[str] = []
    hop_pos: dict[int, tuple[int, int]] = {}   # hop -> (first index in fields, number of tiles)
    for hop in sorted({a.hop_us for a in aggs}):
        w = max(a.window_us for a in aggs if a.hop_us == hop)
        k0 = t_us // hop
        ntiles = w // hop + 1
        hop_pos[hop] = (len(fields), ntiles)
        fields += [specs[hop].field(k) for k in range(k0 - ntiles + 1, k0 + 1)]
    plan_aggs = []
    for a in aggs:
        spec: HopSpec = specs[a.hop_us]
        start, ntiles = hop_pos[a.hop_us]
        mine = a.window_us // a.hop_us + 1
        lo = start + ntiles - mine                      # this feature's tiles: the newest `mine` of the hop
        comps = [spec.index(kind, col) for kind, col in
                 ([("n", None)] if a.function == "count" and a.column is None else
                  [("nn", a.column)] if a.function == "count" else
                  [("sum", a.column), ("nn", a.column)] if a.function == "mean" else
                  [(a.function, a.column)])]
        plan_aggs.append((a.function, lo, start + ntiles, comps, stream_feature_dtype(view, a.name)))
    def decode(tiles: list[list | None], t: int) -> list[FeatureValue]:
        as_of_s = t / 1e6
        out = []
        for fn, lo, hi, comps, dtype in plan_aggs:
            present = [t for t in tiles[lo:hi] if t is not None]
            if not present:
                value = 0 if fn == "count" else 0.0 if fn == "sum" else None
                out.append(FeatureValue(value, None))
                continue
            age = as_of_s - max(t[0] for t in present) / 1e6
            i = comps[0]
            if fn == "count":
                value: Any = sum(t[i] for t in present)
            elif fn == "sum":
                value = float(math.fsum(t[i] for t in present))
            elif fn == "mean":
                nn = sum(t[comps[1]] for t in present)
                value = math.fsum(t[i] for t in present) / nn if nn else None
            elif fn in ("max", "min"):
                vals = [t[i] for t in present if t[i] is not None]
                value = cast_value((max if fn == "max" else min)(vals), dtype) if vals else None
            else:  # last: greatest (event_time, event_id) among tiles that have a non-null value
                best = None
                for t in present:
                    if t[i] is not None and (best is None or (t[i], t[i + 1].encode()) > (best[i], best[i + 1].encode())):
                        best = t
                value = cast_value(best[i + 2], dtype) if best is not None else None
            out.append(FeatureValue(value, age))
        return out

    return _ViewPlan(view, refs, prefix, tuple(fields), decode)


def _decode_tiles(replies: list[list], is_stream: list[bool]) -> list[list]:
    """JSON-decode every tile of every stream reply with ONE json.loads (per-value calls dominated reads)."""
    k = len(is_stream)
    if not any(is_stream) or not replies:
        return replies
    present = [v for j, r in enumerate(replies) if is_stream[j % k] for v in r if v is not None]
    if not present:
        return [[None] * len(r) if is_stream[j % k] else r for j, r in enumerate(replies)]
    it = iter(json.loads(b"[" + b",".join(present) + b"]"))
    return [[next(it) if v is not None else None for v in r] if is_stream[j % k] else r
            for j, r in enumerate(replies)]


# ---- input checks -----------------------------------------------------------------------------------
def _conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Select and cast `table` to `schema`, with an error that names the missing or unconvertible column."""
    if not isinstance(table, pa.Table):
        raise BadRowsError(f"{what}: expected a pyarrow.Table, got {type(table).__name__}")
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise BadRowsError(f"{what}: missing columns {missing}; expected {schema.names}")
    cols = []
    for f in schema:
        col = table.column(f.name)
        try:
            col = col.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise BadRowsError(f"{what}: column {f.name!r} of type {col.type} cannot be read as {f.type}: {exc}") from exc
        if not f.nullable and col.null_count:
            raise BadRowsError(f"{what}: column {f.name!r} has {col.null_count} null values; it must not be null")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def _entity_rows(entities: dict[str, Sequence[Any]], plans: list[_ViewPlan],
                 registry: Registry) -> tuple[int, dict[str, list[str]]]:
    """Check the request's entity lists against the views read; return the row count and key texts."""
    if not isinstance(entities, dict):
        raise BadRequestError(f"entities must be a mapping of join key -> list of values, got {type(entities).__name__}")
    needed: dict[str, Dtype] = {}
    for p in plans:
        needed[p.view.entity.join_key] = p.view.entity.dtype
    for k in needed:
        if k not in entities:
            users = sorted({p.view.name for p in plans if p.view.entity.join_key == k})
            raise BadRequestError(f"entity key {k!r} is missing from the request; views {users} are keyed by it. "
                                  f"Pass entities={{{k!r}: [...], ...}}")
    lengths = {k: len(entities[k]) for k in needed}
    if len(set(lengths.values())) > 1:
        raise BadRequestError(f"entity lists must have equal lengths (one row per index), got {lengths}")
    n = next(iter(lengths.values()), 0)
    out: dict[str, list[str]] = {}
    for k, dtype in needed.items():
        texts = []
        for i, v in enumerate(entities[k]):
            if dtype is Dtype.INT64:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise BadRequestError(f"entity key {k!r}, row {i}: {v!r} is not an integer ({k} is int64)")
                texts.append(str(int(v)))
            else:
                if not isinstance(v, str):
                    raise BadRequestError(f"entity key {k!r}, row {i}: {v!r} is not a string ({k} is a string key)")
                texts.append(v)
        out[k] = texts
    return n, out
