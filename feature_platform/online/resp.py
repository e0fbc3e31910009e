"""Pipelines packed by us instead of redis-py, for the two hot paths.

redis-py spends most of a big pipeline in Python: encoding and packing every argument of every
command. The batch writer's commands differ only in key and values, so they are packed for a whole
chunk at once with Arrow string kernels (the joined column's data buffer *is* the wire payload); a
read's HMGET field list is packed once per plan and reused for every entity. Replies are parsed by
a small HMGET-reply parser (reads) or counted line by line (integer-only writes); redis-py's own
parser costs ~2 us per value, and a 1000-entity read has ~100k values.

Each call takes one pooled connection, writes once, reads every reply, and gives the connection
back; on any error the connection is dropped, so a half-read reply stream is never reused.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis


def bulk(value: str | bytes) -> bytes:
    """One RESP bulk string."""
    b = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(b), b)


def command(*args: str | bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


def bulk_column(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each string of a column as a RESP bulk string, vectorised: '$<bytes>\\r\\n<value>\\r\\n'."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    lengths = pc.cast(pc.binary_length(values), pa.string())
    return pc.binary_join_element_wise("$", lengths, "\r\n", values, "\r\n", "")


def concat(parts: list[pa.Array | str]) -> bytes:
    """Row-wise concatenation of string columns and constants, returned as ONE bytes payload.

    The joined column's data buffer is already every row back to back, so no Python loop over rows.
    """
    joined = pc.binary_join_element_wise(*parts, "")
    joined = joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
    if len(joined) == 0:
        return b""
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset: joined.offset + len(joined) + 1]
    return joined.buffers()[2].to_pybytes()[offsets[0]: offsets[-1]]


@contextmanager
def _sent(client: redis.Redis, payload: bytes) -> Iterator[socket.socket]:
    """Write `payload` on one pooled connection and yield its socket for reading the replies.

    On any error the connection is dropped, so a half-read reply stream is never reused.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([payload])
        sock = getattr(conn, "_sock", None)
        if sock is None:
            raise redis.ConnectionError("connection closed while writing")
        yield sock
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def execute_counted(client: redis.Redis, payload: bytes, n_replies: int) -> None:
    """Send a pre-packed pipeline whose replies are all one-line integers (HSET, PEXPIREAT, ...).

    Replies are counted by their line ends instead of being parsed one by one; an error reply
    ('-ERR ...') is raised.
    """
    with _sent(client, payload) as sock:
        need, tail, error = n_replies, b"", None
        while need > 0:
            data = sock.recv(1 << 20)
            if not data:
                raise redis.ConnectionError("Redis closed the connection while replying")
            buf = tail + data
            last = buf.rfind(b"\r\n")
            if last < 0:
                tail = buf
                continue
            done, tail = buf[: last + 2], buf[last + 2:]
            need -= done.count(b"\r\n")
            if error is None and (done.startswith(b"-") or b"\n-" in done):
                start = 0 if done.startswith(b"-") else done.index(b"\n-") + 1
                error = done[start + 1: done.index(b"\r\n", start)].decode(errors="replace")
            if error is None and (done.startswith((b"$", b"*", b"+", b"_")) or b"\n$" in done or b"\n*" in done):
                raise redis.ResponseError(f"unexpected non-integer reply in a counted pipeline: {done[:80]!r}")
    if error is not None:
        raise redis.ResponseError(error)


def execute_arrays(client: redis.Redis, payload: bytes, n_replies: int) -> list[list[bytes | None]]:
    """Send a pre-packed pipeline of HMGETs and parse the n array replies with a tight loop.

    redis-py's pure-Python parser costs ~2 us per bulk string; a 1000-entity read has ~100k of
    them. Only arrays of bulk strings / nulls (RESP2 `$-1`, RESP3 `_`) and errors are expected.
    """
    with _sent(client, payload) as sock:
        out: list = []
        buf, pos = b"", 0
        while len(out) < n_replies:
            parsed = _parse_array(buf, pos)
            if parsed is None:
                data = sock.recv(1 << 20)
                if not data:
                    raise redis.ConnectionError("Redis closed the connection while replying")
                buf, pos = buf[pos:] + data, 0
                continue
            value, pos = parsed
            out.append(value)
    for r in out:
        if isinstance(r, redis.ResponseError):
            raise r
    return out


def _parse_array(buf: bytes, pos: int):
    """One reply at buf[pos:]: (value, next pos), or None when it is not complete yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    if kind == 45:  # '-' error
        return redis.ResponseError(buf[pos + 1:end].decode(errors="replace")), end + 2
    if kind != 42:  # '*'
        raise redis.ResponseError(f"unexpected reply type {chr(kind)!r} to HMGET")
    n = int(buf[pos + 1:end])
    p = end + 2
    items: list[bytes | None] = []
    append = items.append
    find = buf.find
    size = len(buf)
    for _ in range(n):
        e = find(b"\r\n", p)
        if e < 0:
            return None
        t = buf[p]
        if t == 36:  # '$'
            length = int(buf[p + 1:e])
            if length < 0:
                append(None)
                p = e + 2
                continue
            stop = e + 2 + length
            if stop + 2 > size:
                return None
            append(buf[e + 2:stop])
            p = stop + 2
        elif t == 95:  # '_' RESP3 null
            append(None)
            p = e + 2
        else:
            raise redis.ResponseError(f"unexpected element type {chr(t)!r} in an HMGET reply")
    return items, p
