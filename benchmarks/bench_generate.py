"""`pathgen generate`: its speed against a bare sampling loop, the samplers against each other, memory against N.

1. generate vs bare loop: `generate()` (views only, DPM-Solver++ 20 steps, CFG 2.5) against the textbook diffusers
   loop over the same UNet and scheduler on pre-made embeddings (noise, 20 steps of cond + uncond in one batch,
   guidance, scheduler.step, un-patching), same batch. generate also loads the model and encoder, reads and
   encodes the source patches, writes the store and grid.png (its strip samples 5 more images): ratios are given
   end to end, without the grid, and for generate's sampling loop alone. Interleaved rounds, medians.
2. samplers: DPM-Solver++ 20, DDIM 50 and DDPM 1000 steps on the same sources and noise seeds: images/s of the
   sampling loop and the fidelity of each (top-1 retrieval of the source among 32; pathgen.diffusion.fidelity).
   One run each, one after the other (DDPM takes ~50x as long: interleaving would not fit).
3. memory: peak RSS of a `generate()` subprocess making N and 4 N images (1 sampling step: memory, not speed).

    python benchmarks/bench_generate.py --model runs/diffusion_tiny/model --stores demo_out/tile/manifest.csv
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pathgen.diffusion import generate as gen_mod
from pathgen.diffusion import space
from pathgen.diffusion.pipeline import load_pipeline
from pathgen.diffusion.sample import generators, make_sampler
from pathgen.runtime.device import get_device, precision_for


class Timers:
    """Wraps generate's pieces to split its time: sampling of the items (the loop), the grid, everything else.

    The loop is ImageMaker calls outside write_grid (whose interpolation strip samples 5 more images).
    """

    def __init__(self):
        self.loop = self.grid = 0.0
        self.real_grid, self.real_make = gen_mod.write_grid, gen_mod.ImageMaker.__call__
        self._in_grid = False

    def __enter__(self):
        timers = self

        def grid(*args, **kwargs):
            t0, timers._in_grid = time.perf_counter(), True
            try:
                return timers.real_grid(*args, **kwargs)
            finally:
                timers._in_grid = False
                timers.grid += time.perf_counter() - t0

        def make(maker, items):
            t0 = time.perf_counter()
            try:
                return timers.real_make(maker, items)
            finally:
                if not timers._in_grid:
                    timers.loop += time.perf_counter() - t0

        gen_mod.write_grid, gen_mod.ImageMaker.__call__ = grid, make
        return self

    def __exit__(self, *exc):
        gen_mod.write_grid, gen_mod.ImageMaker.__call__ = self.real_grid, self.real_make


def run_generate(model, stores, out: Path, n: int, batch: int, sampler="dpm++", steps=20, fidelity=0, device=None):
    """(seconds of the whole call, of the grid, of the sampling loop)."""
    with Timers() as timers:
        sync(device)
        t0 = time.perf_counter()
        gen_mod.generate(model, stores, out, views=1, interpolations=0, max_sources=n, sampler=sampler, steps=steps,
                         batch_size=batch, fidelity_samples=fidelity, device=device)
        sync(device)
    return time.perf_counter() - t0, timers.grid, timers.loop


def sync(device) -> None:
    if torch.device(device or get_device()).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bare_loop(pipe, embeddings: torch.Tensor, batch: int, steps: int, guidance: float = 2.5) -> float:
    """The plain diffusers sampling loop over `embeddings`; returns seconds."""
    from diffusers.utils.torch_utils import randn_tensor

    unet, scheduler, proj = pipe.unet, pipe.scheduler, pipe.projection
    device = pipe.device
    c, s = unet.config.in_channels, unet.config.sample_size
    sync(device)
    t0 = time.perf_counter()
    with precision_for(device).autocast():
        for start in range(0, len(embeddings), batch):
            e = embeddings[start:start + batch].to(device)
            seeds = range(start, start + len(e))
            x = randn_tensor((len(e), c, s, s), generator=generators(seeds), device=device)
            kwargs = proj.unet_kwargs(torch.cat([proj.null_condition(len(e)), proj(e)]))
            scheduler.set_timesteps(steps, device=device)
            for t in scheduler.timesteps:
                pred = unet(torch.cat([x, x]), t, **kwargs).sample.float()
                uncond, condi = pred.chunk(2)
                x = scheduler.step(uncond + guidance * (condi - uncond), t, x).prev_sample
            images = space.decode(x, pipe.vae, pipe.config.patch_size)
            images = ((images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    sync(device)
    return time.perf_counter() - t0


def peak_rss(model, stores, out: Path, n: int, batch: int) -> float:
    """GiB: the peak RSS of a fresh process that generates n images."""
    code = (
        "import resource, sys; from pathgen.diffusion.generate import generate; "
        f"generate({str(model)!r}, {[str(s) for s in stores]!r}, {str(out)!r}, views=1, interpolations=0, "
        f"max_sources={n}, sampler='ddim', steps=1, batch_size={batch}, fidelity_samples=0); "
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kib = int(next(line for line in proc.stdout.splitlines() if line.startswith("RSS")).split()[1])
    return kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a `pathgen pretrain diffusion` model folder")
    parser.add_argument("--stores", required=True, nargs="+", help="source stores or a tiling manifest")
    parser.add_argument("--images", type=int, default=64, help="images per generate-vs-loop round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sampler-images", type=int, default=64, help="images per sampler (DDPM 1000 included)")
    parser.add_argument("--rss-images", type=int, default=256, help="N of the memory check (and 4 N)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["loop", "samplers", "rss"])
    args = parser.parse_args()
    device = get_device()
    work = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    from pathgen.store import find_stores

    stores = find_stores(args.stores)
    print(f"device={device} threads={torch.get_num_threads()} model={args.model} batch={args.batch}")

    if "loop" not in args.skip:
        pipe = load_pipeline(args.model, device)
        pipe.scheduler = make_sampler("dpm++", pipe.scheduler.config)
        from pathgen.diffusion.encoder import FrozenEncoder
        from pathgen.diffusion.sources import SourcePatches

        patches = SourcePatches(stores, pipe.image_size)
        embeddings = FrozenEncoder(pipe.metadata["encoder"], device)(patches.read(patches.pairs(
            np.arange(min(args.images, len(patches))))))
        ours, ours_nogrid, ours_loop, bare = [], [], [], []
        for r in range(args.rounds + 1):  # round 0 warms up
            runs = [("generate", None), ("bare", None)]
            for name, _ in runs if r % 2 == 0 else runs[::-1]:
                if name == "generate":
                    seconds, grid, loop = run_generate(args.model, stores, work / f"loop{r}", args.images,
                                                       args.batch)
                    if r:
                        ours.append(seconds)
                        ours_nogrid.append(seconds - grid)
                        ours_loop.append(loop)
                elif r:
                    bare.append(bare_loop(pipe, embeddings, args.batch, 20))
                else:
                    bare_loop(pipe, embeddings, args.batch, 20)
        n = args.images
        b = statistics.median(bare)
        print(f"1. {n} images, DPM-Solver++ 20 steps, CFG 2.5, medians of {args.rounds} rounds")
        print(f"   bare diffusers loop           {b:7.1f} s  {n / b:6.2f} img/s")
        for what, times in (("pathgen generate, end to end", ours), ("generate without grid.png", ours_nogrid),
                            ("generate's sampling loop", ours_loop)):
            g = statistics.median(times)
            print(f"   {what:29s} {g:7.1f} s  {n / g:6.2f} img/s   ratio {b / g:.3f}")
        print("   (target >= 0.9: generate without grid.png; the loop reads, encodes and samples, not loading)")

    if "samplers" not in args.skip:
        n = args.sampler_images
        rows = {}
        for sampler, steps in (("dpm++", 20), ("ddim", 50), ("ddpm", 1000)):
            out = work / f"sampler_{sampler}"
            _, _, loop = run_generate(args.model, stores, out, n, args.batch, sampler, steps, fidelity=n)
            report = json.loads((out / "fidelity.json").read_text())["views"]
            rows[sampler] = (steps, n / loop, report)
        print(f"2. samplers, {n} views of the same sources and noise seeds, batch {args.batch}: images/s of the "
              "sampling loop (loading, grid and fidelity check left out)")
        for sampler, (steps, rate, v) in rows.items():
            print(f"   {sampler:6s} {steps:5d} steps  {rate:7.3f} img/s  retrieval top-1 "
                  f"{100 * v['retrieval_top1']:5.1f}% (chance {100 * v['chance']:.1f}%)  cos source "
                  f"{v['cos_source']:.3f} / random {v['cos_random']:.3f}")
        speed = rows["dpm++"][1] / rows["ddpm"][1]
        gap = 100 * (rows["dpm++"][2]["retrieval_top1"] - rows["ddpm"][2]["retrieval_top1"])
        print(f"   DPM-Solver++ 20 vs DDPM 1000: {speed:.1f}x images/s (target >= 40x), retrieval {gap:+.1f} points "
              "(target within 5)")

    if "rss" not in args.skip:
        n = args.rss_images
        one, four = peak_rss(args.model, stores, work / "rss1", n, args.batch), \
            peak_rss(args.model, stores, work / "rss4", 4 * n, args.batch)
        print(f"3. peak RSS of generate: {n} images {one:.2f} GiB, {4 * n} images {four:.2f} GiB "
              f"(ratio {four / one:.2f}; target flat)")


if __name__ == "__main__":
    main()
