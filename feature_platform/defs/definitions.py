"""Build the Dagster Definitions of a feature repo (the registry decides which assets exist)."""

from __future__ import annotations

import dagster as dg

from feature_platform.defs import assets as A
from feature_platform.defs import checks as C
from feature_platform.defs.automation import build_automation_sensor, build_daily_schedule, build_landing_sensor
from feature_platform.defs.resources import FeatureStoreResource, resource_from_env
from feature_platform.registry import Registry, load_registry
from feature_platform.registry.model import BatchFeatureView


def build_definitions(registry: Registry | None = None, resource: FeatureStoreResource | None = None) -> dg.Definitions:
    registry = registry or load_registry()
    assets: list[dg.AssetsDefinition] = [A.build_registry_asset(registry)]
    checks: list[dg.AssetChecksDefinition] = C.registry_checks(registry)
    sensors: list[dg.SensorDefinition] = []
    for source in registry.sources:
        assets.append(A.build_raw_asset(registry, source))
        checks += C.raw_checks(registry, source)
        sensors.append(build_landing_sensor(registry, source))
    for view in registry.views:
        if isinstance(view, BatchFeatureView):
            assets += [A.build_batch_asset(registry, view), A.build_online_asset(registry, view)]
            checks += C.view_checks(registry, view) + C.online_checks(registry, view)
    for service in registry.services:
        assets.append(A.build_training_asset(registry, service))
        checks += C.training_checks(registry, service)
    sensors.append(build_automation_sensor([a.key for a in assets]))
    jobs, schedules = [], []
    daily = build_daily_schedule(registry)
    if daily:
        jobs.append(daily[0])
        schedules.append(daily[1])
    return dg.Definitions(assets=assets, asset_checks=checks, sensors=sensors, schedules=schedules, jobs=jobs,
                          resources={"fp": resource or resource_from_env()})
