"""The console table of a MIL run: one row per fold, mean ± std, and the pooled value with its bootstrap CI; and
the comparison of several encoders' runs."""

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pathgen.mil.metrics import METRICS

HEADERS = {"accuracy": "acc", "balanced_accuracy": "bal. acc", "f1_macro": "macro F1", "auc": "AUC",
           "auprc": "AUPRC", "qwk": "QWK"}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def metrics_table(result: dict, title: str = "MIL") -> Table:
    table = Table(title=title)
    table.add_column("run")
    table.add_column("n test", justify="right")
    for name in METRICS:
        table.add_column(HEADERS[name], justify="right")
    seeded = len({r["seed"] for r in result["folds"]}) > 1
    for run in result["folds"]:
        label = f"fold {run['fold']}" + (f" seed {run['seed']}" if seeded else "")
        table.add_row(label, str(run["n_test"]), *(_fmt(run[m]) for m in METRICS))
    s = result["summary"]
    table.add_row("mean ± std", "", *(f"{_fmt(s[m]['mean'])} ± {_fmt(s[m]['std'])}" for m in METRICS), style="bold")
    table.add_row("pooled [95% CI]", "", *(f"{_fmt(s[m]['pooled'])} [{_fmt(s[m]['ci95'][0])}, {_fmt(s[m]['ci95'][1])}]"
                                           for m in METRICS))
    return table


def print_metrics(result: dict, title: str = "MIL", console: Console | None = None) -> None:
    (console or Console()).print(metrics_table(result, title))


def compare_results(metrics: dict[str, str | Path]) -> dict:
    """Several encoders' MIL runs (name -> metrics.json) side by side: per encoder, each metric's mean ± std over
    folds and pooled value with its CI, and whether every run was tested on the same splits (splits.csv beside
    each metrics.json), without which the numbers are not paired."""
    rows, splits = [], set()
    for name, path in metrics.items():
        path = Path(path)
        result = json.loads(path.read_text(encoding="utf-8"))
        split_file = path.with_name("splits.csv")
        splits.add(split_file.read_text(encoding="utf-8") if split_file.is_file() else str(split_file))
        n_test = sum(run["n_test"] for run in result["folds"])
        rows.append({"encoder": name, "metrics": str(path), "n_test": n_test,
                     **{m: result["summary"][m] for m in METRICS}})
    return {"rows": rows, "same_splits": len(splits) == 1, "metrics": list(METRICS)}


def comparison_table(table: dict) -> Table:
    """Two rows per encoder: each metric's mean ± std over folds, then its pooled out-of-fold value."""
    note = "same splits" if table["same_splits"] else "DIFFERENT splits: not paired"
    out = Table(title=f"MIL by encoder ({note})")
    out.add_column("encoder")
    out.add_column("")
    for name in table["metrics"]:
        out.add_column(HEADERS[name], justify="right")
    for row in table["rows"]:
        out.add_row(row["encoder"], "mean ± std",
                    *(f"{_fmt(row[m]['mean'])} ± {_fmt(row[m]['std'])}" for m in table["metrics"]))
        out.add_row("", "pooled", *(_fmt(row[m]["pooled"]) for m in table["metrics"]), end_section=True)
    return out
