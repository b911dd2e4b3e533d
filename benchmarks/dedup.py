"""Near-duplicate detection at scale: recall, false pairs and time of `pieceboard.dedup.find_duplicates`.

Two data sets: synthetic pictures with planted copies (tests/_planted.py: every picture has two augmented copies, and
every picture a distinct look-alike sibling with one copy of its own), and the built-in digits (every digit plain,
turned 90 degrees clockwise and colour-inverted). Also how far rotations by arbitrary angles, which the check does not
search, are still found.

With ``--photos`` it measures real photographs instead (tests/_photos.py: tiles of scikit-image's bundled photographs,
one copy of each tile per augmentation family, two look-alikes per tile, neighbouring tiles as further look-alikes),
and the synthetic sets and digits are skipped. In the same run, the baselines a user would reach for: imagehash's
phash and dhash at imagededup's default threshold (Hamming distance <= 10 of 64 bits), and imagededup's own PHash
where it is installed (``pip install imagededup``: one small wheel that leaves torch as it is; not a project
dependency, being only a baseline). Per family: pair recall (each copy with its original); overall: false pairs (found
pairs of distinct pictures), split into look-alike (a tile and its own look-alikes), neighbour tile (two tiles of one
photograph) and other, and how many pairs of distinct pictures' groups were joined. Needs the ``bench`` extra
(scikit-image, imagehash).
Writes one JSON record.

    .venv/bin/python benchmarks/dedup.py [--images 12000] [--output results/dedup.json]
    .venv/bin/python benchmarks/dedup.py --photos [--tiles 60] [--families rotate,jitter]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import os
import platform
import sys
import time
import warnings
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
    parser.add_argument("--photos", action="store_true", help="real photographs and the hash baselines instead")
    parser.add_argument("--tiles", type=int, default=None, help="with --photos: at most this many tiles (all)")
    parser.add_argument("--families", default=None, help="with --photos: comma-separated families (all)")
    args = parser.parse_args()

    record = {"environment": _environment()}
    if args.photos:
        families = args.families.split(",") if args.families else None
        record["photos"] = photos(args.tiles, families, args.size, args.seed)
        print(photo_table(record["photos"]))
    else:
        record["planted"] = planted(args.images, args.size, args.seed)
        record["planted_rotations"] = planted_rotations(args.size, args.seed)
        if not args.no_digits:
            record["digits"] = digits(args.size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if not args.photos:  # the photo run printed its table; its record is in the file
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


HASH_DISTANCE = 10
"""imagededup's default ``max_distance_threshold``: two 64-bit hashes this close or closer make a found pair."""


def photos(tiles: int | None, families: list[str] | None, size: int, seed: int) -> dict:
    """Real photographs: pair recall per family and false pairs by kind, pieceboard beside the hash baselines."""
    # Imported here: tests/_photos.py loads torchvision, and the photos need the bench extra, which the synthetic
    # modes do not.
    from _photos import PHOTOS, photo_sources

    started = time.perf_counter()
    built = photo_sources(families, tiles, size, seed)
    generated = time.perf_counter() - started
    groups, seconds = _timed_detection(built.pixels)
    found = {"pieceboard": (_group_pairs(groups), seconds)}
    found.update(_hash_baselines(built.pixels))
    return {
        "photos": sorted({PHOTOS[i] for i in built.photo.tolist()}),
        "tiles": len(set(built.tile.tolist())),
        "images": len(built.pixels),
        "seconds_to_generate": round(generated, 1),
        "hash_distance": HASH_DISTANCE,
        "methods": {name: _photo_score(pairs, built) | {"seconds": took} for name, (pairs, took) in found.items()},
    }


def _hash_baselines(pixels: np.ndarray) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
    # Hashed from the squashed pixels, not from the tiles before squashing: that is all pieceboard sees, so both
    # sides work from the same input (the hashes shrink to 32 x 32 or 9 x 8 anyway).
    import imagehash
    from PIL import Image

    results = {}
    for name, function in (("phash", imagehash.phash), ("dhash", imagehash.dhash)):
        wall, cpu = time.perf_counter(), time.process_time()
        bits = np.stack([function(Image.fromarray(image)).hash.ravel() for image in pixels])
        pairs = _hamming_pairs(np.packbits(bits, axis=1).view(np.uint64).ravel(), HASH_DISTANCE)
        results[name] = (pairs, _seconds(wall, cpu))
    if importlib.util.find_spec("imagededup"):  # optional: not a project dependency
        results["imagededup"] = _imagededup_pairs(pixels)
    return results


