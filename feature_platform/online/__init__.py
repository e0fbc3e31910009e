"""The online store (Redis): batch rows with key-level TTL, stream tiles with per-field TTL, one-round-trip reads.

See docs/online-store.md for the key layout, value encoding and TTL rules.
"""

from feature_platform.online.errors import (
    BadRequestError,
    BadRowsError,
    NotMaterializedError,
    OnlineStoreError,
    OnlineStoreUnavailable,
    StaleDefinitionError,
)

__all__ = ["BadRequestError", "BadRowsError", "NotMaterializedError", "OnlineStoreError",
           "OnlineStoreUnavailable", "StaleDefinitionError"]
