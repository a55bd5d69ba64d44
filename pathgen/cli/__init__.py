"""`pathgen` command line. Each module in this package registers its commands on the root app."""

from pathgen.cli import demo, evaluate, generate, info, pretrain, run, tile  # noqa: F401  (importing registers the commands)
from pathgen.cli.app import app

__all__ = ["app"]
