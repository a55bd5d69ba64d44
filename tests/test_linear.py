"""Linear probe on frozen features: separable data, CV choice of C, tiny classes, errors."""

import pytest
import torch

from pathgen.eval.linear import CS, linear_probe


def _linearly_separable(n: int, dim: int = 20, n_classes: int = 3, seed: int = 0):
    """Classes defined by a random linear map, with a margin; features on very different scales."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, n_classes, generator=torch.Generator().manual_seed(99))
    x = torch.randn(4 * n, dim, generator=g)
    scores = x @ w
    top2 = scores.topk(2, dim=1).values
    keep = (top2[:, 0] - top2[:, 1]) > 0.5
    x, y = x[keep][:n], scores[keep][:n].argmax(1)
    return x * torch.logspace(-2, 2, dim), y  # standardisation must undo the scales


def test_separable_data_is_learned():
    train_x, train_y = _linearly_separable(150, seed=0)
    test_x, test_y = _linearly_separable(90, seed=1)
    res = linear_probe(train_x, train_y, test_x, test_y)
    assert res["top1"] > 0.9 and res["balanced_acc"] > 0.9  # chance ~ 1/3
    assert res["C"] in CS and res["cv_folds"] == 5


def test_random_labels_stay_near_chance():
    train_x, _ = _linearly_separable(150, seed=0)
    test_x, _ = _linearly_separable(90, seed=1)
    g = torch.Generator().manual_seed(0)
    res = linear_probe(train_x, torch.randint(3, (150,), generator=g), test_x, torch.randint(3, (90,), generator=g))
    assert res["balanced_acc"] < 0.6


def test_fixed_C_and_single_sample_classes():
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    y = torch.tensor([0, 1, 2])
    res = linear_probe(x, y, x + 0.1, y)  # one sample per class: no CV possible, C falls back to 1.0
    assert res["cv_folds"] == 0 and res["C"] == 1.0 and res["top1"] == 1.0
    assert linear_probe(x, y, x, y, C=0.5)["C"] == 0.5
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(x, torch.zeros(3, dtype=torch.long), x, y)
