"""Data: folder -> checked manifest and split -> decode-once pixel cache -> whole batches on the device.

    from pieceboard.data import make_manifest, build_cache
    manifest = make_manifest(config.data, output_dir)        # writes/reuses OUTPUT/manifest.csv
    pixels = build_cache(manifest.files(), image_size=64)    # uint8 N x S x S x 3, memory-mapped

Every image is decoded and resized once per (files' content, image size, resize method); epochs slice whole batches
out of the memory-mapped cache, so decoding never runs in the training loop.
"""

from __future__ import annotations

import csv
import ctypes
import functools
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import signal
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pieceboard import builtin
from pieceboard._console import check_stop
from pieceboard._image import RESIZE_METHOD, ImageError, load_rgb
from pieceboard._io import StorageError, atomic_write_text, is_complete, staged_folder, storage_errors
from pieceboard.config import DataTable, PieceboardError

CACHE_VERSION = 2
SPLIT_FOLDERS = {"train", "training", "test", "testing", "valid", "validation", "val", "eval", "dev"}
ARCHIVES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar")
MANIFEST = "manifest.csv"
MANIFEST_META = "manifest.json"
CHECK_SIZE = 8  # images are decoded completely to check them; the resize after that only has to be cheap
DECODE_CHUNK = 32  # images per task of a decoding process: large enough to amortise the hand-over, small to stop fast
DISK_MARGIN = 64 << 20  # bytes kept free beyond a cache's size, for the file system and everything else

Progress = Callable[[str, int, int], None]


class DataError(PieceboardError):
    """The data folder cannot be used as asked; the message names the folder or image."""


@dataclass
class Scan:
    """What a folder holds: its images with their class folders, and what was left out and why."""

    root: Path
    paths: list[str]  # images, relative to root, posix separators, sorted
    classes: list[str]  # class folder of each image
    ignored: list[str] = field(default_factory=list)  # files that are not images
    unreadable_names: list[str] = field(default_factory=list)  # names that are not valid UTF-8, as repr()


@dataclass
class Manifest:
    """Every usable image with its label and split, shared by all runs of a benchmark."""

    root: Path
    class_names: list[str]
    paths: list[str]  # relative to root, posix separators
    labels: np.ndarray  # int64 class index per image
    is_test: np.ndarray  # bool per image
    skipped: list[dict[str, str]]  # {"path", "reason"} for files that were left out
    digests: list[str] = field(default_factory=list)  # content digest per image, hex
    ignored: int = 0  # files in the folder that are not images

    def files(self) -> list[Path]:
        """Absolute paths, in manifest order."""
        return [self.root / p for p in self.paths]

    @property
    def train_indices(self) -> np.ndarray:
        """Positions of the training images."""
        return np.flatnonzero(~self.is_test)

    @property
    def test_indices(self) -> np.ndarray:
        """Positions of the test images."""
        return np.flatnonzero(self.is_test)


# --- scanning ----------------------------------------------------------------------------------------------------


