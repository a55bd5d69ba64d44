"""Does the conditioning work? The generated images, re-encoded, against the embeddings they were made from.

- views: cos(enc(view), e_source) against cos(enc(view), e_random) (a random other patch), and top-1 retrieval of
  the source among n_candidates (the source and n_candidates - 1 random other patches; chance = 1 / n_candidates);
- interpolations: cos(enc(image), e1) and cos(enc(image), e2) by alpha bin. With weight alpha on e1, cos to e1
  should rise with alpha and cos to e2 fall.

    report = fidelity("gen/generated.zarr")       # -> dict, also what `pathgen generate` writes to fidelity.json
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pathgen.diffusion.encoder import FrozenEncoder
from pathgen.diffusion.sources import SourcePatches

N_CANDIDATES = 32
ALPHA_BINS = 4


def _embed(encoder: FrozenEncoder, images: np.ndarray, batch_size: int) -> torch.Tensor:
    if not len(images):
        return torch.empty(0, encoder.embed_dim)
    batches = [encoder(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(batches), dim=-1)


def _mean(x: torch.Tensor) -> float | None:
    return round(float(x.mean()), 4) if len(x) else None


def view_fidelity(view_emb: torch.Tensor, source_flat: np.ndarray, embed_flat, n_patches: int,
                  n_candidates: int, rng: np.random.Generator) -> dict:
    """Views' cosine to their source vs to a random patch, and top-1 retrieval of the source among candidates."""
    n_candidates = int(min(n_candidates, n_patches))
    # distractors: n_candidates - 1 distinct other patches per view (drawn from 0..n-2, shifted past the source)
    distract = np.stack([rng.choice(n_patches - 1, n_candidates - 1, replace=False) for _ in source_flat]) \
        if n_candidates > 1 else np.zeros((len(source_flat), 0), dtype=np.int64)
    distract = distract + (distract >= source_flat[:, None])
    candidates = np.concatenate([source_flat[:, None], distract], axis=1)  # the source is candidate 0
    needed = np.unique(candidates)
    table = dict(zip(needed.tolist(), embed_flat(needed), strict=True))
    cand = torch.stack([torch.stack([table[int(j)] for j in row]) for row in candidates])  # [n, C, D]
    sims = torch.einsum("nd,ncd->nc", view_emb, cand)
    random_col = sims[:, 1] if n_candidates > 1 else torch.empty(0)
    return {
        "n_views": len(source_flat),
        "cos_source": _mean(sims[:, 0]),
        "cos_random": _mean(random_col),
        "retrieval_top1": round(float((sims.argmax(1) == 0).float().mean()), 4),
        "n_candidates": n_candidates,
        "chance": round(1.0 / n_candidates, 4),
    }


def interpolation_fidelity(emb: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor, alpha: np.ndarray,
                           alpha_range: tuple[float, float]) -> dict:
    """Mean cos to e1 and to e2 in ALPHA_BINS equal bins of alpha over alpha_range."""
    cos1, cos2 = (emb * e1).sum(-1), (emb * e2).sum(-1)
    lo, hi = alpha_range
    edges = np.linspace(lo, hi, ALPHA_BINS + 1)
    which = np.clip(np.digitize(alpha, edges[1:-1]), 0, ALPHA_BINS - 1)
    bins = []
    for b in range(ALPHA_BINS):
        rows = torch.from_numpy(np.flatnonzero(which == b))
        bins.append({"alpha": [round(float(edges[b]), 3), round(float(edges[b + 1]), 3)], "n": len(rows),
                     "cos_e1": _mean(cos1[rows]), "cos_e2": _mean(cos2[rows])})
    return {"n_interpolations": len(alpha), "cos_e1": _mean(cos1), "cos_e2": _mean(cos2), "by_alpha": bins}


def fidelity(generated: str | Path, encoder: str | Path | FrozenEncoder | None = None, n_views: int = 256,
             n_interpolations: int = 256, n_candidates: int = N_CANDIDATES, seed: int = 0, batch_size: int = 64,
             device: str | torch.device = "cpu") -> dict:
    """The fidelity report of a generated.zarr (a random subset of at most n_views views and n_interpolations
    interpolations). `encoder`: the one the model was conditioned on (default: the one recorded in the store)."""
    from pathgen.store.generated import KIND_INTERPOLATION, KIND_VIEW, open_generated

    store = open_generated(generated)
    if not isinstance(encoder, FrozenEncoder):
        encoder = FrozenEncoder(encoder or store.attrs["encoder"], device)
    store.check_encoder(encoder.sha256, encoder.path)
    patches = SourcePatches(store.stores, store.image_size, resize=bool(store.attrs.get("resize", False)))
    rng = np.random.default_rng(seed)
    items = store.items

    cache: dict[int, torch.Tensor] = {}

    def embed_flat(flat: np.ndarray) -> list[torch.Tensor]:
        new = [int(j) for j in flat if int(j) not in cache]
        if new:
            for j, e in zip(new, _embed(encoder, patches.read(patches.pairs(np.array(new))), batch_size), strict=True):
                cache[j] = e
        return [cache[int(j)] for j in flat]

    def flat(pairs: np.ndarray) -> np.ndarray:
        return patches.offsets[pairs[:, 0]] + pairs[:, 1]

    def pick(kind: int, n: int) -> np.ndarray:
        rows = np.flatnonzero(items.kind == kind)
        return np.sort(rng.choice(rows, min(n, len(rows)), replace=False)) if len(rows) else rows

    report: dict = {"generated": str(generated), "encoder_sha256": encoder.sha256}
    views = pick(KIND_VIEW, n_views)
    if len(views):
        emb = _embed(encoder, np.stack([store.image(i) for i in views]), batch_size)
        report["views"] = view_fidelity(emb, flat(items.source[views]), embed_flat, len(patches), n_candidates, rng)
    interps = pick(KIND_INTERPOLATION, n_interpolations)
    if len(interps):
        emb = _embed(encoder, np.stack([store.image(i) for i in interps]), batch_size)
        e1 = torch.stack(embed_flat(flat(items.source[interps])))
        e2 = torch.stack(embed_flat(flat(items.partner[interps])))
        alpha_range = tuple(store.attrs.get("alpha_range", (0.0, 1.0)))
        report["interpolations"] = interpolation_fidelity(emb, e1, e2, items.alpha[interps], alpha_range)
    patches.close()
    return report


def describe(report: dict) -> str:
    """The report as a few lines for the terminal."""
    lines = []
    v = report.get("views")
    if v:
        lines.append(f"views ({v['n_views']}): cos(enc(view), e_source) {v['cos_source']:.3f} vs "
                     f"cos(enc(view), e_random) {v['cos_random'] if v['cos_random'] is not None else float('nan'):.3f}")
        lines.append(f"top-1 retrieval of the source among {v['n_candidates']}: {100 * v['retrieval_top1']:.1f}% "
                     f"(chance {100 * v['chance']:.1f}%)")
    i = report.get("interpolations")
    if i:
        lines.append(f"interpolations ({i['n_interpolations']}), weight alpha on e1:")
        for b in i["by_alpha"]:
            if b["n"]:
                lines.append(f"  alpha {b['alpha'][0]:.2f}-{b['alpha'][1]:.2f} (n={b['n']}): cos to e1 "
                             f"{b['cos_e1']:.3f}, to e2 {b['cos_e2']:.3f}")
    return "\n".join(lines)
