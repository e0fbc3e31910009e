"""The feature registry: every definition the platform computes from, declared once.

Offline SQL, the online tile writer, the Dagster assets and the HTTP API all read these
objects, so a feature is defined in exactly one place. Objects are frozen dataclasses and
validate themselves on construction: a bad definition fails when the repo is loaded, with a
message that names the object and the problem, never later inside a query.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Iterable, Literal


class RegistryError(ValueError):
    """A definition is invalid; the message names the object and what to change."""


class Dtype(str, Enum):
    INT64 = "int64"
    FLOAT64 = "float64"
    STRING = "string"
    BOOL = "bool"

    @property
    def duckdb(self) -> str:
        return {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}[self.value]


def _td_us(td: timedelta) -> int:
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


def format_duration(td: timedelta) -> str:
    """Compact, stable spelling used in feature names and fingerprints: 10m, 1h, 7d."""
    us = _td_us(td)
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


@dataclass(frozen=True)
class Entity:
    """Something features describe; `join_key` is the column that identifies it everywhere."""

    name: str
    join_key: str
    dtype: Dtype = Dtype.INT64
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "entity")
        _check_name(self.join_key, f"entity {self.name!r} join key")
        if self.dtype not in (Dtype.INT64, Dtype.STRING):
            raise RegistryError(f"entity {self.name!r}: join key type must be int64 or string, got {self.dtype.value}")


@dataclass(frozen=True)
class Column:
    """A payload column of a source."""

    name: str
    dtype: Dtype
    nullable: bool = True


# Columns every source has; the platform owns their meaning (SPEC §1).
EVENT_ID = "event_id"
EVENT_TIME = "event_time"
INGESTED_AT = "ingested_at"
RESERVED_COLUMNS = (EVENT_ID, EVENT_TIME, INGESTED_AT, "is_too_late", "schema_version", "event_date")


@dataclass(frozen=True)
class SourceSLA:
    """Freshness and quality alerts of a source (issue 5), checked by the Dagster raw-events checks.

    `freshness`: the newest stored event may be at most this old. `rate_jump`: the dead-letter or
    too-late rate of the newest day may be at most this many times the median of the days before
    (and at least `min_jump_rows` rows) before it counts as a jump.
    """

    freshness: timedelta = timedelta(hours=1)
    rate_jump: float = 3.0
    min_jump_rows: int = 10


@dataclass(frozen=True)
class Source:
    """A stream of events with a versioned schema.

    `entities` name the Entity objects whose join keys every event must carry (non-null).
    `allowed_lateness` bounds `ingested_at - event_time`; later events are kept offline but
    flagged and never aggregated in `ingestion` mode. `max_clock_skew` bounds how far an
    event_time may lie after ingested_at before the event is rejected as from the future.
    """

    name: str
    schema_version: int
    entities: tuple[Entity, ...]
    columns: tuple[Column, ...]
    allowed_lateness: timedelta
    max_clock_skew: timedelta = timedelta(seconds=5)
    description: str = ""
    # Not part of definition()/fingerprint(): an SLA change is not a schema change.
    sla: SourceSLA = field(default_factory=SourceSLA)

    def __post_init__(self) -> None:
        _check_name(self.name, "source")
        if self.schema_version < 1:
            raise RegistryError(f"source {self.name!r}: schema_version must be >= 1, got {self.schema_version}")
        if self.allowed_lateness < timedelta(0):
            raise RegistryError(f"source {self.name!r}: allowed_lateness must not be negative")
        if not self.entities:
            raise RegistryError(f"source {self.name!r}: needs at least one entity")
        names = [e.join_key for e in self.entities] + [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RegistryError(f"source {self.name!r}: duplicate column names {dupes}")
        clash = sorted(set(names) & set(RESERVED_COLUMNS))
        if clash:
            raise RegistryError(f"source {self.name!r}: columns {clash} are reserved by the platform; rename them")

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(e.join_key for e in self.entities)

    @property
    def allowed_lateness_us(self) -> int:
        return _td_us(self.allowed_lateness)

    def column_types(self) -> dict[str, Dtype]:
        """Every declared column (keys, payload, platform columns) and its type."""
        out: dict[str, Dtype] = {EVENT_ID: Dtype.STRING}
        out.update({e.join_key: e.dtype for e in self.entities})
        out.update({c.name: c.dtype for c in self.columns})
        return out

    def has_column(self, name: str) -> bool:
        return name in self.column_types()

    def definition(self) -> dict:
        return {
            "name": self.name,
            "schema_version": self.schema_version,
            "entities": [e.join_key for e in self.entities],
            "columns": [[c.name, c.dtype.value, c.nullable] for c in self.columns],
            "allowed_lateness": format_duration(self.allowed_lateness),
        }

    def fingerprint(self) -> str:
        return _fingerprint({k: v for k, v in self.definition().items() if k != "schema_version"})


AggFunction = Literal["count", "sum", "mean", "min", "max", "last"]
STREAM_AGGS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "last")


@dataclass(frozen=True)
class Aggregation:
    """`function(column)` over a sawtooth window `window` tiled by `hop` (SPEC §2)."""

    name: str
    function: AggFunction
    column: str | None
    window: timedelta
    hop: timedelta

    @property
    def window_us(self) -> int:
        return _td_us(self.window)

    @property
    def hop_us(self) -> int:
        return _td_us(self.hop)

    def definition(self) -> dict:
        return {
            "name": self.name,
            "function": self.function,
            "column": self.column,
            "window": format_duration(self.window),
            "hop": format_duration(self.hop),
        }


@dataclass(frozen=True)
class StreamFeatureView:
    """Windowed aggregates of one source per entity, computed from tiles offline and online."""

    name: str
    version: int
    entity: Entity
    source: Source
    aggregations: tuple[Aggregation, ...]
    description: str = ""
    # Freshness SLAs (issue 5): how old the worker heartbeat / consumer lag may get.
    sla: "StreamSLA" = field(default_factory=lambda: StreamSLA())

    kind = "stream"

    def __post_init__(self) -> None:
        _check_view_common(self.name, self.version, self.entity, self.source, [a.name for a in self.aggregations])
        for a in self.aggregations:
            where = f"stream view {self.name!r} v{self.version}, feature {a.name!r}"
            if a.function not in STREAM_AGGS:
                raise RegistryError(f"{where}: unknown aggregation {a.function!r}; use one of {list(STREAM_AGGS)}")
            if a.hop_us <= 0 or a.window_us <= 0:
                raise RegistryError(f"{where}: window and hop must be positive")
            if a.hop_us % 1_000_000:
                raise RegistryError(f"{where}: hop must be a whole number of seconds, got {a.hop}")
            if a.window_us % a.hop_us:
                raise RegistryError(
                    f"{where}: window {format_duration(a.window)} is not a multiple of its tile (hop) "
                    f"{format_duration(a.hop)}; pick a hop that divides the window"
                )
            if a.function == "count":
                if a.column is not None and not self.source.has_column(a.column):
                    raise RegistryError(f"{where}: unknown column {a.column!r} in source {self.source.name!r}")
            else:
                if a.column is None:
                    raise RegistryError(f"{where}: {a.function} needs a column")
                if not self.source.has_column(a.column):
                    raise RegistryError(
                        f"{where}: unknown column {a.column!r} in source {self.source.name!r}; "
                        f"known: {sorted(self.source.column_types())}"
                    )
                dtype = self.source.column_types()[a.column]
                if a.function in ("sum", "mean") and dtype not in (Dtype.INT64, Dtype.FLOAT64):
                    raise RegistryError(f"{where}: {a.function} needs a numeric column, {a.column!r} is {dtype.value}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.aggregations)

    def aggregation(self, name: str) -> Aggregation:
        for a in self.aggregations:
            if a.name == name:
                return a
        raise RegistryError(f"view {self.name!r} v{self.version} has no feature {name!r}; it has {list(self.feature_names)}")

    @property
    def max_retention_us(self) -> int:
        """How long a tile can still matter: the longest window plus its hop plus lateness."""
        return max(a.window_us + a.hop_us for a in self.aggregations) + self.source.allowed_lateness_us

    def definition(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "entity": self.entity.join_key,
            "source": self.source.name,
            "source_schema_version": self.source.schema_version,
            "aggregations": [a.definition() for a in self.aggregations],
        }

    def fingerprint(self) -> str:
        return _fingerprint(self.definition())


BatchFunction = Literal["count", "sum", "mean", "min", "max", "count_distinct"]
BATCH_AGGS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "count_distinct")


@dataclass(frozen=True)
class BatchFeature:
    """`function(column)` over the `lookback` before a row's feature_timestamp."""

    name: str
    function: BatchFunction
    column: str | None
    lookback: timedelta

    @property
    def lookback_us(self) -> int:
        return _td_us(self.lookback)

    def definition(self) -> dict:
        return {"name": self.name, "function": self.function, "column": self.column,
                "lookback": format_duration(self.lookback)}


