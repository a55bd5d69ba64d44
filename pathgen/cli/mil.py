"""`pathgen mil train|predict|heatmap`: slide-level MIL classifiers on `pathgen extract-features` output."""

from pathlib import Path

import typer

from pathgen.cli.app import mil_app

Features = typer.Option(..., "--features", "-f", help="A features_<NAME>/ folder of <slide>.h5 files.")
Device = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: CUDA if present).")


@mil_app.command("train")
def train(
    features: Path = Features,
    labels: Path = typer.Option(..., "--labels", "-l", help="CSV with slide_id,label and optionally case_id, or "
                                "the tiling manifest of a labelled slide list."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (metrics.json, predictions.csv, models/)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config, e.g. configs/mil/panda_abmil.yaml."),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides, e.g. train.epochs=20 train.lr=1e-4."),
    folds: int | None = typer.Option(None, "--folds", help="Stratified, case-grouped K-fold CV (cv.folds)."),
    splits: Path | None = typer.Option(None, "--splits", help="Reuse a splits.csv (slide_id,fold,split)."),
    seeds: int | None = typer.Option(
        None, "--seeds", help="Seeded runs per fold; without --folds/--splits: on one held-out split (cv.folds=1)."
    ),
    model: str | None = typer.Option(None, "--model", "-m", help="abmil, transmil or meanpool (model.name)."),
    device: str | None = Device,
) -> None:
    """Cross-validated MIL: per fold, class-weighted AdamW with early stopping; out-of-fold metrics with CIs.

    Prints a table of accuracy, balanced accuracy, macro F1, AUC, AUPRC and QWK per fold, mean ± std, and the
    pooled out-of-fold value with its bootstrap 95% CI; writes OUT/metrics.json, predictions.csv, splits.csv
    and one safetensors model per fold.

    Example: pathgen mil train -f feats/features_dino -l labels.csv -o runs/mil --folds 5 --model abmil
    """
    from pathgen.config import load_config
    from pathgen.mil.config import MILConfig
    from pathgen.mil.train import train_mil

    overrides = list(overrides or [])
    if seeds is not None and folds is None and splits is None:
        overrides.append("cv.folds=1")  # the BRIGHT protocol: repeated seeds on one held-out split
    if device is not None:
        overrides.append(f"run.device={device}")
    cfg = load_config(MILConfig, config, overrides)
    train_mil(features, labels, out, cfg, folds=folds, seeds=seeds, splits=splits, model=model)
    typer.echo(f"wrote {out / 'metrics.json'}")


@mil_app.command("predict")
def predict(
    model: Path = typer.Option(..., "--model", "-m", help="A `pathgen mil train` output folder (or one model)."),
    features: Path = Features,
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="CSV of per-slide probabilities."),
    device: str | None = Device,
) -> None:
    """Per-slide class probabilities: the mean over the run's fold models.

    Example: pathgen mil predict --model runs/mil --features feats/features_dino --out new_slides.csv
    """
    from pathgen.mil.predict import predict_mil

    rows = predict_mil(model, features, out, device=device)
    typer.echo(f"wrote {len(rows)} slide(s) to {out}")


@mil_app.command("heatmap")
def heatmap(
    model: Path = typer.Option(..., "--model", "-m", help="A `pathgen mil train` output folder (or one model)."),
    features: Path = Features,
    slide: str = typer.Option(..., "--slide", "-s", help="Slide id (its feature file's name without .h5)."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write."),
    slide_root: Path | None = typer.Option(None, "--slide-root", help="Find the slide file here (by name)."),
    max_side: int = typer.Option(1024, "--max-side", help="Long side of the thumbnail in pixels."),
    device: str | None = Device,
) -> None:
    """Per-patch attention on the slide thumbnail, with a colour bar and the predicted probability.

    Example: pathgen mil heatmap --model runs/mil --features feats/features_dino --slide slide_003 --out h.png
    """
    from pathgen.mil.heatmap import mil_heatmap

    info = mil_heatmap(model, features, slide, out, slide_root=slide_root, max_side=max_side, device=device)
    typer.echo(f"wrote {info['png']}: predicted {info['pred']}")
