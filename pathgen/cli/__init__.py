"""`pathgen` command line. Each module in this package registers its commands on the root app."""

# importing a command module registers its commands
from pathgen.cli import demo, evaluate, features, generate, info, manifest, mil, pack, pretrain, run, tile  # noqa: F401
from pathgen.cli.app import app

__all__ = ["app"]
