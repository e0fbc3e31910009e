"""The demo feature repo of SPEC §5: payments and fraud."""

from __future__ import annotations

from datetime import timedelta

from feature_platform.registry.model import (
    Aggregation,
    BatchFeature,
    BatchFeatureView,
    Column,
    Dtype,
    Entity,
    FeatureService,
    Registry,
    Source,
    StreamFeatureView,
    all_features,
)

M = timedelta(minutes=1)
H = timedelta(hours=1)
D = timedelta(days=1)

user = Entity("user", "user_id", Dtype.INT64, "A card holder.")
merchant = Entity("merchant", "merchant_id", Dtype.INT64, "A shop that accepts cards.")

transactions = Source(
    name="transactions",
    schema_version=1,
    entities=(user, merchant),
    columns=(Column("amount", Dtype.FLOAT64), Column("country", Dtype.STRING)),
    allowed_lateness=H,
    description="Card transactions, one event per authorisation.",
)

user_txn_stats = StreamFeatureView(
    name="user_txn_stats",
    version=1,
    entity=user,
    source=transactions,
    aggregations=(
        Aggregation("txn_count_10m", "count", None, 10 * M, M),
        Aggregation("txn_count_1h", "count", None, H, 5 * M),
        Aggregation("amount_sum_1h", "sum", "amount", H, 5 * M),
        Aggregation("amount_max_1h", "max", "amount", H, 5 * M),
        Aggregation("amount_mean_24h", "mean", "amount", 24 * H, H),
        Aggregation("last_amount", "last", "amount", 7 * D, D),
    ),
    description="Real-time spending of a user.",
)

merchant_txn_stats = StreamFeatureView(
    name="merchant_txn_stats",
    version=1,
    entity=merchant,
    source=transactions,
    aggregations=(
        Aggregation("txn_count_1h", "count", None, H, 5 * M),
        Aggregation("amount_sum_24h", "sum", "amount", 24 * H, H),
    ),
    description="Real-time activity of a merchant.",
)

user_daily_profile = BatchFeatureView(
    name="user_daily_profile",
    version=1,
    entity=user,
    source=transactions,
    features=(
        BatchFeature("txn_count_7d", "count", None, 7 * D),
        BatchFeature("amount_mean_30d", "mean", "amount", 30 * D),
        BatchFeature("distinct_merchants_30d", "count_distinct", "merchant_id", 30 * D),
    ),
    availability_delay=2 * H,
    ttl=2 * D,
    description="A user's habits over the last week and month, computed once a day.",
)

fraud_detection = FeatureService(
    name="fraud_detection",
    features=all_features(user_txn_stats) + all_features(merchant_txn_stats) + all_features(user_daily_profile),
    description="Every feature of the demo repo, for the fraud model.",
)


def build_registry() -> Registry:
    return Registry(
        entities=(user, merchant),
        sources=(transactions,),
        views=(user_txn_stats, merchant_txn_stats, user_daily_profile),
        services=(fraud_detection,),
    )
