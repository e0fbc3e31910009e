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

    def materialize_batch(self, view: str, day: date, version: int | None = None):
        from feature_platform.offline.batch import materialize_partition

        return materialize_partition(self.offline, self.registry.view(view, version), day)
