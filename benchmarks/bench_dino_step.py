"""DINO training-step time: pathgen's step against lightly's (a reference implementation), and Gen-DINO's against
pathgen's plain DINO step at the same batch.

All sides use the same timm ViT, the same crops (2 global + N local, the globals and the locals each as one
backbone forward), batch, precision (fp32 on CPU, bf16 autocast on CUDA), AdamW, per-parameter clipping at 3.0
and the same seed.

    pathgen:   the trainer's own step, pathgen.ssl.trainer.compute_loss + optimize + the ModelEmaV3 teacher update
    lightly:   lightly DINOProjectionHead, lightly.loss.DINOLoss, lightly.models.utils.update_momentum
    gen-dino:  the same pathgen step with Gen-DINO's batch: M = p_interp x batch interpolations, so the student
               sees M more global-size crops (x_int) and the teacher M more (the partners x2), plus L_dis
    extra:     those extra passes alone (student forward + backward over M crops, teacher forward over M crops):
               what Gen-DINO must cost on top of DINO; the target is (gen-dino - pathgen) <= 1.1 x extra

Implementations are timed in turn, their order reversed every step (A B C D, D C B A, ...), so that machine noise
hits all alike; we report median steps.

    .venv/bin/python benchmarks/bench_dino_step.py                 # ViT-S/16, 96/48 px crops, batch 8
    .venv/bin/python benchmarks/bench_dino_step.py --global-size 224 --local-size 96 --n-local 8 --batch 64
"""

import argparse
import statistics
import time

import torch
from torch import nn

from pathgen.runtime.device import autocast, get_device, precision_for
from pathgen.ssl.export import create_backbone
from pathgen.ssl.loss import DINOLoss
from pathgen.ssl.trainer import build_models, clip_gradients, compute_loss, optimize, param_groups, total_loss


def _models(args, device):
    from pathgen.ssl.config import SSLConfig

    cfg = SSLConfig.model_validate({"model": {"name": args.model, "img_size": args.global_size,
                                              "out_dim": args.out_dim, "drop_path_rate": 0.1}})
    torch.manual_seed(0)
    student, teacher = build_models(cfg)
    return student.to(device), teacher.to(device)


class PathgenStep:
    """The trainer's step on a batch dict of roles (pathgen.ssl.batch); Gen-DINO's when lambda_dis > 0."""

    def __init__(self, args, device, lambda_dis: float = 0.0):
        self.student, self.teacher = _models(args, device)
        self.loss = DINOLoss(args.out_dim).to(device)
        self.opt = torch.optim.AdamW(param_groups(self.student), lr=1e-4)
        self.precision = precision_for(device)
        self.scaler = self.precision.grad_scaler()
        self.lambda_dis = lambda_dis

    def __call__(self, batch, device):
        terms, _ = compute_loss(batch, self.student, self.teacher.module, self.loss, 0.04, self.lambda_dis,
                                self.precision)
        loss = total_loss(terms, self.lambda_dis)
        optimize(loss, self.student, self.opt, self.scaler, 3.0, epoch=1, freeze_last_layer=1)
        self.teacher.decay = 0.996
        self.teacher.update(self.student)
        return loss.item()


class ExtraPasses:
    """Only what Gen-DINO adds to the compute: the student's forward and backward over the interpolated crops, the
    teacher's forward over the partners (any scalar of the logits: its backward costs what L_dis's does)."""

    def __init__(self, args, device):
        self.student, self.teacher = _models(args, device)

    def __call__(self, batch, device):
        with autocast(device):
            with torch.no_grad():
                self.teacher.module(batch["partner"])
            logits = self.student(batch["interpolated"])
        loss = logits.float().logsumexp(-1).mean()
        self.student.zero_grad(set_to_none=True)
        loss.backward()
        return loss.item()


