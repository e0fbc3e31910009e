"""Online commands: `online get` (read features from Redis) and `serve` (the HTTP API)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

import click

from feature_platform.registry import RegistryError


def _store():
    from feature_platform.feature_store import FeatureStore

    try:
        return FeatureStore()
    except RegistryError as exc:
        raise click.ClickException(f"cannot load the feature repo: {exc}") from exc


def _parse_as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time; e.g. 2026-11-26T18:00:00Z", param_hint="--as-of")
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if age >= size:
            return f"{age / size:.1f}{unit}"
    return f"{age:.3f}s"


@click.group()
def online() -> None:
    """Read features from the online store (Redis)."""


@online.command("get")
@click.option("--service", default=None, help="Feature service whose pinned features to read, e.g. fraud_detection.")
@click.option("--feature", "features", multiple=True,
              help="A 'view:vN:feature' reference instead of --service; repeat for several.")
@click.option("--entity", "entities", multiple=True, required=True, metavar="KEY=VALUE",
              help="An entity key, e.g. --entity user_id=42; repeat a key for several rows.")
@click.option("--as-of", "as_of", default=None, help="Compute windows and TTLs at this ISO time (default now).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the same shape as POST /v1/features).")
def online_get(service: str | None, features: tuple[str, ...], entities: tuple[str, ...], as_of: str | None,
               as_json: bool) -> None:
    """Print each feature's value and age for the given entities, and the as_of time.

    Exits 2 on bad input (unknown service or feature, a missing or mistyped entity key), 3 when
    Redis cannot be reached.
    """
    import redis

    from feature_platform.serving.entities import ServingInputError, parse_cli_entities, resolve_request

    fs = _store()
    ts = _parse_as_of(as_of)
    try:
        resolved = resolve_request(fs.registry, service, list(features) if features else None,
                                   parse_cli_entities(entities))
    except ServingInputError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    try:
        if service is not None:
            result = fs.get_online_features(entities=resolved.entities, service=service, as_of=ts)
        else:
            result = fs.get_online_features(entities=resolved.entities, features=resolved.refs, as_of=ts)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        click.echo(f"error: the online store (Redis) is not reachable: {exc}", err=True)
        sys.exit(3)
    except Exception as exc:  # the online store's own errors (e.g. a version never materialized)
        if type(exc).__module__.startswith("feature_platform.online") or isinstance(exc, RegistryError):
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        raise
    columns = [r.column for r in resolved.refs]
    keys = list(resolved.entities)
    as_of_text = result.as_of.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if as_json:
        rows = [{"entities": {k: resolved.entities[k][i] for k in keys},
                 "features": {c: {"value": fv.value, "age_seconds": fv.age_seconds} for c, fv in row.items()}}
                for i, row in enumerate(result.rows)]
        click.echo(json.dumps({"service": service, "as_of": as_of_text, "features": columns, "rows": rows},
                              default=lambda o: o.item() if hasattr(o, "item") else str(o)))
        return
    click.echo(f"as_of {as_of_text}" + (f"   service {service}" if service else ""))
    width = max(len(c) for c in columns)
    for i, row in enumerate(result.rows):
        click.echo(" ".join(f"{k}={resolved.entities[k][i]}" for k in keys))
        for c in columns:
            fv = row[c]
            value = "null" if fv.value is None else (f"{fv.value:.6g}" if isinstance(fv.value, float) else str(fv.value))
            click.echo(f"  {c:<{width}}  {value:>14}   age {_fmt_age(fv.age_seconds)}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes. Above 1, each keeps its own /metrics counters (scrape each or use 1).")
def serve(host: str, port: int, log_level: str, workers: int) -> None:
    """Serve features over HTTP (FastAPI + uvicorn).

    POST /v1/features, GET /v1/registry, GET /healthz, GET /metrics; OpenAPI docs at /docs.
    """
    from feature_platform.serving.server import serve as run

    if workers > 1:
        from feature_platform.serving.server import serve_workers

        _store()  # fail here, once, on a broken feature repo rather than in every worker
        serve_workers(host=host, port=port, log_level=log_level, workers=workers)
        return
    run(_store(), host=host, port=port, log_level=log_level)


commands: list[click.Command] = [online, serve]
