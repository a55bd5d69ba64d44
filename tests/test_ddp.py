"""Two-process CPU DDP (gloo) through the real CLI under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pathgen.runtime.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_ssl_train import make_toy_folder  # noqa: E402


@pytest.mark.slow
def test_two_process_gloo_ddp_trains_and_checkpoints(tmp_path):
    toy = make_toy_folder(tmp_path / "toy", n_per_class=16)  # 32 images / (2 ranks x 8) = 2 steps per epoch
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "pathgen", "pretrain", "ssl", "--out", str(out),
        f"data.sources=[{toy}]", "data.global_size=32", "data.local_size=16", "data.n_local=2", "data.batch_size=8",
        "data.num_workers=0", "model.name=vit_tiny_patch16_224", "model.img_size=32",
        "model.kwargs={depth: 2, embed_dim: 32, num_heads: 2, patch_size: 8}", "model.out_dim=128",
        "model.hidden_dim=64", "model.bottleneck_dim=32", "optim.epochs=1", "optim.warmup_epochs=0",
        "run.log_every=1", "run.device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 2 and state["iters_per_epoch"] == 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # only rank 0 writes
    assert log[0]["lr"] == pytest.approx(0.0005 * 8 * 2 / 256)  # lr scaled by the total batch over 2 processes
    assert (out / "encoder.safetensors").is_file()
