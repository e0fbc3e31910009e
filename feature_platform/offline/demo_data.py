"""A deterministic synthetic payments world for the demo, the tests and the benchmarks.

Users spend at their own rhythm (log-normal rates and amounts, a home country, a daily cycle);
a few accounts get compromised and show a fraud burst: many, large payments at new merchants from
another country within minutes. Fraud labels mark the burst payments, so the features of the demo
repo (10-minute counts, 1-hour sums and maxima against the 24-hour mean, new merchants) carry
real signal. Deliveries are messy on purpose: most arrive within seconds, some late (inside the
1 h allowed lateness), a few too late, and some twice. Everything is vectorised numpy/Arrow, so
ten million events take seconds, and the same seed and end date give the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

US = 1_000_000
COUNTRIES = np.array(["DE", "FR", "NL", "ES", "IT", "PL", "SE", "US", "GB", "BR"])


@dataclass(frozen=True)
class DemoData:
    events_path: Path
    labels_path: Path
    start: date
    end: date  # exclusive
    events: int
    deliveries: int
    labels: int
    fraud_labels: int


def default_end() -> date:
    """Tomorrow's date (UTC): the world runs up to the end of today, so today's data looks live."""
    return datetime.now(timezone.utc).date() + timedelta(days=1)


def generate_demo_data(out_dir: Path, days: int = 14, users: int = 2_000, merchants: int = 200,
                       events: int = 100_000, labels: int | None = None, seed: int = 0,
                       end: date | None = None, late_rate: float = 0.02, too_late_rate: float = 0.003,
                       duplicate_rate: float = 0.01, fraud_user_rate: float = 0.02,
                       now: datetime | None = None) -> DemoData:
    """Write `transactions.parquet` (raw deliveries) and `labels.parquet` under out_dir.

    Events are spread over [end - days, end). Deliveries that would arrive after `now` (default:
    the wall clock) are dropped, as they would not have happened yet.
    """
    rng = np.random.default_rng(seed)
    end = end or default_end()
    start = end - timedelta(days=days)
    t0 = int(datetime.combine(start, time(0), tzinfo=timezone.utc).timestamp()) * US
    span = days * 86_400 * US
    now_us = int((now or datetime.now(timezone.utc)).timestamp() * US)

    # Users: activity weight, typical amount, home country, favourite merchants.
    activity = rng.lognormal(0.0, 1.0, users)
    typical = rng.lognormal(3.2, 0.8, users)  # ~25 EUR median
    home = rng.integers(0, 5, users)  # mostly European
    n_normal = events
    user_idx = rng.choice(users, size=n_normal, p=activity / activity.sum())
    # A daily cycle: more spending in the day than at night.
    day_offset = rng.integers(0, days, n_normal) * 86_400 * US
    hour = rng.choice(24, size=n_normal, p=_diurnal())
    within = (hour * 3600 + rng.integers(0, 3600, n_normal)) * US + rng.integers(0, US, n_normal)
    et = t0 + day_offset + within
    # Merchants: each user mostly shops at a few "home" merchants.
    fav = (user_idx * 7919 + rng.integers(0, 5, n_normal) * 104729) % merchants
    explore = rng.random(n_normal) < 0.2
    merchant_idx = np.where(explore, rng.integers(0, merchants, n_normal), fav)
    amount = np.round(typical[user_idx] * rng.lognormal(0.0, 0.5, n_normal), 2)
    country = home[user_idx]
    travel = rng.random(n_normal) < 0.02
    country = np.where(travel, rng.integers(0, len(COUNTRIES), n_normal), country)
    fraud = np.zeros(n_normal, dtype=bool)

    # Fraud bursts: compromised users spend big, fast, at new merchants, from abroad.
    n_fraud_users = max(1, int(users * fraud_user_rate))
    victims = rng.choice(users, size=n_fraud_users, replace=False)
    burst_sizes = rng.integers(4, 12, n_fraud_users)
    b_user = np.repeat(victims, burst_sizes)
    b_start = np.repeat(t0 + rng.integers(0, span - 3600 * US, n_fraud_users), burst_sizes)
    b_et = b_start + rng.integers(0, 20 * 60 * US, b_user.size)
    b_merchant = rng.integers(0, merchants, b_user.size)
    b_amount = np.round(typical[b_user] * rng.uniform(4, 15, b_user.size), 2)
    b_country = np.full(b_user.size, 9)

    user_all = np.concatenate([user_idx, b_user]) + 1
    merchant_all = np.concatenate([merchant_idx, b_merchant]) + 1
    et_all = np.concatenate([et, b_et])
    amount_all = np.concatenate([amount, b_amount])
    country_all = np.concatenate([country, b_country])
    fraud_all = np.concatenate([fraud, np.ones(b_user.size, dtype=bool)])
    n = et_all.size
    order = np.argsort(et_all, kind="stable")
    user_all, merchant_all, et_all = user_all[order], merchant_all[order], et_all[order]
    amount_all, country_all, fraud_all = amount_all[order], country_all[order], fraud_all[order]
    event_num = np.arange(n)

    # Delivery delays: seconds usually; some late (< 1 h), a few too late (1.5 - 5 h).
    delay = rng.exponential(2.0, n) * US
    kind = rng.random(n)
    delay = np.where(kind < late_rate, rng.uniform(5 * 60, 55 * 60, n) * US, delay)
    delay = np.where(kind > 1 - too_late_rate, rng.uniform(1.5 * 3600, 5 * 3600, n) * US, delay)
    it_all = et_all + delay.astype(np.int64)
    # Re-deliveries: the same event again, a little later (an at-least-once producer retrying).
    dup = np.flatnonzero(rng.random(n) < duplicate_rate)
    rows = np.concatenate([event_num, dup])
    it_rows = np.concatenate([it_all, it_all[dup] + rng.integers(1, 300, dup.size) * US])
    keep = it_rows <= now_us
    rows, it_rows = rows[keep], it_rows[keep]
    null_amount = rng.random(rows.size) < 0.002

    ts = pa.timestamp("us", tz="UTC")
    ids = pc.binary_join_element_wise(pa.scalar("tx"), pc.cast(pa.array(rows), pa.string()), "")
    table = pa.table({
        "event_id": ids,
        "user_id": pa.array(user_all[rows], pa.int64()),
        "merchant_id": pa.array(merchant_all[rows], pa.int64()),
        "amount": pa.array(np.where(null_amount, np.nan, amount_all[rows]), pa.float64(), from_pandas=True),
        "country": pa.array(COUNTRIES[country_all[rows]]),
        "event_time": pa.array(et_all[rows], pa.int64()).cast(ts),
        "ingested_at": pa.array(it_rows, pa.int64()).cast(ts),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path = out_dir / "transactions.parquet"
    pq.write_table(table, events_path, compression="zstd")

    # Labels: every fraud payment plus a sample of the rest, scored at the payment's own time.
    delivered = np.unique(rows)
    delivered = delivered[et_all[delivered] <= now_us]
    fraud_rows = delivered[fraud_all[delivered]]
    normal_rows = delivered[~fraud_all[delivered]]
    n_labels = labels if labels is not None else min(normal_rows.size + fraud_rows.size, max(1000, n // 10))
    n_norm = max(0, min(normal_rows.size, n_labels - fraud_rows.size))
    sample = np.sort(np.concatenate([fraud_rows[: n_labels], rng.choice(normal_rows, n_norm, replace=False)]))
    label_table = pa.table({
        "user_id": pa.array(user_all[sample], pa.int64()),
        "merchant_id": pa.array(merchant_all[sample], pa.int64()),
        "event_time": pa.array(et_all[sample], pa.int64()).cast(ts),
        "is_fraud": pa.array(fraud_all[sample]),
    })
    labels_path = out_dir / "labels.parquet"
    pq.write_table(label_table, labels_path, compression="zstd")
    return DemoData(events_path, labels_path, start, end, int(n), int(rows.size), int(sample.size),
                    int(fraud_all[sample].sum()))


def _diurnal() -> np.ndarray:
    h = np.arange(24)
    w = 0.3 + np.exp(-((h - 13) ** 2) / 18.0) + 0.6 * np.exp(-((h - 19) ** 2) / 8.0)
    return w / w.sum()
