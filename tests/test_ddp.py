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


def _uneven_center(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loss = DINOLoss(3, center_momentum=0.0)  # momentum 0: the centre becomes the batch mean itself
    rows = 2 if rank == 0 else 6  # an uneven split of one batch of 8 rows
    logits = torch.full((rows, 3), float(rank + 1)) * torch.tensor([1.0, 2.0, 3.0])
    loss.update_center(logits)
    if rank == 0:
        torch.save(loss.center, out)
    dist.destroy_process_group()


def test_centre_is_the_mean_of_all_rows_when_ranks_hold_uneven_counts(tmp_path):
    out = tmp_path / "center.pt"
    mp.spawn(_uneven_center, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    # rows: 2 of rank 0 (value 1) and 6 of rank 1 (value 2): mean 1.75, not the mean of means 1.5
    torch.testing.assert_close(torch.load(out, weights_only=True), 1.75 * torch.tensor([[1.0, 2.0, 3.0]]))


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
