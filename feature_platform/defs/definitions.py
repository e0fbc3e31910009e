"""Build the Dagster Definitions of a feature repo (the registry decides which assets exist)."""

from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from feature_platform.defs import assets as A
from feature_platform.defs import checks as C
from feature_platform.defs.automation import build_automation_sensor, build_daily_schedule, build_landing_sensor
from feature_platform.defs.resources import FeatureStoreResource, resource_from_env
from feature_platform.registry import Registry, load_registry
from feature_platform.registry.model import BatchFeatureView, StreamFeatureView


@dataclass
class Parts:
    """The pieces before they are bound to resources: `dg.materialize(parts.assets + parts.checks, ...)`
    runs them in-process (tests, `feature-platform backfill`), `build_definitions` serves them to Dagster."""

    assets: list[dg.AssetsDefinition] = field(default_factory=list)
    checks: list[dg.AssetChecksDefinition] = field(default_factory=list)
    sensors: list[dg.SensorDefinition] = field(default_factory=list)
    schedules: list[dg.ScheduleDefinition] = field(default_factory=list)
    jobs: list = field(default_factory=list)

    def checks_of(self, key: dg.AssetKey | str) -> list[dg.AssetChecksDefinition]:
        key = dg.AssetKey(key) if isinstance(key, str) else key
        return [c for c in self.checks if any(k.asset_key == key for k in c.check_keys)]

    def asset(self, key: dg.AssetKey | str) -> dg.AssetsDefinition:
        key = dg.AssetKey(key) if isinstance(key, str) else key
        return next(a for a in self.assets if a.key == key)


def build_parts(registry: Registry, stream_keys: Callable[[StreamFeatureView], dg.AssetKey] | None = None) -> Parts:
    """`stream_keys`: the asset key of each stream view's online asset when the streaming code
    location is merged in (its checks then sit there); None puts them on the raw asset."""
    p = Parts(assets=[A.build_registry_asset(registry)], checks=C.registry_checks(registry))
    for source in registry.sources:
        p.assets.append(A.build_raw_asset(registry, source))
        p.checks += C.raw_checks(registry, source) + C.stream_checks(registry, source, stream_keys)
        p.sensors.append(build_landing_sensor(registry, source))
    for view in registry.views:
        if isinstance(view, BatchFeatureView):
            p.assets += [A.build_batch_asset(registry, view), A.build_online_asset(registry, view)]
            p.checks += C.view_checks(registry, view) + C.online_checks(registry, view)
    for service in registry.services:
        p.assets.append(A.build_training_asset(registry, service))
        p.checks += C.training_checks(registry, service)
    p.sensors.append(build_automation_sensor([a.key for a in p.assets], [k for c in p.checks for k in c.check_keys]))
    daily = build_daily_schedule(registry)
    if daily:
        p.jobs.append(daily[0])
        p.schedules.append(daily[1])
    return p


def build_definitions(registry: Registry | None = None, resource: FeatureStoreResource | None = None,
                      stream_keys: Callable[[StreamFeatureView], dg.AssetKey] | None = None) -> dg.Definitions:
    p = build_parts(registry or load_registry(), stream_keys)
    # In-process: our steps are short DuckDB/Redis calls; a subprocess per step (the default
    # multiprocess executor) costs more than the work on a 2-core machine.
    return dg.Definitions(assets=p.assets, asset_checks=p.checks, sensors=p.sensors, schedules=p.schedules,
                          jobs=p.jobs, resources={"fp": resource or resource_from_env()},
                          executor=dg.in_process_executor)
