"""Data: a folder of class folders -> checked images, near-duplicate groups and a split, stored as the manifest.

    from pieceboard.data import make_manifest
    manifest = make_manifest(config.data, output_dir)        # writes/reuses OUTPUT/manifest.csv and manifest.json

Every image is decoded once to check it (pieceboard.cache); the copies that augmentation made of one picture are
found (pieceboard.dedup) and, with the grouped split, kept on one side of the split. With `[data] val_fraction`, a
validation split is carved out of the training split by the same rules.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pieceboard import builtin
from pieceboard._io import atomic_write_text
from pieceboard.cache import Check, Progress, cache_root, check_images, file_digest, recall, remember
from pieceboard.config import DataTable, PieceboardError
from pieceboard.dedup import find_duplicates

SPLIT_FOLDERS = {"train", "training", "test", "testing", "valid", "validation", "val", "eval", "dev"}
ARCHIVES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar")
MANIFEST = "manifest.csv"
MANIFEST_META = "manifest.json"
CSV_DIGEST = "csv_sha256"  # manifest.json's record of manifest.csv's bytes
SPLITS = ("train", "val", "test")  # the values of manifest.csv's split column
DEDUP_VERSION = 2  # bump when pieceboard.dedup finds other groups, so that remembered groups are not reused
VAL_STREAM = 1  # the validation split is drawn with the seed (split_seed, VAL_STREAM): apart from the test split's


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
    split: str = "random"  # how is_test was drawn: grouped or random
    groups: list[list[int]] | None = None  # near-duplicate groups (positions); None if never looked for
    is_val: np.ndarray | None = None  # bool per image: held out of training for validation; None: no image is

    def __post_init__(self) -> None:
        if self.is_val is None:
            self.is_val = np.zeros(len(self.paths), dtype=bool)

    def files(self) -> list[Path]:
        """Absolute paths, in manifest order."""
        return [self.root / p for p in self.paths]

    @property
    def splits(self) -> np.ndarray:
        """Per image, the name of its split: train, val or test (the manifest.csv column)."""
        return split_names(self.is_test, self.is_val)

    @property
    def train_indices(self) -> np.ndarray:
        """Positions of the training images."""
        return np.flatnonzero(~self.is_test & ~self.is_val)

    @property
    def val_indices(self) -> np.ndarray:
        """Positions of the validation images (empty without a validation split)."""
        return np.flatnonzero(self.is_val)

    @property
    def test_indices(self) -> np.ndarray:
        """Positions of the test images."""
        return np.flatnonzero(self.is_test)

    def leaked(self) -> np.ndarray:
        """Per image: a test image with a copy in the training split (all False when groups are unknown)."""
        return leaked_test(self.is_test, self.groups or [], self.splits == "train")


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
        raise DataError(f"data.path: class folder {_why_empty(empty[0])}")
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


def _why_empty(folder: Path) -> str:
    """Why a class folder gave no images: its name, its permissions, or nothing in it."""
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode kept undecodable bytes as surrogates
        return f"{str(folder)!r}: its name is not valid UTF-8, so it cannot be a class name; rename it"
    if not os.access(folder, os.R_OK | os.X_OK):
        return f"{folder} cannot be read (permission denied); make it readable, or move it out of the data folder"
    return f"{folder} holds no images"


# --- content digests ---------------------------------------------------------------------------------------------


def file_digests(root: Path, paths: list[str], known: dict[str, list] | None = None) -> dict[str, list]:
    """`{path: [size, mtime_ns, digest]}` for every file; a file whose size and mtime match `known` is not re-read.

    Reading every byte of 12k images costs seconds at each start; an edit in place changes the mtime, so a match
    on both is taken as unchanged content (the same rule as make and rsync).
    """
    known = known or {}
    out = {}
    for rel in paths:
        try:
            stat = (root / rel).stat()
            previous = known.get(rel)
            if previous and previous[0] == stat.st_size and previous[1] == stat.st_mtime_ns:
                out[rel] = previous
            else:
                out[rel] = [stat.st_size, stat.st_mtime_ns, file_digest(root / rel)]
        except OSError as exc:
            raise DataError(
                f"data.path: cannot read {root / rel} ({exc.strerror or exc}); make it readable, or move it out of "
                f"the data folder"
            ) from None
    return out


# --- the manifest and the split ----------------------------------------------------------------------------------


def resolve_root(data: DataTable) -> Path:
    """The folder behind `[data] path` (materialising a builtin: dataset)."""
    try:
        return builtin.resolve(data.path).resolve()
    except ValueError as exc:  # an unknown builtin:<name>
        raise DataError(f"data.path: {exc}") from None


@dataclass
class Inspection:
    """A folder looked at closely: every file decoded once, the bad ones set aside, the copies found."""

    scan: Scan
    fingerprints: dict[str, list]  # path -> [size, mtime_ns, digest] of every image file
    check: Check
    keep: list[int]  # scan positions of the usable images
    class_names: list[str]
    labels: np.ndarray  # class index of each kept image
    groups: list[list[int]]  # near-duplicate groups, as positions in `keep`

    @property
    def paths(self) -> list[str]:
        """The usable images."""
        return [self.scan.paths[i] for i in self.keep]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Files left out, with the reason."""
        bad = [{"path": self.scan.paths[i], "reason": self.check.errors[i]} for i in sorted(self.check.errors)]
        return bad + [{"path": n, "reason": "the file name is not valid UTF-8"} for n in self.scan.unreadable_names]


