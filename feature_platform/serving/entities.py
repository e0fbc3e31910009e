"""Turn what a caller sent (JSON values, CLI strings) into entity keys typed by the registry.

The CLI and the HTTP API share this so that both reject the same bad input with the same words:
the message names the key, the position and what would have been accepted. Validation happens
before Redis is touched, so a bad request never costs a round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from feature_platform.registry.model import Dtype, Entity, FeatureRef, Registry, RegistryError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_ROWS = 10_000
_DECIMAL = re.compile(r"[+-]?[0-9]{1,19}")


class ServingInputError(ValueError):
    """The request is wrong in a way the caller can fix; `kind` is a stable machine-readable tag."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ResolvedRequest:
    """A request checked against the registry: the pinned features and typed entity columns."""

    service: str
    refs: list[FeatureRef]
    entities: dict[str, list[Any]]
    n_rows: int


def resolve_refs(registry: Registry, service: str | None, features: Sequence[str] | None) -> list[FeatureRef]:
    """The features to read: a service's pinned list, or explicit 'view:vN:feature' references."""
    if service is not None and features is not None:
        raise ServingInputError("bad_request", "pass either 'service' or 'features', not both")
    if service is None and features is None:
        raise ServingInputError(
            "bad_request", "pass 'service' (e.g. \"fraud_detection\") or 'features' (e.g. [\"user_txn_stats:v1:txn_count_1h\"])"
        )
    if service is not None:
        try:
            return list(registry.service(service).features)
        except RegistryError as exc:
            raise ServingInputError("unknown_service", str(exc)) from None
    if not features:
        raise ServingInputError("bad_request", "'features' is empty; list at least one 'view:vN:feature'")
    refs = []
    for i, text in enumerate(features):
        try:
            refs.extend(registry.resolve([text]))
        except RegistryError as exc:
            raise ServingInputError("unknown_feature", f"features[{i}]: {exc}") from None
    dupes = sorted({r.column for r in refs if sum(o.column == r.column for o in refs) > 1})
    if dupes:
        raise ServingInputError("bad_request", f"features: columns {dupes} are requested twice; ask for each feature once")
    return refs


def required_entities(registry: Registry, refs: Sequence[FeatureRef]) -> dict[str, Entity]:
    """join key -> Entity for every entity the features are keyed by, in first-use order."""
    out: dict[str, Entity] = {}
    for ref in refs:
        entity = registry.view(ref.view, ref.version).entity
        out.setdefault(entity.join_key, entity)
    return out


def _bad_value(key: str, i: int, value: Any, dtype: Dtype) -> ServingInputError:
    want = "an integer (int64)" if dtype is Dtype.INT64 else "a string"
    return ServingInputError(
        "bad_entity_value", f"entities.{key}[{i}] = {value!r} is not a valid {key}: it must be {want}"
    )


def _coerce_int64(key: str, values: Sequence[Any]) -> list[int]:
    # Fast path in C: all plain ints (bool is a subclass of int, so exact type check).
    if set(map(type, values)) <= {int}:
        if values and (min(values) < INT64_MIN or max(values) > INT64_MAX):
            i = next(i for i, v in enumerate(values) if not INT64_MIN <= v <= INT64_MAX)
            raise ServingInputError("bad_entity_value", f"entities.{key}[{i}] = {values[i]} is outside the int64 range")
        return list(values)
    out = []
    for i, v in enumerate(values):
        if type(v) is int:
            n = v
        elif isinstance(v, str) and _DECIMAL.fullmatch(v.strip()):
            n = int(v)  # decimal digits only: "42", "-7"; never "4.2", "0x2a" or "1e3"
        else:
            raise _bad_value(key, i, v, Dtype.INT64)
        if not INT64_MIN <= n <= INT64_MAX:
            raise ServingInputError("bad_entity_value", f"entities.{key}[{i}] = {v!r} is outside the int64 range")
        out.append(n)
    return out


def _coerce_string(key: str, values: Sequence[Any]) -> list[str]:
    if set(map(type, values)) <= {str}:
        return list(values)
    i = next(i for i, v in enumerate(values) if type(v) is not str)
    raise _bad_value(key, i, values[i], Dtype.STRING)


def coerce_entity_values(entity: Entity, values: Sequence[Any]) -> list[Any]:
    """Values typed by the entity's dtype; raises ServingInputError naming key and position."""
    if entity.dtype is Dtype.INT64:
        return _coerce_int64(entity.join_key, values)
    return _coerce_string(entity.join_key, values)


def resolve_request(
    registry: Registry,
    service: str | None,
    features: Sequence[str] | None,
    entities: Mapping[str, Any],
    max_rows: int = MAX_ROWS,
) -> ResolvedRequest:
    """Check features and entities against the registry; every message says what to send instead."""
    refs = resolve_refs(registry, service, features)
    needed = required_entities(registry, refs)
    what = f"service {service!r} needs" if service is not None else "these features need"
    keyed = f"service {service!r} is" if service is not None else "these features are"
    if not isinstance(entities, Mapping):
        raise ServingInputError("bad_entities", f"'entities' must be an object {{join_key: [values]}}; {what} {list(needed)}")
    missing = [k for k in needed if k not in entities]
    if missing:
        raise ServingInputError(
            "missing_entity_key",
            f"entities: missing key(s) {missing}; {what} {list(needed)}, "
            f"e.g. {{{', '.join(f'{k!r}: [...]' for k in needed)}}}",
        )
    extra = [k for k in entities if k not in needed]
    if extra:
        raise ServingInputError(
            "unknown_entity_key", f"entities: unknown key(s) {extra}; {keyed} keyed by {list(needed)} only"
        )
    typed: dict[str, list[Any]] = {}
    lengths: dict[str, int] = {}
    for key, entity in needed.items():
        values = entities[key]
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ServingInputError(
                "bad_entities", f"entities.{key} must be a list of values (one per row), e.g. {[42] if entity.dtype is Dtype.INT64 else ['a']}"
            )
        typed[key] = coerce_entity_values(entity, values)
        lengths[key] = len(values)
    n = next(iter(lengths.values()))
    if len(set(lengths.values())) > 1:
        raise ServingInputError(
            "unequal_lengths",
            f"entities: every key needs one value per row, but the lists have different lengths {lengths}",
        )
    if n == 0:
        raise ServingInputError("bad_entities", "entities: the lists are empty; send at least one row")
    if n > max_rows:
        raise ServingInputError("too_many_rows", f"entities: {n} rows in one request; send at most {max_rows} per request")
    return ResolvedRequest(service=service or "", refs=refs, entities=typed, n_rows=n)


def parse_cli_entities(pairs: Sequence[str]) -> dict[str, list[str]]:
    """`--entity user_id=42 --entity merchant_id=7` -> {"user_id": ["42"], "merchant_id": ["7"]}.

    Repeating a key makes several rows (`--entity user_id=1 --entity user_id=2`); typing happens
    later against the registry, so `user_id=abc` fails with the same message as over HTTP.
    """
    out: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ServingInputError("bad_entities", f"--entity {pair!r}: expected KEY=VALUE, e.g. --entity user_id=42")
        out.setdefault(key.strip(), []).append(value.strip())
    return out
