"""The hand-rolled RESP pieces of the online store: packing and the HMGET reply parser."""

from __future__ import annotations

import pyarrow as pa
import redis

from feature_platform.online import resp


def test_packed_commands_are_what_redis_reads(settings):
    client = redis.Redis.from_url(settings.redis_url)
    key = f"{settings.key_prefix}:resp"
    vals = pa.array(["a", "", "ä\r\n$3\r\nx", "z" * 70_000])
    fields = pa.array(["f1", "f2", "f3", "f4"])
    payload = resp.concat(["*4\r\n$4\r\nHSET\r\n", resp.bulk(key).decode(), resp.bulk_column(fields), resp.bulk_column(vals)])
    resp.execute_counted(client, payload, 4)
    assert client.hgetall(key) == {b"f1": b"a", b"f2": b"", b"f3": "ä\r\n$3\r\nx".encode(), b"f4": b"z" * 70_000}
    # the same values come back through the reply parser, also around recv boundaries and with nulls
    one = resp.command("HMGET", key, "f1", "nope", "f2", "f3", "f4")
    out = resp.execute_arrays(client, one * 3, 3)
    assert out == [[b"a", None, b"", "ä\r\n$3\r\nx".encode(), b"z" * 70_000]] * 3


def test_reply_parser_handles_every_split_point():
    wire = b"*3\r\n$2\r\nab\r\n$-1\r\n$4\r\nc\r\nd\r\n*1\r\n_\r\n-ERR nope\r\n*0\r\n"
    want = [[b"ab", None, b"c\r\nd"], [None], "ERR nope", []]
    for cut in range(len(wire) + 1):
        buf, pos, out = wire[:cut], 0, []
        rest = wire[cut:]
        while len(out) < 4:
            parsed = resp._parse_array(buf, pos)
            if parsed is None:
                assert rest, cut
                buf, pos, rest = buf[pos:] + rest[:1], 0, rest[1:]
                continue
            value, pos = parsed
            out.append(str(value) if isinstance(value, redis.ResponseError) else value)
        assert out == want, cut
