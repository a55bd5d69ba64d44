"""The demo's labelled task: ground truth, train and test from disjoint held-out slides, and no colour cue."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import color
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pathgen.pipeline.demo_cohort import SyntheticSlide, cohort_slide_seeds
from pathgen.pipeline.demo_patches import labelled_slide_seeds, make_demo_patches

SMALL = dict(n_slides=2, width=1024, height=768, size=32)  # 32 px at 0.5 mpp = 64 level-0 px


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _patches(folder):
    return {r["path"]: (r, np.asarray(Image.open(folder / r["path"]))) for r in _rows(folder / "ground_truth.csv")}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """40 patches per split (20 per class), one held-out slide per split."""
    return make_demo_patches(tmp_path_factory.mktemp("labelled") / "patches", n_per_class=20, seed=0, **SMALL)


def test_image_folders_match_the_ground_truth(labelled):
    patches = _patches(labelled)
    assert len(patches) == 80
    for split in ("train", "test"):
        for label in ("normal", "lesion"):
            names = sorted(p.name for p in (labelled / split / label).iterdir())
            assert names == [f"{label}_{i:04d}.png" for i in range(20)]
    slides = {}
    for row, img in patches.values():
        assert img.shape == (32, 32, 3) and row["path"].startswith(f"{row['split']}/{row['label']}/")
        seed, x, y, side = (int(row[k]) for k in ("slide_seed", "x", "y", "size_level0"))
        assert side == 64
        s = slides.setdefault(seed, SyntheticSlide(1024, 768, seed=seed, positive=True))
        tissue = s.tissue_mask(x, y, side, side)
        lesion = float((s.lesion_mask(x, y, side, side) * tissue).mean())
        assert tissue.mean() >= 0.98 and lesion == pytest.approx(float(row["lesion_fraction"]), abs=1e-3)
        assert lesion >= 0.75 if row["label"] == "lesion" else lesion == 0.0
    assert (labelled / "examples.png").is_file()


def test_train_and_test_come_from_disjoint_slides_none_of_the_cohorts(labelled):
    rows = _rows(labelled / "ground_truth.csv")
    by_split = {split: {r["slide_seed"] for r in rows if r["split"] == split} for split in ("train", "test")}
    assert by_split["train"] and by_split["test"] and not by_split["train"] & by_split["test"]
    seeds = labelled_slide_seeds(0, 2)
    assert by_split == {"train": {str(seeds[0])}, "test": {str(seeds[1])}}
    for seed in range(5):  # the slides the demo encoder trains on (any cohort size up to 64) are others
        assert not set(labelled_slide_seeds(seed, 8)) & set(cohort_slide_seeds(seed, 64))


def _colour(img: np.ndarray) -> np.ndarray:
    """What a colour-only encoder sees: mean and spread of RGB and of H, E, D, and 8-bin RGB histograms."""
    rgb = img.reshape(-1, 3) / 255.0
    hed = color.rgb2hed(img).reshape(-1, 3)
    hist = [np.histogram(rgb[:, c], bins=8, range=(0, 1))[0] / len(rgb) for c in range(3)]
    return np.concatenate([rgb.mean(0), rgb.std(0), hed.mean(0), hed.std(0), *hist])


def _nuclei(img: np.ndarray) -> np.ndarray:
    """A morphology feature: mean and largest area of the haematoxylin blobs (nuclei) of a patch."""
    h = color.rgb2hed(img)[..., 0]
    labels, n = ndimage.label(h > h.mean() + 0.5 * h.std())
    areas = np.bincount(labels.ravel())[1:] if n else np.zeros(1)
    return np.array([areas.mean(), areas.max(), n])


def _probe(labelled, features) -> float:
    """Test accuracy of a logistic regression on `features`, fitted on the train slides."""
    data = {}
    for split in ("train", "test"):
        rows = [(features(img), row["label"] == "lesion") for row, img in _patches(labelled).values()
                if row["split"] == split]
        data[split] = np.stack([x for x, _ in rows]), np.array([y for _, y in rows])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(*data["train"])
    return float(model.score(*data["test"]))


def test_colour_alone_is_near_chance_while_nuclear_morphology_separates(labelled):
    # colour statistics say next to nothing about the label: lesion and normal tissue share one stain distribution
    # and every slide and patch is restained; the same probe on nuclear size finds the lesions
    assert _probe(labelled, _colour) <= 0.7
    assert _probe(labelled, _nuclei) >= 0.8  # 32 px patches (0.98 at the demo's 64 px)


def test_reproducible_and_each_patch_restained(tmp_path):
    small = dict(SMALL, n_per_class=4)
    a = _patches(make_demo_patches(tmp_path / "a", seed=3, **small))
    b = _patches(make_demo_patches(tmp_path / "b", seed=3, **small))
    c = _patches(make_demo_patches(tmp_path / "c", seed=4, **small))
    plain = _patches(make_demo_patches(tmp_path / "d", seed=3, stain=(0, 0), brightness=0, hue=0, **small))
    assert a.keys() == b.keys() == c.keys() == plain.keys()
    for k in a:
        np.testing.assert_array_equal(a[k][1], b[k][1])
        assert a[k][0] == b[k][0]
    assert any(not np.array_equal(a[k][1], c[k][1]) for k in a)
    # same places, but each patch restained differently: per-patch mean colours move by different amounts
    assert all(a[k][0]["x"] == plain[k][0]["x"] for k in a)
    shift = np.stack([a[k][1].mean((0, 1)) - plain[k][1].mean((0, 1)) for k in a])
    assert np.abs(shift).max() > 5 and shift.std(0).max() > 2


def test_rejects_an_odd_number_of_slides(tmp_path):
    with pytest.raises(ValueError, match="n_slides must be even"):
        make_demo_patches(tmp_path, **dict(SMALL, n_slides=3))


def test_the_compare_step_reads_the_labelled_steps_own_train_and_test_folders(tmp_path):
    """demo.yaml's labelled -> compare wiring on a tiny encoder: the kNN is scored on the held-out test slides."""
    from pathgen.pipeline.runner import Pipeline
    from pathgen.pipeline.spec import load_pipeline
    from pathgen.ssl.export import create_backbone, export_encoder

    demo = load_pipeline("pipelines/demo.yaml")
    assert demo.steps["compare"].with_["train"] == ["${labelled.train}"]
    assert demo.steps["compare"].with_["test"] == ["${labelled.test}"]
    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
    export_encoder(create_backbone("vit_tiny_patch16_224", 32, kwargs), tmp_path / "enc", "vit_tiny_patch16_224",
                   kwargs, 32, (0.5,) * 3, (0.5,) * 3)
    (tmp_path / "p.yaml").write_text(f"""
steps:
  labelled:
    uses: demo-patches
    with: {{n_per_class: 5, n_slides: 2, width: 1024, height: 768, size: 32, seed: 0}}
  compare:
    uses: eval-compare
    with:
      encoders: {{random: "random:{tmp_path / 'enc'}", trained: "{tmp_path / 'enc'}"}}
      train: ["${{labelled.train}}"]
      test: ["${{labelled.test}}"]
      k: 3
""")
    Pipeline(tmp_path / "p.yaml", tmp_path / "run").run()
    table = json.loads((tmp_path / "run" / "compare" / "compare.json").read_text())
    assert {r["n_test"] for r in table["rows"]} == {10}  # 5 per class from the test slide, not a split of train
