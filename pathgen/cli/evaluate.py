"""`pathgen eval knn|linear`: frozen-encoder evaluation on labelled image folders or patch stores."""

from pathlib import Path

import typer

from pathgen.cli.app import eval_app

ENCODER_HELP = (
    "An encoder exported by `pathgen pretrain ssl` (encoder.safetensors or its folder); random:<that path> for "
    "its architecture at RANDOM init (the fair baseline); or timm:<name> for a timm architecture at random init. "
    "Nothing is downloaded."
)
TRAIN_HELP = (
    "Labelled training data: an ImageFolder (one sub-folder per class), a CSV with columns path,label "
    "(store -> its slide's class), or labelled stores / folders / globs / a tiling manifest. Repeatable."
)
TEST_HELP = "Labelled test data, as --train. Without it, a seeded stratified split of --train is held out."


def _report(title: str, payload: dict, out: Path | None) -> None:
    from pathgen.eval.report import print_results, write_json

    print_results(title, payload["results"])
    if out is not None:
        typer.echo(f"wrote {write_json(out, payload)}")


@eval_app.command("knn")
def knn(
    encoder: str = typer.Option(..., "--encoder", "-e", help=ENCODER_HELP, show_default=False),
    train: list[str] = typer.Option(..., "--train", help=TRAIN_HELP, show_default=False),
    test: list[str] | None = typer.Option(None, "--test", help=TEST_HELP, show_default=False),
    k: list[int] = typer.Option([10, 20, 100, 200], "--k", help="Neighbour counts (repeatable); k=20 is primary."),
    temperature: float = typer.Option(0.07, "--temperature", help="Vote weight exp(similarity / T)."),
    img_size: int | None = typer.Option(None, "--img-size", help="Input size (default: the encoder's own)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(0, "--workers", "-j", help="DataLoader worker processes."),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="Held-out fraction when --test is omitted."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/test split and of timm: random init."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: CUDA if present)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the results as JSON here."),
) -> None:
    """Weighted k-NN accuracy of frozen features, as DINO reports it (cosine similarity, T = 0.07).

    Prints top-1 and balanced accuracy per k (clipped to the training set size) and optionally writes JSON.

    Example: pathgen eval knn --encoder runs/ssl/encoder.safetensors --train patches/ --img-size 64
    """
    from pathgen.eval.run import evaluate_encoder

    payload = evaluate_encoder(
        "knn",
        encoder,
        train,
        test,
        img_size=img_size,
        ks=tuple(k),
        temperature=temperature,
        batch_size=batch_size,
        workers=workers,
        test_fraction=test_fraction,
        seed=seed,
        device=device,
    )
    _report(f"kNN: {encoder}", payload, out)


@eval_app.command("linear")
def linear(
    encoder: str = typer.Option(..., "--encoder", "-e", help=ENCODER_HELP, show_default=False),
    train: list[str] = typer.Option(..., "--train", help=TRAIN_HELP, show_default=False),
    test: list[str] | None = typer.Option(None, "--test", help=TEST_HELP, show_default=False),
    c: float | None = typer.Option(
        None, "--C", help="Inverse L2 regularisation; default: chosen by stratified CV on the training set."
    ),
    img_size: int | None = typer.Option(None, "--img-size", help="Input size (default: the encoder's own)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(0, "--workers", "-j", help="DataLoader worker processes."),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="Held-out fraction when --test is omitted."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the CV folds and of timm: random init."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: CUDA if present)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the results as JSON here."),
) -> None:
    """Linear-probe accuracy: logistic regression on standardised frozen features.

    Prints top-1 and balanced accuracy and optionally writes JSON.

    Example: pathgen eval linear --encoder timm:vit_small_patch16_224 --train patches/ --img-size 64
    """
    from pathgen.eval.run import evaluate_encoder

    payload = evaluate_encoder(
        "linear",
        encoder,
        train,
        test,
        img_size=img_size,
        C=c,
        batch_size=batch_size,
        workers=workers,
        test_fraction=test_fraction,
        seed=seed,
        device=device,
    )
    _report(f"Linear probe: {encoder}", payload, out)
