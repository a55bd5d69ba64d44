"""build_dataset: ImageFolders, patch stores (folders, globs, manifests), path,label CSVs, errors; splits."""

import numpy as np
import pytest
import torch
from PIL import Image

from pathgen.data.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from pathgen.data.datasets import (
    align_labels,
    build_dataset,
    dataset_classes,
    dataset_targets,
    split_stratified,
)
from pathgen.errors import ConfigError, PathgenError
from pathgen.store import PatchStoreWriter


def _image_folder(root, counts=(("lesion", 3), ("normal", 2)), size=16):
    rng = np.random.default_rng(0)
    for name, n in dict(counts).items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _store(path, n, value, size=16):
    """A finished store of n patches all filled with `value`, so a patch's source is recognisable."""
    coords = np.stack([np.arange(n) * size, np.zeros(n)], axis=1).astype(np.int64)
    with PatchStoreWriter(path, coords, np.ones(n, np.float32), patch_size=size, attrs={"slide": str(path)}) as w:
        w.write(0, np.full((n, size, size, 3), value, np.uint8))
    return path


@pytest.fixture
def stores(tmp_path):
    folder = tmp_path / "stores"
    folder.mkdir()
    return [_store(folder / "a.zarr", 3, 10), _store(folder / "b.h5", 2, 200), _store(folder / "c.zarr", 4, 90)]


def test_image_folder(tmp_path):
    ds = build_dataset(_image_folder(tmp_path / "imgs"), transform=eval_transform(8))
    assert len(ds) == 5 and ds.classes == ["lesion", "normal"]
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and y == 1
    assert dataset_targets(ds).tolist() == [0, 0, 0, 1, 1]


def test_stores_from_folder_glob_and_list(tmp_path, stores):
    by_folder = build_dataset(tmp_path / "stores")
    assert len(by_folder) == 9
    img, label = by_folder[0]
    assert isinstance(img, Image.Image) and label == -1  # no labels anywhere: unlabelled
    assert len(build_dataset(str(tmp_path / "stores" / "*.zarr"))) == 7
    assert len(build_dataset([stores[1], stores[2]])) == 6


def test_labelled_csv_gives_every_patch_its_slide_label(tmp_path, stores):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nstores/a.zarr,tumour\nstores/b.h5,benign\n" + f"{stores[2]},tumour\n")
    ds = build_dataset(csv, transform=eval_transform(8))
    assert ds.classes == ["benign", "tumour"]
    assert dataset_targets(ds).tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 1]
    x, y = ds[3]  # first patch of b.h5: value 200 everywhere
    assert y == 0 and x.shape == (3, 8, 8)
    expected = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x, expected[:, None, None].expand(3, 8, 8), atol=1e-5)  # it really is b.h5's patch


def test_mixed_sources_concatenate_when_classes_agree(tmp_path, stores):
    folder = _image_folder(tmp_path / "imgs", {"benign": 1, "tumour": 2})
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nstores/a.zarr,tumour\nstores/b.h5,benign\n")
    ds = build_dataset([folder, csv], transform=eval_transform(8))
    assert len(ds) == 3 + 5 and ds.classes == ["benign", "tumour"]
    assert dataset_targets(ds).tolist() == [0, 1, 1, 1, 1, 1, 0, 0]
    other = _image_folder(tmp_path / "other", {"x": 1, "y": 1})
    with pytest.raises(ConfigError, match="different classes"):
        build_dataset([other, csv])


def test_bad_sources_are_one_line_errors(tmp_path, stores):
    with pytest.raises(ConfigError) as err:
        build_dataset(tmp_path / "missing_dir")
    assert "missing_dir" in str(err.value) and "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PathgenError, match="empty"):
        build_dataset(empty)
    csv = tmp_path / "bad.csv"
    csv.write_text("path,label\nstores/nope.zarr,tumour\n")
    with pytest.raises(PathgenError, match="nope.zarr"):
        build_dataset(csv)
    blank = tmp_path / "blank.csv"
    blank.write_text("path,label\nstores/a.zarr,\n")
    with pytest.raises(ConfigError, match="line 2"):
        build_dataset(blank)


