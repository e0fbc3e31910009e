"""`feature-platform bench ...`: benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Measure speed and memory against a naive baseline run in the same process."""


def _register() -> None:
    # Each benchmark module exports `command`; imported lazily so `--help` stays fast.
    import importlib

    for name in ("offline", "online", "stream"):
        try:
            module = importlib.import_module(f"feature_platform.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"feature_platform.bench.{name}":
                raise
            continue
        bench.add_command(module.command)


_register()
