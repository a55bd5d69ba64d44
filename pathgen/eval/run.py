"""One evaluation from encoder spec and data sources to a JSON-ready result: what `pathgen eval` and the demo run."""

from collections.abc import Sequence
from pathlib import Path

from pathgen.eval.knn import KS

METHODS = ("knn", "linear")


def evaluate_encoder(
    method: str,
    encoder: str,
    train: Sequence[str | Path],
    test: Sequence[str | Path] | None = None,
    **options,
) -> dict:
    """Frozen-feature kNN or linear-probe evaluation of `encoder` (see `resolve_encoder` for the specs).

    Without `test`, a seeded stratified split of `train` is held out, by slide (by case where a labelled CSV
    gives case_id), so no slide is on both sides. Returns the provenance (encoder, data,
    classes, sizes, pathgen version), "results" ({"k=20": {"top1", "balanced_acc", ...}, ...} or
    {"linear": {...}}) and the primary setting's "top1"/"balanced_acc" at the top level. `options`: those of
    `evaluate_methods`.
    """
    return evaluate_methods((method,), encoder, train, test, **options)[method]


def evaluate_methods(
    methods: Sequence[str],
    encoder: str,
    train: Sequence[str | Path],
    test: Sequence[str | Path] | None = None,
    *,
    img_size: int | None = None,
    ks: Sequence[int] = KS,
    temperature: float = 0.07,
    C: float | None = None,
    batch_size: int = 64,
    workers: int = 0,
    test_fraction: float = 0.3,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    bar=None,
) -> dict[str, dict]:
    """{method: what `evaluate_encoder` returns for it}, the images encoded once for all of `methods`.
    `bar`: a progress bar of the caller's that counts the encoded images (see `extract_features`)."""
    from pathgen import __version__
    from pathgen.data.datasets import build_dataset, dataset_classes, split_stratified
    from pathgen.eval.encoders import resolve_encoder
    from pathgen.eval.features import encode_splits
    from pathgen.runtime.device import get_device

    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown evaluation method {method!r}; expected one of {METHODS}")
    model, transform = resolve_encoder(encoder, img_size=img_size, seed=seed)
    train_set = build_dataset(list(train), transform=transform)
    if test:
        test_set = build_dataset(list(test), transform=transform)
    else:
        train_set, test_set = split_stratified(train_set, test_fraction=test_fraction, seed=seed)
    dev = get_device(device)
    train_x, train_y, test_x, test_y = encode_splits(
        model.to(dev), train_set, test_set, batch_size=batch_size, num_workers=workers, device=dev, progress=progress,
        bar=bar,
    )
    provenance = {
        "encoder": encoder,
        "train": [str(s) for s in train],
        "test": [str(s) for s in test] if test else f"stratified {test_fraction:g} split by slide (seed {seed})",
        "classes": dataset_classes(train_set),
        "n_train": len(train_y),
        "n_test": len(test_y),
        "feature_dim": int(train_x.shape[1]),
        "pathgen_version": __version__,
    }
    payloads = {}
    for method in methods:
        payload = {"method": method, **provenance}
        if method == "knn":
            from pathgen.eval.knn import knn_classify

            results = knn_classify(train_x, train_y, test_x, test_y, ks=ks, temperature=temperature)
            primary = "k=20" if 20 in ks else f"k={ks[0]}"
            payload["temperature"] = temperature
        else:
            from pathgen.eval.linear import linear_probe

            results = {"linear": linear_probe(train_x, train_y, test_x, test_y, C=C, seed=seed)}
            primary = "linear"
        payload.update(primary=primary, top1=results[primary]["top1"], balanced_acc=results[primary]["balanced_acc"])
        payload["results"] = results
        payloads[method] = payload
    return payloads
