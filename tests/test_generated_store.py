"""generated.zarr: the schema, chunked resumable writes, the reader, and joining it to the training stores."""

import pickle

import numpy as np
import pytest
import zarr

from pathgen.store.generated import (
    KIND_INTERPOLATION,
    KIND_VIEW,
    GeneratedStoreError,
    GeneratedWriter,
    ItemTable,
    open_generated,
)

S = 8


def _items(n_views: int = 5, n_interp: int = 4) -> ItemTable:
    n = n_views + n_interp
    kind = np.array([KIND_VIEW] * n_views + [KIND_INTERPOLATION] * n_interp)
    source = np.stack([np.zeros(n), np.arange(n) % 3], axis=1)
    partner = np.where(kind[:, None] == KIND_VIEW, -1, np.stack([np.ones(n), np.arange(n) % 2], axis=1))
    alpha = np.where(kind == KIND_VIEW, 1.0, np.linspace(0.3, 0.7, n))
    return ItemTable(kind, source, partner, alpha, seed=np.arange(n) + 100)


ATTRS = {"stores": ["a.zarr", "b.zarr"], "store_ids": ["id-a" * 16, "id-b" * 16], "encoder_sha256": "e" * 64,
         "sampler": "dpm++", "steps": 20, "guidance_scale": 2.5}


def _image(i: int) -> np.ndarray:
    return np.full((S, S, 3), i * 10 % 256, dtype=np.uint8)


def _fill(writer: GeneratedWriter, chunks=None) -> None:
    for k in writer.pending() if chunks is None else chunks:
        start, stop = writer.chunk_range(k)
        writer.write_chunk(k, np.stack([_image(i) for i in range(start, stop)]))


def test_writes_exactly_the_schema_and_reads_back(tmp_path):
    path = tmp_path / "generated.zarr"
    writer = GeneratedWriter(path, _items(), S, ATTRS, chunk_items=4)
    assert writer.pending() == [0, 1, 2]
    _fill(writer)
    writer.close()
    root = zarr.open_group(path, mode="r")
    dtypes = {name: (str(root[name].dtype), root[name].shape) for name in ("images", "kind", "source", "partner",
                                                                          "alpha", "seed")}
    assert dtypes == {"images": ("uint8", (9, S, S, 3)), "kind": ("uint8", (9,)), "source": ("int64", (9, 2)),
                      "partner": ("int64", (9, 2)), "alpha": ("float32", (9,)), "seed": ("int64", (9,))}
    assert root.attrs["complete"] is True and root.attrs["schema_version"] == 1 and root.attrs["image_size"] == S
    store = open_generated(path)
    assert len(store) == 9 and store.stores == ATTRS["stores"] and store.attrs["encoder_sha256"] == "e" * 64
    assert (store.items.partner[store.items.kind == KIND_VIEW] == -1).all()
    assert store._fast is not None  # the patch stores' fast single-image reader serves these too
    for i in range(9):
        np.testing.assert_array_equal(store.image(i), _image(i))
    copy = pickle.loads(pickle.dumps(store))  # what a DataLoader worker gets
    np.testing.assert_array_equal(copy.image(5), _image(5))


def test_a_killed_run_resumes_the_missing_chunks_only(tmp_path):
    path = tmp_path / "generated.zarr"
    first = GeneratedWriter(path, _items(), S, ATTRS, chunk_items=4)
    _fill(first, chunks=[0, 2])
    (path / "images" / "c" / "1.abc.partial").parent.mkdir(parents=True, exist_ok=True)
    (path / "images" / "c" / "1.abc.partial").write_bytes(b"half a shard")  # a write the kill interrupted
    with pytest.raises(GeneratedStoreError, match="unfinished"):
        open_generated(path)
    resumed = GeneratedWriter(path, _items(), S, ATTRS, chunk_items=4)
    assert resumed.pending() == [1] and not list(path.rglob("*.partial"))
    _fill(resumed)
    resumed.close()
    store = open_generated(path)
    assert [int(store.image(i)[0, 0, 0]) for i in range(9)] == [i * 10 for i in range(9)]
    assert GeneratedWriter(path, _items(), S, ATTRS, chunk_items=4).pending() == []  # complete: nothing to redo


def test_reopening_with_other_settings_refuses_to_mix_generations(tmp_path):
    path = tmp_path / "generated.zarr"
    GeneratedWriter(path, _items(), S, ATTRS, chunk_items=4)
    with pytest.raises(GeneratedStoreError, match="guidance_scale differ"):
        GeneratedWriter(path, _items(), S, {**ATTRS, "guidance_scale": 3.0}, chunk_items=4)
    with pytest.raises(GeneratedStoreError, match="item table differ"):
        GeneratedWriter(path, _items(n_views=4, n_interp=5), S, ATTRS, chunk_items=4)
    (tmp_path / "other.zarr").mkdir()
    with pytest.raises(GeneratedStoreError, match="not a generated-views store"):
        GeneratedWriter(tmp_path / "other.zarr", _items(), S, ATTRS)
    with pytest.raises(GeneratedStoreError, match="not found"):
        open_generated(tmp_path / "missing.zarr")
    with pytest.raises(GeneratedStoreError, match="3 chunks are not written"):
        GeneratedWriter(path, _items(), S, ATTRS, chunk_items=4).close()


def test_joins_training_stores_by_content_id_and_names_both_checksums_when_re_tiled(tmp_path):
    path = tmp_path / "generated.zarr"
    writer = GeneratedWriter(path, _items(), S, ATTRS)
    _fill(writer)
    writer.close()
    store = open_generated(path)
    # moved/renamed stores still join by content id; a store the set was not made from gets -1
    index = store.match_stores(["moved/b.zarr", "c.zarr", "elsewhere/a.zarr"], [ATTRS["store_ids"][1], "id-c",
                                                                               ATTRS["store_ids"][0]])
    assert index.tolist() == [1, -1, 0]
    with pytest.raises(GeneratedStoreError, match=r"a.zarr has changed since generation \(content id new"):
        store.match_stores(["a.zarr"], ["new" * 20])
    with pytest.raises(GeneratedStoreError, match="made from other stores"):
        store.match_stores(["x.zarr", "y.zarr"], ["x" * 64, "y" * 64])
    store.check_encoder("e" * 64, "enc/")
    with pytest.raises(GeneratedStoreError, match="encoder sha256 eeeeeeeeeeee, but enc/ has sha256 ffffffffffff"):
        store.check_encoder("f" * 64, "enc/")
