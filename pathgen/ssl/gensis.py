"""Gen-DINO's data: each training patch joined to its generated views and interpolations in generated.zarr.

    index = GeneratedIndex(open_generated(path), patches)       # same stores (content ids)? same image size?
    dataset = GenSISDataset(patches, index, augment, p_gen, p_interp)   # inside ItemSeededDataset

Per item (Algorithm 1 of arXiv 2412.01672):
- with probability p_gen the second global crop is cut from one of the patch's generated views (drawn uniformly)
  instead of from the patch itself; the first global crop and the local crops stay real;
- with probability p_interp one of the interpolations whose first source is the patch (drawn uniformly) comes
  along: the interpolated image x_int, its recorded partner patch x2 (read from the training stores) and alpha,
  the weight of the patch's embedding in SLERP(e1, e2, alpha).
A patch with no generated view (no interpolation) when its coin asks for one falls back to real crops (to no
interpolation); the item says so, and the trainer logs the count.

The coins and picks are drawn from numpy's global RNG, which ItemSeededDataset seeds per (seed, epoch, index):
an item's choices depend neither on the DataLoader worker that loads it nor on where a run was resumed.

Items are dicts, which `collate` turns into the loaded batch that pathgen.ssl.batch.load_batch puts on the device:
    crops                      [global1, global2, local...] (augment_on: workers), or
    image, view                uint8 3xSxS patch and generated view (None when unused) (augment_on: device)
    generated                  bool: the second global crop comes from a generated view
    interpolated, partner      a global-recipe crop (workers) or uint8 image (device) of x_int and x2, or None
    alpha                      float, the weight of this patch (x1) in the interpolation
    fallback_view, fallback_interp   bool: asked for one, the patch had none
"""

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from pathgen.data.augment import MultiCropAugmentation
from pathgen.store.dataset import PatchDataset
from pathgen.store.generated import KIND_INTERPOLATION, KIND_VIEW, GeneratedStore, GeneratedStoreError

ITEM_FLAGS = ("generated", "fallback_view", "fallback_interp")


