"""`pieceboard check-data`: a dataset preflight, before any GPU hour is spent.

    pieceboard check-data data/onepiece             # a folder of class folders (default split settings)
    pieceboard check-data benchmarks/all.toml --json check.json

Counts and imbalance, every bad file with its reason and what pieceboard does with it, the files that are not
images, the image-size distribution, image sizes too small for a backbone's stride, and the near-duplicate groups
(one picture and its copies, see `pieceboard.dedup`), with the groups that straddle the split, the test images they
leak, and what the check cannot see (`pieceboard.dedup.NOT_FOUND`). The JSON holds the same, for scripts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from pieceboard.cache import cache_root
from pieceboard.config import load_config, load_data_table
from pieceboard.data import (
    Inspection,
    cross_split,
    group_paths,
    inspect_folder,
    leaked_test,
    resolve_root,
    scan_folder,
    split_images,
)
from pieceboard.dedup import NOT_FOUND

SMALL_MAP = 2  # a last feature map of this side or less keeps almost no spatial layout (50 px through resnet18: 2x2)
LISTED = 10  # groups, files and warnings shown in the table; the JSON has them all


def check_data(target: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Inspect a folder, or the data of a benchmark file, and report what a benchmark would meet.

    Args:
        target: A folder of class folders, `builtin:<name>`, or a benchmark TOML file.
        overrides: `--set` overrides: any key of a benchmark file; `data.*` keys only with a folder.

    Returns:
        The report (see docs/data.md for every key).

    Raises:
        PieceboardError: The folder cannot be used at all (no images, one class, a class without two usable images).
    """
    if target.endswith(".toml"):
        config = load_config(target, overrides)
        data, cells = config.data, config.cells
    else:
        data, cells = load_data_table(target, overrides), []
    root = resolve_root(data)
    found = inspect_folder(scan_folder(root), cache_root(data))
    is_test = split_images(found, data)
    random_split = data.model_copy(update={"split": "random"})
    random_leaks = int(leaked_test(split_images(found, random_split), found.groups).sum())
    paths = found.paths
    counts = np.bincount(found.labels, minlength=len(found.class_names))
    return {
        "folder": str(root),
        "images": len(paths),
        "classes": {name: int(n) for name, n in zip(found.class_names, counts, strict=True)},
        "imbalance": float(counts.max() / counts.min()),
        "bad_files": [s | {"action": "skipped"} for s in found.skipped],
        "ignored": len(found.scan.ignored),
        "ignored_files": found.scan.ignored,
        "image_sizes": _sizes(found),
        "stride_warnings": _stride_warnings(cells),
        "duplicate_groups": group_paths(paths, found.groups),
        "exact_duplicate_groups": _exact_groups(found),
        "mixed_label_groups": group_paths(paths, [g for g in found.groups if len(set(found.labels[g])) > 1]),
        "split": {"kind": data.split, "test_fraction": data.test_fraction, "seed": data.split_seed},
        "test_images": int(is_test.sum()),
        "cross_split_groups": group_paths(paths, cross_split(is_test, found.groups)),
        "leaked_test_images": int(leaked_test(is_test, found.groups).sum()),
        "random_split_leaked_test_images": random_leaks,
        "not_found_by_check": NOT_FOUND,
    }


def _sizes(found: Inspection) -> dict[str, Any]:
    sizes = found.check.sizes[found.keep]
    side = sizes.min(axis=1)
    return {
        "width": _spread(sizes[:, 0]),
        "height": _spread(sizes[:, 1]),
        "shorter_side_under": {str(s): int((side < s).sum()) for s in (32, 64, 128, 224)},
    }


def _spread(values: np.ndarray) -> dict[str, int]:
    return {"min": int(values.min()), "median": int(np.median(values)), "max": int(values.max())}


