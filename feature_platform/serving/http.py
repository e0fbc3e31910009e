"""The HTTP face of the feature store: FastAPI over `FeatureStore.get_online_features`.

Endpoints: `POST /v1/features`, `GET /v1/registry`, `GET /healthz`, `GET /metrics`.

Choices, and why:
* redis-py is blocking, so the feature endpoint hands its work to a small thread pool and the
  event loop stays free for other requests while one waits on Redis (see create_app).
* The request is a pydantic model (so OpenAPI documents it and shape errors are caught early);
  entity values are then typed against the registry by serving.entities, which is where the
  messages that name key, position and expected type come from.
* The response schema is the pydantic `FeaturesResponse`, but the body is built as plain dicts and
  encoded once with `json`: instantiating 13 000 pydantic objects for a 1000-row answer would
  cost more than the Redis round trip. Tests validate real responses against the model.
* Redis errors become 503 with a message; redis-py reconnects on the next command, so the
  server recovers on its own when Redis is back. The FeatureStore's online store is created
  lazily on first use, so the app also starts while Redis is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import numpy as np
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from feature_platform.feature_store import FeatureStore
from feature_platform.registry.model import BatchFeatureView, Registry, RegistryError, format_duration
from feature_platform.serving.entities import ServingInputError, resolve_request
from feature_platform.serving.metrics import ServingMetrics

_log = logging.getLogger("feature_platform.serving")

# ---- typed request/response ------------------------------------------------------------------


class FeaturesRequest(BaseModel):
    """Either a feature service (its pinned versions) or explicit 'view:vN:feature' references."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"service": "fraud_detection", "entities": {"user_id": [42, 43], "merchant_id": [7, 7]}}]})

    service: str | None = Field(None, description="feature service name, e.g. fraud_detection")
    features: list[str] | None = Field(None, description="'view:vN:feature' references, instead of a service")
    entities: dict[str, list[Any]] = Field(
        ..., description="join key -> one value per row; every key the features need, lists of equal length")
    as_of: datetime | None = Field(
        None, description="compute windows and TTLs at this instant (ISO 8601; naive means UTC); default now")


class ServedValue(BaseModel):
    value: int | float | str | bool | None
    age_seconds: float | None = Field(description="as_of minus the newest data time behind the value; null if none")


class ServedRow(BaseModel):
    entities: dict[str, int | str]
    features: dict[str, ServedValue] = Field(description="'<view>__<feature>' -> value and age")


class FeaturesResponse(BaseModel):
    service: str | None
    as_of: datetime
    features: list[str] = Field(description="column names, in the order of the service or the request")
    rows: list[ServedRow]


class ErrorResponse(BaseModel):
    error: str = Field(description="stable kind, e.g. unknown_service, missing_entity_key, redis_unavailable")
    message: str


# ---- errors ----------------------------------------------------------------------------------

_STATUS = {
    "malformed_json": 400,
    "bad_request": 422,
    "invalid_request": 422,
    "unknown_service": 404,
    "unknown_feature": 404,
    "missing_entity_key": 422,
    "unknown_entity_key": 422,
    "unequal_lengths": 422,
    "bad_entity_value": 422,
    "bad_entities": 422,
    "too_many_rows": 413,
    "not_materialized": 409,
    "online_store_error": 500,
    "redis_unavailable": 503,
    "internal": 500,
}
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, TimeoutError)


class ApiError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _classify_store_error(exc: BaseException) -> ApiError | None:
    """Map errors from the online store to API errors; None means 'not ours, a real bug'."""
    from feature_platform.online.errors import BadRequestError, NotMaterializedError, OnlineStoreError

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # look through `raise ... from` chains
        seen.add(id(cur))
        if isinstance(cur, REDIS_DOWN):
            return ApiError("redis_unavailable", f"the online store (Redis) is not reachable: {cur}. "
                                                 "Retry shortly; the server reconnects by itself.")
        cur = cur.__cause__ or cur.__context__
    if isinstance(exc, NotMaterializedError):
        return ApiError("not_materialized", str(exc))
    if isinstance(exc, (BadRequestError, RegistryError)):
        return ApiError("bad_request", str(exc))
    if isinstance(exc, OnlineStoreError):
        return ApiError("online_store_error", str(exc))
    return None


