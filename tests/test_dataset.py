"""PatchDataset: random access across several stores, labels, tissue filter, DataLoader workers."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pathgen.errors import StoreError
from pathgen.store import PatchDataset, PatchStoreWriter

SIZE = 8


def _store(path: Path, n: int, value: int, tissue=None, labels=None, classes=None) -> Path:
    """A store whose patch i is filled with value + i, so any read can be checked."""
    coords = np.stack([np.arange(n) * SIZE, np.zeros(n)], axis=1)
    tissue = np.ones(n) if tissue is None else tissue
    with PatchStoreWriter(path, coords, tissue, SIZE, {}, labels=labels, classes=classes) as w:
        w.write(0, (value + np.arange(n, dtype=np.uint8))[:, None, None, None] * np.ones((1, SIZE, SIZE, 3), np.uint8))
    return path


@pytest.fixture
def stores(tmp_path) -> list[Path]:
    return [
        _store(tmp_path / "a.zarr", 4, 10),
        _store(tmp_path / "b.h5", 3, 100),
        _store(tmp_path / "c.zarr", 5, 200, tissue=np.array([0.9, 0.1, 0.8, 0.2, 1.0])),
    ]


def _value(img: Image.Image) -> int:
    arr = np.asarray(img)
    assert arr.shape == (SIZE, SIZE, 3) and (arr == arr[0, 0, 0]).all()
    return int(arr[0, 0, 0])


def test_random_access_with_slide_labels(stores):
    ds = PatchDataset(stores, labels=[0, 1, 2])
    assert len(ds) == 12
    expected = [(10 + i, 0) for i in range(4)] + [(100 + i, 1) for i in range(3)] + [(200 + i, 2) for i in range(5)]
    for i in np.random.default_rng(0).permutation(len(ds)):
        img, label = ds[int(i)]
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert (_value(img), label) == expected[i]
    assert ds.classes is None


def test_min_tissue_transform_and_default_labels(stores):
    ds = PatchDataset(stores, transform=lambda im: torch.from_numpy(np.array(im)).float(), min_tissue=0.5)
    assert len(ds) == 4 + 3 + 3  # c.zarr keeps patches 0, 2, 4
    values = sorted(int(ds[i][0][0, 0, 0]) for i in range(len(ds)))
    assert values[-3:] == [200, 202, 204]
    assert {ds[i][1] for i in range(len(ds))} == {-1}


def test_a_transform_that_accepts_arrays_gets_the_stored_array(stores):
    seen = []

    class Record:
        accepts_arrays = True

        def __call__(self, patch):
            seen.append(patch)
            return int(patch[0, 0, 0])

    ds = PatchDataset(stores, transform=Record())
    assert [ds[i][0] for i in range(len(ds))] == [10, 11, 12, 13, 100, 101, 102, 200, 201, 202, 203, 204]
    assert all(isinstance(p, np.ndarray) and p.dtype == np.uint8 and p.shape == (SIZE, SIZE, 3) for p in seen)
    assert all(p.flags.writeable for p in seen)  # torch.from_numpy needs no defensive copy


def test_store_labels_and_classes(tmp_path):
    a = _store(tmp_path / "a.zarr", 3, 0, labels=np.array([0, 1, 0]), classes=["normal", "lesion"])
    b = _store(tmp_path / "b.h5", 2, 50, labels=np.array([1, 1]), classes=["normal", "lesion"])
    ds = PatchDataset([a, b])
    assert [ds[i][1] for i in range(len(ds))] == [0, 1, 0, 1, 1]
    assert ds.classes == ["normal", "lesion"]
    c = _store(tmp_path / "c.zarr", 1, 0, labels=np.array([0]), classes=["other", "names"])
    with pytest.raises(StoreError, match="classes"):
        PatchDataset([a, c])


def test_rejects_bad_inputs(stores, tmp_path):
    with pytest.raises(StoreError, match="labels"):
        PatchDataset(stores, labels=[0, 1])
    coords_only = tmp_path / "co.zarr"
    PatchStoreWriter(coords_only, np.zeros((2, 2)), np.ones(2), SIZE, {}, coords_only=True).close()
    with pytest.raises(StoreError, match="coords-only"):
        PatchDataset([coords_only])


def test_dataloader_workers_open_their_own_handles(stores):
    ds = PatchDataset(stores, transform=lambda im: torch.from_numpy(np.asarray(im)[0, 0, :1].copy()), labels=[0, 1, 2])
    ds[0]  # the parent opens a store first: workers must not reuse its handle
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, generator=torch.Generator())
    seen = sorted(int(v) for batch, _ in loader for v in batch.flatten())
    assert seen == sorted([10, 11, 12, 13, 100, 101, 102, 200, 201, 202, 203, 204])
