"""Tiling throughput, parallel speed-up, peak memory, and store size / decode speed per codec, side by side.

    python benchmarks/bench_tile.py --rounds 3               # 40,000 x 30,000 px 40x slide (several minutes)
    python benchmarks/bench_tile.py --width 12000 --height 9000   # quicker

Every measured run is a fresh subprocess, timed wall-clock from start to exit (interpreter start-up and imports
included on both sides), with the peak resident memory of its whole process tree sampled every 20 ms:
  bare          a plain openslide-python `read_region` loop over the same level-0 coordinates `pathgen tile` keeps
  tile -j1      `pathgen tile --mpp 0.25 --patch-size 256 --workers 1`, every patch stored (Zarr, default codec,
                default reader: tifffile's tile decoding, one region per run of patches)
  tile -j2      the same with `--workers 2`
  openslide -j1 the same as tile -j1 with `--reader openslide --codec lossless`: the tiler before the fast path
  lossless -j1  the same as tile -j1 with `--codec lossless`
  work x1/x2     the tiler's work without the tiler: the same patches read by regions and JPEG-encoded, a chunk at a
                time, by 1 process, then by 2 independent processes taking every other chunk. Their ratio is this
                machine's own 2-core scaling on that work, the ceiling for the tiler's 2-worker speed-up
  cohort -j1/-j2  tile -j1 and -j2 on a cohort of --cohort slides, each the same 40,000 x 30,000 slide under its own
                name (hard links): a lab's run, where only the first slide's plan and the workers' start are serial
The memory runs repeat `tile -j1` on a slide half as wide and high, to show peak RSS does not grow with size.
Then each codec encodes and decodes the same stored patches in this process (interleaved, medians), and
TIAToolbox's SlidingWindowPatchExtractor reads the same slide where tiatoolbox is installed.
Synthetic slides are written once with pathgen.pipeline.demo_cohort.make_large_slide and cached.
"""

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from measure import Measured, run_measured  # noqa: E402

TILE_ARGS = ["--mpp", "0.25", "--patch-size", "256"]


