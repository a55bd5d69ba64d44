"""Weighted kNN (DINO's eval_knn): a hand-computed example, toy clusters, tiny and odd datasets."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pathgen.eval.knn import knn_classify, knn_eval


def _blobs(n_classes: int, n_per_class: int, dim: int = 16, seed: int = 0, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    x = centres.repeat_interleave(n_per_class, 0) + spread * torch.randn(n_classes * n_per_class, dim, generator=g)
    return x, torch.arange(n_classes).repeat_interleave(n_per_class)


def test_hand_computed_weighted_vote():
    # Query (1, 0). One very similar class-1 neighbour against two less similar class-0 neighbours.
    train_x = torch.tensor([[1.0, 0.05], [0.6, 0.8], [0.5, 0.866]])
    train_y = torch.tensor([1, 0, 0])
    query = torch.tensor([[2.0, 0.0]])  # unnormalised on purpose: cosine similarity ignores the norm
    sims = [1 / math.sqrt(1 + 0.05**2), 0.6, 0.5]

    def vote(t: float) -> int:
        w = [math.exp(s / t) for s in sims]
        return 1 if w[0] > w[1] + w[2] else 0

    assert vote(0.07) == 1 and vote(10.0) == 0  # the weights, not a majority, decide at T = 0.07
    for t in (0.07, 10.0):
        out = knn_classify(train_x, train_y, query, torch.tensor([vote(t)]), ks=(1, 3), temperature=t)
        assert out["k=3"]["top1"] == 1.0, t
        assert out["k=1"]["top1"] == (1.0 if vote(t) == 1 else 0.0)


def test_separable_blobs_beat_chance_by_far():
    n_classes = 4
    train_x, train_y = _blobs(n_classes, 20, seed=0)
    test_x, test_y = _blobs(n_classes, 15, seed=1)
    out = knn_classify(train_x, train_y, test_x, test_y)
    assert set(out) == {"k=10", "k=20", "k=100", "k=200"}
    assert out["k=200"]["k_used"] == 80  # clipped to the training set
    for res in out.values():
        assert res["top1"] > 0.9 and res["balanced_acc"] > 0.9  # chance is 0.25
    # Shuffled labels: near chance, so the metric does measure something.
    shuffled = knn_classify(
        train_x, train_y[torch.randperm(80, generator=torch.Generator().manual_seed(0))], test_x, test_y
    )
    assert shuffled["k=20"]["top1"] < 0.6


def test_chunking_does_not_change_results():
    train_x, train_y = _blobs(3, 10, seed=0, spread=3.0)  # overlapping: plenty of non-trivial votes
    test_x, test_y = _blobs(3, 7, seed=1, spread=3.0)
    assert knn_classify(train_x, train_y, test_x, test_y, chunk_size=2) == knn_classify(
        train_x, train_y, test_x, test_y, chunk_size=1000
    )


def test_one_sample_per_class_any_labels_and_k_above_n():
    train_x = torch.eye(5)
    train_y = torch.tensor([7, 3, 11, 0, 42])  # arbitrary integer labels
    test_x = torch.eye(5) + 0.05
    out = knn_classify(train_x, train_y, test_x, train_y.clone(), ks=(1, 20, 200))
    assert out["k=1"]["top1"] == 1.0 and out["k=200"]["k_used"] == 5
    assert out["k=200"]["top1"] == 1.0  # exp(sim / 0.07) makes the nearest neighbour dominate
    # A test class never seen in training cannot be predicted: it simply counts as wrong.
    res = knn_classify(train_x, train_y, test_x[:2], torch.tensor([7, 99]), ks=(1,))
    assert res["k=1"]["top1"] == 0.5
    with pytest.raises(ValueError):
        knn_classify(train_x[:0], train_y[:0], test_x, train_y)


def test_balanced_accuracy_differs_from_top1_on_imbalanced_data():
    # 9 test items of class 0 (all right), 1 of class 1 (wrong): top1 0.9, balanced (1 + 0) / 2.
    train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    train_y = torch.tensor([0, 1])
    test_x = torch.tensor([[1.0, 0.1]] * 10)
    test_y = torch.tensor([0] * 9 + [1])
    res = knn_classify(train_x, train_y, test_x, test_y, ks=(1,))["k=1"]
    assert res["top1"] == pytest.approx(0.9) and res["balanced_acc"] == pytest.approx(0.5)


def test_knn_eval_encodes_datasets_with_the_model():
    train_x, train_y = _blobs(3, 12, dim=8, seed=0)
    test_x, test_y = _blobs(3, 6, dim=8, seed=1)
    as_images = lambda x: x.view(-1, 2, 2, 2)  # noqa: E731 - "images" the encoder flattens back
    model = torch.nn.Flatten()
    out = knn_eval(
        model,
        TensorDataset(as_images(train_x), train_y),
        TensorDataset(as_images(test_x), test_y),
        ks=(5,),
        batch_size=7,
    )
    assert out["k=5"]["top1"] > 0.9
    # A random projection to 1-D mixes three classes up: the encoder really is used.
    torch.manual_seed(0)
    squash = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 1))
    worse = knn_eval(
        squash, TensorDataset(as_images(train_x), train_y), TensorDataset(as_images(test_x), test_y), ks=(5,)
    )
    assert worse["k=5"]["top1"] < out["k=5"]["top1"]
    assert np.isfinite(worse["k=5"]["balanced_acc"])


def test_knn_eval_builds_datasets_from_sources(tmp_path):
    from PIL import Image

    from pathgen.data.augment import eval_transform

    for name, colour in (("dark", 40), ("light", 220)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 12), (colour + i, colour, colour)).save(tmp_path / name / f"{i}.png")
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # mean colour per channel
    out = knn_eval(model, str(tmp_path), [tmp_path], transform=eval_transform(8), ks=(1,))
    assert out["k=1"]["top1"] == 1.0
    with pytest.raises(ValueError, match="transform"):
        knn_eval(model, str(tmp_path), str(tmp_path))
