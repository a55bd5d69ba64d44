"""Frozen-encoder features for a labelled dataset: the input to kNN and linear-probe evaluation."""

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from pathgen.errors import PathgenError
from pathgen.runtime.device import autocast
from pathgen.runtime.progress import progress_bar_or


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    bar=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (not normalised) float32 CPU features [N, D] and int64 labels [N], in dataset order.

    The dataset must yield (preprocessed image tensor, label). The model runs in eval mode (its previous mode
    is restored afterwards, so the trainer can pass its teacher) on `device`, by default where it already is.
    `bar`: a progress bar of the caller's to count the images on (one display for several encodings); without
    it, and with `progress`, this call shows its own.
    """
    if device is None:  # stay where the model is (CPU for a parameter-free model)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    was_training = model.training
    model.eval().to(device)
    features, labels = [], []
    try:
        with progress_bar_or(bar, total=len(dataset), desc="features", unit="img", disable=not progress,
                             leave=False) as bar:
            for images, targets in loader:
                with autocast(device):
                    out = model(images.to(device, non_blocking=True))
                features.append(out.float().cpu())
                labels.append(torch.as_tensor(targets, dtype=torch.long))
                bar.update(len(images))
    finally:
        model.train(was_training)
    if not features:
        raise PathgenError("no samples to extract features from (the dataset is empty)")
    return torch.cat(features), torch.cat(labels)


def _as_dataset(data: Dataset | str | Sequence[str], transform: Callable | None) -> Dataset:
    from pathgen.data.datasets import build_dataset

    if isinstance(data, Dataset):
        return data
    if transform is None:
        raise ValueError("building a dataset from sources needs the encoder's eval transform")
    return build_dataset(data, transform=transform)


def encode_splits(
    model: torch.nn.Module,
    train_set: Dataset | str | Sequence[str],
    test_set: Dataset | str | Sequence[str],
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    bar=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features and labels of a train and a test set, with test labels numbered like the train classes.
    `bar`: as for `extract_features`."""
    from pathgen.data.datasets import align_labels, dataset_classes

    train_set, test_set = _as_dataset(train_set, transform), _as_dataset(test_set, transform)
    train_x, train_y = extract_features(model, train_set, batch_size, num_workers, device, progress, bar)
    test_x, test_y = extract_features(model, test_set, batch_size, num_workers, device, progress, bar)
    test_y = align_labels(test_y, dataset_classes(test_set), dataset_classes(train_set))
    for name, y in (("train", train_y), ("test", test_y)):
        if (y < 0).any():
            raise PathgenError(f"the {name} set has {int((y < 0).sum())} unlabelled item(s); evaluation needs labels")
    return train_x, train_y, test_x, test_y
