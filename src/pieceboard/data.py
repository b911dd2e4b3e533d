"""Data: folder -> checked manifest and split -> decode-once pixel cache -> whole batches on the device.

    from pieceboard.data import make_manifest, build_cache
    manifest = make_manifest(config.data, output_dir)        # writes/reuses OUTPUT/manifest.csv
    pixels = build_cache(manifest.files(), image_size=64)    # uint8 N x S x S x 3, memory-mapped

Every image is decoded and resized once per (files' content, image size, resize method); epochs slice whole batches
out of the memory-mapped cache, so decoding never runs in the training loop.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pieceboard import builtin
from pieceboard._image import RESIZE_METHOD, ImageError, load_rgb
from pieceboard._io import atomic_write_text
from pieceboard.config import DataTable, PieceboardError

CACHE_VERSION = 1
SPLIT_FOLDERS = {"train", "training", "test", "testing", "valid", "validation", "val", "eval", "dev"}
MANIFEST = "manifest.csv"
MANIFEST_META = "manifest.json"


class DataError(PieceboardError):
    """The data folder cannot be used as asked; the message names the folder or image."""


@dataclass
class Manifest:
    """Every usable image with its label and split, shared by all runs of a benchmark."""

    root: Path
    class_names: list[str]
    paths: list[str]  # relative to root, posix separators
    labels: np.ndarray  # int64 class index per image
    is_test: np.ndarray  # bool per image
    skipped: list[str]  # images that could not be decoded, relative to root

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


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def scan_folder(root: Path) -> tuple[list[str], list[str]]:
    """List the images of a class-folder tree with datasets' imagefolder.

    Args:
        root: A folder holding one folder per class (optionally inside train/ test/ split folders, merged).

    Returns:
        Paths relative to root and their class names (the class folder of each image).

    Raises:
        DataError: The folder is missing, has loose images, fewer than two classes, or an empty class.
    """
    import datasets

    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder")
    _quiet_datasets()
    # imagefolder finds the image files (its extension list; hidden files and __* folders skipped). An explicit
    # pattern keeps it from reading a `test/` folder anywhere in the tree as a split, and the labels are ours: the
    # top-level folder, since its own inference silently drops labels when depths differ.
    try:
        found = datasets.load_dataset(
            "imagefolder", data_files={"train": [str(root / "**")]}, drop_labels=True, drop_metadata=True
        )
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"data.path: {root}: no images found ({exc})") from None
    rel_paths: list[str] = []
    for item in found["train"].cast_column("image", datasets.Image(decode=False))["image"]:
        path = item["path"]
        if "::" in path:
            raise DataError(f"data.path: {path.split('::')[-1]} is an archive; extract it into class folders first")
        rel = os.path.relpath(path, root)
        if rel.startswith(".."):
            raise DataError(f"data.path: {path} is outside {root}")
        rel_paths.append(Path(rel).as_posix())
    rel_paths.sort()
    merge_splits = {p.split("/")[0].lower() for p in rel_paths} <= SPLIT_FOLDERS
    classes = []
    for rel in rel_paths:
        parts = rel.split("/")[1:] if merge_splits else rel.split("/")
        if len(parts) < 2:
            raise DataError(f"data.path: image {root / rel} is not inside a class folder; put each class in its own")
        classes.append(parts[0])
    class_dirs = sorted({c for c in classes})
    empty = _empty_class_dirs(root, set(class_dirs), merge_splits)
    if empty:
        raise DataError(f"data.path: class folder {empty[0]} holds no images")
    if len(class_dirs) < 2:
        raise DataError(f"data.path: {root} has {len(class_dirs)} class folder(s); a classifier needs at least two")
    return rel_paths, classes


def _empty_class_dirs(root: Path, classes: set[str], merge_splits: bool) -> list[Path]:
    visible = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))]
    parents = visible if merge_splits else [root]
    empty = []
    for parent in parents:
        for entry in sorted(parent.iterdir()):
            if entry.is_dir() and not entry.name.startswith((".", "__")) and entry.name not in classes:
                empty.append(entry)
    return empty


def _check_image(path: str) -> str | None:
    try:
        load_rgb(path, 8)
    except ImageError as exc:
        return str(exc)
    return None


def _pool(workers: int | None) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1)


def make_manifest(data: DataTable, output: Path, progress: Callable[[str, int, int], None] | None = None) -> Manifest:
    """Scan, check and split the folder once; later calls reuse OUTPUT/manifest.csv.

    Args:
        data: The `[data]` table.
        output: The benchmark's output folder.
        progress: Called as (what, done, total) while images are checked.

    Returns:
        The manifest every run of the benchmark shares.

    Raises:
        DataError: A problem with the folder, or a rerun whose folder or split settings changed.
    """
    try:
        root = builtin.resolve(data.path).resolve()
    except ValueError as exc:  # an unknown builtin:<name>
        raise DataError(f"data.path: {exc}") from None
    settings = {"path": str(root), "test_fraction": data.test_fraction, "split_seed": data.split_seed}
    rel_paths, classes = scan_folder(root)
    existing = _read_manifest(output, root, settings, rel_paths)
    if existing is not None:
        return existing
    files = [str(root / p) for p in rel_paths]
    bad: list[str] = []
    with _pool(None) as pool:
        for i, error in enumerate(pool.map(_check_image, files, chunksize=32)):
            if error:
                bad.append(rel_paths[i])
                warnings.warn(f"skipped: {error}", stacklevel=2)
            if progress and (i % 64 == 0 or i + 1 == len(files)):
                progress("checking images", i + 1, len(files))
    skipped = set(bad)
    keep = [i for i, p in enumerate(rel_paths) if p not in skipped]
    paths = [rel_paths[i] for i in keep]
    class_names = sorted(set(classes))
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[classes[i]] for i in keep], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(class_names))
    if (counts < 2).any():
        name = class_names[int(np.argmin(counts))]
        raise DataError(f"data.path: class '{name}' has {counts.min()} usable image(s); each class needs at least 2")
    is_test = stratified_split(labels, data.test_fraction, data.split_seed)
    manifest = Manifest(root, class_names, paths, labels, is_test, bad)
    _write_manifest(output, manifest, settings)
    return manifest


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


def _write_manifest(output: Path, manifest: Manifest, settings: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    meta = settings | {"class_names": manifest.class_names, "skipped": manifest.skipped}
    atomic_write_text(output / MANIFEST_META, json.dumps(meta, indent=2))
    rows = ["path,label,split"]
    lines = _csv_lines(
        (p, manifest.class_names[lab], "test" if t else "train")
        for p, lab, t in zip(manifest.paths, manifest.labels, manifest.is_test, strict=True)
    )
    atomic_write_text(output / MANIFEST, "\n".join(rows + lines) + "\n")


def _csv_lines(rows: Iterator[tuple]) -> list[str]:
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().splitlines()


def _read_manifest(output: Path, root: Path, settings: dict, rel_paths: list[str]) -> Manifest | None:
    csv_path, meta_path = output / MANIFEST, output / MANIFEST_META
    if not csv_path.exists() or not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    changed = [k for k in settings if meta.get(k) != settings[k]]
    if changed:
        was = ", ".join(f"{k}={meta.get(k)!r}" for k in changed)
        raise DataError(
            f"{csv_path}: was made with {was}; this benchmark now asks for "
            + ", ".join(f"{k}={settings[k]!r}" for k in changed)
            + ". Mixing splits would make runs incomparable: use another --output, or delete that folder"
        )
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    listed = {r["path"] for r in rows} | set(meta["skipped"])
    now = set(rel_paths)
    if listed != now:
        added, removed = sorted(now - listed), sorted(listed - now)
        example = (added or removed)[0]
        raise DataError(
            f"{csv_path}: the folder {root} changed since the split was made ({len(added)} image(s) added, "
            f"{len(removed)} removed, e.g. {example}); use another --output, or delete that folder to re-split"
        )
    names = meta["class_names"]
    index = {name: i for i, name in enumerate(names)}
    return Manifest(
        root,
        names,
        [r["path"] for r in rows],
        np.array([index[r["label"]] for r in rows], dtype=np.int64),
        np.array([r["split"] == "test" for r in rows]),
        meta["skipped"],
    )


# --- the decode-once cache -------------------------------------------------------------------------------------


def cache_root(data: DataTable | None = None) -> Path:
    """Where decoded pixels live: `[data] cache_dir`, else $PIECEBOARD_CACHE, else ~/.cache/pieceboard."""
    if data is not None and data.cache_dir:
        return Path(data.cache_dir).expanduser()
    return builtin.cache_root()


def fingerprint(files: list[Path], image_size: int) -> str:
    """A key that changes when any file's bytes, the file list, the size or the resize method change."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{RESIZE_METHOD}|{image_size}|{len(files)}".encode())
    for path in files:
        digest.update(_file_hash(path))
    return digest.hexdigest()[:32]