def inspect_folder(scan: Scan, cache: Path, progress: Progress | None = None, least: int = 2) -> Inspection:
    """Decode every image once (cached by content), set the bad ones aside and find the near-duplicate groups.

    Raises:
        DataError: A class has fewer than `least` usable images (one per split).
    """
    fingerprints = file_digests(scan.root, scan.paths)
    digests = [fingerprints[p][2] for p in scan.paths]
    check = check_images([scan.root / p for p in scan.paths], digests, cache, progress)
    keep = [i for i in range(len(scan.paths)) if i not in check.errors]
    class_names = sorted(set(scan.classes))
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[scan.classes[i]] for i in keep], dtype=np.int64)
    _check_class_sizes(labels, class_names, least)
    groups = _duplicate_groups(check, keep, [digests[i] for i in keep], progress)
    return Inspection(scan, fingerprints, check, keep, class_names, labels, groups)


def _duplicate_groups(check: Check, keep: list[int], digests: list[str], progress: Progress | None) -> list:
    # Remembered beside the check: the same files give the same groups, so a second start skips the search.
    name = f"duplicates-v{DEDUP_VERSION}"
    remembered = recall(check, name)
    if remembered is not None:
        return remembered
    if progress:
        progress("looking for copies", 0, 1)
    groups = find_duplicates(check.pixels[np.array(keep, dtype=np.int64)], [bytes.fromhex(d) for d in digests])
    remember(check, name, groups)
    if progress:
        progress("looking for copies", 1, 1)
    return groups


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
    settings |= {"split": data.split, "val_fraction": data.val_fraction}
    scan = scan_folder(root)
    meta = _read_meta(output)
    if meta is not None:
        return _reuse_manifest(output, meta, settings, scan)
    found = inspect_folder(scan, cache_root(data), progress, least=3 if data.val_fraction else 2)
    is_test = split_images(found, data)
    manifest = Manifest(
        root, found.class_names, found.paths, found.labels, is_test, found.skipped,
        [found.fingerprints[p][2] for p in found.paths], len(scan.ignored), data.split, found.groups,
        val_split(found, data, is_test),
    )  # fmt: skip
    _write_manifest(output, manifest, settings, {p: found.fingerprints[p] for p in found.paths})
    return manifest


def split_images(found: Inspection, data: DataTable) -> np.ndarray:
    """The split `[data] split` asks for: True where an image is held out for testing.

    Raises:
        DataError: With the grouped split, a class whose images are all copies of one picture.
    """
    if data.split == "random":
        return stratified_split(found.labels, data.test_fraction, data.split_seed)
    try:
        return grouped_split(found.labels, found.groups, data.test_fraction, data.split_seed)
    except SplitError as exc:
        name = found.class_names[exc.label]
        raise DataError(
            f"data.path: every image of class '{name}' is a copy of one picture, so none can be held out for testing "
            f'without its copies in training; add pictures to that class, or use split = "random" (it leaks)'
        ) from None


def _check_class_sizes(labels: np.ndarray, class_names: list[str], least: int = 2) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    small = [f"'{class_names[i]}' ({counts[i]})" for i in np.flatnonzero(counts < least)]
    if small:
        raise DataError(
            f"data.path: each class needs at least {least} usable images (one for each split); too few in "
            f"{', '.join(small)}"
        )


