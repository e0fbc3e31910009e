"""Errors of the online store. Each message says what was wrong, where, and what to do."""

from __future__ import annotations

import redis


class OnlineStoreError(Exception):
    """Base class: anything the online store refuses or cannot do."""


class NotMaterializedError(OnlineStoreError):
    """A (view, version) was read that was never materialized (or marked live) in this online store."""


class StaleDefinitionError(NotMaterializedError):
    """The online data of a (view, version) was written from another definition (fingerprint) than the registry's."""


class BadRequestError(OnlineStoreError, ValueError):
    """The caller's entities or features do not fit the registry (missing key, wrong type, unequal lengths)."""


class BadRowsError(OnlineStoreError, ValueError):
    """Rows or events handed to the writer do not fit the view's/source's schema."""


class OnlineStoreUnavailable(OnlineStoreError, redis.exceptions.ConnectionError):
    """Redis did not answer. Also a redis ConnectionError, so generic handlers keep working."""
