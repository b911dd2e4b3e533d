"""Near-duplicate groups: planted copies found under every augmentation, look-alikes and strangers never grouped."""

from __future__ import annotations

import numpy as np
import pytest

from _planted import COMBINATIONS, TRANSFORMS, apply, planted_set, random_scene, render, squash
from pieceboard import dedup
from pieceboard.dedup import find_duplicates

# Smaller than the benchmark's pictures, to keep the tests fast; still at least 128 px, so that halving stays above
# the 64 px the caller squashes to.
SIDE = (128, 256)


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(0)
    return [render(random_scene(rng, SIDE)) for _ in range(6)]


def copies_found(pictures, chain: tuple[str, ...], seed: int = 1) -> list[list[int]]:
    """Groups found among the pictures (indices 0..n-1) and one copy of each through the chain (n..2n-1)."""
    rng = np.random.default_rng(seed)
    originals = [squash(picture) for picture in pictures]
    copies = [squash(apply(picture, chain, rng)) for picture in pictures]
    return find_duplicates(np.stack(originals + copies))


def _group_labels(groups: list[list[int]], n: int) -> np.ndarray:
    """Each image's group number, or a number of its own when it is in no group."""
    labels = np.arange(n) + n
    for label, members in enumerate(groups):
        labels[members] = label
    return labels


def each_with_its_copy(n: int) -> list[list[int]]:
    return [[k, k + n] for k in range(n)]


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_alone(pictures, name):
    assert copies_found(pictures, (name,)) == each_with_its_copy(len(pictures))


@pytest.mark.parametrize("chain", COMBINATIONS, ids="+".join)
def test_combined_transforms(pictures, chain):
    assert copies_found(pictures, chain) == each_with_its_copy(len(pictures))


def test_look_alike_siblings_are_never_grouped():
    # Every picture has two siblings (one or two small shapes moved, resized or recoloured), each with a copy.
    pixels, truth = planted_set(8, copies=1, siblings=2, seed=5, side=SIDE)
    groups = find_duplicates(pixels)
    assert sorted(map(sorted, groups)) == sorted(sorted(np.flatnonzero(truth == g).tolist()) for g in np.unique(truth))


def test_moderate_set_recall_and_no_false_pairs():
    pixels, truth = planted_set(60, copies=2, siblings=1, seed=7, side=SIDE)
    found = _group_labels(find_duplicates(pixels), len(truth))
    same_truth = truth[:, None] == truth[None, :]
    same_found = found[:, None] == found[None, :]
    upper = np.triu(np.ones_like(same_truth), k=1)
    assert len(pixels) == 300
    assert (same_found & same_truth & upper).sum() / (same_truth & upper).sum() >= 0.99
    assert (same_found & ~same_truth & upper).sum() == 0


def test_equal_digests_are_grouped_whatever_the_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    digests = [b"a", b"b", b"a", b"c", b"b"]
    assert find_duplicates(pixels, digests) == [[0, 2], [1, 4]]


def test_groups_are_a_sorted_partition():
    pixels, _ = planted_set(10, copies=3, siblings=1, seed=2, side=SIDE)
    digests = [bytes([k % 7]) for k in range(len(pixels))]  # links groups together
    groups = find_duplicates(pixels, digests)
    members = [index for group in groups for index in group]
    assert len(members) == len(set(members))
    assert all(len(group) >= 2 and group == sorted(group) for group in groups)
    assert [group[0] for group in groups] == sorted(group[0] for group in groups)


def test_exact_copies_in_any_orientation_are_grouped():
    pixels, _ = planted_set(3, copies=0, siblings=0, seed=3, side=SIDE)
    grey = pixels.astype(np.float64).mean(axis=3)
    turned = [np.repeat(dedup._orient_pixels(grey, k)[..., None], 3, axis=3) for k in range(16)]
    stack = np.concatenate([np.repeat(grey[..., None], 3, axis=3)] + turned).astype(np.uint8)
    assert find_duplicates(stack) == [list(range(k, len(stack), 3)) for k in range(3)]


