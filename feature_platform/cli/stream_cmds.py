"""CLI commands of this area (filled in by its owner)."""

from __future__ import annotations

import click

commands: list[click.Command] = []
