"""`pathgen generate`: pre-generate Gen-SIS self-augmentations of real patches into <out>/generated.zarr.

    plan the item table (K views + M interpolations per source patch, partners, alphas, seeds)
      -> for each chunk not yet written: read the source (and partner) patches, embed them with the frozen encoder,
         SLERP the pairs, sample (CFG in one batch, each image's noise from its own seed), write the chunk
      -> grid.png, fidelity.json

Everything is checked before anything is written (model, encoder sha256, stores, sampler, guidance). An image
depends only on its item (embedding and seed), so a rerun makes the same images, and a killed run resumes the
chunks it had not finished (pathgen.store.generated). Memory is flat in N: one chunk of images at a time.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch

from pathgen.diffusion.conditioning import slerp
from pathgen.diffusion.encoder import FrozenEncoder
from pathgen.diffusion.sample import check_sampler, make_sampler, sample
from pathgen.diffusion.sources import SourcePatches
from pathgen.errors import ConfigError, EncoderError, PathgenError
from pathgen.runtime.progress import progress_bar
from pathgen.store.generated import KIND_INTERPOLATION, KIND_VIEW, ItemTable

GRID_ROWS = 6
STRIP_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def plan_items(n_patches: int, views: int = 1, interpolations: int = 1, alpha_range=(0.3, 0.7), seed: int = 0,
               max_sources: int | None = None) -> tuple[ItemTable, np.ndarray]:
    """(item table with flat patch numbers in source/partner column 0, the source patches).

    Per source patch, in order: `views` generated views, then `interpolations` interpolations, each with a
    partner drawn uniformly from the other patches and alpha ~ U(alpha_range). Item i's noise seed is
    item_seed(seed, 0, i). With max_sources, a seeded random subset of the patches are sources (partners are
    still drawn from all patches). The caller turns flat numbers into (store, patch) pairs.
    """
    from pathgen.runtime.seeding import item_seed

    rng = np.random.default_rng(seed)
    sources = np.arange(n_patches)
    if max_sources is not None and max_sources < n_patches:
        sources = np.sort(rng.choice(n_patches, max_sources, replace=False))
    if interpolations and n_patches < 2:
        raise PathgenError("interpolations need at least 2 patches")
    per = views + interpolations
    n = len(sources) * per
    kind = np.tile(np.r_[np.full(views, KIND_VIEW), np.full(interpolations, KIND_INTERPOLATION)], len(sources))
    src = np.repeat(sources, per)
    partner = np.full(n, -1, dtype=np.int64)
    alpha = np.ones(n, dtype=np.float32)
    interp = kind == KIND_INTERPOLATION
    drawn = rng.integers(0, max(n_patches - 1, 1), int(interp.sum()))
    partner[interp] = drawn + (drawn >= src[interp])  # uniform over the other patches
    alpha[interp] = rng.uniform(alpha_range[0], alpha_range[1], int(interp.sum()))
    seeds = np.array([item_seed(seed, 0, i) for i in range(n)], dtype=np.int64)
    pairs = np.stack([src, np.zeros(n, dtype=np.int64)], 1)
    partners = np.stack([partner, np.where(partner < 0, -1, 0)], 1)
    return ItemTable(kind=kind, source=pairs, partner=partners, alpha=alpha, seed=seeds), sources


def check_encoder(pipe, encoder: str | Path | None, device) -> FrozenEncoder:
    """The encoder the model was conditioned on (default: the one it records); its sha256 must match."""
    recorded = pipe.metadata.get("encoder_sha256")
    path = Path(encoder or pipe.metadata.get("encoder", ""))
    if not str(path):
        raise EncoderError(None, "the model records no encoder; pass --encoder")
    frozen = FrozenEncoder(path, device)
    if recorded != frozen.sha256:
        raise EncoderError(path, f"sha256 {frozen.sha256[:12]} differs from that of the encoder the model was "
                           f"trained on ({str(recorded)[:12]}, {pipe.metadata.get('encoder')})")
    return frozen


class ImageMaker:
    """Makes the images of any slice of an item table; the same item always gives the same image."""

    def __init__(self, pipe, encoder: FrozenEncoder, patches: SourcePatches, steps: int, guidance_scale: float):
        from pathgen.runtime.device import precision_for

        self.pipe, self.encoder, self.patches = pipe, encoder, patches
        self.steps, self.guidance_scale = steps, guidance_scale
        self.precision = precision_for(pipe.device)

    def embeddings(self, items: ItemTable) -> torch.Tensor:
        """Each item's condition: its source's embedding (views), or SLERP(e1, e2, alpha) (interpolations)."""
        interp = items.kind == KIND_INTERPOLATION
        keys = np.concatenate([items.source, items.partner[interp]])
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        emb = self.encoder(self.patches.read(unique))[inverse.reshape(-1)]
        e = emb[: len(items)].clone()
        if interp.any():
            e[interp] = slerp(e[interp], emb[len(items):], torch.from_numpy(items.alpha[interp]))
        return e

    def __call__(self, items: ItemTable) -> np.ndarray:
        e = self.embeddings(items).to(self.pipe.device)
        with self.precision.autocast():
            return sample(self.pipe, e, items.seed.tolist(), self.steps, self.guidance_scale)


def _slice(items: ItemTable, start: int, stop: int) -> ItemTable:
    return ItemTable(kind=items.kind[start:stop], source=items.source[start:stop],
                     partner=items.partner[start:stop], alpha=items.alpha[start:stop], seed=items.seed[start:stop])


def generate(
    model: str | Path,
    stores: str | Path | list[str | Path],
    out: str | Path,
    *,
    encoder: str | Path | None = None,
    views: int = 1,
    interpolations: int = 1,
    alpha_range: tuple[float, float] = (0.3, 0.7),
    sampler: str = "dpm++",
    steps: int = 20,
    guidance_scale: float = 2.5,
    batch_size: int = 32,
    seed: int = 0,
    resize: bool = False,
    max_sources: int | None = None,
    device: str | None = None,
    dry_run: bool = False,
    chunk_items: int = 256,
    fidelity_samples: int = 256,
    fail_after_chunks: int | None = None,
) -> Path:
    """Generate into <out>/generated.zarr (+ grid.png, fidelity.json); returns <out>. See the module docstring.

    fidelity_samples: views and interpolations re-encoded for fidelity.json (0: no fidelity check).
    fail_after_chunks (tests): raise after writing that many chunks, as a killed run would stop.
    """
    from pathgen import __version__
    from pathgen.diffusion.pipeline import load_pipeline
    from pathgen.runtime.device import get_device
    from pathgen.store import find_stores
    from pathgen.store.generated import GeneratedWriter

    check_sampler(sampler, guidance_scale)
    if views < 0 or interpolations < 0 or views + interpolations == 0:
        raise ConfigError("--views", "need views >= 0, interpolations >= 0 and at least one of them")
    if not 0.0 <= alpha_range[0] <= alpha_range[1] <= 1.0:
        raise ConfigError("--alpha-min", f"need 0 <= alpha_min <= alpha_max <= 1, got {alpha_range}")
    out, dev = Path(out), get_device(device)
    pipe = load_pipeline(model, dev)
    pipe.scheduler = make_sampler(sampler, pipe.scheduler.config)
    frozen = check_encoder(pipe, encoder, dev)
    store_paths = find_stores(stores)
    patches = SourcePatches(store_paths, pipe.image_size, resize)
    items, sources = plan_items(len(patches), views, interpolations, alpha_range, seed, max_sources)
    for column in (items.source, items.partner):  # flat patch numbers -> (store, patch)
        rows = column[:, 0] >= 0
        column[rows] = patches.pairs(column[rows, 0])
    make = ImageMaker(pipe, frozen, patches, steps, guidance_scale)

    if dry_run:
        n = min(batch_size, len(items))
        t0 = time.perf_counter()
        make(_slice(items, 0, n))
        seconds = time.perf_counter() - t0
        print(f"dry run: {len(items)} images ({len(sources)} source patches x ({views} views + {interpolations} "
              f"interpolations)) of {pipe.image_size} px, {sampler} {steps} steps, guidance {guidance_scale}. One "
              f"batch of {n} took {seconds:.2f} s on {dev} ({n / seconds:.1f} img/s): about "
              f"{seconds * len(items) / n / 60:.1f} min in all. Nothing written.")
        patches.close()
        return out

    attrs = {
        "stores": [str(p) for p in store_paths], "store_ids": patches.content_ids,
        "encoder": str(frozen.path.resolve()), "encoder_sha256": frozen.sha256, "model": str(Path(model).resolve()),
        "sampler": sampler, "steps": steps, "guidance_scale": float(guidance_scale), "views": views,
        "interpolations": interpolations, "alpha_range": [float(a) for a in alpha_range], "seed": seed,
        "resize": resize, "max_sources": max_sources, "pathgen_version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    writer = GeneratedWriter(out / "generated.zarr", items, pipe.image_size, attrs, chunk_items=chunk_items)
    pending = writer.pending()
    done = len(items) - sum(stop - start for start, stop in map(writer.chunk_range, pending))
    bar = progress_bar(total=len(items), initial=done, desc="generate", unit="img")
    for n_written, k in enumerate(pending):
        if fail_after_chunks is not None and n_written == fail_after_chunks:
            raise RuntimeError(f"injected failure after {n_written} chunks")
        start, stop = writer.chunk_range(k)
        images = []
        for b in range(start, stop, batch_size):  # batches never cross a chunk: a resumed chunk batches alike
            images.append(make(_slice(items, b, min(b + batch_size, stop))))
            bar.update(len(images[-1]))
        writer.write_chunk(k, np.concatenate(images))
    bar.close()
    writer.close()

    write_grid(out, make, items, views)
    if fidelity_samples:
        from pathgen.diffusion.fidelity import describe, fidelity

        report = fidelity(out / "generated.zarr", frozen, n_views=fidelity_samples,
                          n_interpolations=fidelity_samples, seed=seed, device=dev)
        (out / "fidelity.json").write_text(json.dumps(report, indent=2))
        print(describe(report))
    patches.close()
    return out


def write_grid(out: Path, make: ImageMaker, items: ItemTable, views: int) -> Path:
    """grid.png: rows of a source patch beside its views, then one interpolation strip at alpha 0 .. 1."""
    from pathgen.diffusion.pictures import image_rows
    from pathgen.store.generated import open_generated

    store = open_generated(out / "generated.zarr")
    rows, captions = [], []
    view_rows = np.flatnonzero(items.kind == KIND_VIEW)
    sources = list(dict.fromkeys(map(tuple, items.source[view_rows].tolist())))
    picked = np.unique(np.linspace(0, len(sources) - 1, min(GRID_ROWS, len(sources))).round().astype(int))
    first_sources = [sources[j] for j in picked] if sources else []  # spread over the stores
    for src in first_sources:
        mine = view_rows[(items.source[view_rows] == src).all(1)]
        rows.append([make.patches.read(np.array([src]))[0], *[store.image(i) for i in mine]])
        captions.append(["source", *[f"view {j + 1}" for j in range(len(mine))]])
    # the strip: the first interpolation's pair (or the first two patches), the same noise at every alpha
    interp = np.flatnonzero(items.kind == KIND_INTERPOLATION)
    if len(interp):
        i = interp[0]
        a, b, noise_seed = items.source[i], items.partner[i], items.seed[i]
    else:
        a, b, noise_seed = items.source[0], make.patches.pairs(np.array([1 % len(make.patches)]))[0], items.seed[0]
    n = len(STRIP_ALPHAS)
    strip = ItemTable(kind=np.full(n, KIND_INTERPOLATION), source=np.repeat(a[None], n, 0),
                      partner=np.repeat(b[None], n, 0), alpha=np.array(STRIP_ALPHAS), seed=np.full(n, noise_seed))
    ends = make.patches.read(np.stack([b, a]))
    rows.append([ends[0], *make(strip), ends[1]])
    captions.append(["image 2", *[f"a={x:g}" for x in STRIP_ALPHAS], "image 1"])
    path = out / "grid.png"
    image_rows(rows, captions).save(path)
    return path
