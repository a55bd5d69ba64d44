"""GeoJSON annotations in and out, in the form QuPath exports and imports them.

QuPath exports a FeatureCollection (or a bare list) of Features whose geometry is a Polygon or MultiPolygon in
level-0 pixel coordinates, the class in `properties.classification.name`. `read_annotations` reads that;
`rasterize` turns it into masks on the tissue mask's grid (scikit-image's polygon fill: no geometry library
needed, since every use here is per mask pixel); `tissue_geojson` writes a tissue mask back as such features, so
the detected tissue can be corrected in QuPath and fed back with `pathgen tile --roi`.

Features of class "Tissue" (what `tissue_geojson` writes) replace the detected tissue; any other feature is a
region of interest that patches must lie in, and its class name becomes the patches' label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathgen.errors import ConfigError

TISSUE_CLASS = "Tissue"
TISSUE_COLOUR = [0, 200, 0]  # QuPath reads classification.color as [r, g, b]
SUFFIXES = (".geojson", ".json")


@dataclass
class Annotation:
    polygons: list[list[np.ndarray]]  # each polygon: its exterior ring, then its holes; float [K, 2] level-0 (x, y)
    name: str | None  # the class, None when unclassified


@dataclass
class RoiMasks:
    """Annotations on a mask grid: the tissue they draw (if any), the region of interest (if any), per-class masks."""

    tissue: np.ndarray | None
    region: np.ndarray | None
    classes: list[str]
    class_masks: list[np.ndarray]


def find_annotation_file(folder: Path, *names: str) -> Path | None:
    """`<folder>/<name>.geojson` (or .json) for the first name that has one."""
    for name in names:
        for suffix in SUFFIXES:
            if (path := folder / f"{name}{suffix}").is_file():
                return path
    return None


def _class_name(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict) and cls.get("name"):
        return str(cls["name"])
    if isinstance(cls, str) and cls:
        return cls
    return None


def read_annotations(path: str | Path) -> list[Annotation]:
    """Polygon and MultiPolygon features of a GeoJSON file (QuPath's export); other geometries are ignored."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(path, f"cannot read GeoJSON ({' '.join(str(err).split())})") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):  # QuPath's "export as array"
        features = data
    else:
        raise ConfigError(path, "not a GeoJSON FeatureCollection, Feature or list of Features")
    out = []
    for i, feature in enumerate(features):
        geometry = (feature or {}).get("geometry") or {}
        kind, coords = geometry.get("type"), geometry.get("coordinates")
        if kind not in ("Polygon", "MultiPolygon"):
            continue
        try:
            polygons = [coords] if kind == "Polygon" else list(coords)
            rings = [[np.asarray(ring, dtype=np.float64).reshape(-1, 2) for ring in poly] for poly in polygons]
        except (TypeError, ValueError):
            raise ConfigError(path, f"feature {i}: malformed {kind} coordinates") from None
        out.append(Annotation([r for r in rings if r and len(r[0]) >= 3], _class_name(feature.get("properties") or {})))
    return out


def _fill(polygons: list[list[np.ndarray]], shape, downsample: float, origin) -> np.ndarray:
    """Pixels whose centre lies inside the polygons (holes excluded), on a grid of `downsample` level-0 px."""
    from skimage.draw import polygon as fill_polygon

    mask = np.zeros(shape, dtype=bool)
    for rings in polygons:
        part = np.zeros(shape, dtype=bool)
        for k, ring in enumerate(rings):
            cols = (ring[:, 0] - origin[0]) / downsample - 0.5  # pixel (r, c) has its centre at level-0 (c + 0.5) * ds
            rows = (ring[:, 1] - origin[1]) / downsample - 0.5
            rr, cc = fill_polygon(rows, cols, shape)
            part[rr, cc] = k == 0  # the exterior fills, holes clear
        mask |= part
    return mask


def rasterize(annotations: list[Annotation], shape, downsample: float, origin=(0, 0)) -> RoiMasks:
    """The annotations on a mask grid of `shape` whose pixel (0, 0) sits at level-0 `origin`."""
    tissue = [a for a in annotations if a.name == TISSUE_CLASS]
    regions = [a for a in annotations if a.name != TISSUE_CLASS]
    classes = sorted({a.name for a in regions if a.name})
    return RoiMasks(
        tissue=_fill([p for a in tissue for p in a.polygons], shape, downsample, origin) if tissue else None,
        region=_fill([p for a in regions for p in a.polygons], shape, downsample, origin) if regions else None,
        classes=classes,
        class_masks=[_fill([p for a in regions if a.name == c for p in a.polygons], shape, downsample, origin)
                     for c in classes],
    )  # fmt: skip


def _rings(component: np.ndarray) -> list[np.ndarray]:
    """Exterior then hole rings of one connected component, in its own pixel coordinates (row, col)."""
    from scipy import ndimage
    from skimage import measure

    filled = ndimage.binary_fill_holes(component)
    rings = [max(measure.find_contours(np.pad(filled, 1).astype(np.uint8), 0.5), key=len)]
    holes, n = ndimage.label(filled & ~component)
    for k in range(1, n + 1):
        rings.append(max(measure.find_contours(np.pad(holes == k, 1).astype(np.uint8), 0.5), key=len))
    return [r - 1 for r in rings]  # undo the padding


def _collinear_removed(ring: np.ndarray) -> np.ndarray:
    """The closed ring without the vertices that lie on a straight run (most of a traced pixel outline): the same
    polygon, far fewer vertices. (skimage's approximate_polygon would do, but importing it costs ~1 s of scipy.)"""
    d = np.diff(ring, axis=0)
    turn = np.abs(d[:-1, 0] * d[1:, 1] - d[:-1, 1] * d[1:, 0]) > 1e-9
    return np.concatenate([ring[:1], ring[1:-1][turn], ring[-1:]])


def _orient(ring: np.ndarray, exterior: bool) -> np.ndarray:
    """GeoJSON's right-hand rule: exteriors counter-clockwise, holes clockwise (in x, y)."""
    x, y = ring[:, 0], ring[:, 1]
    area = np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])
    return ring if (area > 0) == exterior else ring[::-1]


def tissue_geojson(mask: np.ndarray, downsample: float, origin=(0, 0), name: str = TISSUE_CLASS) -> dict:
    """A FeatureCollection with one Polygon (with holes) per connected piece of `mask`, in level-0 pixels."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask)  # 4-connected, as find_contours traces: diagonal pixels are two pieces
    features = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        r0, c0 = box[0].start, box[1].start
        r1, c1 = box[0].stop, box[1].stop
        rings = []
        for i, ring in enumerate(_rings(labels[r0:r1, c0:c1] == k)):
            ring = _collinear_removed(ring)
            xy = np.stack([origin[0] + (ring[:, 1] + c0 + 0.5) * downsample,
                           origin[1] + (ring[:, 0] + r0 + 0.5) * downsample], axis=1)  # fmt: skip
            if len(xy) >= 4:
                rings.append(_orient(np.round(xy, 1), exterior=i == 0).tolist())
        if rings:
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {"objectType": "annotation", "classification": {"name": name, "color": TISSUE_COLOUR}},
            })  # fmt: skip
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: Path, collection: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(collection, separators=(",", ":")), encoding="utf-8")
    return path
