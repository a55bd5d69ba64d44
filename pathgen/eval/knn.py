"""Weighted k-nearest-neighbour classification on frozen features, exactly as DINO's eval_knn.py.

Features are L2-normalised, so the dot product is the cosine similarity. Each test sample takes its k most
similar training samples; neighbour j votes for its class with weight exp(sim_j / T) (T = 0.07), and the
class with the largest total wins. k=20 is DINO's headline number; 10, 100 and 200 are reported alongside.
"""

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

KS = (10, 20, 100, 200)


def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ks: Sequence[int] = KS,
    temperature: float = 0.07,
    chunk_size: int = 256,
) -> dict[str, dict[str, float]]:
    """{"k=20": {"top1": .., "balanced_acc": .., "k_used": ..}, ...}; accuracies are fractions in [0, 1].

    k is clipped to the number of training samples ("k_used"), so tiny sets work; labels may be any integers
    (a test class absent from training is simply never predicted). Test samples are processed in chunks of
    `chunk_size`, so memory is O(chunk_size x N_train), not O(N_test x N_train).
    """
    from sklearn.metrics import balanced_accuracy_score

    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(f"kNN needs training and test samples, got {len(train_x)} and {len(test_x)}")
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    classes, train_class = torch.unique(train_y, return_inverse=True)
    k_max = min(max(ks), len(train_x))
    predictions: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test_x), chunk_size):
        similarity = test_x[start : start + chunk_size] @ train_x.T
        top_sim, top_idx = similarity.topk(k_max, dim=1)  # sorted, most similar first
        votes = F.one_hot(train_class[top_idx], len(classes)).float() * (top_sim / temperature).exp()[..., None]
        scores = votes.cumsum(dim=1)  # scores[:, k - 1] = class scores of the k nearest neighbours
        for k in ks:
            predictions[k].append(classes[scores[:, min(k, k_max) - 1].argmax(dim=1)])
    results = {}
    y_true = test_y.cpu().numpy()
    for k in ks:
        y_pred = torch.cat(predictions[k]).cpu().numpy()
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected on small sets
            warnings.simplefilter("ignore", UserWarning)
            balanced = balanced_accuracy_score(y_true, y_pred)
        results[f"k={k}"] = {
            "top1": float((y_pred == y_true).mean()),
            "balanced_acc": float(balanced),
            "k_used": min(k, k_max),
        }
    return results


def knn_eval(
    encoder: torch.nn.Module,
    train_set: Dataset | str | Sequence[str],
    test_set: Dataset | str | Sequence[str],
    *,
    transform: Callable | None = None,
    ks: Sequence[int] = KS,
    temperature: float = 0.07,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Encode both sets with the frozen `encoder` and run `knn_classify`; used by the SSL trainer.

    train_set/test_set are Datasets yielding (tensor, label), or sources for `build_dataset` (then
    `transform`, the encoder's eval preprocessing, is required).
    """
    from pathgen.eval.features import encode_splits

    train_x, train_y, test_x, test_y = encode_splits(
        encoder, train_set, test_set, transform, batch_size, num_workers, device, progress
    )
    return knn_classify(train_x, train_y, test_x, test_y, ks=ks, temperature=temperature)
