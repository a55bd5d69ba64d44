"""Patch stores: round trip against OpenSlide, CLAM/TRIDENT attributes, atomicity, find_stores."""

import io
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
from PIL import Image

import pathgen.store.writer as store_writer
from pathgen.errors import StoreError
from pathgen.slide.tiler import tile_cohort
from pathgen.store import PatchStoreWriter, find_stores, open_store

TILE = dict(mpp=0.25, patch_size=64, workers=0)  # level 0 of the demo slides: patches are exactly read_region output


@pytest.fixture(scope="module", params=["zarr", "h5"])
def tiled(request, demo_slide, tmp_path_factory) -> Path:
    """The demo slide tiled at level 0 in each format (default JPEG codec); returns the store path."""
    out = tmp_path_factory.mktemp(f"tiled_{request.param}")
    tile_cohort([demo_slide], out, fmt=request.param, **TILE)
    suffix = ".zarr" if request.param == "zarr" else ".h5"
    return out / f"{demo_slide.stem}{suffix}"


def _openslide_rgb(slide_path: Path, xy, level: int, size: int) -> np.ndarray:
    with openslide.OpenSlide(str(slide_path)) as osr:
        rgba = np.asarray(osr.read_region((int(xy[0]), int(xy[1])), level, (size, size)), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0  # composite onto white, as pathgen does
    return rgba[..., :3] * alpha + 255.0 * (1 - alpha)


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_round_trip_matches_openslide(fmt, demo_slide, tmp_path):
    # stored losslessly, so only the slide's JPEG tile decoders (tifffile's vs OpenSlide's) can differ
    tile_cohort([demo_slide], tmp_path, fmt=fmt, codec="lossless", **TILE)
    with open_store(tmp_path / f"{demo_slide.stem}.{'zarr' if fmt == 'zarr' else 'h5'}") as store:
        assert len(store) > 10
        assert store.coords.dtype == np.int64 and store.coords.shape == (len(store), 2)
        assert store.tissue_fraction.dtype == np.float32
        assert (store.tissue_fraction >= 0.5).all()
        rng = np.random.default_rng(0)
        for i in rng.choice(len(store), 5, replace=False):
            patch = store[int(i)]
            assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8
            expected = _openslide_rgb(demo_slide, store.coords[i], 0, 64)
            assert np.abs(patch.astype(np.float32) - expected).mean() < 2.0  # JPEG decoders may differ by a hair
        batch = store.read([3, 1, 3])
        assert batch.shape == (3, 64, 64, 3)
        np.testing.assert_array_equal(batch[0], store[3])
        np.testing.assert_array_equal(batch[1], store[1])


def test_attrs_include_provenance_and_clam_trident(tiled, demo_slide):
    with open_store(tiled) as store:
        attrs = store.attrs
    assert attrs["complete"] is True
    assert Path(attrs["slide_path"]) == demo_slide.resolve()
    assert attrs["slide_size"] == demo_slide.stat().st_size
    assert attrs["slide_mtime"] == demo_slide.stat().st_mtime
    assert attrs["mpp_level0"] == pytest.approx(0.25) and attrs["target_mpp"] == 0.25
    assert attrs["patch_size"] == 64 and attrs["patch_size_level0"] == 64
    assert attrs["level0_width"] == 1024 and attrs["level0_height"] == 768
    assert attrs["level0_magnification"] == 40 and attrs["target_magnification"] == 40
    assert attrs["patch_level"] == 0 and attrs["downsample"] == [1.0, 1.0]
    assert attrs["reader"] == "tifffile" and attrs["reader_requested"] == "auto" and "reader_notice" not in attrs
    assert attrs["codec"] == "jpeg" and attrs["quality"] == 90
    assert attrs["schema_version"] == 1 and attrs["pathgen_version"]


def test_h5_reads_like_clam_and_trident(tmp_path, demo_slide):
    """Read the HDF5 store the way CLAM's Whole_Slide_Bag_FP and TRIDENT's coords readers do."""
    tile_cohort([demo_slide], tmp_path, fmt="h5", **TILE)
    with h5py.File(tmp_path / f"{demo_slide.stem}.h5", "r") as f:
        coords = f["coords"][:]
        assert coords.dtype == np.int64 and coords.ndim == 2 and coords.shape[1] == 2
        # CLAM: read_region(coord, patch_level, (patch_size, patch_size))
        patch_level, patch_size = int(f["coords"].attrs["patch_level"]), int(f["coords"].attrs["patch_size"])
        region = _openslide_rgb(demo_slide, coords[0], patch_level, patch_size)
        stored = np.asarray(Image.open(io.BytesIO(f["images"][0].tobytes())))  # JPEG bytes, as README documents
        assert np.abs(region - stored).mean() < 2.0
        # TRIDENT's read_coords: attrs = dict(f["coords"].attrs), then the level-0 footprint and magnifications
        attrs = dict(f["coords"].attrs)
        keys = ("patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap", "name")
        assert set(keys) <= set(attrs)
        src_mag, target_mag = attrs["level0_magnification"], attrs["target_magnification"]
        assert attrs["patch_size_level0"] == attrs["patch_size"] * src_mag // target_mag
        assert (int(attrs["level0_width"]), int(attrs["level0_height"])) == (1024, 768)
        assert (coords + int(attrs["patch_size_level0"]) <= [1024, 768]).all()


def _write(path: Path, n: int = 5, size: int = 8, close: bool = True, **kwargs) -> PatchStoreWriter:
    coords = np.stack([np.arange(n) * size, np.zeros(n)], axis=1)
    writer = PatchStoreWriter(path, coords, np.linspace(0, 1, n), size, {"slide_path": "x.svs"}, **kwargs)
    if not kwargs.get("coords_only"):
        writer.write(0, np.full((n, size, size, 3), 7, dtype=np.uint8))
    if close:
        writer.close()
    return writer


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_open_store_rejects_unfinished(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    writer = _write(path, close=False)
    assert writer.tmp.exists() and not path.exists()
    with pytest.raises(StoreError, match="unfinished"):
        open_store(writer.tmp)
    if suffix == ".h5":
        writer._root.close()
    writer.tmp.rename(path)  # a temp store renamed by hand still lacks the `complete` attribute
    with pytest.raises(StoreError, match="unfinished"):
        open_store(path)
    with pytest.raises(StoreError, match="not found"):
        open_store(tmp_path / f"missing{suffix}")


def test_open_store_rejects_malformed(tmp_path):
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(StoreError, match="junk.zarr"):
        open_store(tmp_path / "junk.zarr")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="junk.h5"):
        open_store(tmp_path / "junk.h5")
    (tmp_path / "x.npy").write_bytes(b"")
    with pytest.raises(StoreError, match="not a patch store"):
        open_store(tmp_path / "x.npy")


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_writer_context_manager_removes_temp_on_error(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with pytest.raises(RuntimeError):
        with _write(path, close=False):
            raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_coords_only_and_labels(tmp_path, suffix):
    _write(tmp_path / f"c{suffix}", coords_only=True)
    with open_store(tmp_path / f"c{suffix}") as store:
        assert len(store) == 5 and not store.has_images and store.labels is None
        with pytest.raises(StoreError, match="coords-only"):
            store[0]
    _write(tmp_path / f"l{suffix}", labels=np.array([0, 1, 1, 0, 1]), classes=["a", "b"])
    with open_store(tmp_path / f"l{suffix}") as store:
        assert store.labels.tolist() == [0, 1, 1, 0, 1] and store.attrs["classes"] == ["a", "b"]
        assert (store[4] == 7).all()
        with pytest.raises(IndexError):
            store[5]


def test_zarr_store_is_a_handful_of_files(tmp_path):
    _write(tmp_path / "s.zarr", n=300)
    files = [p for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()]
    assert len(files) < 10  # sharded: not one file per patch


def test_find_stores(tmp_path):
    for name in ("a.zarr", "sub/b.h5", "sub/c.zarr"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _write(tmp_path / name)
    (tmp_path / "sub" / "d.zarr.tmp-123").mkdir()  # temp stores never count
    every = find_stores(tmp_path)
    assert [p.name for p in every] == ["a.zarr", "b.h5", "c.zarr"]
    assert [p.name for p in find_stores(str(tmp_path / "sub" / "*.zarr"))] == ["c.zarr"]
    assert [p.name for p in find_stores([tmp_path / "a.zarr", tmp_path / "a.zarr"])] == ["a.zarr"]
    (tmp_path / "manifest.csv").write_text(
        "slide,status,n_patches,seconds,error,store\n"
        "a.svs,ok,5,1.0,,a.zarr\nb.svs,failed,0,0.1,boom,\nc.svs,skipped,5,0,,sub/c.zarr\n"
    )
    assert [p.name for p in find_stores(tmp_path / "manifest.csv")] == ["a.zarr", "c.zarr"]
    with pytest.raises(StoreError, match="nothing"):
        find_stores(tmp_path / "nothing")


def test_direct_shard_writes_are_what_zarr_writes(tmp_path, monkeypatch):
    """The tiler's fast shard writer produces byte-identical files to Zarr's own writer (and Zarr reads them)."""
    from pathgen.store.writer import write_images_shard

    monkeypatch.setattr(store_writer, "SHARD_BYTES", 8 * 8 * 3 * 16)  # 16 patches per shard
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    coords = np.zeros((40, 2))
    with PatchStoreWriter(tmp_path / "zarr.zarr", coords, np.ones(40), 8, {}) as ref:
        ref.write(0, images)
    with PatchStoreWriter(tmp_path / "fast.zarr", coords, np.ones(40), 8, {}) as fast:
        assert fast.shard == 16
        for start in (32, 0, 16):  # any order; the last shard is partial
            write_images_shard(fast.images_path, start, images[start : start + 16], fast.shard)
            fast.mark_written(start, len(images[start : start + 16]))  # as the tiler does for its workers' shards
    ref_files = sorted((tmp_path / "zarr.zarr" / "images" / "c").rglob("*"))
    assert len([p for p in ref_files if p.is_file()]) == 3
    for p in ref_files:
        if p.is_file():
            assert p.read_bytes() == (tmp_path / "fast.zarr" / p.relative_to(tmp_path / "zarr.zarr")).read_bytes()
    with open_store(tmp_path / "fast.zarr") as store:
        np.testing.assert_array_equal(store.read(np.arange(40)), images)
    with pytest.raises(ValueError, match="shard"):
        write_images_shard(fast.images_path, 5, images[:3], 16)


def test_fast_patch_reads_match_zarr(tmp_path, monkeypatch):
    """PatchStore's direct shard reader returns exactly what Zarr returns, fill for unwritten patches."""
    monkeypatch.setattr(store_writer, "SHARD_BYTES", 8 * 8 * 3 * 16)  # 16 patches per shard
    images = np.random.default_rng(1).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    with PatchStoreWriter(tmp_path / "s.zarr", np.zeros((40, 2)), np.ones(40), 8, {}) as w:
        w.write(0, images[:16])  # shard 0 whole, shard 1 never written, shard 2 partly
        w.write(32, images[32:36])
        w.mark_written(0, 40)  # close() refuses a store with holes; a store written by another tool may have them
    import zarr

    reference = zarr.open_array(tmp_path / "s.zarr" / "images", mode="r")[:]
    with open_store(tmp_path / "s.zarr") as store:
        assert store._fast is not None
        for i in range(40):
            np.testing.assert_array_equal(store[i], reference[i])
        assert (store[20] == 255).all() and (store[39] == 255).all()
    shard0 = tmp_path / "s.zarr" / "images" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard0.read_bytes())
    data[-10] ^= 0xFF  # damage the index
    shard0.write_bytes(bytes(data))
    with open_store(tmp_path / "s.zarr") as store, pytest.raises(StoreError, match="checksum"):
        store[3]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_content_id_is_stable_and_changes_with_what_tiling_decided(tmp_path, suffix):
    _write(tmp_path / f"a{suffix}")
    _write(tmp_path / f"b{suffix}")
    _write(tmp_path / f"c{suffix}", n=4)  # another grid
    ids = {}
    for name in "abc":
        with open_store(tmp_path / f"{name}{suffix}") as store:
            ids[name] = store.content_id
            assert store.content_id == ids[name] and len(ids[name]) == 64
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"]


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_close_refuses_a_store_with_patches_never_written(tmp_path, fmt):
    images = np.full((10, 8, 8, 3), 7, np.uint8)
    path = tmp_path / f"holes.{fmt}"
    writer = PatchStoreWriter(path, np.zeros((10, 2)), np.ones(10), 8, {}, fmt=fmt)
    writer.write(0, images[:4])
    writer.write(6, images[6:])
    with pytest.raises(StoreError, match="2 of 10 patches were never written .first: 4"):
        writer.close()
    writer.abort()
    assert not path.exists() and not list(tmp_path.iterdir())


def test_close_syncs_the_data_before_the_rename(tmp_path, monkeypatch):
    """A crash after the rename must not leave a 'complete' store whose shards never reached the disk."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or
                        real_fsync(fd))  # fmt: skip
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    with PatchStoreWriter(tmp_path / "s.zarr", np.zeros((5, 2)), np.ones(5), 8, {}) as w:
        w.write(0, images)
    renamed = events.index(("replace", str(tmp_path / "s.zarr")))
    synced = [p for kind, p in events[:renamed] if kind == "fsync"]
    assert any(p.endswith("/images/c/0/0/0/0") for p in synced) and any(p.endswith("zarr.json") for p in synced)
    assert ("fsync", str(tmp_path.resolve())) in events[renamed:]  # the rename itself


def test_store_reads_the_same_without_zarrs_private_modules(tmp_path, monkeypatch):
    """The fast shard reader leans on zarr.core (private); if it moves, reading falls back to zarr's public API."""
    import sys

    images = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    with PatchStoreWriter(tmp_path / "s.zarr", np.zeros((6, 2)), np.ones(6), 8, {}) as w:
        w.write(0, images)
    with open_store(tmp_path / "s.zarr") as store:
        assert store._fast is not None
        np.testing.assert_array_equal(np.stack([store[i] for i in range(6)]), images)
    monkeypatch.setitem(sys.modules, "zarr.core.chunk_key_encodings", None)  # import now raises ImportError
    with open_store(tmp_path / "s.zarr") as store:
        assert store._fast is None
        np.testing.assert_array_equal(np.stack([store[i] for i in range(6)]), images)
        np.testing.assert_array_equal(store.read([5, 0]), images[[5, 0]])


def test_a_shard_written_by_another_process_is_synced_as_it_is_marked(tmp_path, monkeypatch):
    """The tiler marks each worker's shard with sync=True: it reaches the disk then, not all at once in close()."""
    from pathgen.store.writer import shard_file, write_images_shard

    monkeypatch.setattr(store_writer, "SHARD_BYTES", 8 * 8 * 3 * 4)  # 4 patches per shard
    synced = []
    real = store_writer.fsync_tree
    monkeypatch.setattr(store_writer, "fsync_tree", lambda p: synced.append(Path(p)) or real(p))
    images = np.random.default_rng(3).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    with PatchStoreWriter(tmp_path / "s.zarr", np.zeros((8, 2)), np.ones(8), 8, {}) as w:
        write_images_shard(w.images_path, 4, images[4:], w.shard)
        w.mark_written(4, 4, sync=True)
        assert synced == [shard_file(w.images_path, 4 // w.shard)] and synced[0].is_file()
        w.write(0, images[:4])  # written here, through Zarr: synced with the rest at close
        assert len(synced) == 1
    assert synced[-1] == w.tmp  # close() still flushes the whole store
    with open_store(tmp_path / "s.zarr") as store:
        np.testing.assert_array_equal(store.read(np.arange(8)), images)