def test_orientations_of_dct_coefficients_match_the_oriented_images():
    grey = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32) * 255
    coefficients = dedup._crop_coefficients(grey, ((0.0, 1.0),), 8)[:, 0, 0]
    for orientation in range(16):
        turned = dedup._orient_pixels(grey, orientation)
        expected = dedup._crop_coefficients(turned, ((0.0, 1.0),), 8)[:, 0, 0]
        derived = dedup._orient_coefficients(coefficients, orientation)
        np.testing.assert_allclose(derived.ravel()[1:], expected.ravel()[1:], atol=1e-2)


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_images(count):
    pixels = np.zeros((count, 64, 64, 3), np.uint8)
    assert find_duplicates(pixels) == []
    assert find_duplicates(pixels, [b"x"] * count) == []


def test_other_sizes(pictures):
    rng = np.random.default_rng(3)
    for size in (32, 48, 100):
        originals = [squash(picture, size) for picture in pictures]
        copies = [squash(apply(picture, ("rot90", "invert", "jpeg50"), rng), size) for picture in pictures]
        assert find_duplicates(np.stack(originals + copies)) == each_with_its_copy(len(pictures))


@pytest.mark.parametrize(
    ("pixels", "digests", "message"),
    [
        (np.zeros((2, 64, 64), np.uint8), None, "shape"),
        (np.zeros((2, 64, 48, 3), np.uint8), None, "shape"),
        (np.zeros((2, 64, 64, 3), np.float32), None, "uint8"),
        (np.zeros((2, 16, 16, 3), np.uint8), None, "at least 32"),
        (np.zeros((2, 64, 64, 3), np.uint8), [b"x"], "digests"),
    ],
)
def test_rejects_malformed_input(pixels, digests, message):
    with pytest.raises(ValueError, match=message):
        find_duplicates(pixels, digests)


# Real photographs (scikit-image's bundled ones, tests/_photos.py): every tile gets a copy per family and two
# look-alikes (an object pasted over its centre, and the same object elsewhere); its neighbouring tiles are distinct
# pictures of one scene.
PHOTO_FAMILIES = (
    "brightness", "contrast", "saturation", "hue", "gamma", "jitter", "blur", "noise", "sharpen",
    "flip_h+brightness", "rot90+jitter", "crop+blur", "invert+contrast", "jpeg+noise",
)  # fmt: skip


@pytest.fixture(scope="module")
def photos():
    from _photos import photo_sources

    built = photo_sources(PHOTO_FAMILIES, tiles=40, seed=3)
    return built, find_duplicates(built.pixels)


@pytest.mark.parametrize("family", PHOTO_FAMILIES)
def test_colour_changes_and_filters_on_real_photographs_are_found(photos, family):
    built, groups = photos
    labels = _group_labels(groups, len(built.truth))
    original = {built.tile[i]: i for i in np.flatnonzero(built.kind == "original")}
    copies = np.flatnonzero(built.kind == family)
    found = [labels[i] == labels[original[built.tile[i]]] for i in copies]
    # A strong colour jitter is the one family here found less often (0.85 over every tile, docs/data.md).
    floor = 0.8 if "jitter" in family else 0.9
    assert len(copies) == 40 and np.mean(found) >= floor, f"{family}: {np.mean(found):.3f}"


def test_real_look_alikes_and_neighbouring_tiles_are_never_grouped(photos):
    built, groups = photos
    labels = _group_labels(groups, len(built.truth))
    for group in groups:
        assert len(set(built.truth[group].tolist())) == 1, [(str(built.kind[i]), int(built.tile[i])) for i in group]
    # Tiles of one photograph sit side by side in the set: the test would not mean much without them.
    assert len(set(built.photo[built.kind == "original"].tolist())) < 40
    assert (built.kind == "lookalike").sum() == 80 and len(np.unique(labels[built.kind == "lookalike"])) == 80