_EXAMPLE = '{"service": "fraud_detection", "entities": {"user_id": [42], "merchant_id": [7]}}'


def _validation_message(exc: RequestValidationError | ValidationError) -> tuple[str, str]:
    """Pydantic's error list -> one sentence that says where and what to send."""
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            detail = e.get("ctx", {}).get("error", "decode error")
            return "malformed_json", f"request body is not valid JSON ({detail}); send a JSON object like {_EXAMPLE}"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        typ = e.get("type", "")
        if typ == "missing":
            parts.append(f"{loc}: required field is missing")
        elif typ == "extra_forbidden":
            parts.append(f"{loc}: unknown field; allowed fields are service, features, entities, as_of")
        elif loc == "body" and typ in ("model_attributes_type", "dict_type", "model_type"):
            parts.append(f"body: expected a JSON object like {_EXAMPLE}")
        else:
            parts.append(f"{loc}: {e.get('msg', typ)} (got {e.get('input')!r})")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid_request", "; ".join(parts) + more


def _error_response(metrics: ServingMetrics, kind: str, message: str) -> JSONResponse:
    metrics.errors.labels(kind).inc()
    return JSONResponse({"error": kind, "message": message}, status_code=_STATUS.get(kind, 500))


# ---- encoding --------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, datetime):
        return _iso(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def registry_document(registry: Registry) -> dict[str, Any]:
    """What GET /v1/registry returns: every definition, its version and fingerprint."""
    views = []
    for v in registry.views:
        doc = {"name": v.name, "version": v.version, "kind": v.kind, "entity": v.entity.join_key,
               "source": v.source.name, "fingerprint": v.fingerprint(), "description": v.description,
               "features": list(v.feature_names),
               "services": registry.services_using(v.name, v.version)}
        if isinstance(v, BatchFeatureView):
            doc.update(availability_delay=format_duration(v.availability_delay), ttl=format_duration(v.ttl))
        else:
            doc["windows"] = {a.name: {"function": a.function, "column": a.column, "window": format_duration(a.window),
                                       "hop": format_duration(a.hop)} for a in v.aggregations}
        views.append(doc)
    return {
        "entities": [{"name": e.name, "join_key": e.join_key, "dtype": e.dtype.value, "description": e.description}
                     for e in registry.entities],
        "sources": [{**s.definition(), "fingerprint": s.fingerprint(), "description": s.description}
                    for s in registry.sources],
        "views": views,
        "services": [{"name": s.name, "description": s.description, "features": [str(f) for f in s.features],
                      "columns": [f.column for f in s.features], "pinned_versions": s.pinned_versions}
                     for s in registry.services],
    }


# ---- the app ---------------------------------------------------------------------------------

DEFAULT_READ_THREADS = 4
_ENDPOINTS = {"/v1/features", "/v1/registry", "/healthz", "/metrics"}


def _health_client(store: FeatureStore) -> redis.Redis:
    """A client for /healthz that fails fast: no retries with backoff, short timeouts."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from feature_platform.online.connection import connect_redis

    base = connect_redis(store.settings)
    kwargs = dict(base.connection_pool.connection_kwargs)
    kwargs.update(socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
    pool = redis.ConnectionPool(connection_class=base.connection_pool.connection_class, max_connections=4, **kwargs)
    return redis.Redis(connection_pool=pool)


MAX_BODY_BYTES = 4 * 1024 * 1024  # 10,000 rows of two int keys is ~0.3 MB


class _FeaturesHandler:
    """POST /v1/features: parse, check, read, encode. Shared by the ASGI fast path and the FastAPI
    route (which documents the endpoint in OpenAPI and answers if the fast path is bypassed)."""

    def __init__(self, store: FeatureStore, metrics: ServingMetrics, pool: ThreadPoolExecutor) -> None:
        self.store = store
        self.registry = store.registry
        self.metrics = metrics
        self.pool = pool

    @staticmethod
    def parse(raw: bytes, content_type: str) -> FeaturesRequest:
        ctype = content_type.split(";")[0].strip().lower()
        if ctype not in ("application/json", "") and not ctype.endswith("+json"):
            raise ApiError("invalid_request", f"Content-Type is {content_type!r}; send the body as JSON with header "
                                              f"Content-Type: application/json")
        if not raw.strip():
            raise ApiError("invalid_request", f"the request body is empty (required); send a JSON object like {_EXAMPLE}")
        try:
            # pydantic parses straight from bytes (in Rust): cheaper than json.loads + validate.
            return FeaturesRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise ApiError(*_validation_message(exc)) from None

    async def answer(self, raw: bytes, content_type: str) -> bytes:
        req = self.parse(raw, content_type)
        # The blocking part (checks, the Redis round trip, decoding, JSON) runs on a small dedicated
        # pool: the event loop stays free, a few threads overlap Redis waits, and unlike a big pool
        # (Starlette's 40) they do not fight over the GIL under load.
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.serve, req)

    def serve(self, req: FeaturesRequest) -> bytes:
        resolved = resolve_request(self.registry, req.service, req.features, req.entities)
        as_of = req.as_of
        if as_of is not None and as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=timezone.utc)
        try:
            if req.service is not None:
                result = self.store.get_online_features(entities=resolved.entities, service=req.service, as_of=as_of)
            else:
                result = self.store.get_online_features(entities=resolved.entities, features=resolved.refs,
                                                        as_of=as_of)
        except Exception as exc:
            api = _classify_store_error(exc)
            if api is None:
                raise
            raise api from exc
        columns = [r.column for r in resolved.refs]
        keys = list(resolved.entities)
        ent = resolved.entities
        rows = result.rows
        out_rows = [
            {"entities": {k: ent[k][i] for k in keys},
             "features": {c: {"value": _clean(fv.value), "age_seconds": fv.age_seconds} for c, fv in row.items()}}
            for i, row in enumerate(rows)
        ]
        _observe_ages(resolved.refs, rows, req.service or "", self.metrics)
        body = {"service": req.service, "as_of": _iso(result.as_of), "features": columns, "rows": out_rows}
        return json.dumps(body, default=_json_default, allow_nan=False).encode()

    def error_body(self, kind: str, message: str) -> tuple[int, bytes]:
        self.metrics.errors.labels(kind).inc()
        return _STATUS.get(kind, 500), json.dumps({"error": kind, "message": message}).encode()


async def _read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError("too_many_rows", f"request body is over {limit // (1024 * 1024)} MB; send fewer rows per request")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _Recorder:
    """Latency and status per endpoint; label children cached (labels() costs ~2 us per call)."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics
        self._latency: dict[str, Any] = {}
        self._requests: dict[tuple[str, int], Any] = {}

    def __call__(self, path: str, start: float, status: int) -> None:
        endpoint = path if path in _ENDPOINTS else "other"
        hist = self._latency.get(endpoint)
        if hist is None:
            hist = self._latency[endpoint] = self.metrics.latency.labels(endpoint)
        counter = self._requests.get((endpoint, status))
        if counter is None:
            counter = self._requests[(endpoint, status)] = self.metrics.requests.labels(endpoint, str(status))
        hist.observe(time.perf_counter() - start)
        counter.inc()


class _Timing:
    """ASGI middleware timing every request that goes through FastAPI (all but the fast path)."""

    def __init__(self, app, record: _Recorder) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorded = False

        async def send_and_record(message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start":
                # Recorded before the first byte leaves, so a client that got its answer and then
                # scrapes /metrics always sees this request counted.
                recorded = True
                self.record(scope["path"], start, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except BaseException:
            if not recorded:
                self.record(scope["path"], start, 500)
            raise


class ServingApp(FastAPI):
    """FastAPI with a fast path for POST /v1/features in front of its ASGI stack.

    The fast path skips FastAPI's routing, dependency and middleware layers, which measured about
    0.15 ms of CPU per request here (half of a single-entity read); the FastAPI route with the same
    handler stays for OpenAPI and answers whatever the fast path does not take.
    """

    fp_handler: _FeaturesHandler
    fp_record: _Recorder

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/features" and scope["method"] == "POST":
            await self._fast_features(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _fast_features(self, scope, receive, send) -> None:
        start = time.perf_counter()
        h = self.fp_handler
        try:
            ctype = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), "")
            body = await h.answer(await _read_body(receive, MAX_BODY_BYTES), ctype)
            status = 200
        except (ApiError, ServingInputError) as exc:
            status, body = h.error_body(exc.kind, exc.message)
        except ConnectionError:
            return  # the client went away before sending its body
        except Exception as exc:  # a bug: log it with its traceback, answer 500 with the reason
            _log.exception("POST /v1/features failed")
            status, body = h.error_body("internal", f"internal error: {type(exc).__name__}: {exc}")
        self.fp_record("/v1/features", start, status)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(store: FeatureStore | None = None, read_threads: int | None = None) -> ServingApp:
    """The serving app over `store` (default: FeatureStore() from the environment).

    `read_threads` (default env FP_SERVE_THREADS, else 4) bounds how many feature reads run at once.
    """
    store = store or FeatureStore()
    threads = read_threads or int(os.environ.get("FP_SERVE_THREADS") or DEFAULT_READ_THREADS)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fp-read")
    registry = store.registry
    metrics = ServingMetrics()
    if any(v.kind == "stream" for v in registry.views):
        from feature_platform.streaming.metrics import StreamMetricsCollector

        # Worker heartbeat, lag, events/s, delay and late/too-late/dead-letter counts, read at scrape time.
        metrics.registry.register(StreamMetricsCollector(store.settings, registry))
    handler = _FeaturesHandler(store, metrics, pool)
    registry_doc = json.dumps(registry_document(registry)).encode()
    health: dict[str, redis.Redis] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = ServingApp(title="feature_platform online serving", version="1", lifespan=lifespan,
                     description="Typed online feature retrieval from Redis. See docs/serving.md.")
    app.state.store = store
    app.state.metrics = metrics
    app.fp_handler = handler
    app.fp_record = record = _Recorder(metrics)
    app.add_middleware(_Timing, record=record)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError):
        kind, message = _validation_message(exc)
        return _error_response(metrics, kind, message)

    @app.exception_handler(ApiError)
    async def _on_api_error(request: Request, exc: ApiError):
        return _error_response(metrics, exc.kind, exc.message)

    @app.exception_handler(ServingInputError)
    async def _on_input_error(request: Request, exc: ServingInputError):
        return _error_response(metrics, exc.kind, exc.message)

    @app.post("/v1/features", response_model=FeaturesResponse,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": FeaturesRequest.model_json_schema()}}}},
              responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                         409: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
                         503: {"model": ErrorResponse}})
    async def get_features(request: Request) -> Response:
        """Feature values and ages for entity rows (answered by ServingApp's fast path; same handler)."""
        body = await handler.answer(await request.body(), request.headers.get("content-type", ""))
        return Response(body, media_type="application/json")

    @app.get("/v1/registry")
    def get_registry() -> Response:
        return Response(registry_doc, media_type="application/json")

    @app.get("/healthz", responses={503: {"model": ErrorResponse}})
    def healthz() -> Response:
        try:
            client = health.get("client")
            if client is None:
                client = health["client"] = _health_client(store)
            client.ping()
        except Exception as exc:  # any failure to reach Redis means "not healthy", with the reason
            metrics.errors.labels("redis_unavailable").inc()
            return JSONResponse({"status": "unavailable", "error": "redis_unavailable",
                                 "message": f"Redis is not answering: {exc}"}, status_code=503)
        return JSONResponse({"status": "ok", "redis": "ok"})

    @app.get("/metrics")
    def get_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


def _observe_ages(refs, rows, service: str, metrics: ServingMetrics) -> None:
    """Feed the per-view age histogram and null counter for one response."""
    by_view: dict[tuple[str, int], list[str]] = {}
    for r in refs:
        by_view.setdefault((r.view, r.version), []).append(r.column)
    for (view, version), cols in by_view.items():
        ages = [row[c].age_seconds for row in rows for c in cols]
        present = [a for a in ages if a is not None and a == a]  # drop None and NaN
        n_null = len(ages) - len(present)
        if n_null:
            metrics.missing.labels(view, str(version)).inc(n_null)
        metrics.ages.observe_many(view, version, present)
    metrics.rows.labels(service or "-").inc(len(rows))
