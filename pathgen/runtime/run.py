"""The plumbing every training run shares, so that each trainer's file holds only its own loop.

    run = TrainingRun(cfg, resume)           # device + precision, torchrun's process group, the output folder
    state = run.load()                       # the checkpoint to resume from, or None on a fresh start
    step = run.restore(state, {"model": model, "optimizer": opt}, iters_per_epoch) if state else 0
    run.start(step)                          # config.yaml, RunLog (TensorBoard + log.jsonl) from `step` on
    run.save({"model": ..., ...}, step, epoch)   # checkpoints/last.pt (+ step_N.pt), every rank's RNG streams
    run.log.scalars(step, {...}, prefix="train/")
    run.close()

`cfg` is the trainer's whole config (pydantic) with a `run: RunConfig` section.
"""

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pathgen.config import save_config
from pathgen.errors import CheckpointError, ConfigError
from pathgen.runtime.checkpoint import load_checkpoint, resolve_resume, rng_state, save_checkpoint, set_rng_state
from pathgen.runtime.device import precision_for
from pathgen.runtime.distributed import all_gather_object, get_rank, get_world_size, init_distributed, is_main_process
from pathgen.runtime.runlog import RunLog
from pathgen.runtime.seeding import seed_everything


class TrainingRun:
    def __init__(self, cfg: BaseModel, resume: str | Path | None = None):
        self.cfg, run = cfg, cfg.run
        self.device = init_distributed(run.device)
        self.precision = precision_for(self.device, run.precision)
        self.rank, self.world = get_rank(), get_world_size()
        self.is_main = is_main_process()
        self.out_dir = Path(run.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.resume_path = resolve_resume(resume, self.out_dir)
        if self.resume_path is None and (self.ckpt_dir / "last.pt").exists():
            raise ConfigError(self.out_dir, "already holds a training run; pass --resume auto to continue it or "
                              "another --out")
        self.config_dict = cfg.model_dump(mode="json")
        if self.is_main:
            from pathgen.runtime.device import describe

            print(f"{describe(self.device, run.precision)}, {self.world} process(es)", flush=True)
        self.log = RunLog(self.out_dir, enabled=False)
        self._saved_step: int | None = None

    def load(self) -> dict[str, Any] | None:
        """The checkpoint to resume from (tensors on this rank's device), or None on a fresh start."""
        if self.resume_path is None:
            return None
        return load_checkpoint(self.resume_path, map_location=self.device)

    def load_state(self, module: Any, state: dict[str, Any], key: str) -> None:
        """module.load_state_dict(state[key]), as a one-line CheckpointError when the checkpoint does not fit."""
        try:
            module.load_state_dict(state[key])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(self.resume_path, f"{key}: does not match the configured model "
                                  f"({type(err).__name__})") from None

    def restore(self, state: dict[str, Any], modules: dict[str, Any], iters_per_epoch: int,
                optional: tuple[str, ...] = ()) -> int:
        """Resume: load each module's state_dict from state[key], continue the RNG streams; returns the step.

        Keys in `optional` may be missing (checkpoints from older versions). A checkpoint saved with another
        epoch length (other data, batch or world size) still loads, with a warning: its resume is not exact.
        """
        import warnings

        for key, module in modules.items():
            if key in state or key not in optional:
                self.load_state(module, state, key)
        if state["iters_per_epoch"] != iters_per_epoch:
            warnings.warn(f"{self.resume_path}: saved with {state['iters_per_epoch']} steps per epoch, now "
                          f"{iters_per_epoch} (other data, batch or world size): the resume is not exact",
                          stacklevel=3)
        self.restore_rng(state)
        return int(state["step"])

    def restore_rng(self, state: dict[str, Any]) -> None:
        """Each rank continues its own random streams; with another world size, reseed from the step instead."""
        if len(state["rng"]) == self.world:
            set_rng_state(state["rng"][self.rank])
        else:
            seed_everything(self.cfg.run.seed + self.rank + int(state["step"]))

    def start(self, step: int) -> None:
        """Write config.yaml and open the logs (cut back to `step` on a resume); main process only."""
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out_dir / "config.yaml")
        self.log = RunLog(self.out_dir, start_step=step, enabled=self.is_main)

    def save(self, state: dict[str, Any], step: int, epoch: int, numbered: bool = False) -> None:
        """checkpoints/last.pt (once per step, however many reasons there are to save), and step_N.pt if asked.

        Collective: every rank calls it, since the checkpoint holds every rank's RNG streams (exact DDP resume).
        """
        write_last = step != self._saved_step
        if not (write_last or numbered):
            return
        rng = all_gather_object(rng_state())
        self._saved_step = step
        if not self.is_main:
            return
        full = {**state, "step": step, "epoch": epoch, "rng": rng, "config": self.config_dict}
        if write_last:
            save_checkpoint(full, self.ckpt_dir / "last.pt")
        if numbered:
            save_checkpoint(full, self.ckpt_dir / f"step_{step:07d}.pt")

    def close(self) -> None:
        self.log.close()
