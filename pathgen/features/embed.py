"""`pathgen slide-embed`: one vector per slide, the mean of its patch features or a MIL model's attention pooling.

    slides.h5
        slide_ids    utf-8 strings [S]
        embeddings   float32 [S, D]
        attrs        pooling ("mean" | "attention:<model>"), encoder, features, pathgen_version
"""

import os
from pathlib import Path

import numpy as np
import torch

from pathgen.errors import ConfigError


def _pooling_model(path: Path):
    """The MIL model whose `embed` pools: the file itself, or fold 0 of a `pathgen mil train` folder."""
    from pathgen.mil.models import load_model
    from pathgen.mil.predict import model_files

    model, meta = load_model(model_files(path)[0])
    return model, meta


@torch.inference_mode()
def slide_embed(features: str | Path, out: str | Path, *, mil_model: str | Path | None = None,
                table: str | Path | None = None, device: str | None = None) -> Path:
    """Write `out` (HDF5) with one embedding per feature file of `features`; optionally a .csv/.parquet table too."""
    import h5py

    from pathgen import __version__
    from pathgen.features.h5 import find_feature_files, read_feature_file
    from pathgen.runtime.device import get_device

    if table is not None and Path(table).suffix not in (".csv", ".parquet"):
        raise ConfigError(table, "the table must be a .csv or .parquet file")
    files = find_feature_files(features)
    dev = get_device(device)
    model = meta = None
    if mil_model is not None:
        model, meta = _pooling_model(Path(mil_model))
        model.to(dev)
    ids, rows, encoder = [], [], ""
    for slide, path in files.items():
        ff = read_feature_file(path)
        encoder = encoder or str(ff.attrs.get("encoder", ""))
        x = torch.from_numpy(ff.features.astype(np.float32))
        if len(x) == 0:
            print(f"warning: {path}: no patches, no embedding")
            continue
        if model is None:
            z = x.mean(0)
        else:
            if x.shape[1] != meta["in_dim"]:
                raise ConfigError(path, f"features of width {x.shape[1]}, the MIL model takes {meta['in_dim']}")
            z, _ = model.embed(x.to(dev))
        ids.append(slide)
        rows.append(z.float().cpu().numpy())
    if not rows:
        raise ConfigError(features, "no slide with patches to embed")
    emb = np.stack(rows).astype(np.float32)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("slide_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=emb)
        f.attrs.update(pooling="mean" if model is None else f"attention:{meta['model']['name']}", encoder=encoder,
                       features=str(Path(features).resolve()), pathgen_version=__version__)
    os.replace(tmp, out)
    if table is not None:
        write_table(Path(table), ids, emb)
    return out


def write_table(path: Path, ids: list[str], emb: np.ndarray) -> None:
    """slide_id, e0..e{D-1}: CSV, or Parquet through pyarrow (installed separately)."""
    columns = [f"e{i}" for i in range(emb.shape[1])]
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(path, "Parquet needs pyarrow (pip install pyarrow), or write a .csv") from None
        pq.write_table(pa.table({"slide_id": ids, **{c: emb[:, i] for i, c in enumerate(columns)}}), path)
        return
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", *columns])
        for slide, row in zip(ids, emb, strict=True):
            writer.writerow([slide, *(f"{v:.7g}" for v in row)])
