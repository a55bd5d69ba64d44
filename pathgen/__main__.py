"""`python -m pathgen ...` — the same CLI as the `pathgen` script (and what torchrun -m launches)."""

from pathgen.cli import app

app()