@dataclass(frozen=True)
class StreamSLA:
    heartbeat: timedelta = timedelta(seconds=30)
    consumer_lag_events: int = 10_000
    delay_p99: timedelta = timedelta(seconds=1)


@dataclass(frozen=True)
class BatchSLA:
    """The partition for day D is due by D+1 00:00 + `deadline`; online copy may be `grace` late."""

    deadline: timedelta = timedelta(hours=3)
    grace: timedelta = timedelta(hours=3)


@dataclass(frozen=True)
class BatchFeatureView:
    """Rows (entity, feature_timestamp, values) computed once per `cadence` from the events.

    A row for day D has feature_timestamp = end of D (midnight UTC) and aggregates the events
    (not too late) with feature_timestamp - lookback <= event_time < feature_timestamp. It is
    served at t when feature_timestamp + availability_delay <= t < feature_timestamp + ttl.
    The population is every entity with an event inside the longest lookback.
    """

    name: str
    version: int
    entity: Entity
    source: Source
    features: tuple[BatchFeature, ...]
    availability_delay: timedelta
    ttl: timedelta
    cadence: timedelta = timedelta(days=1)
    description: str = ""
    sla: BatchSLA = field(default_factory=BatchSLA)

    kind = "batch"

    def __post_init__(self) -> None:
        _check_view_common(self.name, self.version, self.entity, self.source, [f.name for f in self.features])
        where = f"batch view {self.name!r} v{self.version}"
        if self.cadence != timedelta(days=1):
            raise RegistryError(f"{where}: only a daily cadence is supported, got {format_duration(self.cadence)}")
        if self.ttl <= self.availability_delay:
            raise RegistryError(f"{where}: ttl ({self.ttl}) must exceed availability_delay ({self.availability_delay})")
        if self.availability_delay < self.source.allowed_lateness:
            raise RegistryError(
                f"{where}: availability_delay ({self.availability_delay}) must be at least the source's "
                f"allowed_lateness ({self.source.allowed_lateness}), or a row could be served before it is final"
            )
        for f in self.features:
            if f.function not in BATCH_AGGS:
                raise RegistryError(f"{where}, feature {f.name!r}: unknown function {f.function!r}; use one of {list(BATCH_AGGS)}")
            if f.lookback_us <= 0 or f.lookback_us % 86_400_000_000:
                raise RegistryError(f"{where}, feature {f.name!r}: lookback must be a whole number of days")
            if f.column is None and f.function != "count":
                raise RegistryError(f"{where}, feature {f.name!r}: {f.function} needs a column")
            if f.column is not None and not self.source.has_column(f.column):
                raise RegistryError(
                    f"{where}, feature {f.name!r}: unknown column {f.column!r} in source {self.source.name!r}; "
                    f"known: {sorted(self.source.column_types())}"
                )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def max_lookback(self) -> timedelta:
        return max(f.lookback for f in self.features)

    @property
    def availability_delay_us(self) -> int:
        return _td_us(self.availability_delay)

    @property
    def ttl_us(self) -> int:
        return _td_us(self.ttl)

    def definition(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "entity": self.entity.join_key,
            "source": self.source.name,
            "source_schema_version": self.source.schema_version,
            "features": [f.definition() for f in self.features],
            "availability_delay": format_duration(self.availability_delay),
            "ttl": format_duration(self.ttl),
            "cadence": format_duration(self.cadence),
        }

    def fingerprint(self) -> str:
        return _fingerprint(self.definition())


