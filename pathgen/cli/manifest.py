"""`pathgen manifest merge OUT`: one manifest.csv (and summary.txt) from the shard manifests of an array job."""

from pathlib import Path

import typer

from pathgen.cli.app import app

manifest_app = typer.Typer(help="Tiling manifests: merge an array job's shard manifests.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")


@manifest_app.command("merge")
def merge(
    out: Path = typer.Argument(..., help="The tiling output folder holding manifest.shard-I-of-N.csv files.",
                               show_default=False),
) -> None:  # fmt: skip
    """Combine manifest.shard-I-of-N.csv (every I of N, from `pathgen tile --shard I/N`) into manifest.csv.

    Fails, writing nothing, while a shard's manifest is missing or when shards of two different array sizes are
    there. The merged manifest lists every slide once, with the slide list's extra columns, and summary.txt sums
    the shards up.
    """
    from pathgen.store.manifest import merge_manifests, summary_path

    manifest = merge_manifests(out)
    typer.echo(summary_path(manifest).read_text(encoding="utf-8"), nl=False)
    typer.echo(f"manifest: {manifest}")
