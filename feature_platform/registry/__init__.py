"""Feature definitions: entities, sources, views, services (see model.py)."""

from __future__ import annotations

import importlib
import os

from feature_platform.registry.model import (
    Aggregation,
    BatchFeature,
    BatchFeatureView,
    BatchSLA,
    Column,
    Dtype,
    Entity,
    FeatureRef,
    FeatureService,
    FeatureView,
    Registry,
    RegistryError,
    Source,
    SourceSLA,
    StreamFeatureView,
    StreamSLA,
    all_features,
)

DEFAULT_REPO = "feature_platform.registry.demo:build_registry"


def load_registry(spec: str | None = None) -> Registry:
    """Load a feature repo from 'module:callable_or_attr' (env FP_REGISTRY; default: the demo repo)."""
    spec = spec or os.environ.get("FP_REGISTRY") or DEFAULT_REPO
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise RegistryError(f"FP_REGISTRY={spec!r}: expected 'module:attribute', e.g. {DEFAULT_REPO!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"feature repo {spec!r}: cannot import {module_name!r}: {exc}") from exc
    obj = getattr(module, attr, None)
    if obj is None:
        raise RegistryError(f"feature repo {spec!r}: module {module_name!r} has no attribute {attr!r}")
    registry = obj() if callable(obj) else obj
    if not isinstance(registry, Registry):
        raise RegistryError(f"feature repo {spec!r}: expected a Registry, got {type(registry).__name__}")
    return registry


__all__ = [
    "Aggregation", "BatchFeature", "BatchFeatureView", "BatchSLA", "Column", "Dtype", "Entity", "FeatureRef",
    "FeatureService", "FeatureView", "Registry", "RegistryError", "Source", "SourceSLA", "StreamFeatureView", "StreamSLA",
    "all_features", "load_registry", "DEFAULT_REPO",
]
