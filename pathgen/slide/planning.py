"""Plan one slide: find its tissue, lay the patch grid, describe the store to write and the QC picture to draw.

`plan_slide` runs in a worker process (a native crash in OpenSlide while reading the thumbnail takes down that
worker, not the run) and returns a `SlidePlan`: the coordinates, the attributes, the QC picture's pixels and masks
and the tissue contours as GeoJSON. The parent draws that picture and writes the GeoJSON (`write_pictures`) while
the workers read the slide's patches: nothing about the pictures has to wait for anything but the plan, and no
patch has to wait for the pictures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pathgen.errors import SlideError
from pathgen.slide.grid import PatchPlan, plan_patches
from pathgen.slide.qc import render_qc
from pathgen.slide.tissue import MASK_MPP, is_dark_background, segment_tissue

# The tissue mask: MASK_MPP um per pixel (16 px across a 256 px patch at 0.5 mpp), finer on small slides so their
# long side has MASK_MIN_SIDE px (but never finer than MASK_FINEST_MPP, where smoothing radii in um grow costly),
# coarser on huge ones so it never exceeds MASK_MAX_SIDE (memory, and the time to read and decode it). The QC
# picture is the mask's thumbnail, shrunk to at most QC_MAX_SIDE, or, when that is under QC_MIN_SIDE (small slides),
# a finer one of QC_SIDE.
MASK_FINEST_MPP = 1.0
MASK_MIN_SIDE = 1024
MASK_MAX_SIDE = 4096
QC_MIN_SIDE = 512
QC_SIDE = 1024
QC_MAX_SIDE = 2048


@dataclass
class Pictures:
    """What the QC picture of a slide is drawn from, and its tissue contours as GeoJSON.

    The GeoJSON is traced in the worker, beside the mask: in the parent it needed scipy.ndimage, whose import
    (~0.5 s of CPU) competed with the workers reading the first slide.
    """

    name: str
    qc_dir: Path
    qc: np.ndarray  # uint8 RGB thumbnail of the scanned area
    qc_downsample: float
    tissue: np.ndarray  # bool mask of the scanned area, at any resolution (scaled onto the thumbnail)
    origin: tuple[int, int]
    tissue_geojson: dict  # its contours, in level-0 pixels
    pen: np.ndarray | None = None
    roi: np.ndarray | None = None


@dataclass
class SlidePlan:
    """What the parent needs to create a slide's store (the patch plan and the store's attributes) and its pictures."""

    plan: PatchPlan
    attrs: dict
    coords_attrs: dict
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    notices: list[str] = field(default_factory=list)  # one-line notes for the log
    pictures: Pictures | None = None


def mask_downsample(extent: int, mpp: float) -> float:
    """Level-0 pixels per tissue-mask pixel for a scanned area whose long side is `extent` level-0 pixels."""
    ds = min(MASK_MPP / mpp, extent / MASK_MIN_SIDE)  # small slides: a finer mask costs little
    return max(ds, MASK_FINEST_MPP / mpp, extent / MASK_MAX_SIDE, 1.0)


def _shrink(image: np.ndarray, downsample: float, max_side: int) -> tuple[np.ndarray, float]:
    """`image` reduced by a whole factor so that its long side is at most `max_side`; and its new downsample."""
    from PIL import Image

    factor = math.ceil(max(image.shape[:2]) / max_side)
    if factor <= 1:
        return image, downsample
    return np.asarray(Image.fromarray(image).reduce(factor)), downsample * factor


ROI_MIN_FRACTION = 0.5  # a patch is in the region of interest when at least half of it is


def target_mpp(slide, params) -> float:
    """--mpp, or the mpp of --magnification on this slide: level 0's magnification (objective power, or 10 / mpp)
    over the one asked for, so a slide without an mpp but with an objective power gets the right scale too."""
    if params.magnification is None:
        return float(params.mpp)
    return float(slide.mpp * level0_magnification(slide) / params.magnification)


def roi_file(folder: Path, job) -> Path:
    """The slide's annotation file in the --roi folder: <name>.geojson (or .json), else <file stem>.geojson."""
    from pathgen.slide.annotations import find_annotation_file

    path = find_annotation_file(Path(folder), job.name, job.path.stem)
    if path is None:
        raise SlideError(job.path, f"no {job.name}.geojson in the --roi folder {folder}")
    return path


