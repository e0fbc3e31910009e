"""Redis key names of the streaming path, and stream entry ids as times.

Every key lives under `settings.key_prefix`, so two deployments (or two test runs) can share one
Redis server without seeing each other. See docs/streaming.md for the full list.
"""

from __future__ import annotations

from dataclasses import dataclass

from feature_platform.config import Settings

GROUP = "fp-stream-workers"


@dataclass(frozen=True)
class StreamKeys:
    """The keys of one source's stream; one place so producer, worker and metrics agree."""

    prefix: str
    source: str

    @classmethod
    def of(cls, settings: Settings, source: str) -> "StreamKeys":
        return cls(settings.key_prefix, source)

    @property
    def base(self) -> str:
        return f"{self.prefix}:stream:{self.source}"

    @property
    def stream(self) -> str:
        """The event stream producers XADD to."""
        return self.base

    @property
    def group(self) -> str:
        return GROUP

    @property
    def deadletter(self) -> str:
        """Stream of rejected messages: original payload + reason."""
        return f"{self.base}:deadletter"

    @property
    def deadletter_seen(self) -> str:
        """Set of message ids already dead-lettered, so a replay does not dead-letter twice."""
        return f"{self.base}:deadletter:seen"

    @property
    def totals(self) -> str:
        """Hash of exact counters (events, late, too_late, duplicates, dead_letter)."""
        return f"{self.base}:totals"

    @property
    def workers(self) -> str:
        """Hash consumer name -> JSON of that worker's heartbeat, rate and delay percentiles."""
        return f"{self.base}:workers"

    @property
    def lease(self) -> str:
        """Exclusive-worker lease (used by the Dagster op: one worker per source)."""
        return f"{self.base}:lease"

    def claims(self, day: str) -> str:
        """Hash event_id -> message id of its first delivery, for events timed on `day` (YYYY-MM-DD)."""
        return f"{self.base}:claims:{day}"


def entry_ms(entry_id: str | bytes) -> int:
    """Milliseconds since the epoch at which Redis accepted the entry (the id's first part)."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return int(entry_id.split("-", 1)[0])


def parse_id(entry_id: str | bytes) -> tuple[int, int]:
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
