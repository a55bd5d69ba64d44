"""The console table of a MIL run: one row per fold, mean ± std, and the pooled value with its bootstrap CI."""

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