def _imagededup_pairs(pixels: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    # imagededup's own PHash and search, at its defaults but for one search worker (the machine is shared).
    from imagededup.methods import PHash

    # Its modules log every search at INFO to stderr, and it warns that the encoding workers are unused.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("imagededup"):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Parameter num_enc_workers has no effect")
    wall, cpu = time.perf_counter(), time.process_time()
    hasher = PHash(verbose=False)
    encodings = {str(i): hasher.encode_image(image_array=image) for i, image in enumerate(pixels)}
    duplicates = hasher.find_duplicates(
        encoding_map=encodings, max_distance_threshold=HASH_DISTANCE, num_dist_workers=1
    )
    pairs = [(int(key), int(other)) for key, others in duplicates.items() for other in others if int(key) < int(other)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), _seconds(wall, cpu)


def _hamming_pairs(hashes: np.ndarray, limit: int, chunk: int = 1024) -> np.ndarray:
    # Every pair (i < j) of 64-bit hashes within ``limit`` differing bits, as imagededup finds them: pairs, not
    # groups (no transitive closure).
    pairs = []
    for start in range(0, len(hashes), chunk):
        distance = np.bitwise_count(hashes[start : start + chunk, None] ^ hashes[None, :])
        rows, columns = np.nonzero(distance <= limit)
        rows += start
        keep = rows < columns
        pairs.append(np.stack([rows[keep], columns[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def _group_pairs(groups: list[list[int]]) -> np.ndarray:
    # Every pair (i < j) inside one found group: pieceboard's groups are connected components.
    pairs = [np.array(list(itertools.combinations(sorted(members), 2))) for members in groups if len(members) > 1]
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def _photo_score(pairs: np.ndarray, built) -> dict:
    """Pair recall per copy family and false pairs by kind, for one method's found pairs (i < j)."""
    n = len(built.truth)
    found = set((pairs[:, 0] * n + pairs[:, 1]).tolist())
    originals = {int(built.truth[i]): i for i in np.nonzero(built.kind == "original")[0]}
    hits: dict[str, list[bool]] = {}
    for copy in np.nonzero((built.kind != "original") & (built.kind != "lookalike"))[0]:
        first, second = sorted((originals[int(built.truth[copy])], int(copy)))
        hits.setdefault(str(built.kind[copy]), []).append(first * n + second in found)
    false = pairs[built.truth[pairs[:, 0]] != built.truth[pairs[:, 1]]]
    same_tile = built.tile[false[:, 0]] == built.tile[false[:, 1]]
    same_photo = built.photo[false[:, 0]] == built.photo[false[:, 1]]
    return {
        "recall": {family: round(float(np.mean(values)), 3) for family, values in hits.items()},
        "recall_all_copies": round(float(np.mean([hit for values in hits.values() for hit in values])), 3),
        "found_pairs": len(pairs),
        "false_pairs": {
            "all": len(false),
            "look-alike": int(same_tile.sum()),
            "neighbour tile": int((same_photo & ~same_tile).sum()),
            "other": int((~same_photo).sum()),
        },
        # Distinct pairs of true groups found together: pieceboard's groups are closed under linking, so one wrong
        # link between two tiles' families (an original and 30-odd copies each) counts as a thousand false pairs.
        "joined_groups": len({(int(a), int(b)) for a, b in np.sort(built.truth[false], axis=1)}),
    }


def photo_table(result: dict) -> str:
    """The photo record as a compact text table: a row per family and per kind of false pair, a column per method."""
    methods = list(result["methods"])
    families = list(result["methods"][methods[0]]["recall"])
    rows = [
        [family] + [f"{result['methods'][m]['recall'][family]:.3f}" for m in methods] for family in sorted(families)
    ]
    rows.append(["all copies"] + [f"{result['methods'][m]['recall_all_copies']:.3f}" for m in methods])
    for kind in ("all", "look-alike", "neighbour tile", "other"):
        label = "false pairs" if kind == "all" else f"  {kind}"
        rows.append([label] + [str(result["methods"][m]["false_pairs"][kind]) for m in methods])
    rows.append(["joined groups"] + [str(result["methods"][m]["joined_groups"]) for m in methods])
    rows.append(["wall s"] + [str(result["methods"][m]["seconds"]["wall"]) for m in methods])
    rows.append(["cpu s"] + [str(result["methods"][m]["seconds"]["cpu"]) for m in methods])
    head = f"{result['images']} images: {result['tiles']} tiles of {len(result['photos'])} photographs"
    widths = [max(len(row[k]) for row in rows + [["family"] + methods]) for k in range(len(methods) + 1)]
    lines = [head, "  ".join(text.ljust(width) for text, width in zip(["family"] + methods, widths, strict=True))]
    lines += ["  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _seconds(wall: float, cpu: float) -> dict[str, float]:
    return {"wall": round(time.perf_counter() - wall, 2), "cpu": round(time.process_time() - cpu, 2)}


def _timed_detection(pixels: np.ndarray) -> tuple[list[list[int]], dict[str, float]]:
    # Wall-clock and CPU seconds: on a shared machine the two differ, and the CPU time says what the work cost.
    wall, cpu = time.perf_counter(), time.process_time()
    groups = dedup.find_duplicates(pixels)
    return groups, _seconds(wall, cpu)


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
