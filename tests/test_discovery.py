"""Which slides a run covers: DICOM series, same-named slides, macro/label pictures, CSV columns, shards."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathgen.slide.tiler import list_slides, tile_cohort
from pathgen.store import read_manifest

TILE = dict(mpp=0.5, patch_size=32, workers=0, coords_only=True)


def _dicom(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # the preamble and marker every DICOM file starts with
    return path


def test_dicom_series_are_named_by_their_folder_and_extensionless_files_found(tmp_path):
    _dicom(tmp_path / "case_1" / "series_A" / "1.2.840.10008.1.dcm")
    _dicom(tmp_path / "case_1" / "series_A" / "1.2.840.10008.2.dcm")
    _dicom(tmp_path / "case_2" / "scan" / "IM0001")  # no extension, as many PACS exports
    _dicom(tmp_path / "case_2" / "scan" / "IM0002")
    (tmp_path / "case_2" / "scan" / "README").write_text("not DICOM")
    jobs = list_slides([tmp_path])
    assert [(j.name, j.path.name) for j in jobs] == [("series_A", "1.2.840.10008.1.dcm"), ("scan", "IM0001")]


def test_same_file_names_in_different_folders_get_distinct_store_names(demo_slide, tmp_path):
    for case in ("case_1", "case_2"):
        (tmp_path / "cohort" / case).mkdir(parents=True)
        shutil.copy(demo_slide, tmp_path / "cohort" / case / "slide.svs")
    shutil.copy(demo_slide, tmp_path / "cohort" / "other.svs")
    jobs = list_slides([tmp_path / "cohort"])
    assert sorted(j.name for j in jobs) == ["case_1__slide", "case_2__slide", "other"]
    rows = read_manifest(tile_cohort([tmp_path / "cohort"], tmp_path / "out", **TILE))
    assert sorted(r.store for r in rows) == ["case_1__slide.zarr", "case_2__slide.zarr", "other.zarr"]
    assert {r.status for r in rows} == {"ok"}


def test_macro_and_label_pictures_beside_slides_are_skipped_unless_listed(demo_slide, tmp_path, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(demo_slide, folder / "slide.svs")
    for name in ("slide_macro.jpg", "slide_label.png"):
        Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(folder / name)
    images_only = tmp_path / "photos"  # a folder of plain images is a cohort of plain images
    images_only.mkdir()
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(images_only / "photo.png")

    assert [j.path.name for j in list_slides([folder, images_only])] == ["photo.png", "slide.svs"]
    err = capsys.readouterr().err
    assert "skipped 2 plain image(s)" in err and "slide_label.png" in err and err.count("\n") == 1
    listed = list_slides([folder, folder / "slide_macro.jpg"])
    assert sorted(j.path.name for j in listed) == ["slide.svs", "slide_macro.jpg"]


def test_manifest_has_absolute_paths_and_the_slide_lists_other_columns(demo_slides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for s in demo_slides[:2]:
        shutil.copy(s, tmp_path)
    names = [s.name for s in demo_slides[:2]]
    Path("list.csv").write_text(f"slide,label,case_id\n{names[0]},tumour,C1\n{names[1]},normal,C2\n")
    manifest = tile_cohort(["list.csv"], "out", **TILE)
    header = manifest.read_text().splitlines()[0]
    assert header == "slide,status,n_patches,seconds,error,store,label,case_id"
    rows = read_manifest(manifest)
    assert [r.slide for r in rows] == [str(tmp_path / n) for n in names]
    assert [r.extra for r in rows] == [{"label": "tumour", "case_id": "C1"}, {"label": "normal", "case_id": "C2"}]


def test_shards_do_not_move_when_a_slide_is_added(demo_slides, tmp_path):
    """Array tasks by a stable hash of the slide name: a new slide between runs shifts no other slide's shard."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for i, src in enumerate(demo_slides):
        shutil.copy(src, folder / f"s{2 * i}.svs")

    def shards() -> dict[str, int]:
        out = {}
        for i in range(3):
            for row in read_manifest(tile_cohort([folder], tmp_path / "out", shard=(i, 3), **TILE)):
                out[Path(row.slide).stem] = i
        return out

    before = shards()
    assert sorted(before) == ["s0", "s2", "s4", "s6"]
    shutil.copy(demo_slides[0], folder / "s1.svs")  # sorts between the others
    after = shards()
    assert {k: after[k] for k in before} == before and "s1" in after


def test_an_unknown_or_missing_reader_fails_the_run_up_front(demo_slide, tmp_path):
    from pathgen.errors import ConfigError

    with pytest.raises(ConfigError, match="--reader must be one of"):
        tile_cohort([demo_slide], tmp_path / "out", reader="bioformats")
    try:
        import tiatoolbox  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="tiatoolbox.*not installed"):
            tile_cohort([demo_slide], tmp_path / "out", reader="tiatoolbox")
    assert not (tmp_path / "out").exists()
