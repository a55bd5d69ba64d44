"""Distributed training on CPU with gloo: the real CLI under torchrun, and the DINO centre's reduction."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pathgen.runtime.checkpoint import load_checkpoint
from pathgen.ssl.loss import DINOLoss
from pathgen.ssl.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from test_ssl_train import make_toy_folder, tiny_config  # noqa: E402


def _interpolations(n: int, k: int = 5) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gen-DINO's interpolation part of a batch of 4: n interpolations, fixed random logits."""
    g = torch.Generator().manual_seed(0)
    student, partner = torch.randn(8, k, generator=g), torch.randn(8, k, generator=g)
    teacher_global = torch.randn(2 * 4, k, generator=g)
    alpha = torch.rand(8, generator=g)
    batch = {"global": [torch.zeros(4, 3, 2, 2)] * 2, "pair": torch.arange(8)[:n] % 4, "alpha": alpha[:n]}
    return batch, student[:n], teacher_global, partner[:n]


def _uneven_center(rank: int, world: int, init_file: str, out: str) -> None:
    from pathgen.ssl.trainer import _disentanglement

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loss = DINOLoss(3, center_momentum=0.0)  # momentum 0: the centre becomes the batch mean itself
    rows = 2 if rank == 0 else 6  # an uneven split of one batch of 8 rows
    logits = torch.full((rows, 3), float(rank + 1)) * torch.tensor([1.0, 2.0, 3.0])
    loss.update_center(logits)
    # Gen-DINO's L_dis with 1 interpolation on rank 0 and 3 on rank 1 (rows 1-3 of the same 4)
    batch, student, teacher_global, partner = _interpolations(4)
    keep = slice(0, 1) if rank == 0 else slice(1, 4)
    batch = {**batch, "pair": batch["pair"][keep], "alpha": batch["alpha"][keep]}
    dis = _disentanglement(batch, student[keep], teacher_global, partner[keep], DINOLoss(5), 0.04)
    dis = torch.stack([dis.detach()])
    dist.all_reduce(dis)  # DDP averages the ranks' gradients: the mean of the ranks' weighted terms is what counts
    if rank == 0:
        torch.save({"center": loss.center, "dis": dis / world}, out)
    dist.destroy_process_group()


def test_centre_and_l_dis_are_means_over_all_rows_when_ranks_hold_uneven_counts(tmp_path):
    from pathgen.ssl.loss import disentanglement_loss

    out = tmp_path / "center.pt"
    mp.spawn(_uneven_center, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    # rows: 2 of rank 0 (value 1) and 6 of rank 1 (value 2): mean 1.75, not the mean of means 1.5
    torch.testing.assert_close(got["center"], 1.75 * torch.tensor([[1.0, 2.0, 3.0]]))
    # the 4 interpolations' mean, as one process computes it, not the mean of the two ranks' means
    batch, student, teacher_global, partner = _interpolations(4)
    want = disentanglement_loss(student, teacher_global[:4][batch["pair"]], partner, batch["alpha"],
                                torch.zeros(5), 0.1, 0.04)
    torch.testing.assert_close(got["dis"][0], want)


TINY = [
    "data.global_size=32", "data.local_size=16", "data.n_local=2", "data.num_workers=0",
    "model.name=vit_tiny_patch16_224", "model.img_size=32",
    "model.kwargs={depth: 2, embed_dim: 32, num_heads: 2, patch_size: 8}", "model.out_dim=128",
    "model.hidden_dim=64", "model.bottleneck_dim=32", "model.drop_path_rate=0.0", "optim.epochs=1",
    "optim.warmup_epochs=0", "run.log_every=1", "run.device=cpu",
]


@pytest.mark.slow
def test_two_gloo_ranks_of_batch_8_train_like_one_process_of_batch_16(tmp_path):
    toy = make_toy_folder(tmp_path / "toy", n_per_class=16)  # 32 images / (2 ranks x 8) = 2 steps per epoch
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pathgen", "pretrain", "ssl", "--out", str(out), f"data.sources=[{toy}]", "data.batch_size=8", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(tiny_config(tmp_path, toy, *TINY, "data.batch_size=16", f"run.out_dir={tmp_path / 'single'}"))

    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 2 and state["iters_per_epoch"] == 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # only rank 0 writes
    assert log[0]["lr"] == pytest.approx(0.0005 * 8 * 2 / 256)  # lr scaled by the total batch over 2 processes
    assert (out / "encoder.safetensors").is_file()
    # the same images and crops per step, gradients averaged over ranks: the same teacher and centre
    reference = load_checkpoint(single / "checkpoints" / "last.pt")
    for key, value in reference["teacher"].items():
        torch.testing.assert_close(state["teacher"][key], value, rtol=0, atol=2e-5, msg=key)
    torch.testing.assert_close(state["dino_loss"]["center"], reference["dino_loss"]["center"], rtol=0, atol=1e-5)