def _file_hash(path: Path) -> bytes:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest()


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    return np.stack([load_rgb(p, size) for p in paths])


def build_cache(
    files: list[Path],
    image_size: int,
    root: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Decode and resize every file once into a memory-mapped uint8 array (N, S, S, 3); reuse it when unchanged.

    Args:
        files: Images in manifest order.
        image_size: Square size to resize to.
        root: Cache folder; default `cache_root()`.
        progress: Called as (what, done, total) while building.
        workers: Decoding processes; default all cores.

    Returns:
        The read-only memory-mapped pixels.
    """
    folder = (root or cache_root()) / "pixels" / fingerprint(files, image_size)
    target = folder / "pixels.npy"
    if (folder / "complete").exists():
        return np.load(target, mmap_mode="r")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        shape = (len(files), image_size, image_size, 3)
        out = np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=shape)
        chunk = 32
        jobs = [([str(p) for p in files[i : i + chunk]], image_size) for i in range(0, len(files), chunk)]
        with _pool(workers) as pool:
            # map streams results in order; only a few chunks are in flight, so memory stays bounded.
            for n, block in enumerate(pool.map(_decode_chunk, jobs)):
                start = n * chunk
                out[start : start + len(block)] = block
                if progress:
                    progress(f"caching {image_size}px", min(start + len(block), len(files)), len(files))
        out.flush()
        del out
        (tmp / "complete").write_text(json.dumps({"n": len(files), "image_size": image_size, "method": RESIZE_METHOD}))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except ImageError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{exc} (it changed since the manifest was made)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.getLogger(__name__).info("cached %d images at %dpx in %s", len(files), image_size, folder)
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
    int64 labels and the manifest positions of the images.
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
    ):
        self.pixels, self.labels, self.indices = pixels, labels, np.asarray(indices)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world, self.device = rank, world, device
        # A reader thread overlaps host reads with GPU work; on a CPU it only takes cycles from the compute threads
        # (measured: the MLP step ran ~20% slower with it on 2 cores), so there batches are read in line.
        self.on_cuda = getattr(device, "type", str(device)) == "cuda"
        self.prefetch = self.on_cuda if prefetch is None else prefetch
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
        # Random resized crop as one batched affine resample: scale of area in [0.35, 1], aspect in [3/4, 4/3].
        area = torch.empty(n, device=images.device).uniform_(0.35, 1.0, generator=generator)
        log_ratio = torch.empty(n, device=images.device).uniform_(np.log(3 / 4), np.log(4 / 3), generator=generator)
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
