"""`pathgen info`: what a slide is, how big, which levels, and which resolution pathgen will use."""

import sys
from pathlib import Path

import typer

from pathgen.cli.app import app


def _describe(slide) -> dict[str, str]:
    w, h = slide.dimensions
    levels = ", ".join(
        f"{i}: {lw}x{lh} (/{ds:g})"
        for i, ((lw, lh), ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples, strict=True))
    )
    power = f"{slide.objective_power:g}x" if slide.objective_power else "-"
    return {
        "format": slide.format,
        "dimensions": f"{w} x {h}",
        "levels": levels,
        "mpp": f"{slide.mpp:.4g} ({slide.mpp_source})",
        "objective": power,
        "reader": slide.reader,
    }


@app.command()
def info(
    slides: list[Path] = typer.Argument(..., help="Slide or image files to describe.", show_default=False),
    slide_mpp: float | None = typer.Option(
        None, "--slide-mpp", help="Level-0 microns per pixel for slides that record neither an mpp nor a power."
    ),
    mpp: float | None = typer.Option(None, "--mpp", help="Level-0 microns per pixel overriding what slides record."),
    reader: str = typer.Option(
        "auto", "--reader", help="Slide reader: auto, tifffile, openslide or tiatoolbox (see `pathgen tile --help`)."
    ),
) -> None:
    """Print each slide's format, dimensions, pyramid levels (with downsamples), mpp with its source, objective
    power and the reader that decodes its pixels (a `notice:` line says why when auto fell back to OpenSlide).

    The mpp source is 'override' (--mpp), 'metadata', 'objective-power' (10 / power) or 'fallback' (--slide-mpp,
    used as in `pathgen tile`: only where the slide records neither). A slide that
    cannot be opened gets a one-line error; the others are still shown, and the exit status is 1.
    """
    from rich.console import Console
    from rich.table import Table

    from pathgen.errors import SlideError
    from pathgen.slide import open_slide

    table = Table("slide", "format", "dimensions", "levels", "mpp (source)", "objective", "reader")
    failed, notices = [], []
    for path in slides:
        try:
            with open_slide(path, reader=reader, mpp=mpp, fallback_mpp=slide_mpp) as slide:
                d = _describe(slide)
                if slide.reader_notice:
                    notices.append(f"notice: {path}: {slide.reader_notice}")
        except SlideError as err:
            failed.append(str(err))
            continue
        table.add_row(str(path), *d.values())
    if table.row_count:
        Console(width=None if sys.stdout.isatty() else 200).print(table)  # no wrapping when piped
    for msg in notices:
        typer.echo(msg, err=True)
    for msg in failed:
        typer.echo(f"error: {msg}", err=True)
    if failed:
        raise typer.Exit(1)
