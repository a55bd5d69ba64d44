"""DINO self-supervised pretraining of a timm ViT: one loop, top to bottom, as facebookresearch/dino main_dino.py.

    data -> multi-crop views -> student (all crops) / EMA teacher (global crops) -> DINO loss -> AdamW step
         -> teacher EMA -> logs, checkpoints, periodic kNN -> export the teacher backbone

The Gen-SIS stage reuses this loop rather than forking it: `train(cfg, dataset=..., extra_loss=...)` takes a
dataset whose items may carry extra inputs after the crops (generated views, interpolation pairs) and a callable
adding a loss term (e.g. the disentanglement loss built from `DINOLoss.teacher_targets` / `cross_entropy`).
"""

import itertools
import json
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from pathgen.config import save_config
from pathgen.errors import CheckpointError, ConfigError
from pathgen.runtime.checkpoint import (
    load_checkpoint,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pathgen.runtime.device import autocast
from pathgen.runtime.distributed import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    distributed_sampler,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from pathgen.ssl.config import SSLConfig
from pathgen.ssl.export import create_backbone, export_encoder
from pathgen.ssl.head import DINOHead, MultiCropModel
from pathgen.ssl.loss import DINOLoss
from pathgen.ssl.schedules import cosine_schedule, linear_warmup

N_GLOBAL = 2  # the teacher sees the two global crops, which come first
# extra_loss(batch, student, teacher, dino_loss, teacher_temp) -> scalar added to the DINO loss
ExtraLoss = Callable[[Any, nn.Module, nn.Module, DINOLoss, float], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# building blocks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_models(cfg: SSLConfig) -> tuple[MultiCropModel, nn.Module]:
    """Student (drop-path) and teacher (no drop-path, no grads) starting from the same weights."""
    from timm.utils import ModelEmaV3

    m = cfg.model
    img_size = m.img_size or cfg.data.global_size
    backbone = create_backbone(m.name, img_size, m.kwargs, drop_path_rate=m.drop_path_rate)
    head = DINOHead(backbone.num_features, m.out_dim, m.hidden_dim, m.bottleneck_dim, norm_last_layer=m.norm_last_layer)
    student = MultiCropModel(backbone, head)
    # ModelEmaV3 copies the student; eval mode makes its drop-path the identity. The momentum is set per step.
    teacher = ModelEmaV3(student, decay=cfg.dino.momentum_teacher)
    teacher.requires_grad_(False)
    return student, teacher


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on weight matrices only: biases and 1-D parameters (norms, scales, tokens' gains) get none."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO's per-parameter clipping: each gradient is scaled to norm <= clip on its own (not a global norm)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


def cancel_last_layer_gradients(model: MultiCropModel, epoch: int, freeze_last_layer: int) -> None:
    """Keep the head's prototypes fixed for the first epochs; AdamW skips parameters whose grad is None."""
    if epoch < freeze_last_layer:
        for p in model.head.last_layer.parameters():
            p.grad = None


class ResumableSampler(Sampler):
    """A distributed sampler whose epoch order depends on (seed, epoch) only, and that can skip the batches
    already trained on, so a resumed run sees exactly the images the uninterrupted run would have."""

    def __init__(self, inner: Sampler, batch_size: int):
        self.inner, self.batch_size, self.skip = inner, batch_size, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip


class ItemSeededDataset(Dataset):
    """Draws each item's augmentation from torch's RNG seeded by (seed, epoch, index), then restores the RNG.

    An item's crops then depend on nothing else: not on which DataLoader worker loads it, nor on what that
    worker loaded before. So a run resumed mid-epoch gets exactly the crops the uninterrupted run got, with any
    number of workers, and the crops do not change with data.num_workers.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # workers are started per epoch, each with a copy of this object

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        state = torch.get_rng_state()
        # the CPU generator only: torch.manual_seed also visits every accelerator backend (~0.5 ms per call)
        torch.default_generator.manual_seed(((self.seed * 1_000_003 + self.epoch) * 100_000_007 + int(i)) % 2**63)
        try:
            return self.dataset[i]
        finally:
            torch.set_rng_state(state)


@torch.no_grad()
def teacher_stats(targets: torch.Tensor) -> dict[str, float]:
    """Collapse indicators for teacher distributions [N, K] (after centring and sharpening).

    entropy ~ ln K: uniform collapse; marginal entropy ~ 0: every image goes to the same prototype (one-hot).
    """
    p = targets.float().clamp_min(1e-12)
    entropy = -(p * p.log()).sum(-1).mean()
    marginal = targets.float().mean(0).clamp_min(1e-12)
    return {
        "teacher_entropy": entropy.item(),
        "teacher_kl_to_uniform": math.log(targets.shape[-1]) - entropy.item(),
        "teacher_marginal_entropy": -(marginal * marginal.log()).sum().item(),
        "teacher_max_prob": targets.max(-1).values.mean().item(),
    }


class CollapseMonitor:
    """Warn loudly when the loss sits at ln K or the teacher outputs turn uniform or one-hot for `patience` logs."""

    def __init__(self, out_dim: int, patience: int = 5):
        self.log_k, self.patience, self.count, self.warned = math.log(out_dim), patience, 0, False

    def reason(self, loss: float, stats: dict[str, float]) -> str | None:
        if stats["teacher_entropy"] > 0.95 * self.log_k:
            return f"teacher outputs are ~uniform (entropy {stats['teacher_entropy']:.3f} ~ ln K {self.log_k:.3f})"
        if stats["teacher_marginal_entropy"] < 0.1:
            return "teacher outputs are ~one-hot on the same prototype for every image (marginal entropy ~ 0)"
        if abs(loss - self.log_k) < 0.02 * self.log_k:
            return f"loss {loss:.3f} sits at ln(out_dim) = {self.log_k:.3f}"
        return None

    def update(self, step: int, loss: float, stats: dict[str, float]) -> None:
        reason = self.reason(loss, stats)
        self.count = self.count + 1 if reason else 0
        if reason and self.count >= self.patience and not self.warned:
            self.warned = True
            warnings.warn(
                f"DINO COLLAPSE? step {step}: {reason} for {self.count} consecutive logs. Lower the teacher "
                "temperature, raise the centre momentum, use more/varied data, or check kNN accuracy.",
                stacklevel=2,
            )


def build_data(cfg: SSLConfig, dataset: Dataset | None = None) -> tuple[Dataset, tuple, tuple, nn.Module | None]:
    """The training set and its (mean, std), plus the batched multi-crop when it runs on the device.

    augment_on "workers": items are lists of crops (MultiCropAugmentation in the DataLoader workers), and the
    returned module is None. "device": items are uint8 images of one size, and the returned DeviceMultiCrop
    turns each loaded batch into crops on the training device. A given `dataset` replaces the configured
    sources; its items must match augment_on.
    """
    from pathgen.data.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation, ResizeCenterCrop
    from pathgen.data.device_augment import DeviceMultiCrop

    d = cfg.data
    crop_kwargs = dict(global_size=d.global_size, local_size=d.local_size, n_local=d.n_local,
                       global_scale=tuple(d.global_scale), local_scale=tuple(d.local_scale), preset=d.preset)
    on_device = d.augment_on == "device"
    if dataset is not None:
        mean, std = tuple(getattr(dataset, "mean", IMAGENET_MEAN)), tuple(getattr(dataset, "std", IMAGENET_STD))
    else:
        from pathgen.data.datasets import build_dataset

        if not d.sources:
            raise ConfigError("data.sources", "no training data configured (stores, manifests or image folders)")
        transform = ResizeCenterCrop(d.device_input_size) if on_device else MultiCropAugmentation(**crop_kwargs)
        dataset, mean, std = build_dataset(d.sources, transform=transform), IMAGENET_MEAN, IMAGENET_STD
    return dataset, mean, std, (DeviceMultiCrop(**crop_kwargs, mean=mean, std=std) if on_device else None)


def crops_on_device(first: Any, device: torch.device, multicrop: nn.Module | None) -> list[torch.Tensor]:
    """A loaded batch's images as the list of crops on `device`: moved as they are, or cut there."""
    if multicrop is None:
        return [c.to(device, non_blocking=True) for c in first]
    return multicrop(first.to(device, non_blocking=True))


def build_knn_sets(cfg: SSLConfig):
    """(train, test) labelled datasets for the periodic kNN check, or None when not configured."""
    if not (cfg.eval.knn_train and cfg.eval.knn_test):
        return None
    from pathgen.data.augment import eval_transform
    from pathgen.data.datasets import build_dataset

    tf = eval_transform(cfg.data.global_size)
    return build_dataset(cfg.eval.knn_train, transform=tf), build_dataset(cfg.eval.knn_test, transform=tf)


def _scalars(prefix: str, tree: Any) -> dict[str, float]:
    """Flatten a nested dict of numbers ({"k=20": {"top1": ..}}) into {"knn/k=20/top1": ..}."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _scalars(f"{prefix}/{key}", sub).items()}
    return {prefix: float(tree)} if isinstance(tree, (int, float)) else {}


# ---------------------------------------------------------------------------------------------------------------
# the loop


def train(
    cfg: SSLConfig,
    resume: str | Path | None = None,
    dataset: Dataset | None = None,
    extra_loss: ExtraLoss | None = None,
) -> Path:
    """Run DINO pretraining as configured; returns the output directory.

    <out>/config.yaml, checkpoints/{last,step_N}.pt, tensorboard/, log.jsonl, encoder.safetensors + .json.
    `resume`: a checkpoint path, or "auto" for <out>/checkpoints/last.pt when present. `dataset` replaces
    the configured sources (items: (list of crops, label, *extras)); `extra_loss` adds a term to each step.
    """
    device = init_distributed(cfg.run.device)
    rank, world = get_rank(), get_world_size()
    out_dir = Path(cfg.run.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    resume_path = resolve_resume(resume, out_dir)
    if resume_path is None and (ckpt_dir / "last.pt").exists():
        raise ConfigError(out_dir, "already holds a training run; pass --resume auto to continue it or another --out")

    # ---- models, loss, optimizer (same init on every rank: seeded before the rank-specific seed) ----
    seed_everything(cfg.run.seed)
    student, teacher = build_models(cfg)
    student.to(device)
    teacher.to(device)
    dino_loss = DINOLoss(cfg.model.out_dim, cfg.dino.student_temp, cfg.dino.center_momentum).to(device)
    student_ddp = nn.parallel.DistributedDataParallel(student) if is_distributed() else student
    optimizer = torch.optim.AdamW(param_groups(student))  # lr and wd are set every step from the schedules
    seed_everything(cfg.run.seed + rank)

    # ---- data ----
    dataset, mean, std, multicrop = build_data(cfg, dataset)
    if multicrop is None:  # augmenting in the workers: make each item's crops a function of (seed, epoch, index)
        dataset = ItemSeededDataset(dataset, cfg.run.seed)
    batch = cfg.data.batch_size
    sampler = ResumableSampler(distributed_sampler(dataset, seed=cfg.run.seed), batch)
    loader_rng = torch.Generator()  # worker seeds come from here, not the global RNG (keeps resume exact)
    loader = DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=cfg.data.num_workers, drop_last=True,
        pin_memory=device.type == "cuda", generator=loader_rng, persistent_workers=False,
    )
    iters_per_epoch = len(sampler.inner) // batch
    if iters_per_epoch == 0:
        raise ConfigError("data.batch_size", f"{len(dataset)} images is less than one batch of {batch} x {world}")
    knn_sets = build_knn_sets(cfg) if is_main_process() else None

    # ---- schedules: per-iteration arrays indexed by the global step ----
    o, d, epochs = cfg.optim, cfg.dino, cfg.optim.epochs
    lr_sched = cosine_schedule(o.base_lr * batch * world / 256, o.min_lr, epochs, iters_per_epoch, o.warmup_epochs)
    wd_sched = cosine_schedule(o.weight_decay, o.weight_decay_end, epochs, iters_per_epoch)
    momentum_sched = cosine_schedule(d.momentum_teacher, 1.0, epochs, iters_per_epoch)
    temp_sched = linear_warmup(d.warmup_teacher_temp, d.teacher_temp, epochs, iters_per_epoch,
                               d.warmup_teacher_temp_epochs)
    total_steps = epochs * iters_per_epoch
    last_step = min(total_steps, cfg.run.max_steps or total_steps)

    # ---- resume ----
    step = 0
    if resume_path is not None:
        state = load_checkpoint(resume_path, map_location=device)
        try:
            student.load_state_dict(state["student"])
            teacher.module.load_state_dict(state["teacher"])
            optimizer.load_state_dict(state["optimizer"])
            dino_loss.load_state_dict(state["dino_loss"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(resume_path, f"does not match the configured model ({type(err).__name__})") from None
        step = int(state["step"])
        if state["iters_per_epoch"] != iters_per_epoch:
            warnings.warn(f"{resume_path}: saved with {state['iters_per_epoch']} steps per epoch, now "
                          f"{iters_per_epoch} (other data, batch or world size): the resume is not exact", stacklevel=2)
        if len(state["rng"]) == world:  # each rank continues its own random streams
            set_rng_state(state["rng"][rank])
        else:
            seed_everything(cfg.run.seed + rank + step)

    config_dict = cfg.model_dump(mode="json")
    writer = None
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step or None)

    def log_line(record: dict) -> None:
        # the same scalars as TensorBoard, one JSON line per log step: easy to grep, plot or test against
        with open(out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def checkpoint(epoch: int, numbered: bool) -> None:
        rng = all_gather_object(rng_state())  # every rank's RNG streams, so that a DDP resume is exact too
        if not is_main_process():
            return
        state = {
            "student": student.state_dict(), "teacher": teacher.module.state_dict(),
            "optimizer": optimizer.state_dict(), "dino_loss": dino_loss.state_dict(),
            "step": step, "epoch": epoch, "iters_per_epoch": iters_per_epoch, "rng": rng,
            "config": config_dict, "mean": list(mean), "std": list(std),
        }
        save_checkpoint(state, ckpt_dir / "last.pt")
        if numbered:
            save_checkpoint(state, ckpt_dir / f"step_{step:07d}.pt")

    from tqdm import tqdm

    monitor = CollapseMonitor(cfg.model.out_dim)
    bar = tqdm(total=last_step * batch * world, initial=step * batch * world, unit="img", unit_scale=True,
               disable=not is_main_process(), dynamic_ncols=True)
    start_step, t0, loss_value = step, time.perf_counter(), float("nan")
    while step < last_step:
        epoch = step // iters_per_epoch
        sampler.set_epoch(epoch, skip_batches=step % iters_per_epoch)
        if isinstance(dataset, ItemSeededDataset):
            dataset.set_epoch(epoch)
        loader_rng.manual_seed(cfg.run.seed * 100_003 + epoch * world + rank)
        student.train()
        for data in loader:
            it = step  # global step index into the schedules
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = float(lr_sched[it])
                if i == 0:  # only the weight matrices are decayed
                    group["weight_decay"] = float(wd_sched[it])

            crops = crops_on_device(data[0], device, multicrop)
            if step == start_step and is_main_process():  # a look at the augmentation, before any compute
                from pathgen.data.augment import views_picture

                views_picture(crops, mean, std).save(out_dir / "views.png")
            with autocast(device):
                teacher_out = teacher.module(crops[:N_GLOBAL])
                student_out = student_ddp(crops)
                targets = dino_loss.teacher_targets(teacher_out, temp_sched[it], N_GLOBAL)
                loss = dino_loss.cross_entropy(targets, student_out, len(crops))
                if extra_loss is not None:
                    loss = loss + extra_loss(data, student_ddp, teacher.module, dino_loss, temp_sched[it])
            dino_loss.update_center(teacher_out)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {it}; stopping (lower optim.base_lr?)")

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip_grad:
                clip_gradients(student, o.clip_grad)
            cancel_last_layer_gradients(student, epoch, o.freeze_last_layer)
            optimizer.step()
            teacher.decay = float(momentum_sched[it])  # EMA: teacher = m * teacher + (1 - m) * student
            teacher.update(student)
            step += 1
            bar.update(batch * world)

            if step % cfg.run.log_every == 0 or step == last_step:
                stats = teacher_stats(torch.cat(targets))
                mean_loss = all_reduce_mean(loss.detach().float().clone()).item()
                monitor.update(step, mean_loss, stats)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_sched[it]:.2e}")
                if writer is not None:
                    scalars = {"loss": mean_loss, "lr": lr_sched[it], "wd": wd_sched[it],
                               "teacher_temp": temp_sched[it], "momentum": momentum_sched[it], **stats}
                    for key, value in scalars.items():
                        writer.add_scalar(f"train/{key}", float(value), step)
                    log_line({"step": step, "epoch": epoch, **{k: float(v) for k, v in scalars.items()}})
            if cfg.run.save_every_steps and step % cfg.run.save_every_steps == 0:
                checkpoint(epoch, numbered=True)
            if step >= last_step or step % iters_per_epoch == 0:
                break

        epoch_done = step % iters_per_epoch == 0
        if epoch_done and knn_sets is not None and (epoch + 1) % cfg.eval.every_epochs == 0:
            from pathgen.eval.knn import knn_eval

            result = knn_eval(teacher.module.backbone, *knn_sets, batch_size=cfg.eval.batch_size, device=device)
            knn_scalars = _scalars("knn", result)
            for key, value in knn_scalars.items():
                writer.add_scalar(key, value, step)
            log_line({"step": step, "epoch": epoch + 1, **knn_scalars})
            bar.write(f"epoch {epoch}: kNN {result}")
        if (epoch_done and (epoch + 1) % cfg.run.save_every_epochs == 0) or step == last_step:
            checkpoint(epoch if not epoch_done else epoch + 1, numbered=False)
        barrier()
    bar.close()

    if is_main_process():
        img_size = cfg.model.img_size or cfg.data.global_size
        weights = export_encoder(teacher.module.backbone, out_dir, cfg.model.name, cfg.model.kwargs, img_size,
                                 mean, std, config=config_dict)
        seconds = time.perf_counter() - t0
        rate = (step - start_step) * batch * world / max(seconds, 1e-9)
        print(f"pretrain ssl: {step} steps ({step / iters_per_epoch:.2f} epochs), final loss {loss_value:.4f}, "
              f"{rate:.1f} img/s, teacher encoder -> {weights}")
        writer.close()
    barrier()
    return out_dir