def cached_slide(cache: Path, width: int, height: int, tile: int = 256) -> Path:
    from pathgen.pipeline.demo_cohort import SyntheticSlide, make_large_slide, write_svs

    path = cache / (f"large_{width}x{height}_s0.svs" if tile == 256 else f"large_{width}x{height}_t{tile}_s0.svs")
    if not path.exists():
        print(f"writing {path.name} (once; cached in {cache}) ...", flush=True)
        t0 = time.perf_counter()
        part = path.with_name(path.name + ".part")
        if tile == 256:
            make_large_slide(part, width, height, seed=0)
        else:  # e.g. Aperio's 240 px tiles, which 256 px patches straddle
            synth = SyntheticSlide(width, height, seed=0, positive=True)
            write_svs(part, width, height, synth.tile, mpp=0.25, magnification=40, tile_size=tile)
        os.replace(part, path)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def cohort_of(slide: Path, n: int, folder: Path) -> Path:
    """A folder of `n` slides that are all `slide` (hard links, else copies), named s0.svs, s1.svs, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = folder / f"s{i}{slide.suffix}"
        if not link.exists():
            try:
                os.link(slide, link)
            except OSError:
                shutil.copyfile(slide, link)
    return folder


def _over_rounds(results: list[Measured]) -> tuple[float, float, float]:
    """Median wall seconds, largest peak RSS, median CPU seconds over the rounds of one run."""
    return (float(np.median([r.seconds for r in results])), max(r.peak_gib for r in results),
            float(np.median([r.cpu_seconds for r in results])))


def tile_cmd(slide: Path, out: Path, workers: int, *extra: str) -> list[str]:
    code = "from pathgen.cli import app; app()"
    return [sys.executable, "-c", code, "tile", str(slide), "--out", str(out), *TILE_ARGS, "-j", str(workers), *extra]


BARE_LOOP = textwrap.dedent(
    """
    import sys, numpy as np, openslide
    coords = np.load(sys.argv[2])
    with openslide.OpenSlide(sys.argv[1]) as slide:
        for x, y in coords:
            slide.read_region((int(x), int(y)), 0, (256, 256))
    """
)
READ_WORK = textwrap.dedent(
    """
    import sys, numpy as np
    from pathgen.slide import open_slide, plan_patches
    from pathgen.slide.grid import REGION_SIDE, read_patches
    from pathgen.store.codecs import DEFAULT_CODEC, DEFAULT_QUALITY, PatchCodec
    from pathgen.store.writer import shard_patches
    coords, part, parts, step = np.load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), shard_patches(256)
    codec, batch = PatchCodec(DEFAULT_CODEC, DEFAULT_QUALITY), np.empty((step, 256, 256, 3), np.uint8)
    with open_slide(sys.argv[1]) as slide:
        plan = plan_patches(slide, 0.25, 256, np.ones((1, 1), bool), 1e9, 0.0)
        for a in range(part * step, len(coords), parts * step):
            chunk = coords[a : a + step]
            read_patches(slide, plan, chunk, batch[: len(chunk)], REGION_SIDE)
            for patch in batch[: len(chunk)]:
                codec.encode(patch)
    """
)
READ_WORK_PAIR = "import subprocess, sys; w = [subprocess.Popen([sys.executable, '-c', sys.argv[1], *sys.argv[2:], str(i), '2']) for i in (0, 1)]; sys.exit(max(p.wait() for p in w))"  # noqa: E501
TIAToolbox_LOOP = textwrap.dedent(
    """
    import sys
    from tiatoolbox.tools.patchextraction import SlidingWindowPatchExtractor
    from tiatoolbox.wsicore.wsireader import WSIReader
    reader = WSIReader.open(sys.argv[1])
    patches = SlidingWindowPatchExtractor(
        reader, patch_size=(256, 256), stride=(256, 256), resolution=0, units="level", input_mask="otsu"
    )
    print(sum(1 for _ in patches))
    """
)


def store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


def codec_figures(store: Path, n_sample: int = 200, rounds: int = 5) -> dict[str, tuple[float, float, float]]:
    """{codec: (KiB per patch, encode ms, decode ms)} on a sample of a lossless store's patches, in this process.

    Codecs alternate within each round (A B C A B C ...); times are medians over the rounds.
    """
    from pathgen.store import open_store
    from pathgen.store.codecs import CODECS, DEFAULT_QUALITY, PatchCodec

    with open_store(store) as s:
        idx = np.random.default_rng(0).choice(len(s), min(n_sample, len(s)), replace=False)
        patches = s.read(idx)
    times: dict[str, list] = {c: [] for c in CODECS}
    sizes = {}
    for _ in range(rounds):
        for name in CODECS:
            codec = PatchCodec(name, DEFAULT_QUALITY)
            t0 = time.process_time()
            blobs = [codec.encode(p) for p in patches]
            t1 = time.process_time()
            for b in blobs:
                codec.decode(b, patches.shape[1:])
            t2 = time.process_time()
            times[name].append(((t1 - t0) / len(patches), (t2 - t1) / len(patches)))
            sizes[name] = np.mean([len(b) for b in blobs]) / 1024
    return {c: (sizes[c], *(1e3 * np.median(times[c], axis=0))) for c in CODECS}


def random_read_ms(store: Path, n: int = 500, rounds: int = 3) -> float:
    """Median ms per random single-patch read + decode through PatchStore (the SSL loader's access pattern)."""
    from pathgen.store import open_store

    with open_store(store) as s:
        idx = np.random.default_rng(1).integers(0, len(s), n)
        per = []
        for _ in range(rounds):
            t0 = time.process_time()
            for i in idx:
                s[int(i)]
            per.append((time.process_time() - t0) / n)
    return 1e3 * float(np.median(per))


def region_vs_patch_ms(slide_path: Path, coords: np.ndarray, n: int = 1000, rounds: int = 3) -> dict[str, float]:
    """Median CPU ms per patch of read_patches, OpenSlide and the fast path, by regions and patch by patch.

    OpenSlide by regions is what MRXS, NDPI and DICOM slides get; it is measured here on the benchmark SVS.
    """
    from pathgen.slide import open_slide, plan_patches
    from pathgen.slide.grid import REGION_SIDE, read_patches

    coords = coords[:n]
    out = np.empty((len(coords), 256, 256, 3), np.uint8)
    per: dict[str, list] = {}
    with open_slide(slide_path, reader="openslide") as osr, open_slide(slide_path) as fast:
        plan = plan_patches(osr, 0.25, 256, np.ones((1, 1), bool), 1e9, 0.0)
        for _ in range(rounds):
            for name, slide, side in (("openslide, per patch", osr, 0), ("openslide, regions", osr, REGION_SIDE),
                                      ("tifffile, regions", fast, REGION_SIDE)):  # fmt: skip
                t0 = time.process_time()
                read_patches(slide, plan, coords, out, side)
                per.setdefault(name, []).append((time.process_time() - t0) / len(coords))
    return {k: 1e3 * float(np.median(v)) for k, v in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=40000)
    parser.add_argument("--height", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; medians are reported")
    parser.add_argument("--cohort", type=int, default=3, help="slides in the cohort runs (0: none)")
    parser.add_argument("--tile", type=int, default=256, help="the slide's JPEG tile side (Aperio writes 240)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pathgen-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    big = cached_slide(args.cache, args.width, args.height, args.tile)
    small = cached_slide(args.cache, args.width // 2, args.height // 2, args.tile)
    load_start = os.getloadavg()[0]

    from pathgen.store import open_store, read_manifest

    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        tmp = Path(tmp)
        # Coordinates first (this also warms the page cache for every run after it).
        run_measured(tile_cmd(big, tmp / "coords", 1, "--coords-only"))
        with open_store(tmp / "coords" / f"{big.stem}.zarr") as s:
            coords, n = s.coords, len(s)
        np.save(tmp / "coords.npy", coords)

        runs = {
            "bare": [sys.executable, "-c", BARE_LOOP, str(big), str(tmp / "coords.npy")],
            "work_x1": [sys.executable, "-c", READ_WORK, str(big), str(tmp / "coords.npy"), "0", "1"],
            "work_x2": [sys.executable, "-c", READ_WORK_PAIR, READ_WORK, str(big), str(tmp / "coords.npy")],
            "j1": tile_cmd(big, tmp / "j1", 1),
            "j2": tile_cmd(big, tmp / "j2", 2),
            "openslide": tile_cmd(big, tmp / "openslide", 1, "--reader", "openslide", "--codec", "lossless"),
            "lossless": tile_cmd(big, tmp / "lossless", 1, "--codec", "lossless"),
        }
        if args.cohort:
            slides = cohort_of(big, args.cohort, args.cache / f"cohort_{args.cohort}_{big.stem}")
            runs |= {f"cohort_j{j}": tile_cmd(slides, tmp / f"cohort_j{j}", j) for j in (1, 2)}
        tiles = [k for k in runs if k != "bare" and not k.startswith("work")]
        # Each tile run first deletes the store its previous run wrote, so every timed run writes into page-cache
        # memory the kernel has just freed. One untimed run of each fills the memory first: on a VM, the first
        # touch of never-used guest memory is slow (here ~3 s more for whichever run wrote first).
        for name in tiles:
            run_measured(runs[name])
        os.sync()
        # Rounds interleave the runs (A B C D A B C D ...) so that background load hits them alike; medians.
        times: dict[str, list] = {k: [] for k in runs}
        for r in range(args.rounds):
            for name, cmd in runs.items():
                if name in tiles:
                    shutil.rmtree(tmp / name)
                times[name].append(run_measured(cmd))
                os.sync()  # flush this run's output now, so the kernel's writeback does not eat into the next run
                print(f"  round {r + 1}: {name:<10}{times[name][-1][0]:7.1f} s", flush=True)
        med = {k: _over_rounds(v) for k, v in times.items()}
        small_s, small_rss = run_measured(tile_cmd(small, tmp / "small", 1))[:2]
        stores = {k: tmp / k / f"{big.stem}.zarr" for k in tiles}
        with open_store(stores["j1"]) as a, open_store(stores["j2"]) as b, open_store(stores["openslide"]) as c:
            assert len(a) == len(b) == len(c) == n and (a.coords == b.coords).all() and (a.coords == c.coords).all()
            assert a.attrs["reader"] == "tifffile" and c.attrs["reader"] == "openslide", (a.attrs, c.attrs)
        with open_store(stores["lossless"]) as a, open_store(stores["openslide"]) as c:
            k = np.arange(0, n, max(1, n // 300))  # stored patches of the fast and the old path, side by side
            fast_vs_old = float(np.abs(a.read(k).astype(np.int16) - c.read(k)).max())
            codec_name = open_store(stores["j1"]).attrs["codec"]
        for name in ("cohort_j1", "cohort_j2") if args.cohort else ():
            rows = read_manifest(tmp / name / "manifest.csv")
            assert [r.n_patches for r in rows if r.status == "ok"] == [n] * args.cohort, rows
        bytes_pp = {k: store_bytes(stores[k]) / n for k in ("j1", "lossless")}
        reading = region_vs_patch_ms(big, coords)
        codecs = codec_figures(stores["lossless"])
        reads = {"lossless": random_read_ms(stores["lossless"]), codec_name: random_read_ms(stores["j1"])}
        tia = None
        try:
            import tiatoolbox  # noqa: F401

            tia = run_measured([sys.executable, "-c", TIAToolbox_LOOP, str(big)])
        except ImportError:
            pass

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nslide {args.width} x {args.height} px at 0.25 mpp (40x), {args.tile} px JPEG tiles, "
          f"{n} tissue patches of 256 px, {cores} cores,")
    print(f"median of {args.rounds} interleaved round(s); load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'run':<44}{'seconds':>9}{'patches/s':>11}{'CPU s':>8}{'peak RSS GiB':>14}")
    labels = {
        "bare": "bare openslide read_region loop",
        "work_x1": "the work alone, 1 process",
        "work_x2": "the work alone, 2 processes",
        "j1": f"pathgen tile, 1 worker ({codec_name})",
        "j2": f"pathgen tile, 2 workers ({codec_name})",
        "openslide": "pathgen tile -j1 --reader openslide, lossless",
        "lossless": "pathgen tile -j1 --codec lossless",
        "cohort_j1": f"cohort of {args.cohort}, 1 worker",
        "cohort_j2": f"cohort of {args.cohort}, 2 workers",
    }
    for name, (secs, rss, cpu_s) in med.items():
        rate = n * (args.cohort if name.startswith("cohort") else 1) / secs
        print(f"{labels[name]:<44}{secs:>9.1f}{rate:>11.1f}{cpu_s:>8.1f}{rss:>14.2f}")
    print(f"{'pathgen tile, 1 worker, 1/4 area':<44}{small_s:>9.1f}{'':>19}{small_rss:>14.2f}")
    (bare_s, _, bare_cpu), (one_s, one_rss, one_cpu), (two_s, two_rss, two_cpu) = (med[k] for k in ("bare", "j1", "j2"))
    old_s, _, old_cpu = med["openslide"]
    print(f"\n1 worker vs bare loop:   {bare_s / one_s:.2f}x wall, {bare_cpu / one_cpu:.2f}x CPU-s (target >= 1.5x)")
    print(f"2 workers vs 1 worker:   {one_s / two_s:.2f}x  (target >= 1.8x)")
    if args.cohort:
        c1, c2 = med["cohort_j1"][0], med["cohort_j2"][0]
        print(f"  on a cohort of {args.cohort}:    {c1 / c2:.2f}x")
    print(f"  the work alone, 2 processes vs 1: {med['work_x1'][0] / med['work_x2'][0]:.2f}x (this machine's ceiling)")
    print(f"1 worker vs old path:    {old_s / one_s:.2f}x wall, {old_cpu / one_cpu:.2f}x CPU-s (--reader openslide)")
    print(f"lossless vs {codec_name}, 1 worker: {med['lossless'][0] / one_s:.2f}x wall (> 1: {codec_name} is faster)")
    print(f"cores kept busy:         {one_cpu / one_s:.2f} (1 worker), {two_cpu / two_s:.2f} (2 workers), CPU s/wall s")
    if args.cohort:  # steadier than the speed-up on a VM whose per-core speed drifts between runs
        busy = [med[k][2] / med[k][0] for k in ("cohort_j1", "cohort_j2")]
        print(f"  on the cohort:         {busy[0]:.2f} (1 worker), {busy[1]:.2f} (2 workers)")
    print(f"peak RSS, 1 worker:      {one_rss:.2f} GiB full slide vs {small_rss:.2f} GiB quarter-area slide (< 1.5)")
    print(f"peak RSS, 2 workers:     {two_rss:.2f} GiB (parent + workers)")
    print(f"fast vs old path, stored lossless patches: max |difference| {fast_vs_old:.0f} ({len(k)} patches compared)")
    print(f"store bytes/patch:       {bytes_pp['j1'] / 1024:.1f} KiB {codec_name}, "
          f"{bytes_pp['lossless'] / 1024:.1f} KiB lossless, {256 * 256 * 3 / 1024:.0f} KiB raw")
    print(f"\n{'codec (quality 90)':<20}{'KiB/patch':>10}{'encode ms':>11}{'decode ms':>11}  (200 patches, CPU)")
    for name, (kib, enc, dec) in codecs.items():
        print(f"{name:<20}{kib:>10.1f}{enc:>11.3f}{dec:>11.3f}")
    print("\nreading only, CPU ms per patch (first 1,000 patches, in this process): "
          + ", ".join(f"{k} {v:.3f}" for k, v in reading.items()))
    print("random PatchStore reads: " + ", ".join(f"{k} {v:.3f} ms" for k, v in reads.items()) + " per patch (CPU)")
    if tia is None:
        print("\nTIAToolbox SlidingWindowPatchExtractor: skipped (tiatoolbox is not installed)")
    else:
        print(f"\nTIAToolbox SlidingWindowPatchExtractor (otsu mask, level 0, its own patch set): {tia[0]:.1f} s wall, "
              f"{tia[2]:.1f} CPU-s, peak RSS {tia[1]:.2f} GiB")


if __name__ == "__main__":
    main()
