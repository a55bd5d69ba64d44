"""`pathgen mil heatmap`: a trained model's per-patch attention over the slide thumbnail, as a PNG."""

from pathlib import Path

import numpy as np

from pathgen.errors import ConfigError, SlideError


def locate_slide(coords_attrs: dict, slide_root: str | Path | None) -> Path:
    """The slide a feature file came from: under `slide_root` by file name, else where the tiler found it."""
    recorded = Path(str(coords_attrs.get("slide_path", "")))
    if not recorded.name:
        raise SlideError(None, "the feature file does not record its slide (no slide_path); pass --slide-root")
    if slide_root is not None:
        root = Path(slide_root)
        found = [root / recorded.name] if (root / recorded.name).is_file() else sorted(root.rglob(recorded.name))
        if not found:
            raise SlideError(root / recorded.name, f"slide not found under {root}")
        return found[0]
    if not recorded.is_file():
        raise SlideError(recorded, "slide not found where it was tiled; pass --slide-root")
    return recorded


def attention_grid(shape: tuple[int, int], coords: np.ndarray, patch_level0: int, downsample: float,
                   values: np.ndarray) -> np.ndarray:
    """float [h, w] with each patch's value over its footprint on the thumbnail, NaN where there is no patch."""
    grid = np.full(shape, np.nan, np.float32)
    for (x, y), v in zip(coords, values, strict=True):
        x0, y0 = int(x / downsample), int(y / downsample)
        x1 = max(x0 + 1, round((x + patch_level0) / downsample))
        y1 = max(y0 + 1, round((y + patch_level0) / downsample))
        grid[y0:y1, x0:x1] = v
    return grid


def mil_heatmap(model: str | Path, features: str | Path, slide: str, out: str | Path,
                slide_root: str | Path | None = None, max_side: int = 1024, device: str | None = None) -> dict:
    """Write the heatmap PNG of `slide` (its id in the features folder); returns its probabilities and path."""
    from matplotlib.figure import Figure

    from pathgen.features.h5 import find_feature_files, read_feature_file
    from pathgen.mil.predict import load_run_models, slide_scores
    from pathgen.runtime.device import get_device
    from pathgen.slide import open_slide

    files = find_feature_files(features)
    if slide not in files:
        raise ConfigError(features, f"no feature file for slide {slide!r} ({len(files)} slides there)")
    ff = read_feature_file(files[slide])
    models, meta = load_run_models(model)
    if meta["model"]["name"] == "meanpool":
        raise ConfigError(model, "a mean-pool model weighs every patch alike: it has no attention to draw")
    if ff.features.shape[1] != meta["in_dim"] or len(ff.features) == 0:
        raise ConfigError(files[slide], f"{ff.features.shape} features do not fit a model of width {meta['in_dim']}")
    import torch

    probs, attention = slide_scores(models, torch.from_numpy(ff.features.astype(np.float32)), get_device(device))
    span = attention.max() - attention.min()
    scaled = (attention - attention.min()) / span if span > 0 else np.zeros_like(attention)
    patch0 = int(ff.coords_attrs.get("patch_size_level0") or ff.attrs.get("patch_size_level0") or 0)
    if patch0 <= 0:
        raise ConfigError(files[slide], "the feature file lacks patch_size_level0 (not made by pathgen tile?)")
    with open_slide(locate_slide(ff.coords_attrs, slide_root)) as wsi:
        thumb, ds = wsi.thumbnail(max_side)
    grid = attention_grid(thumb.shape[:2], ff.coords, patch0, ds, scaled)

    k = int(probs.argmax())
    classes = meta["classes"]
    title = f"{slide}: predicted {classes[k]} (p = {probs[k]:.2f})"
    if len(classes) > 2:
        title += "\n" + ", ".join(f"{c}: {p:.2f}" for c, p in zip(classes, probs, strict=True))
    h, w = thumb.shape[:2]
    fig = Figure(figsize=(2 * 5 * w / max(h, w) + 1.2, 5 * h / max(h, w) + 0.8), dpi=120, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(thumb)
    left.set_title("slide")
    right.imshow(thumb)
    im = right.imshow(grid, cmap="inferno", vmin=0, vmax=1, alpha=0.6, interpolation="nearest")
    right.set_title(f"{meta['model']['name']} attention")
    for ax in (left, right):
        ax.set_axis_off()
    fig.colorbar(im, ax=right, fraction=0.046, pad=0.02, label="attention (min-max scaled per slide)")
    fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return {"slide_id": slide, "png": str(out), "pred": classes[k],
            **{f"prob_{c}": float(p) for c, p in zip(classes, probs, strict=True)}}
