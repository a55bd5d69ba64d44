"""Small patch stores and generated-views stores for the Gen-DINO tests: no diffusion model needed.

The "generated views" of a patch are noised, flipped copies of it; the "interpolations" are pixel blends
alpha * x1 + (1 - alpha) * x2 with a partner x2 drawn uniformly, recorded as pathgen generate records them.
"""

from pathlib import Path

import numpy as np

from pathgen.store import GeneratedWriter, PatchStoreWriter, open_store
from pathgen.store.generated import KIND_INTERPOLATION, KIND_VIEW, ItemTable

SIZE = 40


def stripes(rng: np.random.Generator, horizontal: bool, size: int = SIZE) -> np.ndarray:
    """Red horizontal or blue vertical stripes on noise (the toy classes of test_ssl_train)."""
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    period = int(rng.integers(4, 8))
    on = (np.arange(size) // period) % 2 == 0
    mask = on[:, None] if horizontal else on[None, :]
    channel = 0 if horizontal else 2
    img[..., channel] = np.where(mask, 230, img[..., channel])
    return img


def make_stores(root: Path, n_stores: int = 2, n: int = 12, size: int = SIZE, seed: int = 0) -> list[Path]:
    """`n_stores` patch stores of `n` patches each, half horizontal and half vertical stripes."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n_stores):
        path = root / f"slide{k}.zarr"
        images = np.stack([stripes(rng, i % 2 == 0, size) for i in range(n)])
        coords = np.stack([np.arange(n) * size, np.full(n, k * size)], axis=1)
        attrs = {"slide_path": str(root.resolve() / f"slide{k}.svs"), "seed": seed, "mpp": 0.5}  # as the tiler's
        with PatchStoreWriter(path, coords, np.ones(n), size, attrs) as w:
            w.write(0, images)
        paths.append(path)
    return paths


def make_generated(path: Path, stores: list[Path], views: int = 2, interpolations: int = 1, seed: int = 0,
                   image_size: int | None = None, skip_patches: int = 0, encoder_sha256: str = "e" * 64,
                   view_value: int | None = None) -> Path:
    """A complete generated.zarr for `stores`: `views` views and `interpolations` interpolations per patch,
    except the first `skip_patches` patches of store 0, which get none (they must fall back to real crops).
    With `view_value`, every view is a flat image of that value (easy to tell from a real patch)."""
    rng = np.random.default_rng(seed)
    patches = []
    for k, store_path in enumerate(stores):
        with open_store(store_path) as store:
            patches += [(k, p, store[p]) for p in range(len(store))]
    kind, source, partner, alpha, images = [], [], [], [], []
    size = image_size or patches[0][2].shape[0]
    for k, p, x in patches:
        if k == 0 and p < skip_patches:
            continue
        for _ in range(views):
            noisy = np.clip(x.astype(np.int16) + rng.integers(-20, 21, x.shape), 0, 255).astype(np.uint8)
            view = noisy[:, ::-1] if rng.random() < 0.5 else noisy
            if view_value is not None:
                view = np.full_like(x, view_value)
            kind.append(KIND_VIEW), source.append((k, p)), partner.append((-1, -1)), alpha.append(1.0)
            images.append(view)
        for _ in range(interpolations):
            k2, p2, x2 = patches[int(rng.integers(len(patches)))]
            a = float(rng.uniform(0.2, 0.8))
            kind.append(KIND_INTERPOLATION), source.append((k, p)), partner.append((k2, p2)), alpha.append(a)
            images.append((a * x + (1 - a) * x2).round().astype(np.uint8))
    if size != patches[0][2].shape[0]:
        images = [np.resize(im, (size, size, 3)) for im in images]
    items = ItemTable(kind, source, partner, alpha, seed=np.arange(len(kind)))
    ids = []
    for store_path in stores:
        with open_store(store_path) as store:
            ids.append(store.content_id)
    attrs = {"stores": [str(s) for s in stores], "store_ids": ids, "encoder_sha256": encoder_sha256,
             "model": "test blends", "sampler": "none", "steps": 0, "guidance_scale": 0.0}
    writer = GeneratedWriter(path, items, size, attrs, chunk_items=16)
    for chunk in writer.pending():
        start, stop = writer.chunk_range(chunk)
        writer.write_chunk(chunk, np.stack(images[start:stop]))
    return writer.close()
