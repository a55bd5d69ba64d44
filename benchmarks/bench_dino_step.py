"""DINO training-step time: pathgen's head + loss + EMA update against lightly's (a reference implementation).

Both sides use the same timm ViT, the same crops (2 global + N local, the globals and the locals each as one
backbone forward), batch, precision (fp32 on CPU, bf16 autocast on CUDA), AdamW, per-parameter clipping at 3.0
and the same seed. Only the DINO parts differ:

    pathgen: pathgen.ssl.head.DINOHead + MultiCropModel, pathgen.ssl.loss.DINOLoss, timm ModelEmaV3 teacher
    lightly: lightly DINOProjectionHead, lightly.loss.DINOLoss, lightly.models.utils.update_momentum

The two are timed alternately (A B, B A, A B ...) so that machine noise hits both alike; we report the median step.

    .venv/bin/python benchmarks/bench_dino_step.py                 # ViT-S/16, 96/48 px crops, batch 8
    .venv/bin/python benchmarks/bench_dino_step.py --global-size 224 --local-size 96 --n-local 8
"""

import argparse
import statistics
import time

import torch
from torch import nn

from pathgen.runtime.device import autocast, get_device
from pathgen.ssl.export import create_backbone
from pathgen.ssl.loss import DINOLoss
from pathgen.ssl.trainer import build_models, cancel_last_layer_gradients, clip_gradients, param_groups


class PathgenStep:
    def __init__(self, args, device):
        from pathgen.ssl.config import SSLConfig

        cfg = SSLConfig.model_validate({"model": {"name": args.model, "img_size": args.global_size,
                                                  "out_dim": args.out_dim, "drop_path_rate": 0.1}})
        torch.manual_seed(0)
        self.student, self.teacher = build_models(cfg)
        self.student.to(device), self.teacher.to(device)
        self.loss = DINOLoss(args.out_dim).to(device)
        self.opt = torch.optim.AdamW(param_groups(self.student), lr=1e-4)

    def __call__(self, crops, device):
        with autocast(device):
            teacher_out = self.teacher.module(crops[:2])
            student_out = self.student(crops)
        targets = self.loss.teacher_targets(teacher_out, 0.04, 2)  # the loss in fp32, as the trainer does
        loss = self.loss.cross_entropy(targets, student_out, len(crops))
        self.loss.update_center(teacher_out)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.student, 3.0)
        cancel_last_layer_gradients(self.student, epoch=1, freeze_last_layer=1)
        self.opt.step()
        self.teacher.decay = 0.996
        self.teacher.update(self.student)
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
    parser.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    device = get_device()
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(args.batch, 3, args.global_size, args.global_size, generator=g) for _ in range(2)]
    crops += [torch.randn(args.batch, 3, args.local_size, args.local_size, generator=g) for _ in range(args.n_local)]
    crops = [c.to(device) for c in crops]
    impls = {"pathgen": PathgenStep(args, device), "lightly": LightlyStep(args, device)}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for i in range(args.warmup + args.steps):
        order = list(impls.items()) if i % 2 == 0 else list(impls.items())[::-1]  # cancel order effects
        for name, step in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(crops, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"device={device} threads={torch.get_num_threads()} model={args.model} batch={args.batch} "
          f"crops=2x{args.global_size}+{args.n_local}x{args.local_size} out_dim={args.out_dim} steps={args.steps}")
    for name, t in med.items():
        print(f"  {name:8s} median step {t * 1000:8.1f} ms   ({args.batch / t:6.1f} img/s)")
    print(f"  ratio pathgen / lightly = {med['pathgen'] / med['lightly']:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
