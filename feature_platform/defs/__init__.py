"""The Dagster code location of feature_platform (`dagster dev` in the repo root loads `defs`).

The assets, checks, schedules and sensors are generated from the feature repo (FP_REGISTRY);
the streaming engineer's `feature_platform/defs/streaming.py` (if present) is merged in.
See docs/operations.md.
"""

from __future__ import annotations

import dagster as dg

from feature_platform.defs.definitions import build_definitions


def _with_streaming(base: dg.Definitions) -> dg.Definitions:
    try:
        from feature_platform.defs.streaming import streaming_defs
    except ModuleNotFoundError as exc:  # the streaming module has not landed: the rest still loads
        if exc.name != "feature_platform.defs.streaming":
            raise
        return base
    return dg.Definitions.merge(base, streaming_defs)


defs = _with_streaming(build_definitions())

__all__ = ["defs", "build_definitions"]
