"""Run the serving app under uvicorn: in the foreground (`feature-platform serve`) or in a
background thread on a free loopback port (tests, benchmarks, notebooks).

The thread runner exists so that tests exercise the real HTTP stack (sockets, uvicorn, FastAPI)
instead of an in-process ASGI client, and can still share one FeatureStore with the test.
"""

from __future__ import annotations

import socket
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
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          loop="auto", http="auto", lifespan="on")


def serve(store: FeatureStore | None = None, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Block serving the app until interrupted (Ctrl-C / SIGTERM, handled by uvicorn)."""
    from feature_platform.serving.http import create_app

    uvicorn.Server(_config(create_app(store), host, port, log_level)).run()


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
