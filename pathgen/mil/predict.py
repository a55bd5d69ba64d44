"""`pathgen mil predict`: per-slide class probabilities from a trained run (the mean over its fold models)."""

import csv
from pathlib import Path

import numpy as np
import torch

from pathgen.errors import CheckpointError, ConfigError


def model_files(path: str | Path) -> list[Path]:
    """A model file, or every OUT/models/*.safetensors of a `pathgen mil train` output folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted((path / "models").glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise CheckpointError(path, "no MIL models (expected a `pathgen mil train` output folder or a .safetensors)")
    return files


def load_run_models(path: str | Path) -> tuple[list[torch.nn.Module], dict]:
    """(the run's models in eval mode, the first one's meta); all must share classes and input width."""
    from pathgen.mil.models import load_model

    models, metas = zip(*(load_model(f) for f in model_files(path)), strict=True)
    for meta, f in zip(metas[1:], model_files(path)[1:], strict=True):
        if meta["classes"] != metas[0]["classes"] or meta["in_dim"] != metas[0]["in_dim"]:
            raise CheckpointError(f, "classes or input width differ from the run's other models")
    return list(models), metas[0]


@torch.inference_mode()
def slide_scores(models: list[torch.nn.Module], bag: torch.Tensor,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities [C], attention [N]) of one bag, each the mean over `models`."""
    from pathgen.runtime.device import autocast

    probs, attention = [], []
    x = bag.to(device)
    for model in models:
        with autocast(device):
            logits, att = model.to(device)(x)
        probs.append(torch.softmax(logits.float(), -1).cpu())
        attention.append(att.float().cpu())
    return torch.stack(probs).mean(0).numpy(), torch.stack(attention).mean(0).numpy()


def predict_mil(model: str | Path, features: str | Path, out: str | Path | None = None,
                device: str | None = None) -> list[dict]:
    """Rows {slide_id, pred, prob_<class>...} for every feature file of `features`; written to `out` if given."""
    from pathgen.features.h5 import feature_shape, find_feature_files
    from pathgen.mil.data import read_bag
    from pathgen.runtime.device import get_device

    models, meta = load_run_models(model)
    dev = get_device(device)
    rows = []
    for slide, path in find_feature_files(features).items():
        n, d = feature_shape(path)
        if d != meta["in_dim"]:
            raise ConfigError(path, f"features of width {d}, but the model was trained on width {meta['in_dim']}")
        if n == 0:
            continue
        probs, _ = slide_scores(models, read_bag(path), dev)
        rows.append({"slide_id": slide, "pred": meta["classes"][int(probs.argmax())],
                     **{f"prob_{c}": float(p) for c, p in zip(meta["classes"], probs, strict=True)}})
    if out is not None:
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["slide_id", "pred", *(f"prob_{c}" for c in meta["classes"])])
            writer.writeheader()
            writer.writerows(rows)
    return rows