class LightlyStep:
    def __init__(self, args, device):
        from lightly.loss import DINOLoss as LightlyDINOLoss
        from lightly.models.modules.heads import DINOProjectionHead
        from lightly.models.utils import update_momentum

        def build(drop_path_rate: float) -> nn.ModuleDict:
            torch.manual_seed(0)
            backbone = create_backbone(args.model, args.global_size, {}, drop_path_rate=drop_path_rate)
            head = DINOProjectionHead(backbone.num_features, 2048, 256, args.out_dim, freeze_last_layer=1)
            return nn.ModuleDict({"backbone": backbone, "head": head}).to(device)

        # lightly's head uses the old nn.utils.weight_norm, which cannot be deep-copied: build the teacher anew
        self.student, self.teacher = build(0.1), build(0.0)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.eval().requires_grad_(False)
        self.loss = LightlyDINOLoss(args.out_dim, warmup_teacher_temp=0.04, teacher_temp=0.04).to(device)
        self.opt = torch.optim.AdamW(param_groups(self.student), lr=1e-4)
        self.update_momentum = update_momentum

    @staticmethod
    def _forward(model, groups):
        return [out for g in groups for out in model["head"](model["backbone"](torch.cat(g))).chunk(len(g))]

    def __call__(self, crops, device):
        with autocast(device):
            teacher_out = self._forward(self.teacher, [crops[:2]])
            student_out = self._forward(self.student, [crops[:2], crops[2:]])
            loss = self.loss(teacher_out, student_out, teacher_temp=0.04)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.student, 3.0)
        self.student["head"].cancel_last_layer_gradients(current_epoch=1)
        self.opt.step()
        self.update_momentum(self.student, self.teacher, m=0.996)
        return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--global-size", type=int, default=96)
    parser.add_argument("--local-size", type=int, default=48)
    parser.add_argument("--n-local", type=int, default=6)
    parser.add_argument("--out-dim", type=int, default=65536)
    parser.add_argument("--p-interp", type=float, default=0.5, help="Gen-DINO: interpolations per batch item")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-lightly", action="store_true")
    args = parser.parse_args()

    device = get_device()
    g = torch.Generator().manual_seed(0)
    b, m = args.batch, round(args.p_interp * args.batch)

    def crops(n: int, size: int, batch: int = b) -> list[torch.Tensor]:
        return [torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(n)]

    plain = {"global": crops(2, args.global_size), "local": crops(args.n_local, args.local_size)}
    gen = {**plain, "interpolated": crops(1, args.global_size, m)[0], "partner": crops(1, args.global_size, m)[0],
           "pair": torch.randperm(b, generator=g)[:m].to(device), "alpha": torch.rand(m, generator=g).to(device)}
    impls = {"pathgen": (PathgenStep(args, device), plain), "gen-dino": (PathgenStep(args, device, 1.0), gen),
             "extra": (ExtraPasses(args, device), gen)}
    if not args.skip_lightly:
        impls["lightly"] = (LightlyStep(args, device), plain["global"] + plain["local"])
    times: dict[str, list[float]] = {name: [] for name in impls}
    for i in range(args.warmup + args.steps):
        order = list(impls.items()) if i % 2 == 0 else list(impls.items())[::-1]  # cancel order effects
        for name, (step, inputs) in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(inputs, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"device={device} threads={torch.get_num_threads()} model={args.model} batch={b} "
          f"crops=2x{args.global_size}+{args.n_local}x{args.local_size} out_dim={args.out_dim} steps={args.steps} "
          f"gen-dino: {m} interpolations")
    for name, t in med.items():
        print(f"  {name:8s} median step {t * 1000:8.1f} ms   ({b / t:6.1f} img/s)")
    if "lightly" in med:
        print(f"  ratio pathgen / lightly = {med['pathgen'] / med['lightly']:.3f}  (target <= 1.1)")
    print(f"  ratio gen-dino / pathgen = {med['gen-dino'] / med['pathgen']:.3f}")
    print(f"  (gen-dino - pathgen) / extra passes = {(med['gen-dino'] - med['pathgen']) / med['extra']:.3f}"
          "  (target <= 1.1)")


if __name__ == "__main__":
    main()
