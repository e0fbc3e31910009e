"""`feature-platform`: one entry point for ingest, training sets, online reads, streaming,
Dagster backfills and benchmarks. Each command module owns one area and exports `commands`."""

from __future__ import annotations

import click

from feature_platform.cli import bench_cmds, dagster_cmds, offline_cmds, online_cmds, stream_cmds


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """feature_platform: define features once, serve them offline (DuckDB) and online (Redis).

    Configuration comes from the environment: FP_DATA_DIR (default ./data), FP_REDIS_URL
    (default: an embedded Redis under the data dir), FP_REGISTRY (default: the demo repo).
    """


for _module in (offline_cmds, online_cmds, stream_cmds, dagster_cmds):
    for _cmd in _module.commands:
        main.add_command(_cmd)
main.add_command(bench_cmds.bench)