def _stride_warnings(cells: list) -> list[str]:
    from pieceboard.models import probe

    warnings = []
    for model, size in sorted({(c.model, c.settings.image_size) for c in cells}):
        side = probe(model, size).feature_map
        if side is not None and side <= SMALL_MAP:
            warnings.append(
                f"{model} at {size} px ends on a {side}x{side} feature map: little spatial detail is left for the "
                f"classifier (the original study's 50 px runs); a larger image_size usually scores higher"
            )
    return warnings


def _exact_groups(found: Inspection) -> int:
    digests = [found.fingerprints[p][2] for p in found.paths]
    _, counts = np.unique(digests, return_counts=True)
    return int((counts > 1).sum())


def usable(report: dict[str, Any]) -> bool:
    """Whether a benchmark can train on the folder as it is (bad files are skipped, so they do not stop it)."""
    return report["images"] > 0 and len(report["classes"]) >= 2 and min(report["classes"].values()) >= 2


def render(report: dict[str, Any]) -> Group:
    """The report for the terminal."""
    classes = Table(title=f"{report['images']} images in {len(report['classes'])} classes — {report['folder']}")
    classes.add_column("class")
    classes.add_column("images", justify="right")
    classes.add_column("share", justify="right")
    for name, n in report["classes"].items():
        classes.add_row(escape(name), str(n), f"{n / report['images']:.1%}")
    lines = [f"imbalance (largest / smallest class): {report['imbalance']:.2f}"]
    lines += _file_lines(report) + _size_lines(report) + _duplicate_lines(report)
    lines += [f"[yellow]warning[/yellow]: {escape(w)}" for w in report["stride_warnings"]]
    return Group(classes, *lines)


def _file_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"bad files: {len(report['bad_files'])} (skipped: they are left out of every split)"]
    lines += [f"  {escape(b['path'])}: {escape(b['reason'])}" for b in report["bad_files"][:LISTED]]
    ignored = report["ignored_files"]
    example = f" (e.g. {escape(ignored[0])})" if ignored else ""
    return [*lines, f"ignored: {report['ignored']} files that are not images{example}"]


def _size_lines(report: dict[str, Any]) -> list[str]:
    w, h, under = report["image_sizes"]["width"], report["image_sizes"]["height"], report["image_sizes"]
    small = ", ".join(f"{n} under {s} px" for s, n in under["shorter_side_under"].items() if n)
    return [
        f"image sizes: width {w['min']}-{w['max']} (median {w['median']}), height {h['min']}-{h['max']} "
        f"(median {h['median']}); shorter side: {small or 'every image 224 px or more'}"
    ]


def _duplicate_lines(report: dict[str, Any]) -> list[str]:
    groups = report["duplicate_groups"]
    copies = sum(len(g) for g in groups)
    split = report["split"]
    lines = [
        f"near-duplicates: {len(groups)} groups of one picture and its copies ({copies} images, "
        f"{report['exact_duplicate_groups']} groups of identical files)"
    ]
    if report["mixed_label_groups"]:
        lines.append(
            f"[yellow]warning[/yellow]: {len(report['mixed_label_groups'])} groups have copies in different classes "
            f"(e.g. {escape(', '.join(report['mixed_label_groups'][0][:2]))}): the same picture with two labels"
        )
    straddling = report["cross_split_groups"]
    if straddling:
        lines.append(
            f"[bold red]leak[/bold red]: with the {split['kind']} split, {len(straddling)} groups straddle the split "
            f"and {report['leaked_test_images']} of {report['test_images']} test images have a copy in train "
            f'(e.g. {escape(", ".join(straddling[0][:2]))}); \\[data] split = "grouped" keeps each group on one side'
        )
    elif groups:
        lines.append(
            f"the {split['kind']} split keeps every group on one side (a random split would leak "
            f"{report['random_split_leaked_test_images']} test images)"
        )
    lines.append(f"[dim]not found by this check: {report['not_found_by_check']}[/dim]")
    return lines
