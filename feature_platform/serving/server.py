"""Run the serving app under uvicorn: in the foreground (`feature-platform serve`) or in a
background thread on a free loopback port (tests, benchmarks, notebooks).

The thread runner exists so that tests exercise the real HTTP stack (sockets, uvicorn, FastAPI)
instead of an in-process ASGI client, and can still share one FeatureStore with the test.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from feature_platform.feature_store import FeatureStore


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _config(app, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    # httptools + uvloop when installed ("auto"); no access log: it costs ~10% at high request rates.
    # proxy_headers off: we are not behind a proxy that sets X-Forwarded-*; it saves a layer per request.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          loop="auto", http="auto", lifespan="on", proxy_headers=False)


# The GIL is handed between the event loop and the threadpool running the (blocking) Redis reads.
# With CPython's default 5 ms switch interval a waiting thread can sit out whole 5 ms slices, which
# showed up as a 20-30 ms p99 at 16 concurrent clients; 0.2 ms brought it back to a few ms (see
# docs/benchmarks.md). Only set in processes we own (serve, serve_workers), never in a library call.
SWITCH_INTERVAL_S = 0.0002


def tune_process() -> None:
    sys.setswitchinterval(float(os.environ.get("FP_SERVE_SWITCH_INTERVAL_S") or SWITCH_INTERVAL_S))


def settle_gc() -> None:
    """After start-up: move every object alive now out of the collector's sight (gc.freeze) and
    collect young objects less often. A request allocates a few hundred short-lived dicts and lists;
    with the default thresholds the collector ran every few requests and scanned the app's
    long-lived objects too. Measured here: 1-client p99 from 2.7-5.2 ms down to 1.0-1.1 ms."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def worker_app():
    """uvicorn factory for worker processes: tune the process, then build the app from the env."""
    from feature_platform.serving.http import create_app

    tune_process()
    app = create_app()
    settle_gc()
    return app


def serve(store: FeatureStore | None = None, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Block serving the app until interrupted (Ctrl-C / SIGTERM, handled by uvicorn)."""
    from feature_platform.serving.http import create_app

    tune_process()
    app = create_app(store)
    settle_gc()
    uvicorn.Server(_config(app, host, port, log_level)).run()


def serve_workers(host: str, port: int, workers: int, log_level: str = "info") -> None:
    """Several uvicorn worker processes; each builds its own FeatureStore from the environment."""
    uvicorn.run("feature_platform.serving.server:worker_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False, proxy_headers=False)


@dataclass
class ServerThread:
    """A uvicorn server in a daemon thread; use as a context manager or call start()/stop()."""

    store: FeatureStore | None = None
    host: str = "127.0.0.1"
    port: int = 0
    _server: uvicorn.Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "ServerThread":
        from feature_platform.serving.http import create_app

        if not self.port:
            self.port = free_port(self.host)
        self._server = uvicorn.Server(_config(create_app(self.store), self.host, self.port))
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"uvicorn on {self.url} exited during start-up (port taken?)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn on {self.url} did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
