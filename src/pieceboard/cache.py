"""The decode-once cache: every image decoded and resized once per (content, size), memory-mapped for every epoch.

    from pieceboard.cache import build_cache, check_images
    check = check_images(files, digests)              # every file decoded once at CHECK_SIZE: bad ones, sizes
    pixels = build_cache(files, 64, digests=digests)  # uint8 (N, 64, 64, 3), read-only memory map

Caches live under `cache_root()`, in folders named by a fingerprint of the files' contents, the size and the resize
method, built in a staged folder (`pieceboard._io.staged_folder`) by a pool of decoding processes that die with the
benchmark and stop within a chunk of a Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pieceboard import builtin
from pieceboard._console import PieceboardError, check_stop
from pieceboard._image import RESIZE_METHOD, ImageError, load_rgb_sized
from pieceboard._io import atomic_write_text, is_complete, require_space, staged_folder, storage_errors
from pieceboard.config import DataTable

CACHE_VERSION = 2
CHECK_SIZE = 64  # every image is decoded completely once to check it; kept at this size to look for copies
DECODE_CHUNK = 32  # images per task of a decoding process: large enough to amortise the hand-over, small to stop fast
DISK_MARGIN = 64 << 20  # bytes kept free beyond a cache's size, for the file system and everything else

Progress = Callable[[str, int, int], None]


class CacheError(PieceboardError):
    """An image can no longer be decoded the way the manifest found it."""


class ChangedFile(CacheError):
    """A file's content changed between reading its digest and decoding it: nothing decoded is kept."""

    def __init__(self, path: Path):
        super().__init__(
            f"{path} changed while pieceboard was reading the images (is something still writing to the folder?); "
            f"nothing was kept: run again once the folder is complete"
        )
        self.path = path


def cache_root(data: DataTable | None = None) -> Path:
    """Where decoded pixels live: `[data] cache_dir`, else $PIECEBOARD_CACHE, else ~/.cache/pieceboard."""
    if data is not None and data.cache_dir:
        return Path(data.cache_dir).expanduser()
    return builtin.cache_root()


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes (hex, 32 characters)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()  # the same as file_digest of a file holding `data`


