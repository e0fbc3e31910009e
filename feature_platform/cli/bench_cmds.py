"""`feature-platform bench ...`: benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import importlib

import click

BENCHMARKS = {
    "offline": "ingest and point-in-time training sets vs a per-feature range-join baseline",
    "online": "Redis push and reads vs raw redis-py, HTTP latency",
    "stream": "stream worker throughput and produce-to-visible delay vs raw XREADGROUP+XACK",
}


class _LazyBench(click.Group):
    """Imports a benchmark module only when it runs, so `--help` stays fast and one broken
    benchmark cannot take the whole CLI down."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(BENCHMARKS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in BENCHMARKS:
            return None
        try:
            module = importlib.import_module(f"feature_platform.bench.{name}")
            return module.command
        except (ImportError, AttributeError) as exc:
            @click.command(name, help=f"{BENCHMARKS[name]} (unavailable: {exc})")
            def unavailable() -> None:
                raise click.ClickException(f"benchmark {name!r} cannot be loaded: {exc}")

            return unavailable


@click.group(cls=_LazyBench)
def bench() -> None:
    """Measure speed and memory against a naive baseline run in the same process."""
