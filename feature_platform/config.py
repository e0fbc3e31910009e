"""Where the platform keeps its data and which Redis it talks to, from the environment.

FP_DATA_DIR (default ./data) holds the offline store, dead letters, the embedded Redis and
Dagster's instance; FP_REDIS_URL selects an external Redis, else an embedded one is started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    redis_url: str | None
    key_prefix: str = "fp"

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            data_dir=Path(os.environ.get("FP_DATA_DIR") or "data").resolve(),
            redis_url=os.environ.get("FP_REDIS_URL") or None,
            key_prefix=os.environ.get("FP_KEY_PREFIX") or "fp",
        )

    @property
    def offline_dir(self) -> Path:
        return self.data_dir / "offline"

    @property
    def events_dir(self) -> Path:
        return self.offline_dir / "events"

    @property
    def views_dir(self) -> Path:
        return self.offline_dir / "views"

    @property
    def deadletter_dir(self) -> Path:
        return self.data_dir / "deadletter"

    @property
    def embedded_redis_path(self) -> Path:
        return self.data_dir / "online" / "redis.db"