FeatureView = StreamFeatureView | BatchFeatureView


@dataclass(frozen=True, order=True)
class FeatureRef:
    """One feature of one pinned view version; its training-set column is `<view>__<feature>`."""

    view: str
    version: int
    feature: str

    @property
    def column(self) -> str:
        return f"{self.view}__{self.feature}"

    def __str__(self) -> str:
        return f"{self.view}:v{self.version}:{self.feature}"

    @classmethod
    def parse(cls, text: str) -> "FeatureRef":
        """`view:vN:feature` (as printed by str())."""
        parts = text.split(":")
        if len(parts) != 3 or not parts[1].startswith("v") or not parts[1][1:].isdigit():
            raise RegistryError(f"feature reference {text!r}: expected 'view:vN:feature', e.g. 'user_txn_stats:v1:txn_count_1h'")
        return cls(parts[0], int(parts[1][1:]), parts[2])


@dataclass(frozen=True)
class FeatureService:
    """The features one model uses, pinned to the view versions it was trained on."""

    name: str
    features: tuple[FeatureRef, ...]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "feature service")
        if not self.features:
            raise RegistryError(f"feature service {self.name!r}: has no features")
        cols = [f.column for f in self.features]
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        if dupes:
            raise RegistryError(
                f"feature service {self.name!r}: columns {dupes} appear twice (two versions of one view "
                f"in one service would collide); pin one version per view"
            )

    @property
    def pinned_versions(self) -> dict[str, int]:
        return {f.view: f.version for f in self.features}


def _check_name(name: str, what: str) -> None:
    if not name or not name.replace("_", "a").isalnum() or not (name[0].isalpha() or name[0] == "_"):
        raise RegistryError(f"{what} name {name!r} must be an identifier: letters, digits and '_', not starting with a digit")
    if "__" in name and what.startswith(("stream view", "batch view", "feature")):
        raise RegistryError(f"{what} name {name!r} must not contain '__' (it separates view and feature in columns)")


