"""`pathgen pack`: image folders into patch stores of the tiler's format, read by every stage that reads stores."""

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pathgen.cli import app
from pathgen.errors import ConfigError
from pathgen.store import find_stores, open_store, read_manifest
from pathgen.store.pack import load_image, pack_images


def make_image_folder(root: Path, n_per_class: int = 8, seed: int = 0) -> Path:
    """root/{astronaut,coffee}/NN.{png,jpg}: random crops of two skimage pictures, 32-64 px, some not square."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    for name, picture in (("astronaut", data.astronaut()), ("coffee", data.coffee())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = int(rng.integers(32, 65)), int(rng.integers(32, 65))
            y, x = int(rng.integers(0, picture.shape[0] - 4 * h)), int(rng.integers(0, picture.shape[1] - 4 * w))
            crop = Image.fromarray(picture[y : y + 4 * h, x : x + 4 * w]).resize((w, h), Image.BICUBIC)
            crop.save(root / name / (f"{i:02d}.png" if i % 2 else f"{i:02d}.jpg"))
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "train")


def test_an_image_folder_packs_into_labelled_stores_with_a_tiling_manifest(image_folder, tmp_path):
    from torchvision.datasets import ImageFolder

    from pathgen.data.datasets import build_dataset, dataset_targets

    manifest = pack_images(image_folder, tmp_path / "packed", size=32, per_store=6, workers=0, progress=False)
    rows = read_manifest(manifest)
    assert [r.store for r in rows] == ["part-00000.zarr", "part-00001.zarr", "part-00002.zarr"]
    assert [r.n_patches for r in rows] == [6, 6, 4] and {r.status for r in rows} == {"ok"}
    reference = ImageFolder(str(image_folder))
    stores = find_stores(manifest)
    labels = np.concatenate([open_store(p).labels for p in stores])
    assert labels.tolist() == reference.targets  # ImageFolder's order and classes
    with open_store(stores[1]) as store:
        assert store.attrs["classes"] == ["astronaut", "coffee"] and store.attrs["codec"] == "jpeg"
        assert store.patch_size == 32 and store.tissue_fraction.tolist() == [1.0] * 6
        # each stored image is its file, shorter side to 32 and centre square, through JPEG q90
        path, _ = reference.samples[6 + 2]
        assert np.abs(store[2].astype(int) - load_image(path, 32).astype(int)).mean() < 6
    with open(tmp_path / "packed" / "files" / "part-00001.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert index[2] == {"patch": "2", "path": Path(path).relative_to(image_folder).as_posix(), "label": "coffee",
                        "error": ""}
    # where a tiling manifest goes, a packing manifest goes: the labelled dataset of the SSL trainer and evaluation
    dataset = build_dataset([manifest])
    assert dataset.classes == ["astronaut", "coffee"] and dataset_targets(dataset).tolist() == reference.targets


def test_a_corrupt_image_is_recorded_and_skipped_and_a_rerun_skips_finished_stores(image_folder, tmp_path):
    import shutil

    folder = tmp_path / "train"
    shutil.copytree(image_folder, folder)
    (folder / "coffee" / "01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "packed"
    result = CliRunner().invoke(app, ["pack", str(folder), "--size", "32", "--out", str(out), "--per-store", "10",
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert f"error: {folder / 'coffee' / '01.png'}: cannot read image (UnidentifiedImageError" in result.output
    assert "images: 16 listed, 15 packed, 1 unreadable" in result.output
    rows = read_manifest(out / "manifest.csv")
    assert [(r.n_patches, r.extra["n_unreadable"]) for r in rows] == [(9, "1"), (6, "0")]
    with open_store(out / "part-00000.zarr") as store:  # the next image took the corrupt one's place
        assert len(store) == 9 and store.attrs["n_patches"] == 9 and store.labels.tolist() == [0] * 8 + [1]
        assert store[8].shape == (32, 32, 3)
    with open(out / "unreadable.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [str(folder / "coffee" / "01.png")]
    first = (out / "part-00000.zarr").stat().st_mtime_ns
    again = pack_images(folder, out, size=32, per_store=10, workers=0, progress=False)
    assert [r.status for r in read_manifest(again)] == ["skipped", "skipped"]
    assert (out / "part-00000.zarr").stat().st_mtime_ns == first
    assert "1 unreadable" in (out / "summary.txt").read_text()  # still reported from the store's file index
    # another size is another store
    pack_images(folder, out, size=16, per_store=10, workers=0, progress=False)
    assert open_store(out / "part-00000.zarr").patch_size == 16


def test_a_path_label_csv_packs_too_and_bad_input_is_a_one_line_error(image_folder, tmp_path):
    listing = tmp_path / "images.csv"
    files = sorted(image_folder.rglob("*.png"))[:3]
    listing.write_text("path,label\n" + "".join(f"{p},{'b' if i else 'a'}\n" for i, p in enumerate(files)))
    manifest = pack_images(listing, tmp_path / "packed", size=24, workers=0, progress=False)
    with open_store(find_stores(manifest)[0]) as store:
        assert store.labels.tolist() == [0, 1, 1] and store.attrs["classes"] == ["a", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class sub-folders"):
        pack_images(tmp_path / "empty", tmp_path / "x", workers=0)
    (tmp_path / "bad.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(ConfigError, match="bad.csv: an image list needs columns path,label"):
        pack_images(tmp_path / "bad.csv", tmp_path / "x", workers=0)


def _pack_store_killed_on_part_1(task):
    import os
    import signal

    if task.name == "part-00001":
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does
    return _PACK_STORE(task)


import pathgen.store.pack as _pack  # noqa: E402

_PACK_STORE = _pack.pack_store  # the real one, in the parent and in every worker


@pytest.mark.slow  # a pool of 1 worker (importing torch), started 3 times
def test_workers_pack_and_a_dying_one_fails_only_its_store_after_one_retry_alone(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(_pack, "pack_store", _pack_store_killed_on_part_1)
    manifest = pack_images(image_folder, tmp_path / "out", size=16, per_store=4, workers=1, progress=False)
    rows = {r.store or r.slide.rpartition("#")[2]: r for r in read_manifest(manifest)}
    assert rows["part-00001"].status == "failed"
    assert rows["part-00001"].error == "a worker was killed by SIGKILL (out of memory?) packing it"
    assert [rows[f"part-0000{i}.zarr"].status for i in (0, 2, 3)] == ["ok"] * 3
    assert "failed: " in (tmp_path / "out" / "summary.txt").read_text()
    # what the worker processes wrote is what packing in this process writes
    monkeypatch.undo()
    inline = pack_images(image_folder, tmp_path / "inline", size=16, per_store=4, workers=0, progress=False)
    for name in ("part-00000.zarr", "part-00002.zarr", "part-00003.zarr"):
        with open_store(tmp_path / "out" / name) as x, open_store(inline.parent / name) as y:
            assert x.content_id == y.content_id and np.array_equal(x.read(range(len(x))), y.read(range(len(y))))
