"""Definitions fail at load time with a message naming the problem; fingerprints track definitions."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from feature_platform.registry import (
    Aggregation, BatchFeature, BatchFeatureView, FeatureRef, FeatureService, Registry, RegistryError,
    StreamFeatureView, load_registry,
)
from feature_platform.registry import demo

M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


def test_demo_repo_matches_spec():
    r = load_registry()
    svc = r.service("fraud_detection")
    assert [f.column for f in svc.features] == [
        "user_txn_stats__txn_count_10m", "user_txn_stats__txn_count_1h", "user_txn_stats__amount_sum_1h",
        "user_txn_stats__amount_max_1h", "user_txn_stats__amount_mean_24h", "user_txn_stats__last_amount",
        "merchant_txn_stats__txn_count_1h", "merchant_txn_stats__amount_sum_24h",
        "user_daily_profile__txn_count_7d", "user_daily_profile__amount_mean_30d",
        "user_daily_profile__distinct_merchants_30d",
    ]
    src = r.source("transactions")
    assert src.schema_version == 1 and src.allowed_lateness == H
    udp = r.view("user_daily_profile")
    assert (udp.availability_delay, udp.ttl) == (2 * H, 2 * D)


def test_window_not_multiple_of_tile_fails():
    with pytest.raises(RegistryError, match=r"window 1h is not a multiple of its tile \(hop\) 7m"):
        StreamFeatureView("v", 1, demo.user, demo.transactions,
                          (Aggregation("c", "count", None, H, 7 * M),))


def test_unknown_column_fails():
    with pytest.raises(RegistryError, match="unknown column 'amout'"):
        StreamFeatureView("v", 1, demo.user, demo.transactions, (Aggregation("s", "sum", "amout", H, 5 * M),))
    with pytest.raises(RegistryError, match="unknown column 'merchant'"):
        BatchFeatureView("b", 1, demo.user, demo.transactions,
                         (BatchFeature("d", "count_distinct", "merchant", 30 * D),), 2 * H, 2 * D)


def test_duplicate_names_fail():
    with pytest.raises(RegistryError, match=r"duplicate feature names \['c'\]"):
        StreamFeatureView("v", 1, demo.user, demo.transactions,
                          (Aggregation("c", "count", None, H, 5 * M), Aggregation("c", "count", None, 2 * H, 5 * M)))
    with pytest.raises(RegistryError, match="duplicate feature view"):
        Registry((demo.user, demo.merchant), (demo.transactions,),
                 (demo.user_txn_stats, demo.user_txn_stats), ())


def test_sum_of_string_and_bad_service_fail():
    with pytest.raises(RegistryError, match="needs a numeric column"):
        StreamFeatureView("v", 1, demo.user, demo.transactions, (Aggregation("s", "sum", "country", H, 5 * M),))
    with pytest.raises(RegistryError, match="has no feature 'nope'"):
        Registry((demo.user,), (demo.transactions,), (demo.user_txn_stats,),
                 (FeatureService("s", (FeatureRef("user_txn_stats", 1, "nope"),)),))
    with pytest.raises(RegistryError, match="has no version 7"):
        Registry((demo.user,), (demo.transactions,), (demo.user_txn_stats,),
                 (FeatureService("s", (FeatureRef("user_txn_stats", 7, "txn_count_1h"),)),))


def test_batch_view_cannot_be_served_before_final():
    with pytest.raises(RegistryError, match="availability_delay .* must be at least the source's allowed_lateness"):
        BatchFeatureView("b", 1, demo.user, demo.transactions, (BatchFeature("n", "count", None, 7 * D),), 30 * M, 2 * D)


def test_fingerprint_changes_with_definition_not_version():
    v1 = demo.user_txn_stats
    assert replace(v1, version=2).fingerprint() == v1.fingerprint()
    changed = replace(v1, aggregations=v1.aggregations[:-1])
    assert changed.fingerprint() != v1.fingerprint()


def test_two_versions_side_by_side():
    v2 = replace(demo.user_txn_stats, version=2, aggregations=demo.user_txn_stats.aggregations[:2])
    r = Registry((demo.user, demo.merchant), (demo.transactions,), (demo.user_txn_stats, v2), ())
    assert r.view("user_txn_stats").version == 2
    assert r.view("user_txn_stats", 1) is demo.user_txn_stats


def test_load_registry_errors_name_the_problem():
    with pytest.raises(RegistryError, match="expected 'module:attribute'"):
        load_registry("nocolon")
    with pytest.raises(RegistryError, match="cannot import"):
        load_registry("no_such_module_xyz:thing")
