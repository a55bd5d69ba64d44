"""pathgen.runtime: precision choice, per-item seeds, the run log on resume, progress lines in batch logs."""

import io
import json
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pathgen.runtime import device as device_mod
from pathgen.runtime.device import precision_for
from pathgen.runtime.progress import progress_bar
from pathgen.runtime.runlog import RunLog
from pathgen.runtime.seeding import ItemSeededDataset, item_seed


def test_precision_is_fp32_on_cpu_bf16_on_new_gpus_fp16_with_a_scaler_on_old_ones(monkeypatch):
    cpu = precision_for("cpu")
    assert cpu.dtype is None and cpu.name == "fp32" and not cpu.needs_scaler
    monkeypatch.setattr(device_mod.torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision_for("cuda").name == "bf16" and not precision_for("cuda").needs_scaler
    # a GPU without native bf16 (V100, T4) gets fp16, whose gradients need scaling
    monkeypatch.setattr(device_mod.torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    old = precision_for("cuda")
    assert old.dtype == torch.float16 and old.needs_scaler
    assert precision_for("cuda", "fp32").dtype is None and precision_for("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        precision_for("cpu", "fp8")


def test_item_seeds_do_not_collide_across_epochs_and_large_indices():
    # the old affine seed ((seed * 1_000_003 + epoch) * 100_000_007 + index) gave these two the same value
    assert item_seed(0, 1, 0) != item_seed(0, 0, 100_000_007)
    seeds = {item_seed(s, e, i) for s in (0, 1) for e in range(3) for i in (0, 1, 10**8, 10**9, 2**40)}
    assert len(seeds) == 2 * 3 * 5
    assert all(0 <= s < 2**63 for s in seeds) and item_seed(5, 2, 7) == item_seed(5, 2, 7)


class _Draws(Dataset):
    """Draws from all three global RNGs a transform might use."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.rand(()).item(), random.random(), float(np.random.rand())


def test_item_seeded_dataset_fixes_torch_python_and_numpy_draws_and_restores_them():
    ds = ItemSeededDataset(_Draws(), seed=3)
    forward = [ds[i] for i in range(10)]
    random.seed(99)
    np.random.seed(99)
    backward = [ds[i] for i in reversed(range(10))][::-1]
    assert forward == backward  # the order (a worker's history) does not matter, for any of the three RNGs
    assert random.random() == random.Random(99).random()  # the caller's streams are left where they were
    ds.set_epoch(1)
    assert [ds[i] for i in range(10)] != forward


def test_run_log_cuts_steps_after_the_resumed_one(tmp_path):
    log = RunLog(tmp_path)
    for step in range(1, 7):
        log.scalars(step, {"loss": 1.0 / step}, prefix="train/")
    log.close()
    resumed = RunLog(tmp_path, start_step=4)  # the checkpoint was saved at step 4; steps 5-6 are redone
    for step in (5, 6):
        resumed.scalars(step, {"loss": 2.0})
    resumed.close()
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["loss"] == 2.0
    assert not RunLog(tmp_path, enabled=False).path.with_name("x").exists()


def test_progress_outside_a_terminal_writes_plain_lines_not_carriage_returns(monkeypatch):
    monkeypatch.setenv("PATHGEN_PROGRESS_SECONDS", "3600")  # an hour: only the first and the final line
    out = io.StringIO()
    bar = progress_bar(total=10_000, desc="tile", unit="patch", file=out)
    for i in range(10_000):
        bar.update(1)
        if i % 10 == 0:  # as a trainer shows its loss: no line of its own either
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
            bar.set_description("tile")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("tile: 100%") and "10000/10000" in lines[-1]
    assert "loss=0.0001" in lines[-1]  # the last postfix is in the final line