def test_split_stratified_is_seeded_and_stratified(tmp_path):
    ds = build_dataset(_image_folder(tmp_path / "imgs", {"a": 10, "b": 10, "c": 1}))
    train, test = split_stratified(ds, test_fraction=0.3, seed=0)
    y_train, y_test = dataset_targets(train), dataset_targets(test)
    assert len(train) + len(test) == 21 and not set(train.indices) & set(test.indices)
    assert sorted(np.bincount(y_test, minlength=3).tolist()) == [0, 3, 3]  # 2 is the single 'c' image
    assert 2 in y_train  # the one-item class stays in train
    assert dataset_classes(test) == ["a", "b", "c"]
    assert split_stratified(ds, 0.3, seed=0)[1].indices == test.indices
    with pytest.raises(PathgenError, match="no class has 2"):
        split_stratified(build_dataset(_image_folder(tmp_path / "tiny", {"a": 1, "b": 1})))


def test_align_labels_by_class_name():
    # test set lacks class "b": its "c" (index 1) is train's index 2; an unknown class goes past the end
    y = torch.tensor([0, 1, 2, -1])
    assert align_labels(y, ["a", "c", "z"], ["a", "b", "c"]).tolist() == [0, 2, 3, -1]
    assert align_labels(y, ["a", "b"], ["a", "b"]) is y


def test_tiling_manifest_lists_the_usable_stores(tmp_path, stores):
    from pathgen.store.manifest import ManifestRow, write_manifest

    rows = [
        ManifestRow("a.svs", "ok", 3, store="stores/a.zarr"),
        ManifestRow("b.svs", "failed", error="unreadable"),
        ManifestRow("c.svs", "skipped", 4, store="stores/c.zarr"),
    ]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    assert len(build_dataset(manifest)) == 7


def test_tiling_output_folder_is_stores_not_an_image_folder(tmp_path, stores):
    qc = tmp_path / "stores" / "qc"  # `pathgen tile` writes QC pictures beside the stores
    qc.mkdir()
    Image.new("RGB", (8, 8)).save(qc / "a.png")
    ds = build_dataset(tmp_path / "stores")
    assert len(ds) == 9 and not hasattr(ds, "imgs")


def test_split_keeps_every_slide_and_case_on_one_side(tmp_path):
    """The evaluation-leak fix: a held-out split is by slide (or case), never patch by patch."""
    folder = tmp_path / "stores"
    folder.mkdir()
    lines = ["path,label,case_id"]
    for i in range(10):
        _store(folder / f"s{i}.zarr", 4 + i % 3, 10 * i)
        lines.append(f"stores/s{i}.zarr,{'tumour' if i % 2 else 'benign'},case{i // 2 if i < 4 else i}")
    by_slide = tmp_path / "by_slide.csv"
    by_slide.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # no case column
    by_case = tmp_path / "by_case.csv"
    by_case.write_text("\n".join(lines) + "\n")

    ds = build_dataset(by_slide)
    for seed in range(5):
        train, test = split_stratified(ds, test_fraction=0.3, seed=seed)
        train_slides, test_slides = set(ds.store_ids[train.indices]), set(ds.store_ids[test.indices])
        assert not train_slides & test_slides and len(train_slides | test_slides) == 10
        assert len(test_slides) == 3  # 30% of the slides, not of the patches
        assert set(dataset_targets(test)) == {0, 1}  # stratified by the slides' classes
    ds = build_dataset(by_case)  # s0,s1 are case0 and s2,s3 case1: they must travel together
    for seed in range(5):
        train, test = split_stratified(ds, test_fraction=0.3, seed=seed)
        test_slides = set(ds.store_ids[test.indices].tolist())
        assert not test_slides & set(ds.store_ids[train.indices].tolist())
        for pair in ({0, 1}, {2, 3}):
            assert pair <= test_slides or not pair & test_slides
