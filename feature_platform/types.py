"""Typed results shared by the Python API, the CLI and the HTTP server."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class FeatureValue:
    """One served feature: its value (None when unknown/expired) and how old the data behind it is.

    `age_seconds` is as_of minus the newest data time the value reflects (the batch row's
    feature_timestamp, or the newest event time inside the window); None when there is no data.
    """

    value: Any
    age_seconds: float | None


@dataclass(frozen=True)
class OnlineFeatures:
    """The answer of get_online_features: per entity row, `<view>__<feature>` -> FeatureValue."""

    as_of: datetime
    service: str
    rows: list[dict[str, FeatureValue]]
    entities: dict[str, list[Any]] = field(default_factory=dict)

    def to_records(self) -> list[dict[str, Any]]:
        """Plain values only, for dataframes and JSON."""
        return [{k: v.value for k, v in row.items()} for row in self.rows]
