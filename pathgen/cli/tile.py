"""CLI commands (being written)."""

from pathgen.cli.app import app  # noqa: F401
