"""DINO self-supervised pretraining of a timm ViT: one loop, top to bottom, as facebookresearch/dino main_dino.py.

    data -> multi-crop views -> student (all crops) / EMA teacher (global crops) -> DINO loss -> AdamW step
         -> teacher EMA -> logs, checkpoints, periodic kNN -> export the teacher backbone

Gen-DINO (`pathgen pretrain gensis`, Gen-SIS stage 3, arXiv 2412.01672) is this same loop with a `gensis:`
config section: some second global crops come from generated views, and interpolated images add the
disentanglement loss, L = L_DINO + lambda_dis * L_dis (pathgen.ssl.gensis for the data, pathgen.ssl.batch for the
crops' roles). With the section off, or with p_gen = 0 and lambda_dis = 0, it is plain DINO step for step.

What every trainer shares (device and precision, torchrun, checkpoints and resume, seeding, logs) lives in
pathgen.runtime; this file holds only what is DINO's.
"""

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from pathgen.errors import ConfigError
from pathgen.runtime.distributed import all_reduce_mean, all_reduce_sum, barrier, get_world_size, is_distributed
from pathgen.runtime.loader import ResumableLoader
from pathgen.runtime.progress import progress_bar
from pathgen.runtime.run import TrainingRun
from pathgen.runtime.seeding import ItemSeededDataset, seed_everything
from pathgen.ssl import batch as roles
from pathgen.ssl.config import SSLConfig
from pathgen.ssl.export import create_backbone, export_encoder
from pathgen.ssl.head import DINOHead, MultiCropModel
from pathgen.ssl.loss import DINOLoss, disentanglement_loss, koleo_loss
from pathgen.ssl.monitor import CollapseMonitor, teacher_stats
from pathgen.ssl.schedules import cosine_schedule, linear_warmup

# ---------------------------------------------------------------------------------------------------------------
# building blocks


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


class TrainingData(NamedTuple):
    dataset: Dataset
    mean: tuple
    std: tuple
    multicrop: nn.Module | None  # DeviceMultiCrop when the crops are cut on the training device
    collate: Any  # the DataLoader's collate_fn (None: torch's default)


def build_data(cfg: SSLConfig) -> TrainingData:
    """The training set and its (mean, std), the batched multi-crop when it runs on the device, the collate_fn.

    augment_on "workers": items are lists of crops (MultiCropAugmentation in the DataLoader workers), and the
    multicrop is None. "device": items are uint8 images of one size, and DeviceMultiCrop turns each loaded batch
    into crops on the training device. With Gen-DINO on, items are pathgen.ssl.gensis's dicts. Items whose
    making draws random numbers are seeded by (seed, epoch, index) (ItemSeededDataset).
    """
    from pathgen.data.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation, ResizeCenterCrop
    from pathgen.data.datasets import build_dataset
    from pathgen.data.device_augment import DeviceMultiCrop

    d, gensis = cfg.data, cfg.gensis
    crop_kwargs = dict(global_size=d.global_size, local_size=d.local_size, n_local=d.n_local,
                       global_scale=tuple(d.global_scale), local_scale=tuple(d.local_scale), preset=d.preset)
    on_device = d.augment_on == "device"
    if not d.sources:
        raise ConfigError("data.sources", "no training data configured (stores, manifests or image folders)")
    transform = ResizeCenterCrop(d.device_input_size) if on_device else MultiCropAugmentation(**crop_kwargs)
    dataset, mean, std, collate = build_dataset(d.sources, transform=transform), IMAGENET_MEAN, IMAGENET_STD, None
    if gensis is not None and gensis.active:
        from pathgen.ssl import gensis as gen

        dataset, collate = gen.gensis_dataset(gensis, dataset, transform), gen.collate
    if not on_device or collate is not None:  # crops cut in the workers, or Gen-DINO's per-item choices
        dataset = ItemSeededDataset(dataset, cfg.run.seed)
    multicrop = DeviceMultiCrop(**crop_kwargs, mean=mean, std=std) if on_device else None
    return TrainingData(dataset, mean, std, multicrop, collate)


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
# one step


