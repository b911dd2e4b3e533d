"""Datasets that ship with pieceboard, written out as ordinary class-folder image trees.

``builtin:digits`` is scikit-learn's handwritten digits (1,797 8x8 scans, 10 classes), augmented the way the original
One Piece study augmented its images: every digit is stored plain, rotated by a right angle and colour-inverted, before
any split, so that copies of one scan land on both sides of a random split, as in the study. Because the result is a
plain folder of PNGs, the built-in datasets go through exactly the same loading code as a user's own images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pieceboard._io import is_complete, staged_folder

__all__ = ["BUILTINS", "PREFIX", "cache_root", "is_builtin", "materialize", "resolve"]

PREFIX = "builtin:"
# Bump when a writer's output changes, so that old trees in users' caches are not reused.
_VERSION = "v2"

_DIGITS_SIZE = 32


def _write_digits(root: Path) -> None:
    """Write scikit-learn's digits as ``<root>/<digit>/<NNNN>{,_rot,_inv}.png``, 32x32 greyscale.

    ``NNNN`` is the index in `sklearn.datasets.load_digits`, so every file can be traced back to its source. The
    rotated copy is turned 90 degrees clockwise: one angle for every digit, so that a turned 6 and a turned 9 still
    differ (a 6 turned by 180 degrees would be a 9), and a right angle, which pieceboard's near-duplicate check sees
    through (it does not search other angles; see pieceboard.dedup).

    Args:
        root: An existing, empty directory.
    """
    # Imported here: scikit-learn is slow to import and only needed the first time the tree is built.
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    class_names = [str(name) for name in digits.target_names]
    for name in class_names:
        (root / name).mkdir()
    for index, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        folder = root / class_names[target]
        stem = f"{index:04d}"
        plain = Image.fromarray(image).resize((_DIGITS_SIZE, _DIGITS_SIZE), Image.Resampling.BICUBIC)
        plain.save(folder / f"{stem}.png")
        plain.transpose(Image.Transpose.ROTATE_270).save(folder / f"{stem}_rot.png")  # 270 counter-clockwise
        Image.fromarray(255 - np.asarray(plain)).save(folder / f"{stem}_inv.png")


BUILTINS: dict[str, Callable[[Path], None]] = {"digits": _write_digits}
"""Built-in dataset name -> function that writes its class-folder tree into an existing, empty directory."""


def cache_root() -> Path:
    """Return the directory pieceboard caches data in.

    Returns:
        ``$PIECEBOARD_CACHE`` if set and not empty, else ``~/.cache/pieceboard``.
    """
    configured = os.environ.get("PIECEBOARD_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "pieceboard"


def materialize(name: str, root: Path | None = None) -> Path:
    """Return the folder of a built-in dataset, writing it first if it is not there yet.

    The tree is built in a staged folder (`pieceboard._io.staged_folder`), so an interrupted build never leaves a
    partial dataset behind and concurrent builds are safe.

    Args:
        name: A key of `BUILTINS`, e.g. ``"digits"``.
        root: Cache directory; defaults to `cache_root`.

    Returns:
        ``<root>/builtin/<name>-v2``, a class-folder image tree.

    Raises:
        ValueError: ``name`` is not a built-in dataset.
    """
    if name not in BUILTINS:
        known = ", ".join(sorted(BUILTINS))
        raise ValueError(f"unknown built-in dataset {name!r}; known: {known}")
    target = (cache_root() if root is None else Path(root)) / "builtin" / f"{name}-{_VERSION}"
    if not is_complete(target):
        with staged_folder(target, note=f"pieceboard {PREFIX}{name} {_VERSION}\n") as staging:
            BUILTINS[name](staging)
    return target


def is_builtin(spec: str) -> bool:
    """Tell whether a dataset spec names a built-in dataset.

    Args:
        spec: A dataset spec: ``"builtin:<name>"`` or a path.

    Returns:
        True if ``spec`` starts with ``"builtin:"``.
    """
    return spec.startswith(PREFIX)


def resolve(spec: str) -> Path:
    """Turn a dataset spec into a folder, materialising built-in datasets on first use.

    Args:
        spec: ``"builtin:<name>"`` or a path, which may start with ``~``.

    Returns:
        The dataset's folder. Paths are not checked for existence.

    Raises:
        ValueError: ``spec`` names an unknown built-in dataset.
    """
    if is_builtin(spec):
        return materialize(spec[len(PREFIX) :])
    return Path(spec).expanduser()
