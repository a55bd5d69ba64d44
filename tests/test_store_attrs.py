"""Store attributes: CLAM and TRIDENT read the stored area back (plain h5py + openslide), magnifications."""

import h5py
import numpy as np
import openslide
import pytest
from PIL import Image

from pathgen.slide.tiler import tile_cohort

# 0.6 mpp on a 0.25 mpp slide with levels /1 and /4: read 77 px at level 0, resize to 32 (no level has the target).
# 1.5 mpp: read 48 px at level 1 (/4), resize to 32.
CASES = [(0.6, 0, 77), (1.5, 1, 48)]


def _tile_h5(slide, out, mpp):
    # lossless: `images` as the plain [N, S, S, 3] array, read here with h5py as other tools would
    tile_cohort([slide], out, mpp=mpp, patch_size=32, fmt="h5", codec="lossless", tissue_threshold=0.2, workers=0)
    return out / f"{slide.stem}.h5"


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("mpp, level, read_size", CASES)
def test_clam_reads_the_stored_area(demo_slide, tmp_path, mpp, level, read_size):
    """CLAM's Whole_Slide_Bag_FP: read_region(coord, attrs['patch_level'], (attrs['patch_size'],) * 2), then resize."""
    store = _tile_h5(demo_slide, tmp_path, mpp)
    osr = openslide.OpenSlide(str(demo_slide))
    with h5py.File(store, "r") as f:
        attrs = f["coords"].attrs
        assert (int(attrs["patch_level"]), int(attrs["patch_size"])) == (level, read_size)
        size, target = int(attrs["patch_size"]), int(attrs["target_patch_size"])
        assert target == 32 and size // int(attrs["custom_downsample"]) == read_size
        coords, images = f["coords"][:], f["images"]
        assert len(coords) > 3
        for i in range(0, len(coords), max(1, len(coords) // 8)):
            region = osr.read_region(tuple(int(v) for v in coords[i]), int(attrs["patch_level"]), (size, size))
            clam = np.asarray(region.convert("RGB").resize((target, target)))
            assert _close(clam, images[i]) < 4, f"patch {i}"


@pytest.mark.parametrize("mpp, level, read_size", CASES)
def test_trident_reads_the_stored_area(demo_slide, tmp_path, mpp, level, read_size):
    """TRIDENT's coords format: patch_size at target_magnification, read over patch_size * level0 / target px."""
    store = _tile_h5(demo_slide, tmp_path, mpp)
    osr = openslide.OpenSlide(str(demo_slide))
    with h5py.File(store, "r") as f:
        attrs = dict(f["coords"].attrs)
        coords, images = f["coords"][:], f["images"]
        l0, target_mag = attrs["level0_magnification"], attrs["target_magnification"]
        assert float(l0).is_integer()
        src = round(attrs["patch_size"] * l0 / target_mag)  # WSIPatcher.patch_size_src
        assert src == attrs["patch_size_level0"] == round(32 * mpp / 0.25)
        # TRIDENT's legacy (CLAM / Fishing-Rod) reader: patch_size at mag / (downsample * custom_downsample).
        legacy_mag = int(l0 / (osr.level_downsamples[attrs["patch_level"]] * attrs["custom_downsample"]))
        assert round(attrs["patch_size"] * l0 / legacy_mag) == src
        for i in range(0, len(coords), max(1, len(coords) // 8)):
            region = osr.read_region(tuple(int(v) for v in coords[i]), 0, (src, src)).convert("RGB")
            trident = region.resize((attrs["patch_size"],) * 2).resize((32, 32), Image.Resampling.LANCZOS)
            assert _close(np.asarray(trident), images[i]) < 6, f"patch {i}"


def _attrs(store_path):
    from pathgen.store import open_store

    with open_store(store_path) as store:
        return store.attrs


def test_level0_magnification_is_whole_and_follows_an_mpp_override(tmp_path, demo_slide):
    from pathgen.pipeline.demo_cohort import SyntheticSlide, write_svs

    odd = tmp_path / "odd.svs"  # 0.3 um/px and no objective power: 10 / 0.3 = 33.3x
    write_svs(odd, 512, 384, SyntheticSlide(512, 384, seed=1).tile, mpp=0.3, magnification=None, tile_size=128)
    tile_cohort([odd], tmp_path / "a", mpp=0.6, patch_size=32, coords_only=True, workers=0)
    attrs = _attrs(tmp_path / "a" / "odd.zarr")
    assert attrs["level0_magnification"] == 33 and attrs["target_magnification"] == pytest.approx(16.5)

    # The demo slide says 40x at 0.25 um/px; told it is really 0.5 um/px, level 0 is a 20x scan.
    (tmp_path / "list.csv").write_text(f"slide,mpp\n{demo_slide},0.5\n")
    tile_cohort([tmp_path / "list.csv"], tmp_path / "b", mpp=1.0, patch_size=32, coords_only=True, workers=0)
    attrs = _attrs(tmp_path / "b" / f"{demo_slide.stem}.zarr")
    assert (attrs["level0_magnification"], attrs["target_magnification"]) == (20, 10)