def _check_view_common(name: str, version: int, entity: Entity, source: Source, features: list[str]) -> None:
    _check_name(name, "feature view")
    if "__" in name:
        raise RegistryError(f"feature view name {name!r} must not contain '__' (it separates view and feature in columns)")
    if not isinstance(version, int) or version < 1:
        raise RegistryError(f"feature view {name!r}: version must be an integer >= 1, got {version!r}")
    if entity.join_key not in source.join_keys:
        raise RegistryError(
            f"feature view {name!r} v{version}: entity {entity.name!r} ({entity.join_key}) is not a key of source "
            f"{source.name!r} (keys: {list(source.join_keys)})"
        )
    if not features:
        raise RegistryError(f"feature view {name!r} v{version}: has no features")
    for f in features:
        _check_name(f, f"feature of view {name!r}")
        if "__" in f:
            raise RegistryError(f"feature {f!r} of view {name!r}: must not contain '__'")
    dupes = sorted({f for f in features if features.count(f) > 1})
    if dupes:
        raise RegistryError(f"feature view {name!r} v{version}: duplicate feature names {dupes}")


def _fingerprint(definition: dict) -> str:
    blob = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Registry:
    """All definitions of one feature repo, cross-checked as a whole on construction."""

    entities: tuple[Entity, ...]
    sources: tuple[Source, ...]
    views: tuple[FeatureView, ...]
    services: tuple[FeatureService, ...]

    def __post_init__(self) -> None:
        for kind, names in (
            ("entity", [e.name for e in self.entities]),
            ("source", [s.name for s in self.sources]),
            ("feature service", [s.name for s in self.services]),
            ("feature view (name, version)", [f"{v.name} v{v.version}" for v in self.views]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise RegistryError(f"duplicate {kind} names: {dupes}")
        source_names = {s.name for s in self.sources}
        for v in self.views:
            if v.source.name not in source_names:
                raise RegistryError(f"view {v.name!r} v{v.version} reads source {v.source.name!r}, which is not registered")
            if v.source != self.source(v.source.name):
                raise RegistryError(
                    f"view {v.name!r} v{v.version} was defined against another definition of source "
                    f"{v.source.name!r} than the registered one"
                )
        for s in self.services:
            for ref in s.features:
                view = self.view(ref.view, ref.version, _where=f"feature service {s.name!r}")
                if ref.feature not in view.feature_names:
                    raise RegistryError(
                        f"feature service {s.name!r}: view {ref.view!r} v{ref.version} has no feature "
                        f"{ref.feature!r}; it has {list(view.feature_names)}"
                    )

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise RegistryError(f"unknown source {name!r}; known sources: {[s.name for s in self.sources]}")

    def view(self, name: str, version: int | None = None, *, _where: str = "") -> FeatureView:
        """The view at `version`, or its latest version when None."""
        candidates = [v for v in self.views if v.name == name]
        prefix = f"{_where}: " if _where else ""
        if not candidates:
            raise RegistryError(f"{prefix}unknown feature view {name!r}; known views: {sorted({v.name for v in self.views})}")
        if version is None:
            return max(candidates, key=lambda v: v.version)
        for v in candidates:
            if v.version == version:
                return v
        raise RegistryError(
            f"{prefix}feature view {name!r} has no version {version}; versions: {sorted(v.version for v in candidates)}"
        )

    def latest_views(self) -> list[FeatureView]:
        return [self.view(n) for n in sorted({v.name for v in self.views})]

    def service(self, name: str) -> FeatureService:
        for s in self.services:
            if s.name == name:
                return s
        raise RegistryError(f"unknown feature service {name!r}; known services: {[s.name for s in self.services]}")

    def resolve(self, features: Iterable[FeatureRef | str]) -> list[FeatureRef]:
        """Check a list of feature references (or 'view:vN:feature' strings) against the registry."""
        out = []
        for f in features:
            ref = FeatureRef.parse(f) if isinstance(f, str) else f
            view = self.view(ref.view, ref.version)
            if ref.feature not in view.feature_names:
                raise RegistryError(f"view {ref.view!r} v{ref.version} has no feature {ref.feature!r}; it has {list(view.feature_names)}")
            out.append(ref)
        return out

    def services_using(self, view: str, version: int) -> list[str]:
        return [s.name for s in self.services if any(r.view == view and r.version == version for r in s.features)]

    def views_of_source(self, source: str) -> list[FeatureView]:
        return [v for v in self.views if v.source.name == source]


def all_features(view: FeatureView) -> tuple[FeatureRef, ...]:
    return tuple(FeatureRef(view.name, view.version, f) for f in view.feature_names)
