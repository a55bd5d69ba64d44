"""A training batch as crops on the device, each tagged with its role; the model inputs and outputs by role.

    batch = load_batch(data, device, multicrop)
    batch["global"]         2 x [B, 3, G, G]   DINO's global crops; Gen-DINO cuts the second one from a generated
                                              view in the rows where batch["generated"] [B] is True
    batch["local"]          n x [B, 3, L, L]   DINO's local crops, always real
    batch["interpolated"]   [M, 3, G, G]       Gen-DINO: interpolated images x_int, seen by the student only
    batch["partner"]        [M, 3, G, G]       their partner patches x2, seen by the teacher only
    batch["pair"], ["alpha"]  [M]              the batch row of each interpolation's x1, and x1's weight
    batch["fallback_view"], ["fallback_interp"]  [B] bool   the item asked for a view / interpolation it lacked

Plain DINO batches hold "global" and "local" only. The student runs once over [interpolated, global, local] and
the teacher once over [global, partner]: MultiCropModel puts consecutive crops of one size through the backbone
together, so the interpolated and global crops share one pass and only the locals get their own.
`split_student` / `split_teacher` cut the outputs back into roles.
"""

from typing import Any

import torch
from torch import nn

N_GLOBAL = 2  # DINO's two global crops: the teacher's targets


def load_batch(data: Any, device: torch.device, multicrop: nn.Module | None) -> dict:
    """What the DataLoader gave, as crops on `device` by role; cut there when `multicrop` (DeviceMultiCrop) is given.

    data: plain DINO's (crops or uint8 images, labels), or the dict of pathgen.ssl.gensis.collate.
    """
    if not isinstance(data, dict):
        data = {"crops": data[0]} if multicrop is None else {"images": data[0]}

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=True)

    if multicrop is None:
        crops = [move(c) for c in data["crops"]]
    else:
        images, second = move(data["images"]), None
        if len(data.get("view_rows", ())):  # Gen-DINO: the generated views replace those rows' 2nd global input
            second = images.clone()
            second[move(data["view_rows"])] = move(data["views"])
        crops = multicrop(images, second)
    batch = {"global": crops[:N_GLOBAL], "local": crops[N_GLOBAL:]}
    if "pair" not in data:
        return batch
    interpolated, partner = move(data["interpolated"]), move(data["partner"])
    if multicrop is not None:  # uint8 images: cut the first global recipe of each on the device
        empty = crops[0].new_empty((0, *crops[0].shape[1:]))
        interpolated, partner = ((multicrop.global_view(x) if len(x) else empty) for x in (interpolated, partner))
    batch.update(interpolated=interpolated, partner=partner, pair=move(data["pair"]), alpha=move(data["alpha"]),
                 generated=data["generated"], fallback_view=data["fallback_view"],
                 fallback_interp=data["fallback_interp"])
    return batch


def n_interpolated(batch: dict) -> int:
    return len(batch["interpolated"]) if "interpolated" in batch else 0


def student_crops(batch: dict) -> list[torch.Tensor]:
    """[interpolated (Gen-DINO), global 1, global 2, local 1..n]: interpolations first, so the DINO crops' logits
    are one contiguous slice after them."""
    interpolated = [batch["interpolated"]] if n_interpolated(batch) else []
    return interpolated + batch["global"] + batch["local"]


def teacher_crops(batch: dict) -> list[torch.Tensor]:
    """[global 1, global 2, partner (Gen-DINO)]."""
    partner = [batch["partner"]] if n_interpolated(batch) else []
    return batch["global"] + partner


def split_student(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(DINO crops' logits [n_crops * B, K] in crop order, interpolations' logits [M, K])."""
    m = n_interpolated(batch)
    return logits[m:], logits[:m]


def split_teacher(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(global crops' logits [2 * B, K], partners' logits [M, K])."""
    n = N_GLOBAL * len(batch["global"][0])
    return logits[:n], logits[n:]


def batch_counts(batch: dict) -> torch.Tensor:
    """[items, generated pairs, interpolations, view fallbacks, interpolation fallbacks] of this batch (float CPU),
    to be summed over ranks."""
    if "generated" not in batch:
        return torch.tensor([float(len(batch["global"][0])), 0, 0, 0, 0])
    return torch.tensor([len(batch["generated"]), int(batch["generated"].sum()), n_interpolated(batch),
                         int(batch["fallback_view"].sum()), int(batch["fallback_interp"].sum())], dtype=torch.float32)


def picture_rows(batch: dict, n_images: int = 4) -> list[list[torch.Tensor]]:
    """Rows of crops for views.png: each of the first `n_images` items' views (global 1, global 2, locals); then,
    with Gen-DINO, up to n_images rows of generated pairs (real global 1 | generated global 2) and of
    interpolations (x1's global 1 | partner x2 | interpolated x_int)."""
    crops = batch["global"] + batch["local"]
    rows = [[c[b] for c in crops] for b in range(min(n_images, len(crops[0])))]
    if "generated" in batch:
        generated = torch.nonzero(batch["generated"]).flatten()[:n_images].tolist()
        rows += [[batch["global"][0][b], batch["global"][1][b]] for b in generated]
        pair = batch["pair"].tolist()
        rows += [[batch["global"][0][pair[j]], batch["partner"][j], batch["interpolated"][j]]
                 for j in range(min(n_images, len(pair)))]
    return rows