def _by_owner(rows: np.ndarray, owners: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists: the rows owned by item i are rows[ptr[i]:ptr[i + 1]] (in generated-store order)."""
    order = np.argsort(owners, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=n))]).astype(np.int64)
    return ptr, rows[order].astype(np.int64)


class GeneratedIndex:
    """Which generated views and interpolations of `generated` belong to each item of `patches`.

    Stores are matched by content id (GeneratedStore.match_stores): a generated set made from other stores, or a
    training store re-tiled since generation, is a GeneratedStoreError naming the store and both checksums. So are
    generated images of another size than the training patches (generated from other patches, or resized).
    Generated items whose source patch is not a training item, or whose partner's store is not a training store,
    are left out (counted in `summary`).
    """

    def __init__(self, generated: GeneratedStore, patches: PatchDataset):
        from pathgen.store import open_store

        self.generated = generated
        ids, sizes, lengths = [], [], []
        for path in patches.paths:
            with open_store(path) as store:
                ids.append(store.content_id)
                sizes.append(store.patch_size)
                lengths.append(len(store))
        gen_of_train = generated.match_stores(patches.paths, ids)
        for k in np.flatnonzero(gen_of_train >= 0):
            if sizes[k] != generated.image_size:
                raise GeneratedStoreError(generated.path, f"holds {generated.image_size} px images, but the patches "
                                          f"of {patches.paths[k]} are {sizes[k]} px: generated from other patches")
        train_of_gen = np.full(len(generated.stores) + 1, -1, dtype=np.int64)  # the extra last entry: partner -1
        train_of_gen[gen_of_train[gen_of_train >= 0]] = np.flatnonzero(gen_of_train >= 0)

        items, n = generated.items, len(patches)
        for name in ("source", "partner"):
            col = getattr(items, name)[:, 0]
            if ((col < -1) | (col >= len(generated.stores))).any():
                raise GeneratedStoreError(generated.path, f"malformed: a {name} store index is out of range")
        # the dataset item of each generated item's source patch (-1: not a training item)
        keys = (patches.store_ids.astype(np.int64) << 32) | patches.patch_ids.astype(np.int64)
        order = np.argsort(keys, kind="stable")
        src_store = train_of_gen[items.source[:, 0]]
        want = (src_store << 32) | items.source[:, 1]
        owner = np.full(len(items), -1, dtype=np.int64)
        if len(keys):
            pos = np.minimum(np.searchsorted(keys[order], want), len(keys) - 1)
            hit = (src_store >= 0) & (keys[order][pos] == want)
            owner[hit] = order[pos[hit]]

        self.partner_store = train_of_gen[items.partner[:, 0]]
        self.partner_patch = items.partner[:, 1]
        n_patches = np.asarray(lengths + [0])[self.partner_store]  # partner store -1 (none) -> 0 patches
        partner_ok = (self.partner_store >= 0) & (self.partner_patch >= 0) & (self.partner_patch < n_patches)
        self.alpha = items.alpha
        views = np.flatnonzero((items.kind == KIND_VIEW) & (owner >= 0))
        interps = np.flatnonzero((items.kind == KIND_INTERPOLATION) & (owner >= 0) & partner_ok)
        self.view_ptr, self.views = _by_owner(views, owner[views], n)
        self.interp_ptr, self.interps = _by_owner(interps, owner[interps], n)
        self.summary = {
            "patches": n,
            "with_views": int((np.diff(self.view_ptr) > 0).sum()),
            "with_interpolations": int((np.diff(self.interp_ptr) > 0).sum()),
            "unused_items": int(len(items) - len(views) - len(interps)),
        }

    @staticmethod
    def _pick(ptr: np.ndarray, rows: np.ndarray, i: int, wanted: bool, u: float) -> tuple[int, bool]:
        """(generated item, fell back): one of item i's rows drawn by u in [0, 1), or -1 if unwanted or none."""
        count = int(ptr[i + 1] - ptr[i])
        if not wanted:
            return -1, False
        if count == 0:
            return -1, True
        return int(rows[ptr[i] + min(int(u * count), count - 1)]), False

    def pick_view(self, i: int, wanted: bool, u: float) -> tuple[int, bool]:
        return self._pick(self.view_ptr, self.views, i, wanted, u)

    def pick_interpolation(self, i: int, wanted: bool, u: float) -> tuple[int, bool]:
        return self._pick(self.interp_ptr, self.interps, i, wanted, u)


class GenSISDataset(Dataset):
    """The patches of a PatchDataset with their Gen-DINO extras (see the module docstring for the items).

    augment: MultiCropAugmentation (augment_on: workers: crops are cut here) or ResizeCenterCrop (augment_on:
    device: uint8 images of one size, cut on the device by DeviceMultiCrop).
    """

    def __init__(self, patches: PatchDataset, index: GeneratedIndex, augment, p_gen: float, p_interp: float):
        self.patches, self.index, self.augment = patches, index, augment
        self.p_gen, self.p_interp = p_gen, p_interp
        self.on_device = not isinstance(augment, MultiCropAugmentation)

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        coin_view, coin_interp, u_view, u_interp = np.random.random(4)  # item-seeded (ItemSeededDataset)
        view, fallback_view = self.index.pick_view(i, coin_view < self.p_gen, u_view)
        interp, fallback_interp = self.index.pick_interpolation(i, coin_interp < self.p_interp, u_interp)
        generated = self.index.generated
        x = self.patches.array(i)
        x_view = generated.image(view) if view >= 0 else None
        item = {"generated": view >= 0, "fallback_view": fallback_view, "fallback_interp": fallback_interp,
                "interpolated": None, "partner": None, "alpha": 1.0}
        if self.on_device:
            item.update(image=self.augment(x), view=None if x_view is None else self.augment(x_view))
            prepare = self.augment
        else:
            item["crops"] = self.augment(x, second=x_view)
            prepare = self.augment.global_view
        if interp >= 0:
            partner = self.patches.read_patch(int(self.index.partner_store[interp]),
                                              int(self.index.partner_patch[interp]))
            item.update(interpolated=prepare(generated.image(interp)), partner=prepare(partner),
                        alpha=float(self.index.alpha[interp]))
        return item


def _stack(tensors: list, like: torch.Tensor) -> torch.Tensor:
    # default_collate stacks straight into shared memory in a DataLoader worker (torch.stack would make the
    # queue copy every batch there once more)
    return default_collate(tensors) if tensors else like.new_empty((0, *like.shape[1:]))


def collate(items: list[dict]) -> dict:
    """GenSISDataset items -> the loaded batch: each role stacked; views and interpolations only where present."""
    out: dict = {}
    if "crops" in items[0]:
        out["crops"] = default_collate([it["crops"] for it in items])  # [global1, global2, local...], each [B, ...]
        like = out["crops"][0]
    else:
        out["images"] = like = default_collate([it["image"] for it in items])
        rows = [b for b, it in enumerate(items) if it["view"] is not None]
        out["view_rows"] = torch.tensor(rows, dtype=torch.long)
        out["views"] = _stack([items[b]["view"] for b in rows], like)
    pair = [b for b, it in enumerate(items) if it["interpolated"] is not None]
    out["pair"] = torch.tensor(pair, dtype=torch.long)
    out["interpolated"] = _stack([items[b]["interpolated"] for b in pair], like)
    out["partner"] = _stack([items[b]["partner"] for b in pair], like)
    out["alpha"] = torch.tensor([items[b]["alpha"] for b in pair], dtype=torch.float32)
    for flag in ITEM_FLAGS:
        out[flag] = torch.tensor([bool(it[flag]) for it in items])
    return out


def gensis_dataset(cfg, patches, augment) -> GenSISDataset:
    """The Gen-DINO training set of `cfg` (a GenSISConfig) over `patches` (build_dataset of the data sources)."""
    from pathgen.errors import ConfigError
    from pathgen.ssl.export import encoder_sha256
    from pathgen.store.generated import open_generated

    if not isinstance(patches, PatchDataset):
        raise ConfigError("data.sources", "Gen-DINO trains on patch stores (their content ids join generated.zarr), "
                          "not image folders or labelled CSVs")
    if not cfg.generated:
        raise ConfigError("gensis.generated", f"no generated-views store given (p_gen {cfg.p_gen}, lambda_dis "
                          f"{cfg.lambda_dis}); make one with `pathgen generate`, or set both to 0 for plain DINO")
    generated = open_generated(cfg.generated)
    if cfg.encoder:
        generated.check_encoder(encoder_sha256(cfg.encoder), cfg.encoder)
    index = GeneratedIndex(generated, patches)
    s = index.summary
    if cfg.uses_views and s["with_views"] == 0:
        raise GeneratedStoreError(generated.path, f"has no generated view of any training patch, but gensis.p_gen "
                                  f"is {cfg.p_gen} (set it to 0 to train with interpolations only)")
    if cfg.uses_interpolations and s["with_interpolations"] == 0:
        raise GeneratedStoreError(generated.path, "has no usable interpolation of any training patch (source and "
                                  f"partner both training patches), but gensis.lambda_dis is {cfg.lambda_dis} and "
                                  f"p_interp {cfg.p_interp} (set lambda_dis to 0 to train with views only)")
    return GenSISDataset(patches, index, augment, cfg.p_gen if cfg.uses_views else 0.0,
                         cfg.p_interp if cfg.uses_interpolations else 0.0)
