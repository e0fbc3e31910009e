"""FeatureStore: the one Python entry point that the CLI, the HTTP server and Dagster assets share.

It wires settings, the registry, the offline store (DuckDB over Parquet) and the online store
(Redis) together; the logic lives in offline/, online/ and streaming/, which know nothing of
each other's callers.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import pandas as pd
import pyarrow as pa

from feature_platform.config import Settings
from feature_platform.offline.store import OfflineStore
from feature_platform.registry import FeatureRef, Registry, load_registry

if TYPE_CHECKING:
    from feature_platform.online.store import OnlineStore
    from feature_platform.types import OnlineFeatures

Mode = Literal["ingestion", "event"]


class FeatureStore:
    def __init__(self, settings: Settings | None = None, registry: Registry | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.registry = registry or load_registry()
        self.offline = OfflineStore(self.settings, self.registry)

    @cached_property
    def online(self) -> "OnlineStore":
        from feature_platform.online.store import OnlineStore

        return OnlineStore.from_settings(self.settings, self.registry)

    # ---- features --------------------------------------------------------------------------------
    def resolve_features(self, service: str | None = None,
                         features: Sequence[FeatureRef | str] | None = None) -> list[FeatureRef]:
        if (service is None) == (features is None):
            raise ValueError("pass exactly one of service= or features=")
        if service is not None:
            return list(self.registry.service(service).features)
        return self.registry.resolve(features or [])

    def get_historical_features(
        self,
        labels: pd.DataFrame | pa.Table,
        service: str | None = None,
        features: Sequence[FeatureRef | str] | None = None,
        mode: Mode = "ingestion",
    ) -> pd.DataFrame:
        """Point-in-time correct training set: the label rows in order plus `<view>__<feature>` columns."""
        from feature_platform.offline.training import get_historical_features

        refs = self.resolve_features(service, features)
        return get_historical_features(self.offline, labels, refs, mode=mode).to_pandas()

    def get_online_features(
        self,
        entities: dict[str, Sequence[Any]],
        service: str | None = None,
        features: Sequence[FeatureRef | str] | None = None,
        as_of: datetime | None = None,
    ) -> "OnlineFeatures":
        """Current feature values from Redis, one round trip for any number of entities."""
        refs = self.resolve_features(service, features)
        return self.online.read(refs, entities, as_of=as_of, service=service or "")

    # ---- data in -----------------------------------------------------------------------------------
    def ingest(self, source: str, path: Path | str):
        from feature_platform.offline.ingest import ingest_file

        return ingest_file(self.offline, source, Path(path))

    def bootstrap_stream_views(self, source: str, now: datetime | None = None,
                               chunk_rows: int = 250_000) -> dict[str, int]:
        """Fill the online tiles of every stream view of `source` from the offline store.

        Needed whenever tiles are missing although the events are known: a fresh deployment on
        historical data, a flushed Redis, or a new view version rolled out next to the old one.
        Only events young enough to sit in some window are read; the online store's dedupe makes
        a repeated bootstrap (or an overlap with the stream worker) count every event once.
        """
        from datetime import timezone

        from feature_platform.offline.store import connect
        from feature_platform.registry.model import StreamFeatureView

        views = [v for v in self.registry.views_of_source(source) if isinstance(v, StreamFeatureView)]
        totals = {"events": 0, "applied": 0, "duplicates": 0, "too_late": 0}
        if not views:
            return totals
        now = now or datetime.now(timezone.utc)
        now_us = int(now.timestamp() * 1_000_000)
        since_us = now_us - max(v.max_retention_us for v in views)
        since = datetime.fromtimestamp(since_us / 1e6, tz=timezone.utc)
        dates = [d for d in self.offline.event_dates(source) if d >= since.date()]
        con = connect()
        try:
            reader = con.sql(f"""
                SELECT * FROM {self.offline.events_sql(source, dates=dates)}
                WHERE event_time >= make_timestamptz({since_us}) AND ingested_at <= make_timestamptz({now_us})
                ORDER BY ingested_at, event_id""").to_arrow_reader(batch_size=chunk_rows)
            for batch in reader:
                report = self.online.apply_events(source, pa.Table.from_batches([batch]), now=now)
                totals["events"] += report.events
                totals["applied"] += report.applied
                totals["duplicates"] += report.duplicates
                totals["too_late"] += report.too_late
        finally:
            con.close()
        return totals

    def materialize_batch(self, view: str, day: date, version: int | None = None):
        from feature_platform.offline.batch import materialize_partition

        return materialize_partition(self.offline, self.registry.view(view, version), day)
