"""The one Dagster resource: where the data lives, which Redis, and which clock the checks read."""


import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import dagster as dg

from feature_platform.config import Settings
from feature_platform.feature_store import FeatureStore
from feature_platform.registry import Registry


class FeatureStoreResource(dg.ConfigurableResource):
    """Settings of the feature store, as the assets, checks and sensors see them.

    `now_override` (ISO-8601) injects a clock into every asset check: tests and fire drills use it
    to age the data without waiting; leave it unset in production.
    """

    data_dir: str
    redis_url: Optional[str] = None
    key_prefix: str = "fp"
    now_override: Optional[str] = None

    def settings(self) -> Settings:
        return Settings(data_dir=Path(self.data_dir).resolve(), redis_url=self.redis_url or None,
                        key_prefix=self.key_prefix)

    def store(self, registry: Registry) -> FeatureStore:
        return FeatureStore(self.settings(), registry)

    def now(self) -> datetime:
        if self.now_override:
            ts = datetime.fromisoformat(self.now_override)
            return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        return datetime.now(timezone.utc)


def resource_from_env() -> FeatureStoreResource:
    """FP_DATA_DIR / FP_REDIS_URL / FP_KEY_PREFIX through dg.EnvVar when set (so the UI shows where a
    value came from), else the documented defaults (./data, the embedded Redis, 'fp')."""
    return FeatureStoreResource(
        data_dir=dg.EnvVar("FP_DATA_DIR") if os.environ.get("FP_DATA_DIR") else str(Path("data").resolve()),
        redis_url=dg.EnvVar("FP_REDIS_URL") if os.environ.get("FP_REDIS_URL") else None,
        key_prefix=dg.EnvVar("FP_KEY_PREFIX") if os.environ.get("FP_KEY_PREFIX") else "fp",
    )
