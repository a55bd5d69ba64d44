"""`pathgen eval knn|linear|compare`: frozen-encoder evaluation on labelled image folders or patch stores."""

from pathlib import Path
from typing import Annotated

import typer

from pathgen.cli.app import eval_app

# Options both evaluations share, declared once.
Encoder = Annotated[str, typer.Option(
    "--encoder", "-e", show_default=False,
    help="An encoder exported by `pathgen pretrain ssl` (encoder.safetensors or its folder); random:<that path> "
    "for its architecture at RANDOM init (the fair baseline); or timm:<name> for a timm architecture at random "
    "init. Nothing is downloaded.",
)]
Train = Annotated[list[str], typer.Option(
    "--train", show_default=False,
    help="Labelled training data: an ImageFolder (one sub-folder per class), a CSV with columns path,label[,case_id] "
    "(store -> its slide's class), or labelled stores / folders / globs / a tiling manifest. Repeatable.",
)]
Test = Annotated[list[str] | None, typer.Option(
    "--test", show_default=False,
    help="Labelled test data, as --train. Without it, a seeded stratified split of --train is held out by "
    "slide (by case when a labelled CSV has a case_id column), so no slide lands on both sides.",
)]
ImgSize = Annotated[int | None, typer.Option("--img-size", help="Input size (default: the encoder's own).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")]
Workers = Annotated[int, typer.Option("--workers", "-j", help="DataLoader worker processes.")]
TestFraction = Annotated[float, typer.Option(
    "--test-fraction", help="Held-out fraction of the slides (cases, images) when --test is omitted.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the split, the CV folds and of random/timm init.")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: CUDA if present).")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Write the results as JSON here.")]


def _evaluate(title: str, method: str, encoder: str, train: list[str], test: list[str] | None, out: Path | None,
              **options) -> None:
    from pathgen.eval.report import print_results, write_json
    from pathgen.eval.run import evaluate_encoder

    payload = evaluate_encoder(method, encoder, train, test, **options)
    print_results(f"{title}: {encoder}", payload["results"])
    if out is not None:
        typer.echo(f"wrote {write_json(out, payload)}")


@eval_app.command("knn")
def knn(
    encoder: Encoder,
    train: Train,
    test: Test = None,
    k: Annotated[list[int], typer.Option("--k", help="Neighbour counts (repeatable); k=20 is primary.")] = [  # noqa: B006
        10, 20, 100, 200,
    ],
    temperature: Annotated[float, typer.Option("--temperature", help="Vote weight exp(similarity / T).")] = 0.07,
    img_size: ImgSize = None,
    batch_size: BatchSize = 64,
    workers: Workers = 0,
    test_fraction: TestFraction = 0.3,
    seed: Seed = 0,
    device: Device = None,
    out: Out = None,
) -> None:
    """Weighted k-NN accuracy of frozen features, as DINO reports it (cosine similarity, T = 0.07).

    Prints top-1 and balanced accuracy per k (clipped to the training set size) and optionally writes JSON.

    Example: pathgen eval knn --encoder runs/ssl/encoder.safetensors --train patches/ --img-size 64
    """
    _evaluate("kNN", "knn", encoder, train, test, out, ks=tuple(k), temperature=temperature, img_size=img_size,
              batch_size=batch_size, workers=workers, test_fraction=test_fraction, seed=seed, device=device)


@eval_app.command("linear")
def linear(
    encoder: Encoder,
    train: Train,
    test: Test = None,
    c: Annotated[float | None, typer.Option(
        "--C", help="Inverse L2 regularisation; default: chosen by stratified CV on the training set.")] = None,
    img_size: ImgSize = None,
    batch_size: BatchSize = 64,
    workers: Workers = 0,
    test_fraction: TestFraction = 0.3,
    seed: Seed = 0,
    device: Device = None,
    out: Out = None,
) -> None:
    """Linear-probe accuracy: logistic regression on standardised frozen features.

    Prints top-1 and balanced accuracy and optionally writes JSON.

    Example: pathgen eval linear --encoder timm:vit_small_patch16_224 --train patches/ --img-size 64
    """
    _evaluate("Linear probe", "linear", encoder, train, test, out, C=c, img_size=img_size, batch_size=batch_size,
              workers=workers, test_fraction=test_fraction, seed=seed, device=device)


@eval_app.command("compare")
def compare(
    encoders: Annotated[list[str], typer.Argument(
        show_default=False, help="Encoders to compare, as --encoder of `eval knn` takes them (exported encoders, "
        "random:<path>, timm:<name>).")],
    train: Train,
    test: Test = None,
    k: Annotated[int, typer.Option("--k", help="Neighbours of the kNN classifier (DINO's 20).")] = 20,
    img_size: ImgSize = None,
    batch_size: BatchSize = 64,
    workers: Workers = 0,
    test_fraction: TestFraction = 0.3,
    seed: Seed = 0,
    device: Device = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Write the table to OUT.json (with every run's full results) and OUT.csv.")] = Path(
        "compare"),
) -> None:
    """kNN and linear-probe accuracy of several frozen encoders on the same data, as one table.

    The same data, split and seed for every encoder: Gen-SIS's Table 1 comparison on your own data.

    Example: pathgen eval compare runs/ssl runs/gensis random:runs/ssl --train patches/ --img-size 64 --out cmp
    """
    from rich.console import Console

    from pathgen.eval.compare import compare_encoders, comparison_table, write_table

    table = compare_encoders(encoders, train, test, k=k, img_size=img_size, batch_size=batch_size, workers=workers,
                             test_fraction=test_fraction, seed=seed, device=device)
    Console().print(comparison_table(table))
    json_path, csv_path = write_table(table, out)
    typer.echo(f"wrote {json_path} and {csv_path}")
