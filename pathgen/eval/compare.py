"""Several encoders on the same labelled data: one table of kNN and linear-probe results (Gen-SIS's Table 1).

    table = compare_encoders(["runs/ssl", "runs/gensis", "random:runs/ssl"], train=["patches/"])
    write_table(table, "compare")          # compare.json (with every run's full results) and compare.csv

Each encoder's images are encoded once (`pathgen.eval.run.evaluate_methods`) and scored by kNN and by the linear
probe, with the same data, split and seed for every encoder, so the rows differ by the encoder only.
"""

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

COLUMNS = ("encoder", "knn_top1", "knn_balanced_acc", "linear_top1", "linear_balanced_acc", "feature_dim", "n_train",
           "n_test")


def compare_encoders(
    encoders: Sequence[str],
    train: Sequence[str | Path],
    test: Sequence[str | Path] | None = None,
    *,
    k: int = 20,
    img_size: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    test_fraction: float = 0.3,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """{"rows": one dict of COLUMNS per encoder (accuracies as fractions), "k", the data, "runs": the full
    evaluate_encoder payloads by encoder and method}. One progress display counts the images of all encoders."""
    from pathgen import __version__
    from pathgen.eval.run import evaluate_methods
    from pathgen.runtime.progress import progress_bar

    bar = progress_bar(desc="compare", unit="img", disable=not progress)
    options = dict(img_size=img_size, batch_size=batch_size, workers=workers, test_fraction=test_fraction, seed=seed,
                   device=device, progress=progress, bar=bar)
    rows, runs = [], {}
    with bar:
        for i, encoder in enumerate(encoders):
            bar.set_postfix_str(f"encoder {i + 1}/{len(encoders)}", refresh=False)
            knn, linear = evaluate_methods(("knn", "linear"), encoder, train, test, ks=(k,), **options).values()
            runs[encoder] = {"knn": knn, "linear": linear}
            rows.append({"encoder": encoder, "knn_top1": knn["top1"], "knn_balanced_acc": knn["balanced_acc"],
                         "linear_top1": linear["top1"], "linear_balanced_acc": linear["balanced_acc"],
                         "feature_dim": knn["feature_dim"], "n_train": knn["n_train"], "n_test": knn["n_test"]})
    first = runs[encoders[0]]["knn"] if encoders else {}
    return {"k": k, "train": [str(s) for s in train], "test": first.get("test"), "classes": first.get("classes"),
            "seed": seed, "pathgen_version": __version__, "rows": rows, "runs": runs}


def comparison_table(table: dict) -> Table:
    """The rows as a rich table, accuracies in percent."""
    out = Table(title=f"kNN (k={table['k']}) and linear probe, {table['rows'][0]['n_test']} test images"
                if table["rows"] else "no encoders")
    for name in ("encoder", "kNN top-1 %", "kNN bal. acc %", "linear top-1 %", "linear bal. acc %"):
        out.add_column(name, justify="left" if name == "encoder" else "right", overflow="fold")
    for row in table["rows"]:
        out.add_row(row.get("name", row["encoder"]), *(f"{100 * row[c]:.2f}" for c in COLUMNS[1:5]))
    return out


def write_table(table: dict, stem: str | Path) -> tuple[Path, Path]:
    """<stem>.json (everything) and <stem>.csv (the rows), each written atomically."""
    from pathgen.eval.report import write_json

    stem = Path(stem)
    json_path = write_json(stem.with_name(stem.name + ".json"), table)
    csv_path = stem.with_name(stem.name + ".csv")
    tmp = csv_path.with_name(f"{csv_path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        named = any("name" in row for row in table["rows"])  # display names, as a pipeline step gives them
        writer = csv.DictWriter(f, fieldnames=["name", *COLUMNS] if named else COLUMNS)
        writer.writeheader()
        writer.writerows(table["rows"])
    os.replace(tmp, csv_path)
    return json_path, csv_path
