"""Storage codecs: round trips, size ordering, the codec recorded in the store, every reader decoding it unasked."""

import io

import h5py
import numpy as np
import pytest
import zarr
from PIL import Image

import pathgen.store.writer as store_writer
from pathgen.errors import ConfigError
from pathgen.slide import open_slide
from pathgen.slide.tiler import tile_cohort
from pathgen.store import PatchDataset, PatchStoreWriter, open_store
from pathgen.store.codecs import CODECS, PatchCodec
from pathgen.store.writer import write_images_shard


@pytest.fixture(scope="module")
def patches(demo_slide) -> np.ndarray:
    """16 tissue patches of 64 px from the demo slide (JPEG codecs need real images, not noise)."""
    with open_slide(demo_slide) as slide:
        tiles = np.stack([slide.read_region((384 + 64 * (i % 4), 256 + 64 * (i // 4)), 0, (64, 64)) for i in range(16)])
    assert not (tiles == 255).all(axis=(1, 2, 3)).any()  # Zarr skips chunks equal to the fill value
    return tiles


def test_round_trips_and_sizes(patches):
    sizes = {}
    for name in CODECS:
        codec = PatchCodec(name, 90)
        blobs = [codec.encode(p) for p in patches]
        decoded = np.stack([codec.decode(b, p.shape) for b, p in zip(blobs, patches, strict=True)])
        assert decoded.dtype == np.uint8 and decoded.flags.writeable
        error = np.abs(decoded.astype(int) - patches).mean()
        assert error == 0 if name == "lossless" else 0 < error < 3, name
        sizes[name] = sum(map(len, blobs))
    assert sizes["lossless"] > 3 * max(sizes["jpeg"], sizes["webp"])
    low = sum(len(PatchCodec("jpeg", 50).encode(p)) for p in patches)
    assert low < sizes["jpeg"]
    with pytest.raises(ConfigError, match="--codec"):
        PatchCodec("png")
    with pytest.raises(ConfigError, match="--quality"):
        PatchCodec("jpeg", 0)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_every_reader_decodes_every_codec_unasked(patches, tmp_path, codec, fmt, monkeypatch):
    monkeypatch.setattr(store_writer, "SHARD_BYTES", 64 * 64 * 3 * 8)  # 8 patches per shard: 2 shards
    path = tmp_path / f"s.{fmt}"
    pc = PatchCodec(codec, 85)
    coords = np.zeros((len(patches), 2))
    with PatchStoreWriter(path, coords, np.ones(len(patches)), 64, {"name": "s"}, codec=pc) as writer:
        writer.write(0, patches[:8])
        if fmt == "zarr":  # the tiler's workers write whole shards straight to their files
            write_images_shard(writer.images_path, 8, patches[8:], writer.shard, pc)
            writer.mark_written(8, 8)
        else:
            writer.write(8, patches[8:])
    expected = np.stack([pc.decode(pc.encode(p), p.shape) for p in patches])  # what the codec keeps
    with open_store(path) as store:
        assert store.attrs["codec"] == codec and (store.attrs.get("quality") == 85) == pc.lossy
        assert fmt == "h5" or store._fast is not None  # the direct shard reader understands every codec
        np.testing.assert_array_equal(np.stack([store[i] for i in range(len(store))]), expected)
        np.testing.assert_array_equal(store.read([15, 2, 2]), expected[[15, 2, 2]])
    dataset = PatchDataset([path], transform=lambda img: np.asarray(img))
    np.testing.assert_array_equal(dataset[3][0], expected[3])
    # Plain Zarr (pathgen.store imported: its codec is registered) and plain h5py + PIL, as the README says.
    if fmt == "zarr":
        np.testing.assert_array_equal(zarr.open_array(path / "images", mode="r")[:], expected)
    else:
        with h5py.File(path, "r") as f:
            images = f["images"]
            if pc.lossy:
                assert images.attrs["codec"] == codec and images.shape == (16,)
                decoded = np.asarray(Image.open(io.BytesIO(images[5].tobytes())).convert("RGB"))
                assert np.abs(decoded.astype(int) - expected[5]).max() <= 2  # PIL's decoder, not imagecodecs'
            else:
                np.testing.assert_array_equal(images[:], expected)


def test_direct_jpeg_shard_writes_are_what_zarr_writes(patches, tmp_path, monkeypatch):
    monkeypatch.setattr(store_writer, "SHARD_BYTES", 64 * 64 * 3 * 8)
    codec = PatchCodec("jpeg", 90)
    coords = np.zeros((16, 2))
    with PatchStoreWriter(tmp_path / "zarr.zarr", coords, np.ones(16), 64, {}, codec=codec) as ref:
        ref.write(0, patches)
    with PatchStoreWriter(tmp_path / "fast.zarr", coords, np.ones(16), 64, {}, codec=codec) as fast:
        for start in (8, 0):
            write_images_shard(fast.images_path, start, patches[start : start + 8], fast.shard, codec)
            fast.mark_written(start, 8)
    for k in (0, 1):
        shard = f"images/c/{k}/0/0/0"
        assert (tmp_path / "zarr.zarr" / shard).read_bytes() == (tmp_path / "fast.zarr" / shard).read_bytes()


def test_tiling_records_the_codec_and_retiles_when_it_changes(demo_slide, tmp_path):
    def tile(**kwargs):
        return tile_cohort([demo_slide], tmp_path, mpp=0.25, patch_size=64, **kwargs).read_text()

    assert ",ok," in tile()  # default: JPEG q90
    store = tmp_path / f"{demo_slide.stem}.zarr"
    with open_store(store) as s:
        assert (s.attrs["codec"], s.attrs["quality"]) == ("jpeg", 90)
        jpeg_bytes = sum(p.stat().st_size for p in (store / "images").rglob("*") if p.is_file())
    assert ",skipped," in tile(codec="jpeg", quality=90)
    assert ",ok," in tile(codec="jpeg", quality=70)
    assert ",ok," in tile(codec="lossless")
    with open_store(store) as s:
        assert s.attrs["codec"] == "lossless" and "quality" not in s.attrs
        lossless_bytes = sum(p.stat().st_size for p in (store / "images").rglob("*") if p.is_file())
    assert lossless_bytes > 3 * jpeg_bytes
    with pytest.raises(ConfigError, match="--codec"):
        tile(codec="jpeg2000")
