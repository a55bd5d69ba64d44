"""`pathgen pack`: an ImageFolder (or a path,label CSV) into patch stores, so natural-image datasets go through
every stage that reads the tiler's stores (DINO, the diffusion model, `pathgen generate`, Gen-DINO).

Each image is decoded, its shorter side resized to `size` and the centre square kept (pathgen.data.augment's
ResizeCenterCrop, which the evaluation transform uses), then stored like a tiled patch: the
same Zarr v3 layout, codec (JPEG q90 by default), per-patch `labels` with the class names in attrs["classes"],
coords (0, 0) and a tissue fraction of 1. Images are listed in ImageFolder's order (classes sorted, files sorted
within a class) and cut into stores of `per_store` images, `part-00000.zarr`, `part-00001.zarr`, ..., so ImageNet's
1.28 M images make a few hundred stores. Alongside:

    manifest.csv      one row per store, the tiler's columns (so `data.sources=[DIR/manifest.csv]` works) plus
                      `first` (its first image) and `n_unreadable`
    files/<part>.csv  patch,path,label,error: where each stored image came from (patch empty: unreadable)
    unreadable.csv    path,error of every image that could not be read (recorded and skipped, never fatal)
    summary.txt       counts and time

Each store is written by one worker process, streaming: one Zarr shard of images is in memory at a time (~24 MiB
at 256 px), whatever the store or dataset size. An unreadable image is left out and the next one takes its place
(the store is truncated at the end). Stores are written under a temporary name and renamed when complete; a rerun
skips stores already packed from the same file list with the same settings, so a killed run redoes only the
stores it had not finished.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathgen.errors import ConfigError, PathgenError, StoreError, one_line
from pathgen.store.codecs import DEFAULT_CODEC, DEFAULT_QUALITY, PatchCodec
from pathgen.store.manifest import ManifestRow, write_manifest
from pathgen.store.writer import remove_path

DEFAULT_PER_STORE = 4096  # ImageNet train: 313 stores


@dataclass(frozen=True)
class PackTask:
    name: str  # part-00000
    out_dir: str
    files: tuple[str, ...]  # absolute paths
    labels: tuple[int, ...]
    root: str  # what `files` are recorded relative to
    classes: tuple[str, ...]
    size: int
    codec: PatchCodec
    files_sha256: str


@dataclass
class PackResult:
    name: str
    status: str  # ok | skipped | failed
    n_images: int = 0
    seconds: float = 0.0
    error: str = ""
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path relative to root, one-line reason)


# ---------------------------------------------------------------------------------------------- listing


def list_images(source: str | Path) -> tuple[str, list[tuple[str, int]], list[str]]:
    """(root, [(absolute image path, class index)], classes) of an ImageFolder root or a path,label CSV.

    An ImageFolder is listed as torchvision's ImageFolder lists it (the same classes, order and extensions), so
    a packed store's labels are the ImageFolder's targets. A CSV's paths are relative to its folder; its classes
    are the sorted distinct labels. Paths stay strings, built without a system call per file (ImageNet: 1.28 M).
    """
    source = Path(source)
    if source.is_file() and source.suffix == ".csv":
        return str(source.parent.resolve()), *_list_csv(source)
    if not source.is_dir():
        raise ConfigError(source, "not an image folder (class sub-folders of images) or a path,label CSV")
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = str(source.resolve())
    try:
        classes, class_to_idx = find_classes(root)
        items = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError:
        raise ConfigError(source, "no class sub-folders (an ImageFolder root holds one folder per class)") from None
    if not items:
        raise ConfigError(source, f"no images ({', '.join(IMG_EXTENSIONS)}) in its class sub-folders")
    return root, items, list(classes)


def _list_csv(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    folder = str(path.parent.resolve())
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"path", "label"} <= set(reader.fieldnames or []):
            raise ConfigError(path, "an image list needs columns path,label")
        rows = []
        for line, row in enumerate(reader, start=2):
            image, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not image or not label:
                raise ConfigError(path, f"line {line}: empty path or label")
            rows.append((os.path.normpath(os.path.join(folder, image)), label))
    if not rows:
        raise ConfigError(path, "no images under the path,label header")
    classes = sorted({label for _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[label]) for p, label in rows], classes


def _relative(path: str, root: str) -> str:
    """`path` below `root` as a relative POSIX path; elsewhere as given."""
    prefix = root.rstrip(os.sep) + os.sep
    return path[len(prefix) :].replace(os.sep, "/") if path.startswith(prefix) else path


def _files_sha256(files: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> str:
    """What a store was packed from: its files (relative paths) and their class names, in order."""
    digest = hashlib.sha256()
    for name, y in zip(files, labels, strict=True):
        digest.update(f"{name}\t{classes[y]}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- one store


def load_image(path: str | Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the image's shorter side resized to `size` (bicubic, antialiased), centre square.

    pathgen.data.augment.ResizeCenterCrop, the evaluation transform's resize: decoding and resizing with PIL's
    bicubic resize instead took 1.74x the time (benchmarks/bench_pack.py).
    """
    from PIL import Image

    from pathgen.data.augment import ResizeCenterCrop

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that still covers size x size
        img = img.convert("RGB")
    return ResizeCenterCrop(size)(img).permute(1, 2, 0).numpy()