def _test_count(size: int, test_fraction: float) -> int:
    # Always at least one image on each side: a class missing from the test split would score 0 in every macro mean.
    return int(np.clip(round(test_fraction * size), 1, size - 1))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int | list[int]) -> np.ndarray:
    """A seeded stratified split: True where an image is held out for testing.

    Each class gives round(test_fraction x its size) images to the test split, and always at least one to each
    side.
    """
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        is_test[rng.permutation(members)[: _test_count(len(members), test_fraction)]] = True
    return is_test


def grouped_split(
    labels: np.ndarray, groups: list[list[int]], test_fraction: float, seed: int | list[int]
) -> np.ndarray:
    """A seeded stratified split that keeps every near-duplicate group whole on one side.

    Per class, in a seeded order, whole groups (single images are groups of one) go to the test split while they fit
    in the class's share, plus one more if that lands nearer, so each class's test count is on its target or as near
    as the group sizes allow. With
    no groups it is exactly `stratified_split`. A group whose copies sit in several class folders is decided by the
    first class that reaches it, and counts for each class by its members.
    """
    unit = np.arange(len(labels))
    for group in groups:
        unit[group] = group[0]
    rng = np.random.default_rng(seed)
    side: dict[int, bool] = {}  # unit -> in the test split
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        target = _test_count(len(members), test_fraction)
        units, counts = np.unique(unit[members], return_counts=True)
        sizes = dict(zip(units, counts, strict=True))
        taken = sum(size for u, size in sizes.items() if side.get(u))
        left_out = []
        for u in rng.permutation(units):
            if u in side:
                continue
            side[u] = taken + sizes[u] <= target
            taken += sizes[u] if side[u] else 0
            if not side[u]:
                left_out.append(u)
        # One more group when it lands nearer the target (groups of 3 and a target of 107: 108, not 105), or when
        # the class has no test image yet and a group smaller than the class can go.
        best = min(left_out, key=lambda u: abs(taken + sizes[u] - target), default=None)
        nearer = best is not None and abs(taken + sizes[best] - target) < abs(taken - target)
        if best is not None and (nearer or taken == 0) and sizes[best] < len(members):
            side[best] = True
            taken += sizes[best]
        if taken == 0 or taken == len(members):
            raise SplitError(int(label))
    return np.array([side[u] for u in unit], dtype=bool)


def val_split(found: Inspection, data: DataTable, is_test: np.ndarray) -> np.ndarray:
    """The validation split `[data] val_fraction` asks for: True where a training image is held out for validation.

    Carved from the training split by the rules of the test split: per class, `round(val_fraction x its training
    images)` (at least one, and at least one left to train on), and with the grouped split every near-duplicate
    group whole on one side, so no group straddles train and validation either. Seeded by `(split_seed,
    VAL_STREAM)`: the same folder and settings give the same split at every start.

    Raises:
        DataError: With the grouped split, a class whose training images are all copies of one picture.
    """
    is_val = np.zeros(len(is_test), dtype=bool)
    if not data.val_fraction:
        return is_val
    train = np.flatnonzero(~is_test)
    labels, seed = found.labels[train], [data.split_seed, VAL_STREAM]
    if data.split == "random":
        is_val[train[stratified_split(labels, data.val_fraction, seed)]] = True
        return is_val
    local = np.full(len(is_test), -1)
    local[train] = np.arange(len(train))
    groups = [kept for group in found.groups if len(kept := [int(local[i]) for i in group if local[i] >= 0]) > 1]
    try:
        is_val[train[grouped_split(labels, groups, data.val_fraction, seed)]] = True
    except SplitError as exc:
        name = found.class_names[exc.label]
        raise DataError(
            f"data.path: every training image of class '{name}' is a copy of one picture, so none can be held out "
            f"for validation without its copies in training; add pictures to that class, or set val_fraction = 0"
        ) from None
    return is_val


def split_names(is_test: np.ndarray, is_val: np.ndarray) -> np.ndarray:
    """Per image, `train`, `val` or `test`."""
    return np.where(is_test, "test", np.where(is_val, "val", "train"))


