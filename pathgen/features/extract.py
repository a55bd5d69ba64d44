"""`pathgen extract-features`: per-patch features of a cohort's patch stores, for several encoders in one pass.

Every patch is read and decoded once (by DataLoader workers, overlapping the forward passes), resized once per
input size, and fed to every encoder that still needs its slide; each encoder's normalisation runs batched on the
device. Each slide's file is written under a temporary name and renamed when complete;
a rerun skips slides whose file records the same store, encoder sha256 and settings. A slide that cannot be read,
or an encoder that cannot be loaded, fails with a one-line reason in the manifest and the others carry on.
Under torchrun the slides are sharded across ranks (rank r takes slides r, r + W, ...).
"""

import csv
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from pathgen.errors import ConfigError, PathgenError, StoreError, one_line
from pathgen.features.encoders import FeatureEncoder, check_names, load_feature_encoder, split_name
from pathgen.features.h5 import FeatureFileWriter, feature_path, is_up_to_date, pt_path, settings_json
from pathgen.features.patches import SlidePatches, SlideSource, find_slide, plan_from_store, slide_batches


@dataclass
class FeatureRow:
    """One (slide, encoder) outcome in <out>/extraction.csv, like the tiler's manifest rows."""

    slide: str
    encoder: str
    status: str  # ok | skipped | failed
    n_patches: int = 0
    seconds: float = 0.0
    error: str = ""
    file: str = ""  # relative to the output folder


@dataclass
class ExtractionResult:
    out_dir: Path
    manifest: Path
    rows: list[FeatureRow]
    encoders: dict[str, Path]  # name -> features_<name>/ folder (encoders that loaded)
    timing: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[FeatureRow]:
        return [r for r in self.rows if r.status == "failed"]


def write_rows(path: Path, rows: list[FeatureRow]) -> None:
    """The extraction manifest, written atomically so that a reader never sees half of it."""
    from pathgen.store.writer import temp_path

    tmp = temp_path(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(FeatureRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row) | {"seconds": f"{row.seconds:.2f}"})
    os.replace(tmp, path)


def manifest_name(rank: int, world: int) -> str:
    """extraction.csv, or extraction.rank-R-of-W.csv per torchrun rank (never `manifest*.csv`: those are tiling's)."""
    return "extraction.csv" if world == 1 else f"extraction.rank-{rank}-of-{world}.csv"


def _expected(enc: FeatureEncoder, sid: str, fp16: bool) -> dict:
    """The attributes that must match for a finished file to be reused."""
    return {"store_id": sid, "encoder_sha256": enc.sha256,
            "settings": settings_json({"preprocessing": enc.settings(), "dtype": "float16" if fp16 else "float32"})}


def _file_attrs(enc: FeatureEncoder, store, sid: str, fp16: bool, slide: str) -> dict:
    from pathgen import __version__

    a = store.attrs
    return {
        **_expected(enc, sid, fp16),
        "encoder": enc.name, "encoder_spec": enc.spec, "embed_dim": enc.embed_dim, "slide": slide,
        "patch_mpp": float(a.get("target_mpp", 0.0)), "patch_size": int(a.get("patch_size", 0)),
        "patch_size_level0": int(a.get("patch_size_level0", 0)), "source_store": str(store.path.resolve()),
        "n_patches": len(store), "pathgen_version": __version__,
    }


@dataclass
class _Slide:
    """A slide being written: its store's arrays, encoders still to do, writers, progress."""

    source: SlideSource
    store_path: Path
    coords: np.ndarray
    tissue_fraction: np.ndarray
    coords_attrs: dict
    file_attrs: dict  # encoder name -> root attributes
    todo: list[FeatureEncoder]
    writers: dict = field(default_factory=dict)
    done: int = 0
    t0: float = 0.0
    error: str = ""


