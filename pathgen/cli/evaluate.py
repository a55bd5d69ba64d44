"""`pathgen eval knn|linear`: frozen-encoder evaluation on labelled image folders or patch stores."""

from pathlib import Path

import typer

from pathgen.cli.app import eval_app

ENCODER_HELP = (
    "An encoder exported by `pathgen pretrain ssl` (encoder.safetensors or its folder), or timm:<name> "
    "for that timm architecture at RANDOM init (the baseline; nothing is downloaded)."
)
TRAIN_HELP = (
    "Labelled training data: an ImageFolder (one sub-folder per class), a CSV with columns path,label "
    "(store -> its slide's class), or labelled stores / folders / globs / a tiling manifest. Repeatable."
)
TEST_HELP = "Labelled test data, as --train. Without it, a seeded stratified split of --train is held out."


def _evaluate(
    method: str,
    encoder: str,
    train: list[str],
    test: list[str] | None,
    img_size: int | None,
    batch_size: int,
    workers: int,
    test_fraction: float,
    seed: int,
    device: str | None,
) -> tuple[dict, tuple]:
    """Resolve the encoder, build the datasets, extract features: (JSON payload's common part, features)."""
    from pathgen import __version__
    from pathgen.data.datasets import build_dataset, dataset_classes, split_stratified
    from pathgen.device import get_device
    from pathgen.eval.encoders import resolve_encoder
    from pathgen.eval.features import encode_splits

    model, transform = resolve_encoder(encoder, img_size=img_size, seed=seed)
    train_set = build_dataset(train, transform=transform)
    if test:
        test_set = build_dataset(test, transform=transform)
    else:
        train_set, test_set = split_stratified(train_set, test_fraction=test_fraction, seed=seed)
    dev = get_device(device)
    train_x, train_y, test_x, test_y = encode_splits(
        model.to(dev), train_set, test_set, batch_size=batch_size, num_workers=workers, device=dev
    )
    payload = {
        "method": method,
        "encoder": encoder,
        "train": [str(s) for s in train],
        "test": [str(s) for s in test] if test else f"stratified {test_fraction:g} split of train (seed {seed})",
        "classes": dataset_classes(train_set),
        "n_train": len(train_y),
        "n_test": len(test_y),
        "feature_dim": int(train_x.shape[1]),
        "pathgen_version": __version__,
    }
    return payload, (train_x, train_y, test_x, test_y)


def _finish(title: str, payload: dict, results: dict, primary: str, out: Path | None) -> None:
    from pathgen.eval.report import print_results, write_json

    payload.update(top1=results[primary]["top1"], balanced_acc=results[primary]["balanced_acc"], primary=primary)
    payload["results"] = results
    print_results(title, results)
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
    from pathgen.eval.knn import knn_classify

    payload, features = _evaluate(
        "knn", encoder, train, test, img_size, batch_size, workers, test_fraction, seed, device
    )
    results = knn_classify(*features, ks=tuple(k), temperature=temperature)
    payload["temperature"] = temperature
    primary = "k=20" if 20 in k else f"k={k[0]}"
    _finish(f"kNN: {encoder}", payload, results, primary, out)


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
    from pathgen.eval.linear import linear_probe

    payload, features = _evaluate(
        "linear", encoder, train, test, img_size, batch_size, workers, test_fraction, seed, device
    )
    results = {"linear": linear_probe(*features, C=c, seed=seed)}
    _finish(f"Linear probe: {encoder}", payload, results, "linear", out)
