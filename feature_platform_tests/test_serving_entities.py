"""Entity values typed by the registry (shared by HTTP and the CLI): what is accepted, what is
refused, and that the message names key and position."""

from __future__ import annotations

import pytest

from feature_platform.registry.model import Dtype, Entity
from feature_platform.serving.entities import (
    ServingInputError,
    coerce_entity_values,
    parse_cli_entities,
    resolve_request,
)

USER = Entity("user", "user_id", Dtype.INT64)
CODE = Entity("shop", "shop_code", Dtype.STRING)


@pytest.mark.parametrize("values,want", [
    ([1, -2, 0], [1, -2, 0]),
    (["42", " 7 ", "+5", "-0"], [42, 7, 5, 0]),
    ([2**63 - 1, -(2**63)], [2**63 - 1, -(2**63)]),
    (["9223372036854775807"], [2**63 - 1]),
])
def test_int64_accepts_ints_and_decimal_strings(values, want):
    got = coerce_entity_values(USER, values)
    assert got == want and all(type(v) is int for v in got)


@pytest.mark.parametrize("values,pos", [
    (["1e3"], 0), (["0x10"], 0), (["4.0"], 0), ([1, 4.0], 1), ([True], 0), ([None], 0), (["", 1], 0),
    ([1, 2, "٣"], 2),  # a non-ASCII digit is not a decimal id
    ([2**63], 0), (["9223372036854775808"], 0), ([1, -(2**63) - 1], 1),
])
def test_int64_refuses_everything_else_naming_the_position(values, pos):
    with pytest.raises(ServingInputError) as err:
        coerce_entity_values(USER, values)
    assert err.value.kind == "bad_entity_value"
    assert f"entities.user_id[{pos}]" in err.value.message


def test_string_keys_take_strings_only():
    assert coerce_entity_values(CODE, ["a", "", "42"]) == ["a", "", "42"]
    with pytest.raises(ServingInputError) as err:
        coerce_entity_values(CODE, ["a", 42])
    assert "entities.shop_code[1]" in err.value.message and "string" in err.value.message


def test_cli_pairs_make_rows_and_bad_pairs_say_key_value():
    assert parse_cli_entities(["user_id=1", "merchant_id=7", "user_id=2", "merchant_id=8"]) == {
        "user_id": ["1", "2"], "merchant_id": ["7", "8"]}
    with pytest.raises(ServingInputError, match="KEY=VALUE"):
        parse_cli_entities(["user_id"])


def test_resolve_request_checks_and_types_everything(registry):
    r = resolve_request(registry, "fraud_detection", None, {"merchant_id": ["7", 8], "user_id": [1, "2"]})
    assert r.entities == {"user_id": [1, 2], "merchant_id": [7, 8]}  # ordered by first use in the service
    assert r.n_rows == 2 and [x.column for x in r.refs][0] == "user_txn_stats__txn_count_10m"
    with pytest.raises(ServingInputError) as err:
        resolve_request(registry, None, ["user_txn_stats:v1:txn_count_1h", "user_txn_stats:v1:txn_count_1h"],
                        {"user_id": [1]})
    assert "twice" in err.value.message
    with pytest.raises(ServingInputError) as err:
        resolve_request(registry, "fraud_detection", None, {"user_id": list(range(3)), "merchant_id": list(range(3))},
                        max_rows=2)
    assert err.value.kind == "too_many_rows"