class _Extraction:
    """The state of one run: the rows, the slides and the timing counters."""

    def __init__(self, out_dir: Path, fp16: bool, export_pt: bool, manifest: Path, precision):
        self.out_dir, self.fp16, self.export_pt, self.manifest = out_dir, fp16, export_pt, manifest
        self.precision = precision  # pathgen.runtime.device.Precision: bf16 autocast on capable GPUs, fp32 on CPU
        self.rows: dict[tuple[str, str], FeatureRow] = {}
        self.order: list[tuple[str, str]] = []
        self.timing = {"patches": 0, "wait_s": 0.0, "model_s": 0.0, "write_s": 0.0, "read_s": 0.0}

    def record(self, row: FeatureRow, flush: bool = True) -> None:
        key = (row.slide, row.encoder)
        if key not in self.rows:
            self.order.append(key)
        self.rows[key] = row
        if flush:
            self.flush()

    def flush(self) -> None:
        # Rewritten as slides finish, so a killed run still leaves an honest partial manifest.
        write_rows(self.manifest, [self.rows[k] for k in self.order])

    def prepare(self, path: Path, from_slides: Path | None, overwrite: bool, encoders: list[FeatureEncoder],
                reader: str | None = None):
        """Open a store and decide what to do with it: None if nothing is left to do (rows already recorded)."""
        from pathgen.store import open_store
        from pathgen.store.writer import remove_stale_temps

        slide = path.name.split(".")[0]
        try:
            with open_store(path) as store:
                if not store.has_images and from_slides is None:
                    raise StoreError(path, "store has no images (tiled with --coords-only); pass --from-slides")
                sid = store.content_id
                todo, attrs = [], {}
                for enc in encoders:
                    target = feature_path(self.out_dir, enc.name, slide)
                    remove_stale_temps(target)
                    remove_stale_temps(pt_path(target))
                    if not overwrite and is_up_to_date(target, _expected(enc, sid, self.fp16), self.export_pt):
                        row = FeatureRow(slide, enc.name, "skipped", len(store), 0.0, "", self._rel(target))
                        self.record(row, flush=False)  # flushed once all stores are prepared
                        continue
                    todo.append(enc)
                    attrs[enc.name] = _file_attrs(enc, store, sid, self.fp16, slide)
                if not todo:
                    return None
                slide_path = plan = None
                if from_slides is not None:
                    slide_path, plan = find_slide(store, from_slides), plan_from_store(store)
                keys = tuple(dict.fromkeys(enc.resize_key for enc in todo))
                source = SlideSource(slide, path, len(store), keys, slide_path, plan,
                                     reader or str(store.attrs.get("reader", "auto")), store.attrs.get("mpp_level0"))
                return _Slide(source, path, store.coords, store.tissue_fraction, store.coords_attrs, attrs, todo)
        except PathgenError as err:
            print(f"error: {err}", file=sys.stderr)
            for enc in encoders:
                if (slide, enc.name) not in self.rows:
                    self.record(FeatureRow(slide, enc.name, "failed", 0, 0.0, one_line(err)), flush=False)
            self.flush()
            return None

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.out_dir))

    def open_writers(self, s: _Slide) -> None:
        s.t0 = time.perf_counter()
        for enc in s.todo:
            s.writers[enc.name] = FeatureFileWriter(
                feature_path(self.out_dir, enc.name, s.source.name), s.coords, s.tissue_fraction, s.coords_attrs,
                s.file_attrs[enc.name], enc.embed_dim, fp16=self.fp16, export_pt=self.export_pt)

    def fail(self, s: _Slide, error: str) -> None:
        s.error = error
        print(f"error: {s.store_path}: {error}", file=sys.stderr)
        for w in s.writers.values():
            w.abort()
        for enc in s.todo:
            self.record(FeatureRow(s.source.name, enc.name, "failed", 0, time.perf_counter() - s.t0, error), False)
        self.flush()

    def finish(self, s: _Slide) -> None:
        try:
            for enc in s.todo:
                s.writers[enc.name].close()
        except Exception as err:  # noqa: BLE001 - e.g. a full disk: this slide fails
            return self.fail(s, one_line(err))
        seconds = time.perf_counter() - s.t0
        for enc in s.todo:
            path = feature_path(self.out_dir, enc.name, s.source.name)
            self.record(FeatureRow(s.source.name, enc.name, "ok", s.source.n, seconds, "", self._rel(path)), False)
        self.flush()

    def forward(self, s: _Slide, images: dict, device: torch.device) -> None:
        t0 = time.perf_counter()
        inputs = {key: images[key].to(device, non_blocking=True) for key in s.source.keys}
        outputs = {}
        for enc in s.todo:
            with self.precision.autocast():
                outputs[enc.name] = enc.model(enc.normalize(inputs[enc.resize_key])).float().cpu().numpy()
        t1 = time.perf_counter()
        for name, feats in outputs.items():
            s.writers[name].write(s.done, feats)
        self.timing["model_s"] += t1 - t0
        self.timing["write_s"] += time.perf_counter() - t1