def fingerprint(digests: Iterable[str], image_size: int) -> str:
    """A cache key that changes when any file's content, the file list, the size or the resize method change."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{RESIZE_METHOD}|{image_size}".encode())
    for item in digests:
        digest.update(item.encode())
    return digest.hexdigest()[:32]


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


def _decode_chunk(args: tuple[list[str], int]) -> tuple[np.ndarray, np.ndarray, dict[int, str], list[str | None]]:
    """Decode files, each from the very bytes whose digest is returned with it (None: the file could not be read).

    The caller compares the digests with those its cache is keyed by: a file written to while it is decoded must not
    have its pixels (or its failure) remembered under the digest of other content.
    """
    paths, size = args
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    sizes = np.zeros((len(paths), 2), dtype=np.int32)
    errors = {}
    digests: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            errors[i] = f"{path}: cannot read the file ({exc.strerror or exc})"
            digests.append(None)
            continue
        digests.append(_bytes_digest(data))
        try:
            out[i], sizes[i] = load_rgb_sized(path, size, data)
        except ImageError as exc:
            errors[i] = str(exc)
    return out, sizes, errors, digests


def _decode_all(
    files: list[Path],
    digests: list[str],
    size: int,
    out: np.ndarray,
    progress: Progress | None,
    what: str,
    workers: int | None,
    sizes: np.ndarray | None = None,
) -> dict[int, str]:
    """Decode every file with a pool of processes into `out` (and original sizes into `sizes`).

    The pool is terminated on any exception, including a stop requested by Ctrl-C or SIGTERM, which is checked
    after every chunk (well under a second at 200 px).

    Returns:
        {index: reason} of the files that could not be decoded.

    Raises:
        ChangedFile: A file's content is no longer the one `digests` gives for it (it is being written, or changed).
    """
    jobs = [([str(p) for p in files[i : i + DECODE_CHUNK]], size) for i in range(0, len(files), DECODE_CHUNK)]
    errors: dict[int, str] = {}
    pool = multiprocessing.Pool(min(workers or os.cpu_count() or 1, max(1, len(jobs))), initializer=_worker_init)
    try:
        # imap streams results in order; the parent copies each block into the memory map as it arrives.
        for n, (block, block_sizes, chunk_errors, found) in enumerate(pool.imap(_decode_chunk, jobs)):
            check_stop()
            start = n * DECODE_CHUNK
            changed = [start + i for i, digest in enumerate(found) if digest != digests[start + i]]
            if changed:
                raise ChangedFile(files[changed[0]])
            out[start : start + len(block)] = block
            if sizes is not None:
                sizes[start : start + len(block)] = block_sizes
            errors |= {start + i: reason for i, reason in chunk_errors.items()}
            if progress:
                progress(what, min(start + len(block), len(files)), len(files))
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    return errors


def _reserve(path: Path, folder: Path, size: int) -> None:
    """Claim the disk blocks of a memory-mapped file now: a full disk found while writing through a memory map is
    a SIGBUS that kills the process, while one found here is an error with a message."""
    require_space(
        folder, size + DISK_MARGIN, "the image cache", "set [data] cache_dir (or $PIECEBOARD_CACHE) to a larger disk"
    )
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


def _new_pixels(folder: Path, reserve_in: Path, n: int, size: int) -> np.ndarray:
    out = np.lib.format.open_memmap(folder / "pixels.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    _reserve(folder / "pixels.npy", reserve_in, out.nbytes)
    return out


# --- the check pass ----------------------------------------------------------------------------------------------


@dataclass
class Check:
    """What decoding every file once found."""

    folder: Path  # where the check is cached; later results about the same files (duplicates) go here too
    pixels: np.ndarray  # (N, CHECK_SIZE, CHECK_SIZE, 3), zeros for files that failed
    sizes: np.ndarray  # (N, 2) original width and height, zeros for files that failed
    errors: dict[int, str]  # index -> why a file cannot be used


def check_images(
    files: list[Path],
    digests: list[str],
    root: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Check:
    """Decode every file completely once (cached by content): which fail, their sizes, small pixels for dedup.

    Args:
        files: The image files.
        digests: Their content digests (`file_digest`).
        root: Cache folder; default `cache_root()`.
        progress: Called as (what, done, total) while decoding.
        workers: Decoding processes; default all cores.
    """
    folder = (root or cache_root()) / "checks" / fingerprint(digests, CHECK_SIZE)
    if not is_complete(folder):
        with staged_folder(folder) as tmp:
            out = _new_pixels(tmp, folder.parent, len(files), CHECK_SIZE)
            sizes = np.zeros((len(files), 2), dtype=np.int32)
            errors = _decode_all(files, digests, CHECK_SIZE, out, progress, "checking images", workers, sizes)
            out.flush()
            del out
            np.save(tmp / "sizes.npy", sizes)
            (tmp / "errors.json").write_text(json.dumps({str(k): v for k, v in errors.items()}), encoding="utf-8")
    with storage_errors(folder):
        errors = {int(k): v for k, v in json.loads((folder / "errors.json").read_text(encoding="utf-8")).items()}
        return Check(folder, np.load(folder / "pixels.npy", mmap_mode="r"), np.load(folder / "sizes.npy"), errors)


def remember(check: Check, name: str, value: object) -> None:
    """Store a JSON result derived from a check beside it (e.g. its duplicate groups), for the next start."""
    atomic_write_text(check.folder / f"{name}.json", json.dumps(value))


def recall(check: Check, name: str) -> object | None:
    """A result stored by `remember`, or None."""
    path = check.folder / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# --- the pixel cache ---------------------------------------------------------------------------------------------


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
        CacheError: A file can no longer be decoded (it changed since the manifest was made).
        StorageError: The cache folder is not writable or too small; nothing partial is left.
    """
    digests = digests if digests is not None else [file_digest(p) for p in files]
    folder = (root or cache_root()) / "pixels" / fingerprint(digests, image_size)
    if not is_complete(folder):
        with staged_folder(folder, note=json.dumps({"n": len(files), "size": image_size})) as tmp:
            out = _new_pixels(tmp, folder.parent, len(files), image_size)
            errors = _decode_all(files, digests, image_size, out, progress, f"caching {image_size}px", workers)
            if errors:
                raise CacheError(f"{errors[min(errors)]} (it changed since the manifest was made)")
            out.flush()
            del out
        logging.getLogger(__name__).info("cached %d images at %dpx in %s", len(files), image_size, folder)
    with storage_errors(folder):
        return np.load(folder / "pixels.npy", mmap_mode="r")


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