def _files_csv(task: PackTask) -> Path:
    return Path(task.out_dir) / "files" / f"{task.name}.csv"


def _up_to_date(path: Path, task: PackTask) -> PackResult | None:
    """A finished store packed from the same files with the same settings (as a "skipped" result), else None."""
    from pathgen.store import open_store

    if not path.exists() or not _files_csv(task).is_file():
        return None
    try:
        with open_store(path) as store:
            if (store.attrs.get("files_sha256") != task.files_sha256 or store.patch_size != task.size
                    or PatchCodec.from_attrs(store.attrs) != task.codec
                    or store.attrs.get("classes") != list(task.classes)):
                return None
            n = len(store)
    except StoreError:
        return None
    with open(_files_csv(task), newline="", encoding="utf-8") as f:
        unreadable = [(r["path"], r["error"]) for r in csv.DictReader(f) if r["error"]]
    return PackResult(task.name, "skipped", n, unreadable=unreadable)


def pack_store(task: PackTask) -> PackResult:
    """Pack one store's images (in a worker process); never raises."""
    t0 = time.perf_counter()
    try:
        result = _pack_store(task)
    except Exception as err:  # noqa: BLE001 - this store fails, the others carry on
        result = PackResult(task.name, "failed", error=one_line(err))
    result.seconds = time.perf_counter() - t0
    return result


def _pack_store(task: PackTask) -> PackResult:
    from pathgen.store.writer import PatchStoreWriter, remove_stale_temps, write_images_shard

    path = Path(task.out_dir) / f"{task.name}.zarr"
    remove_stale_temps(path)
    if (done := _up_to_date(path, task)) is not None:
        return done
    n, s = len(task.files), task.size
    attrs = {"source": task.root, "packed_from": "images", "files_sha256": task.files_sha256, "n_listed": n,
             "image_size": s, "resize": "shorter side to image_size (bicubic, antialiased), centre square"}
    writer = PatchStoreWriter(path, np.zeros((n, 2), np.int64), np.ones(n, np.float32), s, attrs,
                              labels=np.asarray(task.labels), classes=list(task.classes), codec=task.codec)
    try:
        buffer = np.empty((writer.shard, s, s, 3), dtype=np.uint8)  # one Zarr shard: all this worker holds
        kept, rows, unreadable = [], [], []
        k = start = 0  # images in the buffer; the store index of its first
        for file, y in zip(task.files, task.labels, strict=True):
            name = _relative(file, task.root)
            try:
                buffer[k] = load_image(file, s)
            except Exception as err:  # noqa: BLE001 - a corrupt or unsupported image is recorded and skipped
                unreadable.append((name, one_line(err)))
                rows.append(("", name, task.classes[y], unreadable[-1][1]))
                continue
            rows.append((start + k, name, task.classes[y], ""))
            kept.append(y)
            k += 1
            if k == writer.shard:
                write_images_shard(writer.images_path, start, buffer, writer.shard, task.codec)
                writer.mark_written(start, k)
                start, k = start + k, 0
        if k:
            write_images_shard(writer.images_path, start, buffer[:k], writer.shard, task.codec)
            writer.mark_written(start, k)
        if not kept:
            raise PathgenError(f"none of its {n} images could be read (first: {unreadable[0][0]}: "
                               f"{unreadable[0][1]})")
        if len(kept) < n:
            writer.truncate(len(kept), labels=np.asarray(kept))
        _write_csv(_files_csv(task), ["patch", "path", "label", "error"], rows)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return PackResult(task.name, "ok", len(kept), unreadable=unreadable)


def _write_csv(path: Path, header: list[str], rows) -> None:
    """Atomically: a reader never sees half of it."""
    from pathgen.store.writer import temp_path

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def warm_up() -> None:
    """Each worker: imports done up front, one thread for torch (the parallelism comes from the processes)."""
    import imagecodecs  # noqa: F401
    import torch
    import zarr  # noqa: F401

    import pathgen.data.augment  # noqa: F401

    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- a dataset


