"""`feature-platform online get` against real Redis: values from the brute-force reference, and
bad input that exits 2 with a message naming the key."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from feature_platform.cli import main
from feature_platform.feature_store import FeatureStore
from feature_platform_tests.test_serving_http import expected, load_world


@pytest.fixture
def env(settings):
    return {"FP_DATA_DIR": str(settings.data_dir), "FP_REDIS_URL": settings.redis_url,
            "FP_KEY_PREFIX": settings.key_prefix, "FP_REGISTRY": "feature_platform.registry.demo:build_registry"}


@pytest.fixture
def world(settings, registry):
    return load_world(FeatureStore(settings, registry))


def run(env, *args):
    return CliRunner().invoke(main, ["online", "get", *args], env=env, catch_exceptions=False)


def test_online_get_json_equals_brute_force(env, world, registry):
    r = run(env, "--service", "fraud_detection", "--entity", "user_id=42", "--entity", "merchant_id=7",
            "--entity", "user_id=43", "--entity", "merchant_id=8", "--as-of", world.as_of.isoformat(), "--json")
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)
    refs = list(registry.service("fraud_detection").features)
    assert body["features"] == [ref.column for ref in refs]
    assert [row["entities"] for row in body["rows"]] == [{"user_id": 42, "merchant_id": 7},
                                                         {"user_id": 43, "merchant_id": 8}]
    nonnull = 0
    for row in body["rows"]:
        for ref in refs:
            key = row["entities"][registry.view(ref.view, ref.version).entity.join_key]
            want, want_age = expected(world, registry, ref, key)
            got = row["features"][ref.column]
            if want is None:
                assert got["value"] is None, (ref, got)
            else:
                assert math.isclose(got["value"], want, rel_tol=1e-9, abs_tol=1e-9), (ref, got, want)
                nonnull += 1
            assert (got["age_seconds"] is None) == (want_age is None)
    assert nonnull > 10


def test_online_get_human_output_names_every_feature_and_as_of(env, world, registry):
    r = run(env, "--service", "fraud_detection", "--entity", "user_id=42", "--entity", "merchant_id=7",
            "--as-of", world.as_of.isoformat())
    assert r.exit_code == 0, r.output
    assert r.output.startswith("as_of ")
    assert "user_id=42 merchant_id=7" in r.output
    for ref in registry.service("fraud_detection").features:
        assert ref.column in r.output
    # The pushed batch row of user 42 is shown with its value.
    line = next(x for x in r.output.splitlines() if "user_daily_profile__txn_count_7d" in x)
    assert line.split()[1] == "12" and "age" in line


@pytest.mark.parametrize("args,fragment", [
    (["--service", "fraud_detection", "--entity", "user_id=abc", "--entity", "merchant_id=7"],
     "entities.user_id[0] = 'abc'"),
    (["--service", "fraud_detection", "--entity", "user_id=4.5", "--entity", "merchant_id=7"], "user_id"),
    (["--service", "fraud_detection", "--entity", "user_id=42"], "missing key(s) ['merchant_id']"),
    (["--service", "fraud_detection", "--entity", "user_id42", "--entity", "merchant_id=7"], "KEY=VALUE"),
    (["--service", "nope", "--entity", "user_id=42"], "unknown feature service 'nope'"),
    (["--feature", "user_txn_stats:v1:nope", "--entity", "user_id=42"], "no feature 'nope'"),
])
def test_online_get_bad_input_exits_2_with_a_clear_message(env, args, fragment):
    r = CliRunner().invoke(main, ["online", "get", *args], env=env)
    assert r.exit_code == 2, r.output
    assert fragment in r.output


def test_online_get_redis_down_exits_3(env, private_redis):
    env = {**env, "FP_REDIS_URL": private_redis.url}
    private_redis.stop()
    r = CliRunner().invoke(main, ["online", "get", "--service", "fraud_detection", "--entity", "user_id=1",
                                  "--entity", "merchant_id=2"], env=env)
    assert r.exit_code == 3, r.output
    assert "not reachable" in r.output


def test_serve_command_answers_over_http(env, world, registry):
    """`feature-platform serve` as a real child process (its own process group, killed at the end)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from feature_platform.serving.server import free_port
    from feature_platform_tests.test_serving_http import assert_rows_match

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "feature_platform.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env={**os.environ, **env}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        entities = {"user_id": [42, 44], "merchant_id": [8, 7]}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/features", timeout=30,
                       json={"service": "fraud_detection", "entities": entities, "as_of": world.as_of.isoformat()})
        assert r.status_code == 200, r.text
        assert_rows_match(r.json(), world, registry, list(registry.service("fraud_detection").features), entities)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