class SplitError(DataError):
    """A class cannot be split without leaking: all of its images are copies of one picture."""

    def __init__(self, label: int):
        super().__init__(f"class {label}")
        self.label = label


def leaked_test(is_test: np.ndarray, groups: list[list[int]], trained: np.ndarray | None = None) -> np.ndarray:
    """Per image: a test image that has a copy among the images trained on (default: every image not in test)."""
    trained = ~is_test if trained is None else trained
    leaked = np.zeros(len(is_test), dtype=bool)
    for group in groups:
        members = np.asarray(group)
        if trained[members].any():
            leaked[members[is_test[members]]] = True
    return leaked


def cross_split(splits: np.ndarray, groups: list[list[int]]) -> list[list[int]]:
    """The groups with members in more than one split (`splits`: the split of each image, by name or as is_test)."""
    return [g for g in groups if len(np.unique(splits[g])) > 1]


def _write_manifest(output: Path, manifest: Manifest, settings: dict, fingerprints: dict[str, list]) -> None:
    groups = manifest.groups or []
    paths = manifest.paths
    meta = settings | {
        "class_names": manifest.class_names,
        "skipped": manifest.skipped,
        "ignored": manifest.ignored,
        "duplicate_groups": group_paths(paths, groups),
        "cross_split_groups": group_paths(paths, cross_split(manifest.splits, groups)),
        "leaked_test": [paths[i] for i in np.flatnonzero(manifest.leaked())],
        "fingerprints": fingerprints,
    }
    rows = (
        (p, manifest.class_names[lab], split)
        for p, lab, split in zip(manifest.paths, manifest.labels, manifest.splits, strict=True)
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
    text = buffer.getvalue()
    # The csv is the split; the json says how it was made, and holds the csv's digest so that an edited or cut csv
    # is refused instead of being taken for a new split. The json goes last: without it the csv is not reused.
    atomic_write_text(output / MANIFEST, text)
    atomic_write_text(output / MANIFEST_META, json.dumps(meta | {CSV_DIGEST: _sha256(text.encode())}, indent=1))


def _read_meta(output: Path) -> dict[str, Any] | None:
    """manifest.json, checked; None when the folder has no split yet.

    With one of the two files missing (a first start killed between their writes, or one deleted) the folder is split
    again: the split is seeded and the check is cached by content, so an unchanged folder gets the same split back
    and kept results stay kept.

    Raises:
        DataError: manifest.json is damaged.
    """
    csv_path, meta_path = output / MANIFEST, output / MANIFEST_META
    if not csv_path.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc}); delete it and {MANIFEST} to split again") from None
    except OSError as exc:
        raise DataError(f"{meta_path}: cannot be read ({exc.strerror or exc})") from None
    problem = _meta_problem(meta)
    if problem:
        raise DataError(
            f"{meta_path}: {problem}: written by another version of pieceboard or damaged; restore it, use another "
            f"--output, or delete {meta_path.name} and {MANIFEST} to split again (every cell then runs again)"
        )
    meta.setdefault("split", "random")  # folders from before the grouped split were split at random
    meta.setdefault("val_fraction", 0.0)  # and those from before the validation split had none
    return meta


# The keys every reader of manifest.json relies on, with their JSON types.
_META_KEYS = {"path": str, "class_names": list, "skipped": list, "fingerprints": dict}


