"""The root typer app and its command groups; the command modules register onto these."""

import typer
from typer.core import TyperGroup

from pathgen.errors import PathgenError


class _OneLineErrors(TyperGroup):
    """Print a PathgenError raised by any command as one line on stderr and exit with status 1.

    User errors (a bad file, a bad config) deserve a sentence, not a traceback; bugs still get one.
    """

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except PathgenError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    name="pathgen",
    cls=_OneLineErrors,
    help="Whole-slide-image tiling and Gen-SIS self-supervised learning for computational pathology.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
pretrain_app = typer.Typer(
    help="Pretrain models: DINO (ssl), the embedding-conditioned diffusion model (diffusion), Gen-DINO (gensis).",
    no_args_is_help=True,
)
eval_app = typer.Typer(help="Evaluate frozen encoders on labelled patches or image folders.", no_args_is_help=True)
mil_app = typer.Typer(
    help="Slide-level multiple-instance learning on patch features: train (cross-validated), predict, heatmap.",
    no_args_is_help=True,
)
app.add_typer(pretrain_app, name="pretrain")
app.add_typer(eval_app, name="eval")
app.add_typer(mil_app, name="mil")


def _print_version(value: bool) -> None:
    if value:
        from pathgen import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the pathgen version and exit."
    ),
) -> None:
    """Whole-slide-image tiling and Gen-SIS self-supervised learning for computational pathology."""