@torch.inference_mode()
def extract_features(
    encoders: Sequence[str],
    stores,
    out_dir: str | Path,
    *,
    from_slides: str | Path | None = None,
    batch_size: int = 64,
    workers: int = 4,
    fp16: bool = False,
    export_pt: bool = False,
    img_size: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    reader: str | None = None,
    progress: bool = True,
) -> ExtractionResult:
    """Features of every patch of `stores` (paths, folders, globs or tiling manifests) for each encoder spec.

    encoders: `[NAME=]SPEC` strings (an exported encoder, `random:<export>`, `timm:<name>` or a local timm
    folder); NAME defaults to the export's folder name (see `default_name`). Writes
    <out_dir>/features_<NAME>/<slide>.h5 (TRIDENT's layout, see pathgen.features.h5) and <out_dir>/extraction.csv
    (extraction.rank-R-of-W.csv per rank under torchrun). Returns the rows and a timing breakdown. `precision`:
    auto (bf16 autocast on GPUs that compute it natively, fp16 on older ones, fp32 on the CPU), fp32, bf16, fp16.
    `reader` (--from-slides): the slide reader; by default the one each store records, so the pixels are the tiler's.
    """
    from pathgen.runtime.device import precision_for
    from pathgen.runtime.distributed import get_rank, get_world_size, init_distributed, is_main_process
    from pathgen.runtime.progress import progress_bar
    from pathgen.store import find_stores

    if batch_size < 1 or workers < 0:
        raise ConfigError(None, f"need batch size >= 1 and workers >= 0, got {batch_size}, {workers}")
    out_dir = Path(out_dir)
    from_slides = Path(from_slides) if from_slides is not None else None
    if from_slides is not None and not from_slides.is_dir():
        raise ConfigError(from_slides, "--from-slides: no such folder of slides")
    paths = find_stores(stores)
    names = [p.name.split(".")[0] for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(None, f"several stores are named {', '.join(dupes)}; feature files are named by slide")
    dev = init_distributed(device)
    rank, world = get_rank(), get_world_size()
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Extraction(out_dir, fp16, export_pt, out_dir / manifest_name(rank, world), precision_for(dev, precision))
    paths = paths[rank::world]

    loaded: list[FeatureEncoder] = []
    for spec in encoders:
        try:
            loaded.append(load_feature_encoder(spec, img_size=img_size, seed=seed))
        except PathgenError as err:  # this encoder fails on every slide; the others carry on
            print(f"error: {err}", file=sys.stderr)
            name = split_name(spec)[0] or spec
            for p in paths:
                run.record(FeatureRow(p.name.split(".")[0], name, "failed", 0, 0.0, one_line(err)), flush=False)
    check_names(loaded)
    for enc in loaded:
        enc.model.to(dev)

    slides = [s for p in paths if (s := run.prepare(p, from_slides, overwrite, loaded, reader)) is not None]
    run.flush()
    for s in [s for s in slides if s.source.n == 0]:  # nothing to read: write the empty files now
        run.open_writers(s)
        run.finish(s)
    slides = [s for s in slides if s.source.n > 0]

    t_start = time.perf_counter()
    if slides:
        transforms = {enc.resize_key: enc.resizer() for enc in loaded}  # workers: decode + resize, uint8
        dataset = SlidePatches([s.source for s in slides], transforms)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=slide_batches(dataset.sources, batch_size), num_workers=workers,
            pin_memory=dev.type == "cuda",
        )
        desc = f"features (rank {rank})" if world > 1 else "features"
        bar = progress_bar(total=len(dataset), unit="patch", desc=desc, disable=not progress or not is_main_process())
        try:
            t_last = time.perf_counter()
            for images, ks, seconds, errors in loader:
                run.timing["wait_s"] += time.perf_counter() - t_last
                s = slides[int(ks[0])]
                n = len(ks)
                run.timing["read_s"] += float(seconds.sum())
                if not s.writers and not s.error:
                    run.open_writers(s)
                if not s.error:
                    bad = next((e for e in errors if e), "")
                    try:
                        if bad:
                            raise PathgenError(bad)
                        run.forward(s, images, dev)
                        s.done += n
                        run.timing["patches"] += n
                        if s.done == s.source.n:
                            run.finish(s)
                    except PathgenError as err:
                        run.fail(s, one_line(err))
                    except OSError as err:  # writing failed (disk full, permissions): this slide only
                        run.fail(s, one_line(err))
                bar.update(n)
                t_last = time.perf_counter()
        finally:
            bar.close()
            for s in slides:  # an interrupted run leaves no temp files behind from this process
                if s.writers and s.done < s.source.n and not s.error:
                    for w in s.writers.values():
                        w.abort()
    total = time.perf_counter() - t_start
    run.timing.update(total_s=total, patches_per_s=run.timing["patches"] / total if total > 0 else 0.0,
                      workers=workers)
    run.flush()
    dirs = {enc.name: out_dir / f"features_{enc.name}" for enc in loaded}
    return ExtractionResult(out_dir, run.manifest, [run.rows[k] for k in run.order], dirs, run.timing)


def summarize(result: ExtractionResult) -> str:
    """A few lines: per encoder the counts, each failure's reason, then where the time went."""
    lines = []
    for name in dict.fromkeys(r.encoder for r in result.rows):
        rows = [r for r in result.rows if r.encoder == name]
        count = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "failed")}
        lines.append(f"{name}: slides {len(rows)}  ok {count['ok']}  skipped {count['skipped']}  "
                     f"failed {count['failed']}")
    lines += [f"failed: {r.slide} [{r.encoder}]: {r.error}" for r in result.failed]
    t = result.timing
    if t.get("patches"):
        lines.append(
            f"time: {t['patches']} patches in {t['total_s']:.1f} s ({t['patches_per_s']:.1f} patches/s): "
            f"model {t['model_s']:.1f} s, waiting for data {t['wait_s']:.1f} s, writing {t['write_s']:.1f} s; "
            f"read+decode+preprocess {t['read_s']:.1f} s of "
            + (f"{t['workers']} workers' time (overlapped)" if t["workers"] else "main-process time")
        )
    return "\n".join(lines) + "\n"