def _image_extensions() -> set[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return {ext.lower() for ext in ImageFolder.EXTENSIONS}


def _list_files(root: Path) -> list[str]:
    """Every file under root as datasets lists a data folder: hidden files and `__*` folders left out."""
    from datasets.data_files import resolve_pattern

    try:
        return resolve_pattern(str(root / "**"), str(root))
    except FileNotFoundError:
        return []


def scan_folder(root: Path) -> Scan:
    """List the images of a class-folder tree, with datasets' listing rules and imagefolder's image extensions.

    The label is the top-level folder (imagefolder's own inference silently drops labels when depths differ);
    top-level train/ test/ folders are merged, and a `test/` folder deeper down is an ordinary folder.

    Args:
        root: A folder holding one folder per class (optionally inside train/ test/ split folders).

    Returns:
        The images and their classes, plus the files left out.

    Raises:
        DataError: The folder is missing, has loose images or archives, fewer than two classes, or an empty class.
    """
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder")
    extensions = _image_extensions()
    scan = Scan(root, [], [])
    for path in _list_files(root):
        rel = Path(os.path.relpath(path, root)).as_posix()
        if rel.startswith(".."):
            raise DataError(f"data.path: {path} is outside {root}")
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:  # os.fsdecode kept undecodable bytes as surrogates
            scan.unreadable_names.append(repr(rel))
            continue
        suffix = os.path.splitext(rel)[1].lower()
        if suffix in extensions:
            scan.paths.append(rel)
        elif rel.lower().endswith(ARCHIVES):
            raise DataError(f"data.path: {root / rel} is an archive; extract it into class folders first")
        else:
            scan.ignored.append(rel)
    scan.paths.sort()
    for name in scan.unreadable_names:
        warnings.warn(f"skipped: {root}/{name}: the file name is not valid UTF-8; rename it", stacklevel=2)
    if not scan.paths:
        raise DataError(f"data.path: {root}: no images found")
    scan.classes = _class_of_each(root, scan.paths)
    return scan


def _class_of_each(root: Path, rel_paths: list[str]) -> list[str]:
    merge_splits = {p.split("/")[0].lower() for p in rel_paths} <= SPLIT_FOLDERS
    classes = []
    for rel in rel_paths:
        parts = rel.split("/")[1:] if merge_splits else rel.split("/")
        if len(parts) < 2:
            raise DataError(f"data.path: image {root / rel} is not inside a class folder; put each class in its own")
        classes.append(parts[0])
    class_dirs = set(classes)
    empty = _empty_class_dirs(root, class_dirs, merge_splits)
    if empty:
        raise DataError(f"data.path: class folder {empty[0]} holds no images")
    if len(class_dirs) < 2:
        raise DataError(f"data.path: {root} has {len(class_dirs)} class folder(s); a classifier needs at least two")
    return classes


def _empty_class_dirs(root: Path, classes: set[str], merge_splits: bool) -> list[Path]:
    visible = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))]
    parents = visible if merge_splits else [root]
    empty = []
    for parent in parents:
        for entry in sorted(parent.iterdir()):
            if entry.is_dir() and not entry.name.startswith((".", "__")) and entry.name not in classes:
                empty.append(entry)
    return empty


# --- content digests ---------------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes (hex, 32 characters)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_digests(root: Path, paths: list[str], known: dict[str, list] | None = None) -> dict[str, list]:
    """`{path: [size, mtime_ns, digest]}` for every file; a file whose size and mtime match `known` is not re-read.

    Reading every byte of 12k images costs seconds at each start; an edit in place changes the mtime, so a match
    on both is taken as unchanged content (the same rule as make and rsync).
    """
    known = known or {}
    out = {}
    for rel in paths:
        stat = (root / rel).stat()
        previous = known.get(rel)
        if previous and previous[0] == stat.st_size and previous[1] == stat.st_mtime_ns:
            out[rel] = previous
        else:
            out[rel] = [stat.st_size, stat.st_mtime_ns, file_digest(root / rel)]
    return out


