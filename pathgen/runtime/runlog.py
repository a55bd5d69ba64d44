"""Training scalars and pictures into TensorBoard and `<out>/log.jsonl`, from the main process only.

log.jsonl holds the same scalars as TensorBoard, one JSON line per log step: easy to grep, plot or test
against. A run resumed at step S first cuts log.jsonl back to the lines of steps <= S and has TensorBoard purge
its events after S, so the log of a resumed run reads like that of a run that never stopped.
"""

import json
import os
from pathlib import Path

import numpy as np

LOG_NAME = "log.jsonl"


def truncate_log(path: Path, step: int) -> None:
    """Drop the lines of steps after `step` (written after the checkpoint being resumed from), atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class RunLog:
    """`log.scalars(step, {"loss": ..}, prefix="train/")` -> TensorBoard `train/loss` and a log.jsonl line.

    Only the main process writes: on other ranks (enabled=False) every method does nothing.
    """

    def __init__(self, out_dir: str | Path, start_step: int = 0, enabled: bool = True):
        self.path = Path(out_dir) / LOG_NAME
        self.writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        truncate_log(self.path, start_step)
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_step or None)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "", **fields) -> None:
        """TensorBoard gets `prefix + key` for each value; log.jsonl gets {"step", **fields, **values}."""
        if self.writer is None:
            return
        values = {k: float(v) for k, v in values.items()}
        for key, value in values.items():
            self.writer.add_scalar(prefix + key, value, step)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **fields, **values}) + "\n")

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A uint8 H x W x 3 picture (a grid of samples, say) into TensorBoard."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
