"""The fast TIFF reader: OpenSlide's pixels exactly, per-slide fallback, region reads, --reader choices."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathgen.errors import ConfigError, SlideError
from pathgen.pipeline.demo_cohort import SyntheticSlide, _aperio_description
from pathgen.slide import open_slide, plan_patches
from pathgen.slide.grid import read_patches
from pathgen.slide.tiff import TiffRegions
from pathgen.slide.tiler import tile_cohort
from pathgen.store import open_store

W, H, TILE = 600, 440, 128  # edges cut through tiles on both axes; level 1 is 150 x 110 (downsample exactly 4)


def _write_tiff(path: Path, compression, aperio: bool = False, **kwargs) -> Path:
    """A 2-level tiled TIFF of synthetic tissue: Aperio SVS (description) or generic TIFF (resolution tags)."""
    img = SyntheticSlide(W, H, seed=5).tile(0, 0, W, H)
    small = np.asarray(Image.fromarray(img).reduce(4))
    common = dict(photometric="rgb", tile=(TILE, TILE), compression=compression, metadata=None, **kwargs)
    if aperio:
        first = dict(description=_aperio_description(W, H, TILE, 0.25, 40, 90))
    else:
        first = dict(resolution=(40000, 40000), resolutionunit="CENTIMETER")  # 0.25 um/px
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, **common, **first)
        tif.write(small, **common, subfiletype=1)
    return path


def _split_tables(jpeg: bytes) -> tuple[bytes, bytes]:
    """(JPEGTables, abbreviated stream): the DQT/DHT segments moved out of a JPEG, as Aperio stores its tiles."""
    tables, rest, i = [], [jpeg[:2]], 2
    while jpeg[i + 1] != 0xDA:  # segments up to the start of scan
        n = 2 + int.from_bytes(jpeg[i + 2 : i + 4], "big")
        (tables if jpeg[i + 1] in (0xDB, 0xC4) else rest).append(jpeg[i : i + n])
        i += n
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", b"".join(rest) + jpeg[i:]


def _jpegtables_svs(path: Path) -> Path:
    """One-level Aperio SVS like Aperio's own: RGB JPEG tiles (no JFIF, no colour transform), shared JPEGTables."""
    import imagecodecs

    img = SyntheticSlide(W, H, seed=5).tile(0, 0, W, H)
    padded = np.full((-(-H // TILE) * TILE, -(-W // TILE) * TILE, 3), 255, np.uint8)
    padded[:H, :W] = img
    tiles = [padded[y : y + TILE, x : x + TILE] for y in range(0, H, TILE) for x in range(0, W, TILE)]
    split = [_split_tables(imagecodecs.jpeg8_encode(t, level=80, outcolorspace="RGB")) for t in tiles]
    tables = split[0][0]
    assert all(t == tables for t, _ in split)  # one quality, standard Huffman tables: shared by every tile
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            iter([stream for _, stream in split]), shape=(H, W, 3), dtype=np.uint8, photometric="rgb",
            tile=(TILE, TILE), compression="jpeg", compressionargs={"outcolorspace": "RGB"}, metadata=None,
            description=_aperio_description(W, H, TILE, 0.25, 40, 80), extratags=[(347, 7, len(tables), tables, True)],
        )  # fmt: skip
    page = tifffile.TiffFile(path).pages[0]
    assert page.jpegtables is not None and page.photometric == 2 and not page.is_jfif
    return path


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


SLIDES = {
    "svs-jpegtables-rgb": lambda p: _jpegtables_svs(p / "t.svs"),
    "svs-jpeg-ycbcr": lambda p: _write_tiff(p / "a.svs", "jpeg", aperio=True),  # what tifffile / most scanners write
    "svs-jpeg-rgb": lambda p: _write_tiff(  # Aperio's own: RGB JPEG without colour transform
        p / "b.svs", "jpeg", aperio=True, compressionargs={"level": 90, "outcolorspace": "RGB"}
    ),
    "tiff-deflate": lambda p: _write_tiff(p / "c.tif", "deflate"),
    "tiff-lzw": lambda p: _write_tiff(p / "d.tif", "lzw"),
    "tiff-raw": lambda p: _write_tiff(p / "e.tif", None),
    # Neither OpenSlide's read_region nor the fast path applies an embedded ICC profile: same raw pixels.
    "tiff-icc": lambda p: _write_tiff(p / "f.tif", "deflate", iccprofile=_srgb_profile()),
}


@pytest.fixture(scope="module", params=list(SLIDES))
def tiled_slide(request, tmp_path_factory) -> Path:
    return SLIDES[request.param](tmp_path_factory.mktemp(request.param))


def test_fast_path_pixels_equal_openslide(tiled_slide):
    with open_slide(tiled_slide) as fast, open_slide(tiled_slide, reader="openslide") as ref:
        assert fast.reader == "tifffile" and fast.reader_notice is None and ref.reader == "openslide"
        assert fast.level_dimensions == ref.level_dimensions
        assert fast.level_dimensions[0] == (W, H) and fast.level_dimensions[1:] in ([], [(W // 4, H // 4)])
        rng = np.random.default_rng(0)
        # Tile-straddling offsets and sizes, a whole tile, the last pixels, and regions running off the slide.
        boxes = [((0, 0), (TILE, TILE)), ((TILE - 1, TILE - 3), (3, 5)), ((100, 90), (300, 200))]
        boxes += [((W - 50, H - 40), (120, 100)), ((W - 1, 0), (1, H)), ((W + 5, H + 5), (8, 8))]
        boxes += [((int(x), int(y)), (int(w), int(h))) for x, y, w, h in rng.integers(1, 400, (6, 4))]
        for xy, size in boxes:
            np.testing.assert_array_equal(fast.read_region(xy, 0, size), ref.read_region(xy, 0, size), err_msg=str(xy))
        assert (fast.read_region((W - 10, H - 10), 0, (30, 30))[10:, 10:] == 255).all()  # beyond the slide: glass
        for x, y in [(0, 0), (4 * 37, 4 * 13), (4 * 140, 4 * 100)][: 3 * (fast.level_count - 1)]:  # level 1
            np.testing.assert_array_equal(fast.read_region((x, y), 1, (40, 30)), ref.read_region((x, y), 1, (40, 30)))
        np.testing.assert_array_equal(fast.thumbnail(64)[0], ref.thumbnail(64)[0])


def test_tiles_shared_by_neighbouring_regions_are_decoded_once(tiled_slide):
    with open_slide(tiled_slide) as slide:
        tiles = slide._backend.tiles
        decode, calls = tiles._decoders[0], []
        tiles._decoders[0] = lambda data, index, **kw: calls.append(index) or decode(data, index, **kw)
        # Rows of 100 px regions on 128 px tiles: every tile row is needed by two region rows.
        rows = [np.concatenate([slide.read_region((x, y), 0, (100, 100)) for x in range(0, 500, 100)], 1)
                for y in range(0, 400, 100)]  # fmt: skip
        assert len(calls) == len(set(calls)) == 4 * 4  # each of the 4 x 4 tiles under them decoded once
        np.testing.assert_array_equal(np.concatenate(rows), slide.read_region((0, 0), 0, (500, 400)))


def test_region_reads_equal_patch_reads(demo_slide):
    """read_patches cuts the same patches from a region as reading each alone, on both readers and levels."""
    for reader in ("auto", "openslide"):
        with open_slide(demo_slide, reader=reader) as slide:
            for mpp, level in ((0.25, 0), (1.0, 1), (0.4, 0)):  # level 0, level 1, and a resize (LANCZOS)
                plan = plan_patches(slide, mpp, 32, np.ones((1, 1), bool), 1e6, 0.0)
                assert plan.level == level and len(plan) > 20
                regions = np.empty((len(plan), 32, 32, 3), np.uint8)
                single = np.empty_like(regions)
                read_patches(slide, plan, plan.coords, regions, region_side=8 * plan.read_size)
                read_patches(slide, plan, plan.coords, single, region_side=0)
                np.testing.assert_array_equal(regions, single, err_msg=f"{reader} mpp {mpp}")


def _j2k_svs(path: Path) -> Path:
    """An Aperio SVS with JPEG 2000 (33003, YCbCr) tiles, which OpenSlide decodes and the fast path does not."""
    img = SyntheticSlide(256, 256, seed=1).tile(0, 0, 256, 256)
    with tifffile.TiffWriter(path) as tif:
        desc = _aperio_description(256, 256, 128, 0.25, 40, 70)
        tif.write(img, photometric="rgb", tile=(128, 128), compression=33003, description=desc, metadata=None)
    return path


def test_unsupported_slides_fall_back_to_openslide_with_the_reason(tmp_path, demo_slide, monkeypatch):
    j2k = _j2k_svs(tmp_path / "j2k.svs")
    with open_slide(j2k) as slide:
        assert slide.reader == "openslide" and "JP2000" in slide.reader_notice
        assert slide.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
    with pytest.raises(SlideError, match="reader 'tifffile' cannot read this slide: .*JP2000"):
        open_slide(j2k, reader="tifffile")

    rgba = tmp_path / "rgba.tif"
    pixels = np.full((64, 64, 4), 200, np.uint8)
    tifffile.imwrite(rgba, pixels, photometric="rgb", tile=(32, 32), extrasamples=["unassalpha"])
    with open_slide(rgba, mpp=0.5) as slide:
        assert slide.reader == "openslide" and "4 samples" in slide.reader_notice

    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    with open_slide(png, mpp=0.5) as slide:  # not a TIFF-family slide: OpenSlide by design, nothing to report
        assert slide.reader == "openslide" and slide.reader_notice is None

    # A decoder quirk no tag reveals: pixels one level off from OpenSlide's. The per-slide probe catches it.
    real_read = TiffRegions.read
    monkeypatch.setattr(TiffRegions, "read", lambda self, *a: np.clip(real_read(self, *a).astype(int) + 1, 0, 255))
    with open_slide(demo_slide) as slide:
        assert slide.reader == "openslide" and "differ from OpenSlide's" in slide.reader_notice


def test_tiling_is_identical_between_readers(demo_slide, tmp_path):
    for mpp in (0.25, 1.0):  # read at level 0, and at level 1
        stores = {}
        for reader in ("auto", "openslide"):
            out = tmp_path / f"{reader}_{mpp}"
            tile_cohort([demo_slide], out, mpp=mpp, patch_size=32, reader=reader, codec="lossless")
            stores[reader] = open_store(out / f"{demo_slide.stem}.zarr")
        fast, old = stores["auto"], stores["openslide"]
        assert (fast.attrs["reader"], old.attrs["reader"]) == ("tifffile", "openslide")
        assert (fast.attrs["reader_requested"], old.attrs["reader_requested"]) == ("auto", "openslide")
        assert len(fast) > 10
        np.testing.assert_array_equal(fast.coords, old.coords)
        np.testing.assert_array_equal(fast.tissue_fraction, old.tissue_fraction)
        np.testing.assert_array_equal(fast.read(np.arange(len(fast))), old.read(np.arange(len(old))))


def test_cohort_falls_back_per_slide_and_records_why(demo_slide, tmp_path, capsys):
    j2k = _j2k_svs(tmp_path / "j2k.svs")
    out = tmp_path / "out"
    tile_cohort([demo_slide, j2k], out, mpp=0.25, patch_size=32, tissue_threshold=0.0)
    with open_store(out / f"{demo_slide.stem}.zarr") as a, open_store(out / "j2k.zarr") as b:
        assert a.attrs["reader"] == "tifffile" and "reader_notice" not in a.attrs
        assert b.attrs["reader"] == "openslide" and "JP2000" in b.attrs["reader_notice"] and len(b) == 64
    assert f"notice: {j2k}: read by OpenSlide" in capsys.readouterr().err
    # Asking for the fast path where it cannot apply fails that slide alone, with the reason.
    rows = {Path(r.slide).name: r for r in _tile_rows([demo_slide, j2k], tmp_path / "strict", reader="tifffile")}
    assert rows[demo_slide.name].status == "ok"
    assert rows["j2k.svs"].status == "failed" and "JP2000" in rows["j2k.svs"].error
    with pytest.raises(ConfigError, match="--reader"):
        tile_cohort([demo_slide], tmp_path / "bad", reader="pyvips")
    assert not (tmp_path / "bad").exists()  # refused up front, nothing written


def _tile_rows(slides, out, **kwargs):
    from pathgen.store import read_manifest

    return read_manifest(tile_cohort(slides, out, mpp=0.25, patch_size=32, **kwargs))