def compute_loss(batch: dict, student: nn.Module, teacher: nn.Module, dino_loss: DINOLoss, teacher_temp: float,
                 lambda_dis: float, precision, koleo_weight: float = 0.0
                 ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The named loss terms of one batch ({"dino"}, plus {"dis"} when lambda_dis > 0 and {"koleo"}, unweighted,
    when koleo_weight > 0) and the DINO targets; `total_loss` weighs them.

    One student forward over all student crops and one teacher forward over all teacher crops, split by role
    after. The loss is computed in fp32 outside autocast (as DINO): near ln(65536) ~ 11, bf16 resolves only 0.06.
    The centre moves as in DINO, from the teacher's global crops only (not the partners, nothing interpolated).
    """
    with precision.autocast():
        teacher_out = teacher(roles.teacher_crops(batch))
        student_out, student_features = student(roles.student_crops(batch), return_features=True)
    teacher_global, teacher_partner = roles.split_teacher(teacher_out, batch)
    student_dino, student_interp = roles.split_student(student_out, batch)
    targets = dino_loss.teacher_targets(teacher_global, teacher_temp, roles.N_GLOBAL)
    terms = {"dino": dino_loss.cross_entropy(targets, student_dino, len(batch["global"]) + len(batch["local"]))}
    if koleo_weight > 0:  # DINOv2: on the student's backbone features of each global crop, weighted in total_loss
        b = len(batch["global"][0])
        student_global = roles.split_student(student_features, batch)[0][: roles.N_GLOBAL * b]
        terms["koleo"] = sum(koleo_loss(f) for f in student_global.chunk(roles.N_GLOBAL))
    if lambda_dis > 0:
        terms["dis"] = _disentanglement(batch, student_interp, teacher_global, teacher_partner, dino_loss,
                                        teacher_temp)
    dino_loss.update_center(teacher_global)
    return terms, targets


def total_loss(terms: dict[str, torch.Tensor], lambda_dis: float, koleo_weight: float = 0.0) -> torch.Tensor:
    """L = L_DINO + lambda_dis * L_dis (Gen-SIS) + koleo_weight * L_KoLeo, with the terms that are present."""
    loss = terms["dino"]
    if "dis" in terms:
        loss = loss + lambda_dis * terms["dis"]
    if "koleo" in terms:
        loss = loss + koleo_weight * terms["koleo"]
    return loss


def _disentanglement(batch, student_interp, teacher_global, teacher_partner, dino_loss, teacher_temp):
    """L_dis, the mean over every rank's interpolations: each rank's mean weighted by its share of them, since
    DDP averages the ranks' gradients (a plain per-rank mean would weigh a rank's 3 interpolations like 30)."""
    m = len(student_interp)
    total = all_reduce_sum(torch.tensor(float(m), device=student_interp.device))
    if m == 0:
        return student_interp.new_zeros(()).float()
    # T(x1): the teacher output of x1's first global crop, a draw from the same augmentation
    teacher_x1 = teacher_global[: len(batch["global"][0])][batch["pair"]]
    loss = disentanglement_loss(student_interp, teacher_x1, teacher_partner, batch["alpha"], dino_loss.center[0],
                                dino_loss.student_temp, teacher_temp)
    return loss * (m * get_world_size() / total)


def optimize(loss: torch.Tensor, student: MultiCropModel, optimizer, scaler, clip_grad: float, epoch: int,
             freeze_last_layer: int) -> None:
    """Backward (scaled in fp16), DINO's per-parameter clipping of the true gradients, the frozen prototypes of the
    first epochs, then the AdamW step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients (a no-op outside fp16)
    if clip_grad:
        clip_gradients(student, clip_grad)
    cancel_last_layer_gradients(student, epoch, freeze_last_layer)
    scaler.step(optimizer)
    scaler.update()


def gensis_scalars(counts: torch.Tensor) -> dict[str, float]:
    """The Gen-DINO part of a batch, from batch_counts summed over ranks."""
    items, generated, interpolated, fallback_view, fallback_interp = counts.tolist()
    return {"gensis/generated_frac": generated / items, "gensis/interp_frac": interpolated / items,
            "gensis/fallback_view": fallback_view, "gensis/fallback_interp": fallback_interp}


