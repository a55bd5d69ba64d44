"""Evaluation results on the console (a rich table) and on disk (JSON)."""

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table


def results_table(title: str, results: dict[str, dict[str, float]]) -> Table:
    """One row per setting ("k=20", "linear"), columns top-1 and balanced accuracy in percent."""
    table = Table(title=title)
    table.add_column("setting")
    table.add_column("top-1 %", justify="right")
    table.add_column("balanced acc %", justify="right")
    for name, res in results.items():
        if name.startswith("k=") and "k_used" in res and f"k={res['k_used']}" != name:
            name = f"{name} (k={res['k_used']} used)"  # clipped to the training set size
        table.add_row(name, f"{100 * res['top1']:.2f}", f"{100 * res['balanced_acc']:.2f}")
    return table


def print_results(title: str, results: dict[str, dict[str, float]], console: Console | None = None) -> None:
    (console or Console()).print(results_table(title, results))


def write_json(path: str | Path, payload: dict) -> Path:
    """Write atomically (temp file + rename), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