def _meta_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    for key, kind in _META_KEYS.items():
        if not isinstance(meta.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    if not all(isinstance(name, str) for name in meta["class_names"]):
        return "'class_names' holds something other than names"
    if not all(isinstance(s, dict) and isinstance(s.get("path"), str) for s in meta["skipped"]):
        return "'skipped' holds something other than files"
    if not all(isinstance(f, list) and len(f) == 3 and isinstance(f[2], str) for f in meta["fingerprints"].values()):
        return "'fingerprints' holds something other than [size, mtime, digest]"
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_manifest(output: Path) -> Manifest:
    """The manifest stored in an output folder, as written there (no scan of the data folder, no checks).

    For processes that work for a benchmark whose main process has just made or checked it.
    """
    meta = _read_meta(output)
    if meta is None:
        raise DataError(f"{output}: no {MANIFEST} and {MANIFEST_META} here")
    return _manifest_from_files(output, meta, Path(meta["path"]))


def _manifest_from_files(output: Path, meta: dict[str, Any], root: Path) -> Manifest:
    rows = _read_rows(output, meta)
    names = meta["class_names"]
    index = {name: i for i, name in enumerate(names)}
    paths = [r["path"] for r in rows]
    position = {p: i for i, p in enumerate(paths)}
    fingerprints = meta["fingerprints"]
    groups = meta.get("duplicate_groups")  # absent in folders from before the near-duplicate check
    try:
        grouped = [[position[p] for p in g] for g in groups] if groups is not None else None
    except (KeyError, TypeError):
        raise DataError(f"{output / MANIFEST_META}: 'duplicate_groups' names images the split does not have") from None
    return Manifest(
        root,
        names,
        paths,
        np.array([index[r["label"]] for r in rows], dtype=np.int64),
        np.array([r["split"] == "test" for r in rows]),
        meta["skipped"],
        [fingerprints[p][2] for p in paths],
        meta.get("ignored", 0),
        meta["split"],
        grouped,
        np.array([r["split"] == "val" for r in rows], dtype=bool),
    )


def _read_rows(output: Path, meta: dict[str, Any]) -> list[dict[str, str]]:
    """manifest.csv's rows, after checking them against manifest.json: the digest it recorded for the file (folders
    made before it was recorded: every image of `fingerprints` once, with a known class and split).

    A damaged split is refused, never taken for a new one: that would retrain, and overwrite, every kept result.

    Raises:
        DataError: The file differs from the one the split was written as; the message names it.
    """
    path = output / MANIFEST
    advice = (
        "kept results were scored on the split it recorded, so nothing is split or trained again: restore the file, "
        "or use another --output"
    )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if CSV_DIGEST in meta and meta[CSV_DIGEST] != _sha256(data):
        raise DataError(
            f"{path}: edited, cut short or replaced since the split was made (its digest differs); {advice}"
        )
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {advice}") from None
    names, known = set(meta["class_names"]), meta["fingerprints"]
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        if row.get("path") not in known or row.get("label") not in names or row.get("split") not in SPLITS:
            raise DataError(f"{path}: line {number} is not an image of the split ({_line(row)}); {advice}")
    if len(rows) != len(known) or len({r["path"] for r in rows}) != len(rows):
        raise DataError(f"{path}: lists {len(rows)} images where the split has {len(known)}; {advice}")
    return rows


def _line(row: dict[str | None, Any]) -> str:
    return ",".join(str(v) for k, v in row.items() if k is not None) or "empty"


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
    manifest = _manifest_from_files(output, meta, scan.root)
    # Touched but unchanged files: remember the new times so the next start need not re-read them; a folder made
    # before the csv's digest was recorded gets it now (its rows were checked one by one above).
    if current != known or CSV_DIGEST not in meta:
        digest = _sha256((output / MANIFEST).read_bytes())
        atomic_write_text(
            output / MANIFEST_META, json.dumps(meta | {"fingerprints": current, CSV_DIGEST: digest}, indent=1)
        )
    return manifest


def group_paths(paths: list[str], groups: list[list[int]]) -> list[list[str]]:
    """Groups of image positions as groups of their paths."""
    return [[paths[i] for i in group] for group in groups]


def leaked_test_paths(output: Path) -> set[str] | None:
    """Test images of a result folder that have a copy in its training split (paths as in manifest.csv).

    Read from manifest.json; for folders made before pieceboard looked for copies, found now from the images (files
    whose size and mtime match the manifest's fingerprints are not re-read, and the check and the groups are cached,
    so only the first call decodes). None when the folder has no manifest or its images are gone.
    """
    try:
        meta = json.loads((output / MANIFEST_META).read_text(encoding="utf-8"))
        if isinstance(meta.get("leaked_test"), list):
            return set(meta["leaked_test"])
        with (output / MANIFEST).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        root = Path(meta["path"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    paths = [r["path"] for r in rows]
    files = [root / p for p in paths]
    if not all(f.is_file() for f in files):
        return None
    known = meta.get("fingerprints") if isinstance(meta.get("fingerprints"), dict) else None
    digests = [entry[2] for entry in file_digests(root, paths, known).values()]
    check = check_images(files, digests, cache_root())
    groups = _duplicate_groups(check, list(range(len(files))), digests, None)
    splits = np.array([r["split"] for r in rows])
    return {paths[i] for i in np.flatnonzero(leaked_test(splits == "test", groups, splits == "train"))}