def fingerprint(digests: Iterable[str], image_size: int) -> str:
    """A cache key that changes when any file's content, the file list, the size or the resize method change."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{RESIZE_METHOD}|{image_size}".encode())
    for item in digests:
        digest.update(item.encode())
    return digest.hexdigest()[:32]


# --- the manifest and the split ----------------------------------------------------------------------------------


def resolve_root(data: DataTable) -> Path:
    """The folder behind `[data] path` (materialising a builtin: dataset)."""
    try:
        return builtin.resolve(data.path).resolve()
    except ValueError as exc:  # an unknown builtin:<name>
        raise DataError(f"data.path: {exc}") from None


def make_manifest(data: DataTable, output: Path, progress: Progress | None = None) -> Manifest:
    """Scan, check and split the folder once; later calls reuse OUTPUT/manifest.csv.

    Args:
        data: The `[data]` table.
        output: The benchmark's output folder.
        progress: Called as (what, done, total) while images are checked.

    Returns:
        The manifest every run of the benchmark shares.

    Raises:
        DataError: A problem with the folder, or a rerun whose folder, split settings or images changed.
    """
    root = resolve_root(data)
    settings = {"path": str(root), "test_fraction": data.test_fraction, "split_seed": data.split_seed}
    scan = scan_folder(root)
    meta = _read_meta(output)
    if meta is not None:
        return _reuse_manifest(output, meta, settings, scan)
    digests = file_digests(root, scan.paths)
    errors = check_images([root / p for p in scan.paths], progress)
    for _, reason in sorted(errors.items()):
        warnings.warn(f"skipped: {reason}", stacklevel=2)
    keep = [i for i in range(len(scan.paths)) if i not in errors]
    skipped = [{"path": scan.paths[i], "reason": errors[i]} for i in sorted(errors)]
    skipped += [{"path": name, "reason": "the file name is not valid UTF-8"} for name in scan.unreadable_names]
    class_names = sorted(set(scan.classes))
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[scan.classes[i]] for i in keep], dtype=np.int64)
    _check_class_sizes(labels, class_names)
    is_test = stratified_split(labels, data.test_fraction, data.split_seed)
    paths = [scan.paths[i] for i in keep]
    manifest = Manifest(root, class_names, paths, labels, is_test, skipped, [digests[p][2] for p in paths])
    manifest.ignored = len(scan.ignored)
    _write_manifest(output, manifest, settings, {p: digests[p] for p in paths})
    return manifest


def _check_class_sizes(labels: np.ndarray, class_names: list[str]) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    small = [f"'{class_names[i]}' ({counts[i]})" for i in np.flatnonzero(counts < 2)]
    if small:
        raise DataError(
            f"data.path: each class needs at least 2 usable images (one for each side of the split); too few in "
            f"{', '.join(small)}"
        )


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """A seeded stratified split: True where an image is held out for testing.

    Each class gives round(test_fraction x its size) images to the test split, and always at least one to each
    side: a class missing from the test split would score 0 in every macro average.
    """
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = int(np.clip(round(test_fraction * len(members)), 1, len(members) - 1))
        is_test[rng.permutation(members)[:n_test]] = True
    return is_test


def _write_manifest(output: Path, manifest: Manifest, settings: dict, fingerprints: dict[str, list]) -> None:
    meta = settings | {
        "class_names": manifest.class_names,
        "skipped": manifest.skipped,
        "ignored": manifest.ignored,
        "fingerprints": fingerprints,
    }
    rows = (
        (p, manifest.class_names[lab], "test" if t else "train")
        for p, lab, t in zip(manifest.paths, manifest.labels, manifest.is_test, strict=True)
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
    # The csv is the split; the json says how it was made. The json goes last: without it the csv is not reused.
    atomic_write_text(output / MANIFEST, buffer.getvalue())
    atomic_write_text(output / MANIFEST_META, json.dumps(meta, indent=1))


def _read_meta(output: Path) -> dict[str, Any] | None:
    csv_path, meta_path = output / MANIFEST, output / MANIFEST_META
    if not csv_path.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc}); delete it and {MANIFEST} to split again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("fingerprints"), dict):
        raise DataError(
            f"{meta_path}: written by another version of pieceboard or damaged; use another --output, or delete "
            f"{meta_path.name} and {MANIFEST} to split again"
        )
    return meta


def load_manifest(output: Path) -> Manifest:
    """The manifest stored in an output folder, as written there (no scan of the data folder, no checks).

    For processes that work for a benchmark whose main process has just made or checked it.
    """
    meta = _read_meta(output)
    if meta is None:
        raise DataError(f"{output}: no {MANIFEST} and {MANIFEST_META} here")
    return _manifest_from_files(output, meta, Path(meta["path"]))


def _manifest_from_files(output: Path, meta: dict[str, Any], root: Path) -> Manifest:
    with (output / MANIFEST).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = meta["class_names"]
    index = {name: i for i, name in enumerate(names)}
    paths = [r["path"] for r in rows]
    fingerprints = meta["fingerprints"]
    return Manifest(
        root,
        names,
        paths,
        np.array([index[r["label"]] for r in rows], dtype=np.int64),
        np.array([r["split"] == "test" for r in rows]),
        meta["skipped"],
        [fingerprints[p][2] for p in paths],
        meta.get("ignored", 0),
    )


def _reuse_manifest(output: Path, meta: dict[str, Any], settings: dict, scan: Scan) -> Manifest:
    csv_path = output / MANIFEST
    changed = [k for k in settings if meta.get(k) != settings[k]]
    if changed:
        was = ", ".join(f"{k}={meta.get(k)!r}" for k in changed)
        raise DataError(
            f"{csv_path}: was made with {was}; this benchmark now asks for "
            + ", ".join(f"{k}={settings[k]!r}" for k in changed)
            + ". Mixing splits would make runs incomparable: use another --output, or delete that folder"
        )
    listed = set(meta["fingerprints"]) | {s["path"] for s in meta["skipped"]}
    now = set(scan.paths) | set(scan.unreadable_names)
    if listed != now:
        added, removed = sorted(now - listed), sorted(listed - now)
        example = (added or removed)[0]
        raise DataError(
            f"{csv_path}: the folder {scan.root} changed since the split was made ({len(added)} image(s) added, "
            f"{len(removed)} removed, e.g. {example}); use another --output, or delete that folder to re-split"
        )
    known = meta["fingerprints"]
    current = file_digests(scan.root, sorted(known), known)
    edited = sorted(p for p in known if current[p][2] != known[p][2])
    if edited:
        raise DataError(
            f"{csv_path}: {len(edited)} image(s) changed content since the split was made (e.g. {edited[0]}), so "
            f"kept results were trained on other pixels; use another --output, or delete that folder to start over"
        )
    if current != known:  # touched but unchanged: remember the new times so the next start need not re-read them
        atomic_write_text(output / MANIFEST_META, json.dumps(meta | {"fingerprints": current}, indent=1))
    return _manifest_from_files(output, meta, scan.root)


# --- decoding processes ------------------------------------------------------------------------------------------


def _worker_init() -> None:
    # A decoder must not outlive the benchmark: die with the parent (Linux), and take SIGTERM's default (the parent
    # installed a handler that only sets a flag, which fork copied). Ctrl-C reaches the whole process group; the
    # parent handles it and terminates the pool, so the workers ignore it instead of printing tracebacks.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown still ends them on every normal exit
        pass


def _decode_chunk(args: tuple[list[str], int]) -> tuple[np.ndarray, dict[int, str]]:
    paths, size = args
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    errors = {}
    for i, path in enumerate(paths):
        try:
            out[i] = load_rgb(path, size)
        except ImageError as exc:
            errors[i] = str(exc)
    return out, errors


def _decode_all(
    files: list[Path], size: int, out: np.ndarray | None, progress: Progress | None, what: str, workers: int | None
) -> dict[int, str]:
    """Decode every file with a pool of processes (into `out` when given); returns {index: reason} of bad files.

    The pool is terminated on any exception, including a stop requested by Ctrl-C or SIGTERM, which is checked
    after every chunk (well under a second at 200 px).
    """
    jobs = [([str(p) for p in files[i : i + DECODE_CHUNK]], size) for i in range(0, len(files), DECODE_CHUNK)]
    errors: dict[int, str] = {}
    pool = multiprocessing.Pool(min(workers or os.cpu_count() or 1, max(1, len(jobs))), initializer=_worker_init)
    try:
        # imap streams results in order; the parent copies each block into the memory map as it arrives.
        for n, (block, chunk_errors) in enumerate(pool.imap(_decode_chunk, jobs)):
            check_stop()
            start = n * DECODE_CHUNK
            if out is not None:
                out[start : start + len(block)] = block
            errors |= {start + i: reason for i, reason in chunk_errors.items()}
            if progress:
                progress(what, min(start + len(block), len(files)), len(files))
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    return errors


def check_images(files: list[Path], progress: Progress | None = None, workers: int | None = None) -> dict[int, str]:
    """Decode every file completely; returns {index: reason} for those that cannot be used."""
    return _decode_all(files, CHECK_SIZE, None, progress, "checking images", workers)


# --- the decode-once cache ---------------------------------------------------------------------------------------


def cache_root(data: DataTable | None = None) -> Path:
    """Where decoded pixels live: `[data] cache_dir`, else $PIECEBOARD_CACHE, else ~/.cache/pieceboard."""
    if data is not None and data.cache_dir:
        return Path(data.cache_dir).expanduser()
    return builtin.cache_root()


def _reserve(path: Path, folder: Path, size: int) -> None:
    """Claim the disk blocks of a memory-mapped file now: a full disk found while writing through a memory map is
    a SIGBUS that kills the process, while one found here is an error with a message."""
    free = shutil.disk_usage(folder).free
    if free < size + DISK_MARGIN:
        raise StorageError(
            f"cannot write the image cache in {folder}: it needs {size / 2**20:.0f} MB and {free / 2**20:.0f} MB "
            f"are free; free some space or set [data] cache_dir (or $PIECEBOARD_CACHE) to a larger disk"
        )
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


def build_cache(
    files: list[Path],
    image_size: int,
    root: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    digests: list[str] | None = None,
) -> np.ndarray:
    """Decode and resize every file once into a memory-mapped uint8 array (N, S, S, 3); reuse it when unchanged.

    Args:
        files: Images in manifest order.
        image_size: Square size to resize to.
        root: Cache folder; default `cache_root()`.
        progress: Called as (what, done, total) while building.
        workers: Decoding processes; default all cores.
        digests: The files' content digests (`file_digest`), when already known.

    Returns:
        The read-only memory-mapped pixels.

    Raises:
        DataError: A file can no longer be decoded (it changed since the manifest was made).
        StorageError: The cache folder is not writable or too small; nothing partial is left.
    """
    digests = digests if digests is not None else [file_digest(p) for p in files]
    folder = (root or cache_root()) / "pixels" / fingerprint(digests, image_size)
    target = folder / "pixels.npy"
    if not is_complete(folder):
        with staged_folder(folder, note=json.dumps({"n": len(files), "size": image_size})) as tmp:
            shape = (len(files), image_size, image_size, 3)
            out = np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=shape)
            _reserve(tmp / "pixels.npy", tmp, out.nbytes)
            errors = _decode_all(files, image_size, out, progress, f"caching {image_size}px", workers)
            if errors:
                raise DataError(f"{errors[min(errors)]} (it changed since the manifest was made)")
            out.flush()
            del out
        logging.getLogger(__name__).info("cached %d images at %dpx in %s", len(files), image_size, folder)
    with storage_errors(target):
        return np.load(target, mmap_mode="r")


def channel_stats(
    pixels: np.ndarray, indices: np.ndarray, chunk_bytes: int = 32 << 20
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of the given images, streamed in blocks of about `chunk_bytes`."""
    per_image = int(np.prod(pixels.shape[1:]))
    chunk = max(1, chunk_bytes // (per_image * 8))
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for start in range(0, len(indices), chunk):
        block = pixels[np.sort(indices[start : start + chunk])].reshape(-1, 3).astype(np.float64)
        total += block.sum(axis=0)
        squares += np.einsum("ij,ij->j", block, block)
        count += block.shape[0]
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(squares / count / 255.0**2 - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


# --- batches ------------------------------------------------------------------------------------------------------


class BatchLoader:
    """Whole batches sliced from the cache by a seeded permutation, sharded across processes.

    `batch_size` is the global batch: each step takes the next `batch_size` images of the epoch's order and
    process `rank` of `world` gets its contiguous share (shares differ by at most one image). Every process
    computes the same order from `seed + epoch`, so no communication is needed. A final training batch that would
    give a process fewer than 2 images is dropped (BatchNorm cannot train on one image, and a process with none
    would stall the others); the epoch's reshuffle means a different few images sit out each epoch. Evaluation
    never drops an image.

    Yields `(images, labels, indices)`: uint8 NCHW images on `device` (a view of NHWC memory, i.e. channels_last),
    int64 labels and the manifest positions of the images. With `resident` (the whole cache already on the device,
    from `resident_copy`) a batch is gathered on the device; otherwise it is read from the memory map, and on a GPU
    copied from pinned memory by a reader thread one batch ahead.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        device: str | object = "cpu",
        prefetch: bool | None = None,
        resident: tuple[Any, Any] | None = None,
    ):
        self.pixels, self.labels, self.indices = pixels, labels, np.asarray(indices)
        self.resident = resident
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world, self.device = rank, world, device
        # A reader thread overlaps host reads with GPU work; on a CPU it only takes cycles from the compute threads
        # (measured: the MLP step ran ~20% slower with it on 2 cores), so there batches are read in line.
        self.on_cuda = getattr(device, "type", str(device)) == "cuda"
        self.prefetch = (self.on_cuda and resident is None) if prefetch is None else prefetch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration follows."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """This epoch's order of manifest positions (the same on every process)."""
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def batches(self) -> list[np.ndarray]:
        """This process's manifest positions for each step of the epoch."""
        order = self.order()
        steps = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.shuffle and len(batch) < self.batch_size and len(batch) < 2 * self.world:
                break  # only ever the last, partial batch
            steps.append(np.array_split(batch, self.world)[self.rank])
        return steps

    def __len__(self) -> int:
        return len(self.batches())

    def _load(self, positions: np.ndarray):
        import torch

        # Sorted reads walk the memory map forwards; the order inside a batch does not matter to the step.
        positions = np.sort(positions)
        if self.resident is not None:
            index = torch.from_numpy(positions).to(self.device, non_blocking=True)
            images, labels = (t.index_select(0, index) for t in self.resident)
            return images.permute(0, 3, 1, 2), labels, torch.from_numpy(positions)
        images = torch.from_numpy(np.ascontiguousarray(self.pixels[positions]))
        labels = torch.from_numpy(self.labels[positions])
        if self.on_cuda:
            images = images.pin_memory()
        images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return images, labels.to(self.device, non_blocking=True), torch.from_numpy(positions)

    def __iter__(self):
        steps = self.batches()
        if not self.prefetch:
            yield from (self._load(p) for p in steps)
            return
        # One batch is read from the memory map in a thread while the current one trains.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(self._load, steps[0]) if steps else None
            for i in range(len(steps)):
                batch = pending.result()
                pending = reader.submit(self._load, steps[i + 1]) if i + 1 < len(steps) else None
                yield batch


RESIDENT_SHARE = 0.1  # of a GPU's memory that one worker's cached images may take; the models need the rest


def resident_copy(pixels: np.ndarray, labels: np.ndarray, device: Any, share: float = RESIDENT_SHARE) -> tuple | None:
    """The whole cache and its labels on a GPU, when they fit in `share` of its memory; None otherwise (or on a CPU).

    11,700 images at 200 px are 1.4 GB; on the GPU a batch is then one gather, with no host copy in the step.
    """
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    if pixels.nbytes > share * torch.cuda.get_device_properties(device).total_memory:
        return None
    return torch.from_numpy(np.ascontiguousarray(pixels)).to(device), torch.from_numpy(labels).to(device)


def to_float(images, mean: list[float], std: list[float], channels_last: bool = True):
    """uint8 NCHW on the device -> normalised float32, in channels_last or contiguous NCHW memory.

    Batches arrive as NCHW views of NHWC memory, which is channels_last already; a contiguous copy is made only for
    models that want NCHW (the MLP, or `channels_last = false`).
    """
    shift, scale = _affine(tuple(mean), tuple(std), images.device)
    x = images.float().sub_(shift).mul_(scale)
    return x if channels_last else x.contiguous()


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device):
    import torch

    shift = torch.tensor([255.0 * m for m in mean], device=device).view(1, 3, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, 3, 1, 1)
    return shift, scale


CROP_AREA = (0.35, 1.0)  # share of the image a random crop keeps; torchvision's default lower bound 0.08 is for
# 224 px ImageNet photos and leaves a few pixels at the 16-50 px sizes benchmarked here
CROP_ASPECT = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default


def augment(images, kinds: list[str], generator):
    """Batch augmentations on the device: `crop` (random resized crop), then `hflip` (half the images mirrored).

    Args:
        images: Float NCHW batch.
        kinds: Which augmentations to apply; the order is always crop, then flip.
        generator: A seeded torch.Generator on the images' device.
    """
    import torch
    import torch.nn.functional as F

    n = images.shape[0]
    layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if "crop" in kinds:
        # Random resized crop as one batched affine resample.
        area = torch.empty(n, device=images.device).uniform_(*CROP_AREA, generator=generator)
        log_ratio = torch.empty(n, device=images.device).uniform_(*np.log(CROP_ASPECT), generator=generator)
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(n, device=images.device, generator=generator) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, device=images.device, generator=generator) * 2 - 1) * (1 - sy)
        theta = torch.zeros(n, 2, 3, device=images.device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if "hflip" in kinds:
        flip = torch.rand(n, device=images.device, generator=generator) < 0.5
        images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
    return images.contiguous(memory_format=layout)