def plan_slide(slide, job, params, qc_dir: Path) -> SlidePlan:
    """Tissue mask, patch plan and store attributes of one open slide, with what its QC picture
    (qc_dir/<name>.png) and tissue contours (qc_dir/<name>.geojson) are drawn from (see write_pictures)."""
    from pathgen.slide.annotations import rasterize, read_annotations, tissue_geojson
    from pathgen.slide.grid import tissue_fractions

    bounds = slide.bounds
    origin = bounds[:2]
    extent = max(bounds[2], bounds[3])
    thumb, thumb_ds = slide.thumbnail(math.ceil(extent / mask_downsample(extent, slide.mpp)), region=bounds)
    mask_mpp = slide.mpp * thumb_ds
    if is_dark_background(thumb):
        raise SlideError(slide.path, "mostly dark: fluorescence or dark-field? tissue detection needs brightfield")
    found = segment_tissue(thumb, mpp=mask_mpp)
    tissue, roi, extra = found.tissue, None, {}
    if params.roi is not None:
        path = roi_file(params.roi, job)
        roi = rasterize(read_annotations(path), tissue.shape, thumb_ds, origin)
        if roi.tissue is not None:  # tissue drawn (or corrected) by hand replaces what was detected
            tissue = roi.tissue
        extra = {"roi_path": str(path.resolve()), "roi_mtime": path.stat().st_mtime}
    plan = plan_patches(slide, target_mpp(slide, params), params.patch_size, tissue, thumb_ds,
                        params.tissue_threshold, region=bounds, overlap=params.overlap)  # fmt: skip
    labels = classes = None
    if roi is not None and roi.region is not None:
        inside = tissue_fractions(roi.region, thumb_ds, plan.coords, plan.patch_size_level0, origin)
        keep = inside >= ROI_MIN_FRACTION
        plan = replace(plan, coords=plan.coords[keep], tissue_fraction=plan.tissue_fraction[keep])
        if roi.classes:  # each patch gets the class covering most of it, -1 where none does
            cover = np.stack([tissue_fractions(m, thumb_ds, plan.coords, plan.patch_size_level0, origin)
                              for m in roi.class_masks]) if len(plan) else np.zeros((len(roi.classes), 0))  # fmt: skip
            labels = np.where(cover.max(0, initial=0) > 0, cover.argmax(0), -1).astype(np.int64)
            classes = roi.classes

    if max(thumb.shape[:2]) < QC_MIN_SIDE and thumb_ds > 1:
        qc, qc_ds = slide.thumbnail(QC_SIDE, region=bounds)
    else:
        qc, qc_ds = _shrink(thumb, thumb_ds, QC_MAX_SIDE)
    contours = tissue_geojson(tissue, thumb_ds, origin)
    pictures = Pictures(job.name, qc_dir, qc, qc_ds, tissue, origin, contours, found.pen,
                        roi.region if roi is not None else None)
    notices = [f"notice: {job.path}: {slide.reader_notice}"] if slide.reader_notice else []
    if len(plan) == 0:
        notices.append(f"warning: {job.path}: no tissue patches at threshold {params.tissue_threshold}")
    attrs = store_attrs(job, slide, plan, params) | {"tissue_mask_mpp": float(mask_mpp)} | extra
    return SlidePlan(plan, attrs, reader_attrs(slide, plan, params.overlap), labels, classes, notices, pictures)


def write_pictures(pictures: Pictures, plan: PatchPlan) -> None:
    """The QC picture (<qc_dir>/<name>.png) and the tissue contours as GeoJSON (<qc_dir>/<name>.geojson)."""
    from pathgen.slide.annotations import write_geojson

    p = pictures
    p.qc_dir.mkdir(parents=True, exist_ok=True)
    render_qc(p.qc, p.tissue, plan, p.qc_downsample, p.qc_dir / f"{p.name}.png", origin=p.origin, pen=p.pen,
              roi=p.roi)
    write_geojson(p.qc_dir / f"{p.name}.geojson", p.tissue_geojson)