# ---------------------------------------------------------------------------------------------------------------
# the loop


def train(cfg: SSLConfig, resume: str | Path | None = None) -> Path:
    """Run DINO pretraining as configured; returns the output directory.

    <out>/config.yaml, checkpoints/{last,step_N}.pt, tensorboard/, log.jsonl, views.png, encoder.safetensors +
    .json. `resume`: a checkpoint path, or "auto" for <out>/checkpoints/last.pt when present.
    """
    run = TrainingRun(cfg, resume)
    device, precision, world = run.device, run.precision, run.world

    # ---- models, loss, optimizer (same init on every rank: seeded before the rank-specific seed) ----
    seed_everything(cfg.run.seed)
    student, teacher = build_models(cfg)
    student.to(device)
    teacher.to(device)
    dino_loss = DINOLoss(cfg.model.out_dim, cfg.dino.student_temp, cfg.dino.center_momentum).to(device)
    student_ddp = nn.parallel.DistributedDataParallel(student) if is_distributed() else student
    optimizer = torch.optim.AdamW(param_groups(student))  # lr and wd are set every step from the schedules
    scaler = precision.grad_scaler()  # active in fp16 only
    seed_everything(cfg.run.seed + run.rank)

    # ---- data ----
    dataset, mean, std, multicrop, collate = build_data(cfg)
    gensis = cfg.gensis if cfg.gensis is not None and cfg.gensis.active else None
    lambda_dis = gensis.lambda_dis if gensis is not None and gensis.uses_interpolations else 0.0
    name = "pretrain gensis" if cfg.gensis is not None else "pretrain ssl"
    if gensis is not None and run.is_main:
        s = dataset.dataset.index.summary
        print(f"{name}: {s['with_views']} of {s['patches']} patches have generated views, {s['with_interpolations']}"
              f" interpolations; the others fall back to real crops ({s['unused_items']} generated items unused)")
    batch_size = cfg.data.batch_size
    loader = ResumableLoader(dataset, batch_size, seed=cfg.run.seed, num_workers=cfg.data.num_workers,
                             pin_memory=device.type == "cuda", collate_fn=collate)
    iters_per_epoch = loader.iters_per_epoch
    if iters_per_epoch == 0:
        raise ConfigError("data.batch_size", f"{len(dataset)} images is less than one batch of {batch_size} x "
                          f"{world}")
    knn_sets = build_knn_sets(cfg) if run.is_main else None

    # ---- schedules: per-iteration arrays indexed by the global step ----
    o, d, epochs = cfg.optim, cfg.dino, cfg.optim.epochs
    lr_sched = cosine_schedule(o.base_lr * batch_size * world / 256, o.min_lr, epochs, iters_per_epoch,
                               o.warmup_epochs)
    wd_sched = cosine_schedule(o.weight_decay, o.weight_decay_end, epochs, iters_per_epoch)
    momentum_sched = cosine_schedule(d.momentum_teacher, 1.0, epochs, iters_per_epoch)
    temp_sched = linear_warmup(d.warmup_teacher_temp, d.teacher_temp, epochs, iters_per_epoch,
                               d.warmup_teacher_temp_epochs)
    total_steps = epochs * iters_per_epoch
    last_step = min(total_steps, cfg.run.max_steps or total_steps)

    # ---- resume ----
    step = 0
    state = run.load()
    if state is not None:
        step = run.restore(state, {"student": student, "teacher": teacher.module, "optimizer": optimizer,
                                   "dino_loss": dino_loss, "scaler": scaler}, iters_per_epoch, optional=("scaler",))
    run.start(step)

    def checkpoint(epoch: int, numbered: bool = False) -> None:
        run.save({
            "student": student.state_dict(), "teacher": teacher.module.state_dict(),
            "optimizer": optimizer.state_dict(), "dino_loss": dino_loss.state_dict(), "scaler": scaler.state_dict(),
            "iters_per_epoch": iters_per_epoch, "mean": list(mean), "std": list(std),
        }, step, epoch, numbered)

    monitor = CollapseMonitor(cfg.model.out_dim)
    images_per_step = batch_size * world
    bar = progress_bar(total=last_step * images_per_step, initial=step * images_per_step, unit="img", unit_scale=True,
                       desc=name, disable=not run.is_main)
    start_step, t0, loss_value = step, time.perf_counter(), float("nan")
    while step < last_step:
        epoch = step // iters_per_epoch
        student.train()
        for data in loader.epoch(epoch, skip_batches=step % iters_per_epoch):
            it = step  # global step index into the schedules
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = float(lr_sched[it])
                if i == 0:  # only the weight matrices are decayed
                    group["weight_decay"] = float(wd_sched[it])

            batch = roles.load_batch(data, device, multicrop)
            if step == start_step and run.is_main:  # a look at the augmentation, before any compute
                from pathgen.data.augment import rows_picture

                rows_picture(roles.picture_rows(batch), mean, std).save(run.out_dir / "views.png")
            terms, targets = compute_loss(batch, student_ddp, teacher.module, dino_loss, temp_sched[it], lambda_dis,
                                          precision, cfg.dino.koleo_weight)
            loss = total_loss(terms, lambda_dis, cfg.dino.koleo_weight)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {it}; stopping (lower optim.base_lr?)")
            optimize(loss, student, optimizer, scaler, o.clip_grad, epoch, o.freeze_last_layer)
            teacher.decay = float(momentum_sched[it])  # EMA: teacher = m * teacher + (1 - m) * student
            teacher.update(student)
            step += 1
            bar.update(images_per_step)

            if step % cfg.run.log_every == 0 or step == last_step:
                stats = teacher_stats(torch.cat(targets))
                mean_loss = all_reduce_mean(loss.detach().float().clone()).item()
                values = {f"loss/{k}": all_reduce_mean(v.detach().float().clone()).item() for k, v in terms.items()}
                if gensis is not None:
                    values.update(gensis_scalars(all_reduce_sum(roles.batch_counts(batch).to(device)).cpu()))
                monitor.update(step, mean_loss, stats)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_sched[it]:.2e}")
                run.log.scalars(step, {"loss": mean_loss, **values, "lr": lr_sched[it], "wd": wd_sched[it],
                                       "teacher_temp": temp_sched[it], "momentum": momentum_sched[it], **stats},
                                prefix="train/", epoch=epoch)
            if cfg.run.save_every_steps and step % cfg.run.save_every_steps == 0:
                checkpoint(epoch, numbered=True)
            if step >= last_step or step % iters_per_epoch == 0:
                break

        epoch_done = step % iters_per_epoch == 0
        if epoch_done and knn_sets is not None and (epoch + 1) % cfg.eval.every_epochs == 0:
            from pathgen.eval.knn import knn_eval

            result = knn_eval(teacher.module.backbone, *knn_sets, batch_size=cfg.eval.batch_size, device=device)
            run.log.scalars(step, _scalars("knn", result), epoch=epoch + 1)
            bar.write(f"epoch {epoch}: kNN {result}")
        if (epoch_done and (epoch + 1) % cfg.run.save_every_epochs == 0) or step == last_step:
            checkpoint(epoch if not epoch_done else epoch + 1)
        barrier()
    bar.close()

    if run.is_main:
        img_size = cfg.model.img_size or cfg.data.global_size
        weights = export_encoder(teacher.module.backbone, run.out_dir, cfg.model.name, cfg.model.kwargs, img_size,
                                 mean, std, config=run.config_dict)
        seconds = time.perf_counter() - t0
        rate = (step - start_step) * images_per_step / max(seconds, 1e-9)
        print(f"{name}: {step} steps ({step / iters_per_epoch:.2f} epochs), final loss {loss_value:.4f}, "
              f"{rate:.1f} img/s ({precision.name}), teacher encoder -> {weights}")
    run.close()
    barrier()
    return run.out_dir
