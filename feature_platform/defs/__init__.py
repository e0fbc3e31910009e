"""The Dagster code location of feature_platform (`dagster dev` in the repo root loads `defs`).

The assets, checks, schedules and sensors are generated from the feature repo (FP_REGISTRY);
the streaming engineer's `feature_platform/defs/streaming.py` (its `streaming_defs`), when the
file exists, is merged in. See docs/operations.md.

`defs` is built on first access (PEP 562 module __getattr__; Dagster's loader finds it through
dir()/getattr), so importing the Dagster-free helpers in this package (health, registry_lock,
landing, stream_health) from the CLI neither imports Dagster nor builds the graph.
"""

from __future__ import annotations

from typing import Any


def _build() -> Any:
    import dagster as dg

    from feature_platform.defs.definitions import build_definitions

    try:
        from feature_platform.defs import streaming
    except ModuleNotFoundError as exc:  # the streaming module has not landed: the rest still loads
        if exc.name != "feature_platform.defs.streaming":
            raise
        return build_definitions()
    # With the streaming location, the stream-worker checks sit on its stream views' online assets.
    base = build_definitions(stream_keys=streaming.stream_online_key)
    return dg.Definitions.merge(base, streaming.streaming_defs)


def __getattr__(name: str) -> Any:
    if name == "defs":
        value = _build()
        globals()["defs"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"defs"})
