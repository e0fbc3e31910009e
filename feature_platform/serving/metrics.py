"""Prometheus metrics of the serving layer, one CollectorRegistry per app.

A registry per app (not prometheus_client's global one) lets tests and benchmarks create several
apps in one process without "duplicated timeseries" errors.

The served-feature-age histogram gets one observation per (row, feature) served; a 1000-row
request of the demo service is 13 000 observations, far too many for prometheus_client's
per-call `observe`, so ages are bucketed with numpy and added to counters under one lock.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Feature ages run from seconds (streaming) to two days (daily batch rows with a 2-day ttl).
AGE_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0,
               2 * 86400.0, 7 * 86400.0)


class FeatureAgeCollector(Collector):
    """`fp_served_feature_age_seconds{view,version}`: how old the served data was, per view."""

    def __init__(self, buckets: Iterable[float] = AGE_BUCKETS) -> None:
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._bounds_list = [float(b) for b in self.bounds]
        self._lock = threading.Lock()
        # (view, version) -> [bucket counts (len(bounds) + 1, last is +Inf only), sum]
        self._data: dict[tuple[str, str], list] = {}

    def observe_many(self, view: str, version: int, ages: "np.ndarray | list[float]") -> None:
        """Add many ages at once (None/NaN must be filtered out by the caller)."""
        n = len(ages)
        if n == 0:
            return
        # Prometheus buckets are "le": an age equal to a bound falls into that bound's bucket.
        if n < 64:  # numpy's per-call overhead dominates for a single-entity request
            counts = np.zeros(self.bounds.size + 1, dtype=np.int64)
            for a in ages:
                counts[bisect_left(self._bounds_list, a)] += 1
            total = float(sum(ages))
        else:
            arr = np.asarray(ages, dtype=np.float64)
            counts = np.bincount(np.searchsorted(self.bounds, arr, side="left"), minlength=self.bounds.size + 1)
            total = float(arr.sum())
        key = (view, str(version))
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self._data[key] = [counts.astype(np.int64), total]
            else:
                entry[0] += counts
                entry[1] += total

    def collect(self):
        family = HistogramMetricFamily(
            "fp_served_feature_age_seconds",
            "Age of served feature values (as_of minus the newest data time behind the value), per view",
            labels=["view", "version"],
        )
        with self._lock:
            snapshot = {k: (v[0].copy(), v[1]) for k, v in self._data.items()}
        for (view, version), (counts, total) in sorted(snapshot.items()):
            cumulative = np.cumsum(counts)
            buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative[:-1])]
            buckets.append(("+Inf", int(cumulative[-1])))
            family.add_metric([view, version], buckets, total)
        yield family


class ServingMetrics:
    """Everything /metrics exposes for one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "fp_http_request_duration_seconds", "HTTP request latency inside the server, per endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.requests = Counter(
            "fp_http_requests", "HTTP requests per endpoint and status code", ["endpoint", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "fp_http_errors", "Failed requests by kind (unknown_service, missing_entity_key, redis_unavailable, ...)",
            ["kind"], registry=self.registry,
        )
        self.missing = Counter(
            "fp_served_features_null", "Served features that had no value (no data, expired or outside the window)",
            ["view", "version"], registry=self.registry,
        )
        self.rows = Counter("fp_served_rows", "Entity rows served", ["service"], registry=self.registry)
        self.ages = FeatureAgeCollector()
        self.registry.register(self.ages)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
