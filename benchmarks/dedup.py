"""Near-duplicate detection at scale: recall, false pairs and time of `pieceboard.dedup.find_duplicates`.

Two data sets: synthetic pictures with planted copies (tests/_planted.py: every picture has two augmented copies, and
every picture a distinct look-alike sibling with one copy of its own), and the built-in digits (every digit plain,
turned 90 degrees clockwise and colour-inverted). Also how far rotations by arbitrary angles, which the check does not
search, are still found.
Writes one JSON record.

    .venv/bin/python benchmarks/dedup.py [--images 12000] [--output results/dedup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _planted import apply, planted_set, random_scene, render, squash  # noqa: E402
from pieceboard import dedup  # noqa: E402
from pieceboard._image import load_rgb  # noqa: E402
from pieceboard.builtin import materialize  # noqa: E402


def main() -> None:
    """Run both evaluations and write the record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000, help="about this many synthetic images")
    parser.add_argument("--size", type=int, default=64, help="side the images are squashed to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("results/dedup.json"))
    parser.add_argument("--no-digits", action="store_true", help="skip the built-in digits")
    args = parser.parse_args()

    record = {"environment": _environment(), "planted": planted(args.images, args.size, args.seed)}
    record["planted_rotations"] = planted_rotations(args.size, args.seed)
    if not args.no_digits:
        record["digits"] = digits(args.size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))


def planted(images: int, size: int, seed: int) -> dict:
    """Synthetic pictures: each with 2 copies, and a sibling with 1 copy (5 images a picture)."""
    started = time.perf_counter()
    pixels, truth = planted_set(max(1, images // 5), copies=2, siblings=1, size=size, seed=seed)
    generated = time.perf_counter() - started
    groups, seconds = _timed_detection(pixels)
    return {"images": len(pixels), "seconds_to_generate": round(generated, 1), **score(groups, truth, seconds)}


def planted_rotations(size: int, seed: int, pictures: int = 100) -> dict[str, float]:
    """Recall of (picture, copy rotated by an arbitrary angle, black fill) pairs, by angle."""
    rng = np.random.default_rng(seed)
    scenes = [render(random_scene(rng)) for _ in range(pictures)]
    recall = {}
    for angle in (1, 2, 5, 10, 30):
        copies = [squash(apply(picture, (f"rotate{angle}",), rng), size) for picture in scenes]
        found = _labels(dedup.find_duplicates(np.stack([squash(p, size) for p in scenes] + copies)), 2 * pictures)
        recall[f"{angle} degrees"] = round(float(np.mean(found[:pictures] == found[pictures:])), 3)
    return recall


def digits(size: int) -> dict:
    """The built-in digits: groups are the files sharing a number (plain, _rot, _inv)."""
    root = materialize("digits")
    paths = sorted(root.glob("*/*.png"))
    pixels = np.stack([load_rgb(path, size) for path in paths])
    numbers = np.array([int(path.stem.split("_")[0]) for path in paths])
    kinds = np.array([path.stem.partition("_")[2] or "plain" for path in paths])
    groups, seconds = _timed_detection(pixels)
    result = {"images": len(pixels), **score(groups, numbers, seconds)}
    result["recall_by_kind"] = _recall_by_kind(groups, numbers, kinds)
    return result


def _timed_detection(pixels: np.ndarray) -> tuple[list[list[int]], dict[str, float]]:
    # Wall-clock and CPU seconds: on a shared machine the two differ, and the CPU time says what the work cost.
    wall, cpu = time.perf_counter(), time.process_time()
    groups = dedup.find_duplicates(pixels)
    return groups, {"wall": round(time.perf_counter() - wall, 2), "cpu": round(time.process_time() - cpu, 2)}


def score(groups: list[list[int]], truth: np.ndarray, seconds: dict[str, float]) -> dict:
    """Pair recall and false pairs of found groups against ground-truth group ids."""
    found = _labels(groups, len(truth))
    planted_pairs = _pairs_within(Counter(truth.tolist()))
    found_pairs = _pairs_within(Counter(found.tolist()))
    true_found = _pairs_within(Counter(zip(truth.tolist(), found.tolist(), strict=True)))
    return {
        "planted_pairs": planted_pairs,
        "recall": round(true_found / max(planted_pairs, 1), 5),
        "false_pairs": found_pairs - true_found,
        "groups": len(groups),
        "seconds": seconds,
    }


def _labels(groups: list[list[int]], n: int) -> np.ndarray:
    # Each image's group, or its own index (offset past every group) when it is in none.
    labels = np.arange(n) + n
    for label, members in enumerate(groups):
        labels[members] = label
    return labels


def _pairs_within(sizes: Counter) -> int:
    return sum(count * (count - 1) // 2 for count in sizes.values())


def _recall_by_kind(groups: list[list[int]], numbers: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    found = _labels(groups, len(numbers))
    where = {(number, kind): index for index, (number, kind) in enumerate(zip(numbers, kinds, strict=True))}
    recall = {}
    for first, second in (("plain", "inv"), ("plain", "rot"), ("rot", "inv")):
        hits = [found[where[number, first]] == found[where[number, second]] for number in np.unique(numbers)]
        recall[f"{first}-{second}"] = round(float(np.mean(hits)), 4)
    return recall


def _environment() -> dict:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


if __name__ == "__main__":
    main()