def pack_images(
    source: str | Path,
    out_dir: str | Path,
    *,
    size: int = 256,
    per_store: int = DEFAULT_PER_STORE,
    codec: str = DEFAULT_CODEC,
    quality: int = DEFAULT_QUALITY,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Pack an ImageFolder root (or a path,label CSV) into `out_dir`; returns its manifest.csv (module docstring).

    workers: processes, each packing whole stores (0: all in this process). A store whose images all fail to
    read is a failed row of the manifest; a run where every store failed raises PathgenError.
    """
    from pathgen.runtime.progress import progress_bar
    from pathgen.slide.pool import WorkerPool
    from pathgen.store.manifest import summary_path

    if size < 8 or per_store < 1 or workers < 0:
        raise ConfigError(None, f"need --size >= 8, --per-store >= 1 and --workers >= 0 (got {size}, {per_store}, "
                          f"{workers})")
    patch_codec = PatchCodec(codec, quality)
    root, items, classes = list_images(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, first in enumerate(range(0, len(items), per_store)):
        part = items[first : first + per_store]
        files, labels = tuple(p for p, _ in part), tuple(y for _, y in part)
        digest = _files_sha256([_relative(f, root) for f in files], labels, classes)
        tasks.append(PackTask(f"part-{i:05d}", str(out.resolve()), files, labels, root, tuple(classes), size,
                              patch_codec, digest))
    n_images = len(items)
    del items  # the tasks hold the paths now
    names = {t.name for t in tasks}
    for stale in out.glob("part-*.zarr"):  # a smaller dataset than last time: its extra stores would be mixed in
        if stale.name.removesuffix(".zarr") not in names or overwrite:
            remove_path(stale)
    print(f"pack {root}: {n_images} images, {len(classes)} classes -> {len(tasks)} store(s) of up to {per_store} "
          f"in {out}", flush=True)

    t0 = time.perf_counter()
    results: dict[str, PackResult] = {}
    manifest = out / "manifest.csv"
    bar = progress_bar(total=n_images, desc="pack", unit="img", disable=not progress)
    pool = WorkerPool(min(workers, len(tasks)), warm_up)
    pending = list(reversed(tasks))  # popped from the end: in order
    attempts: dict[str, int] = {}
    running: dict = {}
    try:
        while pending or running:
            while pending and len(running) < max(1, 2 * workers):  # a bounded queue: parent memory stays flat
                # a store retried after a worker died runs alone, so that a second death is its own
                if running and (attempts.get(pending[-1].name) or any(attempts.get(t.name) for t in running.values())):
                    break
                task = pending.pop()
                running[pool.submit(pack_store, task)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = []
            for future in finished:
                task = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken.append(task)
                    continue
                pool.restarts = 0
                _record(task, result, results)
                bar.update(len(task.files))
            if broken:
                # A worker died (killed, or a crash in an image library): every store in flight went down with it.
                wait(running)
                broken += list(running.values())
                running.clear()
                death = pool.death()
                for task in broken:
                    attempts[task.name] = attempts.get(task.name, 0) + 1
                    if attempts[task.name] > 1:
                        _record(task, PackResult(task.name, "failed", error=f"a worker {death} packing it"), results)
                        bar.update(len(task.files))
                    else:
                        pending.append(task)
                pool.restart()
            if finished:
                _write_outputs(out, tasks, results)
    finally:
        bar.close()
        pool.close()
    _write_outputs(out, tasks, results)
    rows = _rows(tasks, results)
    summary_path(manifest).write_text(_summary(rows, results, n_images, time.perf_counter() - t0),
                                      encoding="utf-8")
    if not any(r.status in ("ok", "skipped") for r in rows):
        raise PathgenError(f"{manifest}: no image could be packed")
    return manifest


def _rows(tasks: Sequence[PackTask], results: dict[str, PackResult]) -> list[ManifestRow]:
    rows = []
    for task in tasks:
        if (r := results.get(task.name)) is None:
            continue
        first = _relative(task.files[0], task.root)
        rows.append(ManifestRow(slide=f"{task.root}#{task.name}", status=r.status, n_patches=r.n_images,
                                seconds=r.seconds, error=r.error or (f"{len(r.unreadable)} unreadable image(s), see "
                                                                     "unreadable.csv" if r.unreadable else ""),
                                store=f"{task.name}.zarr" if r.status != "failed" else "",
                                extra={"first": first, "n_unreadable": str(len(r.unreadable))}))
    return rows


def _record(task: PackTask, result: PackResult, results: dict[str, PackResult]) -> None:
    results[task.name] = result
    for name, why in result.unreadable if result.status == "ok" else []:
        print(f"error: {Path(task.root) / name}: cannot read image ({why})", file=sys.stderr)
    if result.status == "failed":
        print(f"error: {task.name}: {result.error}", file=sys.stderr)


def _write_outputs(out: Path, tasks: Sequence[PackTask], results: dict[str, PackResult]) -> None:
    """manifest.csv and unreadable.csv, rewritten as stores finish (a killed run leaves an honest partial one)."""
    write_manifest(out / "manifest.csv", _rows(tasks, results))
    _write_csv(out / "unreadable.csv", ["path", "error"],
               [(str(Path(t.root) / name), why) for t in tasks if t.name in results
                for name, why in results[t.name].unreadable])


def _summary(rows: list[ManifestRow], results: dict[str, PackResult], listed: int, seconds: float) -> str:
    count = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "failed")}
    bad = [u for r in results.values() for u in r.unreadable]
    lines = [f"stores: {len(rows)}  ok: {count['ok']}  skipped: {count['skipped']}  failed: {count['failed']}",
             f"images: {listed} listed, {sum(r.n_patches for r in rows)} packed, {len(bad)} unreadable  "
             f"time: {seconds:.1f} s"]
    lines += [f"unreadable: {name}: {why}" for name, why in bad[:20]]
    if len(bad) > 20:
        lines.append(f"... and {len(bad) - 20} more (unreadable.csv)")
    lines += [f"failed: {r.slide}: {r.error}" for r in rows if r.status == "failed"]
    return "\n".join(lines) + "\n"
