"""Gen-DINO's pieces: the join to generated.zarr, the per-item choices, both augmentation paths, the step's centre
and loss terms, and every bad input's one-line error."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pathgen.errors import ConfigError
from pathgen.runtime.device import precision_for
from pathgen.runtime.seeding import ItemSeededDataset, seed_everything
from pathgen.ssl import batch as roles
from pathgen.ssl.gensis import collate
from pathgen.ssl.loss import DINOLoss, disentanglement_loss
from pathgen.ssl.trainer import build_data, build_models, compute_loss
from pathgen.store import GeneratedWriter, PatchDataset, open_store
from pathgen.store.generated import GeneratedStoreError, ItemTable

sys.path.insert(0, str(Path(__file__).parent))
from gensis_helpers import make_generated, make_stores  # noqa: E402
from test_ssl_train import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    return make_stores(tmp_path_factory.mktemp("stores") / "stores")[0].parent


@pytest.fixture(scope="module")
def generated(stores, tmp_path_factory) -> Path:
    """2 views (flat white images) and 1 interpolation per patch, none for the first 2 patches of store 0."""
    paths = sorted(stores.glob("*.zarr"))
    return make_generated(tmp_path_factory.mktemp("gen") / "generated.zarr", paths, skip_patches=2, view_value=255)


def _data(tmp_path, stores, generated, *overrides):
    return build_data(tiny_config(tmp_path, stores, f"gensis.generated={generated}", *overrides))


def test_the_index_joins_each_patch_to_its_own_views_and_interpolations_by_content_id(tmp_path, stores, generated):
    moved = tmp_path / "moved"
    shutil.copytree(stores, moved)  # other paths, same content ids: still joins
    data = _data(tmp_path, moved, generated)
    index, patches = data.dataset.dataset.index, data.dataset.dataset.patches
    assert index.summary == {"patches": 24, "with_views": 22, "with_interpolations": 22, "unused_items": 0}
    items = index.generated.items
    for i in range(len(patches)):
        own = items.source[index.views[index.view_ptr[i]:index.view_ptr[i + 1]]]
        assert len(own) == (0 if i < 2 else 2)
        assert (own == [patches.store_ids[i], patches.patch_ids[i]]).all()
        interp = index.interps[index.interp_ptr[i]:index.interp_ptr[i + 1]]
        assert (items.kind[interp] == 1).all() and (items.source[interp] == own[:1]).all() if len(own) else True


def test_views_and_interpolations_are_used_at_the_configured_rates_from_item_seeded_draws(tmp_path, stores,
                                                                                        generated):
    p_gen, p_interp = 0.3, 0.6
    data = _data(tmp_path, stores, generated, "data.augment_on=device", f"gensis.p_gen={p_gen}",
                 f"gensis.p_interp={p_interp}")
    dataset = data.dataset
    assert isinstance(dataset, ItemSeededDataset)
    draws = []
    for epoch in range(12):  # 24 patches x 12 epochs
        dataset.set_epoch(epoch)
        draws += [(i, dataset[i]) for i in range(len(dataset))]
    has = [(i, it) for i, it in draws if i >= 2]  # the 22 patches with views and interpolations
    for key, p in (("generated", p_gen), ("interpolated", p_interp)):
        used = sum(it[key] is not None and it[key] is not False for _, it in has)
        n = len(has)
        assert abs(used - n * p) < 3.5 * np.sqrt(n * p * (1 - p)), (key, used, n * p)
    lacking = [it for i, it in draws if i < 2]  # asked for one, had none: a fallback to real crops
    assert not any(it["generated"] or it["interpolated"] is not None for it in lacking)
    assert sum(it["fallback_view"] for it in lacking) == pytest.approx(len(lacking) * p_gen, abs=3.5 * np.sqrt(
        len(lacking) * p_gen * (1 - p_gen)))
    assert not any(it["fallback_view"] or it["fallback_interp"] for _, it in has)
    # an item's choices are a function of (seed, epoch, index) only, whatever was drawn before
    dataset.set_epoch(3)
    again = dataset[7]
    first = next(it for i, it in draws[3 * 24:] if i == 7)
    assert again["generated"] == first["generated"] and torch.equal(again["interpolated"], first["interpolated"])


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_the_second_global_crop_comes_from_the_generated_view_and_the_rest_stay_real(tmp_path, stores, generated,
                                                                                   augment_on):
    data = _data(tmp_path, stores, generated, f"data.augment_on={augment_on}", "gensis.p_gen=1", "gensis.p_interp=1")
    data.dataset.set_epoch(0)
    items = [data.dataset[i] for i in range(8)]
    batch = roles.load_batch(collate(items), torch.device("cpu"), data.multicrop)
    flat = [c.flatten(2).std(-1).amax(-1) < 1e-4 for c in batch["global"] + batch["local"]]  # per image, per crop
    assert batch["generated"].tolist() == [False, False] + [True] * 6  # items 0 and 1 have no views
    assert flat[1].tolist() == batch["generated"].tolist()  # the flat white view gives a flat 2nd global crop
    assert not any(f.any() for j, f in enumerate(flat) if j != 1)  # first global and local crops are real
    assert batch["pair"].tolist() == [2, 3, 4, 5, 6, 7] and batch["interpolated"].shape == (6, 3, 32, 32)
    assert batch["partner"].shape == (6, 3, 32, 32) and ((batch["alpha"] > 0.2) & (batch["alpha"] < 0.8)).all()
    rows = roles.picture_rows(batch)
    assert [len(r) for r in rows] == [4] * 4 + [2] * 4 + [3] * 4


def _tiny_models(tmp_path, stores):
    cfg = tiny_config(tmp_path, stores, "model.drop_path_rate=0.0")
    seed_everything(0)
    student, teacher = build_models(cfg)
    return student.eval(), teacher.module


def _step_batch(g: torch.Generator, b: int = 4, m: int = 3) -> dict:
    """A Gen-DINO batch of random crops: b items, m of them with an interpolation (pairs 3, 0, 2)."""
    return {"global": [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)],
            "local": [torch.randn(b, 3, 16, 16, generator=g) for _ in range(2)],
            "interpolated": torch.randn(m, 3, 32, 32, generator=g), "partner": torch.randn(m, 3, 32, 32, generator=g),
            "pair": torch.tensor([3, 0, 2]), "alpha": torch.tensor([0.3, 0.5, 0.7])}


def test_the_step_centres_on_the_global_crops_only_and_mixes_teacher_logits_for_l_dis(tmp_path, stores):
    student, teacher = _tiny_models(tmp_path, stores)
    g = torch.Generator().manual_seed(0)
    b = 4
    batch = _step_batch(g, b)
    loss = DINOLoss(128, center_momentum=0.5)
    loss.center.normal_(generator=g)
    before = loss.center.clone()
    terms, _ = compute_loss(batch, student, teacher, loss, 0.04, 1.0, precision_for("cpu"))

    with torch.no_grad():  # the same, one role at a time
        t_global, t_partner = teacher(batch["global"]), teacher(batch["partner"])
        s_dino, s_interp = student(batch["global"] + batch["local"]), student(batch["interpolated"])
    reference = DINOLoss(128, center_momentum=0.5)
    reference.center.copy_(before)
    want_dino = reference(s_dino, t_global, 0.04, 4)
    torch.testing.assert_close(loss.center, reference.center)  # moved by the two global crops' outputs only
    polluted = DINOLoss(128, center_momentum=0.5)
    polluted.center.copy_(before)
    polluted.update_center(torch.cat([t_global, t_partner]))
    assert not torch.allclose(loss.center, polluted.center, atol=1e-4)
    torch.testing.assert_close(terms["dino"], want_dino, atol=1e-5, rtol=1e-5)
    want_dis = disentanglement_loss(s_interp, t_global[:b][batch["pair"]], t_partner, batch["alpha"], before[0],
                                    0.1, 0.04)  # x1's teacher output is its first global crop's; centre before update
    torch.testing.assert_close(terms["dis"], want_dis, atol=1e-5, rtol=1e-5)
    terms["dis"].backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_koleo_is_a_term_on_the_students_global_crops_weighted_into_the_loss(tmp_path, stores):
    from pathgen.ssl.loss import koleo_loss
    from pathgen.ssl.trainer import total_loss

    student, teacher = _tiny_models(tmp_path, stores)
    batch = _step_batch(torch.Generator().manual_seed(0))
    plain, _ = compute_loss(batch, student, teacher, DINOLoss(128), 0.04, 1.0, precision_for("cpu"))
    assert "koleo" not in plain
    terms, _ = compute_loss(batch, student, teacher, DINOLoss(128), 0.04, 1.0, precision_for("cpu"), koleo_weight=0.5)
    with torch.no_grad():  # each global crop's backbone features, not the interpolations' or the local crops'
        want = sum(koleo_loss(student.backbone(crop)) for crop in batch["global"])
    torch.testing.assert_close(terms["koleo"], want, atol=1e-5, rtol=1e-5)
    total = total_loss(terms, 1.0, 0.5)
    torch.testing.assert_close(total, terms["dino"] + terms["dis"] + 0.5 * terms["koleo"])


def test_bad_generated_stores_are_one_line_errors_naming_the_store(tmp_path, stores, generated):
    cases = []

    def expect(error, match, *overrides, sources=stores):
        with pytest.raises(error, match=match) as info:
            build_data(tiny_config(tmp_path, sources, *overrides))
        assert "\n" not in str(info.value)
        cases.append(str(info.value))

    expect(ConfigError, "no generated-views store given", "gensis.p_gen=0.5")
    expect(GeneratedStoreError, "not found", f"gensis.generated={tmp_path / 'missing.zarr'}")
    others = make_stores(tmp_path / "others", n_stores=1, seed=5)
    expect(GeneratedStoreError, "made from other stores", f"gensis.generated={generated}", sources=others[0])
    retiled = make_stores(tmp_path / "retiled")
    stale = make_generated(tmp_path / "stale.zarr", retiled)
    shutil.rmtree(retiled[0])
    make_stores(retiled[0].parent, n_stores=1, n=8, seed=3)  # slide0 re-tiled after generation
    expect(GeneratedStoreError, r"slide0.zarr has changed since generation \(content id [0-9a-f]{12} now, "
           r"[0-9a-f]{12} when generated\)", f"gensis.generated={stale}", sources=retiled[0].parent)
    weights = tmp_path / "encoder.safetensors"
    weights.write_bytes(b"another encoder")
    expect(GeneratedStoreError, "was generated with encoder sha256 eeeeeeeeeeee, but .* has sha256 [0-9a-f]{12}",
           f"gensis.generated={generated}", f"gensis.encoder={weights}")
    small = make_generated(tmp_path / "small.zarr", sorted(stores.glob("*.zarr")), image_size=32)
    expect(GeneratedStoreError, "holds 32 px images, but the patches of .* are 40 px", f"gensis.generated={small}")
    unfinished = tmp_path / "unfinished.zarr"
    with open_store(sorted(stores.glob("*.zarr"))[0]) as store:
        GeneratedWriter(unfinished, ItemTable([0], [[0, 0]], [[-1, -1]], [1.0], [0]), 40,
                        {"stores": [str(store.path)], "store_ids": [store.content_id]})
    expect(GeneratedStoreError, "unfinished", f"gensis.generated={unfinished}")
    no_views = make_generated(tmp_path / "no_views.zarr", sorted(stores.glob("*.zarr")), views=0)
    expect(GeneratedStoreError, "no generated view of any training patch", f"gensis.generated={no_views}")
    folder = tmp_path / "folder" / "a"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (40, 40)).save(folder / "x.png")
    expect(ConfigError, "trains on patch stores", f"gensis.generated={generated}", sources=folder.parent)
    # with p_gen = lambda_dis = 0 none of it is read: plain DINO
    plain = build_data(tiny_config(tmp_path, stores, "gensis.p_gen=0", "gensis.lambda_dis=0",
                                   f"gensis.generated={tmp_path / 'missing.zarr'}"))
    assert isinstance(plain.dataset.dataset, PatchDataset) and plain.collate is None