def _magnification(value: float) -> float | int:
    value = round(value, 3)
    return int(value) if float(value).is_integer() else value


def level0_magnification(slide) -> int:
    """The nominal objective of level 0, a whole number: the slide's objective power, unless its mpp was overridden
    (then 10 / mpp, 0.25 um/px being the usual 40x), and 10 / mpp where the slide records no power."""
    if slide.objective_power is not None and slide.mpp_source != "override":
        return max(1, round(slide.objective_power))
    return max(1, round(10.0 / slide.mpp))


def store_attrs(job, slide, plan: PatchPlan, params) -> dict:
    """Root attributes of one slide's store: provenance and pathgen's description of the patches."""
    from pathgen import __version__

    stat = job.path.stat()
    level0_mag = level0_magnification(slide)
    downsample = float(slide.level_downsamples[plan.level])
    return {
        "name": job.name,
        "slide_path": str(job.path.resolve()),
        "slide_size": stat.st_size,
        "slide_mtime": stat.st_mtime,
        "slide_format": slide.format,
        "reader": slide.reader,  # what decoded the pixels: tifffile, openslide or tiatoolbox
        "reader_requested": params.reader,
        "reader_notice": slide.reader_notice,  # why "auto" fell back to OpenSlide, if it did
        "mpp_level0": float(slide.mpp),
        "mpp_source": slide.mpp_source,
        "mpp_override": job.mpp,
        "objective_power": slide.objective_power,
        "target_mpp": float(plan.target_mpp),
        "patch_size_level0": int(plan.patch_size_level0),
        "level0_width": int(slide.dimensions[0]),
        "level0_height": int(slide.dimensions[1]),
        "level0_bounds": [int(v) for v in slide.bounds],
        "level0_magnification": level0_mag,
        "target_magnification": _magnification(level0_mag * slide.mpp / plan.target_mpp),
        "overlap": int(params.overlap),  # pixels at the target resolution
        "tile_magnification": params.magnification,  # what was asked for, when by magnification
        "patch_level": int(plan.level),
        "read_size": int(plan.read_size),
        "downsample": [downsample, downsample],
        "level_dim": [int(v) for v in slide.level_dimensions[plan.level]],
        "downsampled_level_dim": [int(v) for v in slide.level_dimensions[plan.level]],
        "tissue_threshold": float(params.tissue_threshold),
        "pathgen_version": __version__,
    }


def reader_attrs(slide, plan: PatchPlan, overlap: int = 0) -> dict:
    """The `coords` attributes CLAM and TRIDENT read, describing the same level-0 square for both.

    CLAM reads `read_region(coord, patch_level, (patch_size,) * 2)`: there `patch_size` is the side read at
    `patch_level`, not the stored side, and resizing to `target_patch_size` (CLAM's --target_patch_size) gives
    the stored patch. TRIDENT reads `patch_size` pixels at `target_magnification` over
    `patch_size * level0_magnification / target_magnification` level-0 pixels, so `target_magnification` here
    is the magnification of the pixels read at `patch_level`; it equals the stored patches' magnification whenever
    the target resolution is a pyramid level (read size = patch size). `custom_downsample` stays 1: TRIDENT's
    legacy reader multiplies the read area by it, while CLAM takes it from its command line, never from the file.
    """
    level0_mag = level0_magnification(slide)
    return {
        "patch_size": int(plan.read_size),
        "patch_level": int(plan.level),
        "custom_downsample": 1,
        "target_patch_size": int(plan.patch_size),
        "patch_size_level0": int(plan.patch_size_level0),
        "level0_magnification": level0_mag,
        "target_magnification": _magnification(level0_mag * plan.read_size / plan.patch_size_level0),
        "overlap": round(overlap * plan.read_size / plan.patch_size),  # in the frame of patch_size above
    }
