"""A planted MIL task in the feature-file layout: the sanity check (and benchmark data) for `pathgen mil`.

Background patches are N(0, I); in a positive bag `n_planted` patches are shifted by `signal` along one fixed
direction. With few planted patches per bag the mean of a bag barely moves, so mean pooling struggles while
attention pooling finds them. Each file also holds `planted` (uint8 [N]), the ground truth for attention.
"""

import csv
from pathlib import Path

import numpy as np


def write_synthetic_bags(out_dir: str | Path, n_bags: int = 60, n_instances: int = 100, dim: int = 32,
                         n_planted: int = 3, signal: float = 3.0, seed: int = 0, dtype=np.float32) -> Path:
    """Write <out_dir>/features_synthetic/bag_NNNN.h5 (half positive) and <out_dir>/labels.csv; return labels.csv."""
    import h5py

    from pathgen.features.h5 import encoder_dir

    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    folder = encoder_dir(out_dir, "synthetic")
    folder.mkdir(parents=True, exist_ok=True)
    side = int(np.ceil(np.sqrt(n_instances)))
    coords = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="xy"), -1).reshape(-1, 2)[:n_instances]
    rows = []
    for i in range(n_bags):
        positive = i % 2 == 1
        x = rng.standard_normal((n_instances, dim)).astype(np.float32)
        planted = np.zeros(n_instances, np.uint8)
        if positive:
            start = int(rng.integers(0, n_instances - n_planted + 1))  # a contiguous run: a lesion on the grid
            planted[start : start + n_planted] = 1
            x[planted == 1] += signal * direction.astype(np.float32)
        name = f"bag_{i:04d}"
        with h5py.File(folder / f"{name}.h5", "w") as f:
            f.create_dataset("features", data=x.astype(dtype))
            f.create_dataset("coords", data=(coords * 256).astype(np.int64)).attrs.update(
                patch_size=256, patch_size_level0=256, patch_level=0)
            f.create_dataset("tissue_fraction", data=np.ones(n_instances, np.float32))
            f.create_dataset("planted", data=planted)
            f.attrs.update(encoder="synthetic", embed_dim=dim, slide=name)
        rows.append({"slide_id": name, "label": "positive" if positive else "negative", "case_id": f"case_{i // 2:04d}"
                     if i % 4 < 2 else name})
    labels = Path(out_dir) / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["slide_id", "label", "case_id"])
        writer.writeheader()
        writer.writerows(rows)
    return labels
