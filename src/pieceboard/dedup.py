"""Near-duplicate groups from pixels: which images are copies of one another, whatever augmentation made them.

Pure computation, no file I/O. A copy may be rotated by a multiple of 90 degrees, mirrored, colour-inverted,
rescaled, cropped by up to about 10 % on each side, turned grey or re-encoded as JPEG, in any combination::

    from pieceboard.dedup import find_duplicates

    groups = find_duplicates(pixels)             # pixels: uint8 (N, S, S, 3), every image squashed to S x S
    groups = find_duplicates(pixels, digests)    # images with equal file digests are always grouped
    # [[0, 7], [3, 12, 40], ...]: sorted indices, each image in at most one group

Three stages, each cheaper per pair than the next and run on fewer pairs:

1. Candidates. Every image gets a 63-bit perceptual hash (signs of the 8x8 lowest DCT frequencies of a 32x32 grey
   thumbnail) in a canonical orientation: of the 16 rotations, mirrorings and inversions, the one that maximises a
   fixed linear score, so that a copy and its original pick the same one. Each image is also hashed as a query in a
   few crops (a crop is what moves the hash most) and in every orientation whose score is close to the best, since
   a near-tie may fall either way on the copy. All queries are compared with all canonical hashes by XOR and
   popcount in chunks.
2. Alignment. A candidate pair is compared on a 255-bit hash (16x16 frequencies) over a finer grid of crops of the
   query, with the other image turned into the query's orientation; the best crop aligns the two to within 2.5 % of
   the side.
3. Verification. The aligned 32x32 thumbnails are blurred and subtracted; a pair is a copy only if no window of the
   difference is large. A crop or a JPEG leaves a thin, faint difference along edges; a moved, resized or
   recoloured shape leaves a solid one.

Groups are the connected components of the verified pairs and the equal digests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["find_duplicates"]

THUMB = 32
"""Side of the grey thumbnails that hashes and the verification work on."""

CANDIDATE_DISTANCE = 13
"""Most differing bits (of 63) between a query hash and a canonical hash for a candidate pair.

Measured: the largest distance of a planted copy was ... ; distinct pictures ... (see benchmarks/dedup.py).
"""

ALIGNED_DISTANCE = 64
"""Most differing bits (of 255) between the best-aligned fine crop and the other image for a pair to be verified.

Measured: ...
"""

WINDOW = 3
"""Side, in thumbnail pixels, of the windows the verification averages the difference over (a small shape's size)."""

WINDOW_DIFFERENCE = 4.6
"""Largest mean edge-discounted grey difference (0-255) in any window for a verified copy.

Measured: ...
"""

EDGE_GRADIENT = 20.0
"""Grey levels per thumbnail pixel at which a difference on an edge both images share counts half.

Measured: ...
"""

TIE_MARGIN = 0.02
"""Orientation scores within this (of a unit-norm coefficient vector) of the best are all hashed as queries.

Measured: ...
"""

# Crops as (start, stop) fractions of one axis: the query crops of stage 1 cover every crop of up to 10 % a side to
# within 5 % of the side; the fine crops of stage 2 to within 2.5 %.
_QUERY_AXIS_CROPS = ((0.0, 1.0), (0.1, 0.9), (0.1, 1.0), (0.0, 0.9))
_FINE_AXIS_CROPS = tuple((start, 1.0 - end) for start in (0.0, 0.05, 0.1) for end in (0.0, 0.05, 0.1))

_HASH_BLOCK = 8
_RICH_BLOCK = 16
_ANTIALIAS_SIGMA = 0.25  # in thumbnail pixels, before sampling
_REGISTER_STEPS = 5
_MIN_OVERLAP = 0.6  # of the template's pixels inside the source after registration
_SCALE_RANGE = (0.6, 1.5)  # of the source's side per template side: crops of 20 % give 0.8, rotations stretch 1.2
_DAMPING = 1e-3
_CHUNK = 32  # query hashes compared at a time: the XOR, count and hit buffers stay small
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, the weights of PIL's convert("L")


def find_duplicates(pixels: np.ndarray, digests: Sequence[bytes] | None = None) -> list[list[int]]:
    """Group images that are copies of one another.

    Args:
        pixels: uint8 RGB images of shape (N, S, S, 3), each squashed to S x S (S >= 32).
        digests: Optional per-image digests of the file contents; equal digests are grouped without looking.

    Returns:
        The groups of two or more images, each a sorted list of indices, ordered by their first index. An image is
        in at most one group: groups are connected components of the "is a copy of" relation.

    Raises:
        ValueError: ``pixels`` has the wrong shape or type, or ``digests`` the wrong length.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[1] != pixels.shape[2] or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 of shape (N, S, S, 3), got {pixels.dtype} {pixels.shape}")
    if pixels.shape[1] < THUMB and len(pixels):
        raise ValueError(f"images must be at least {THUMB} pixels wide, got {pixels.shape[1]}")
    if digests is not None and len(digests) != len(pixels):
        raise ValueError(f"got {len(digests)} digests for {len(pixels)} images")
    pairs = [_equal_digest_pairs(digests)] if digests is not None else []
    if len(pixels) > 1:
        grey = pixels.astype(np.float32) @ _LUMA
        candidates = _candidate_pairs(grey)
        aligned = _align_pairs(grey, candidates)
        pairs.append(aligned[_verify_pairs(grey, aligned)][:, :2])
    return _components(len(pixels), np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64))


def _candidate_pairs(grey: np.ndarray) -> np.ndarray:
    """Stage 1: pairs whose query hash and canonical hash differ in at most `CANDIDATE_DISTANCE` bits.

    Args:
        grey: Float grey images, shape (N, S, S), values 0-255.

    Returns:
        Unique rows (i, j, orientation), each pair in both directions: the orientation (see `_orient_pixels`) turns
        image j into the frame of image i.
    """
    parts = [_hashes(grey[chunk], chunk[0]) for chunk in _chunks(np.arange(len(grey)), 512)]
    stored, canonical, image, orientation, queries = (np.concatenate(column) for column in zip(*parts))
    rows, columns = _hamming_matches(queries, stored, CANDIDATE_DISTANCE)
    i, j = image[rows], columns
    keep = i != j
    # query_orientation(crop(i)) ~ canonical(j), so crop(i) ~ canonical(j) undone by query_orientation.
    turn = _COMPOSE[canonical[j[keep]], _INVERSE[orientation[rows[keep]]]]
    # Both directions: the query that matched may be the cropped copy, and stage 2 crops only the first image.
    forward = np.stack([i[keep], j[keep], turn], axis=1)
    backward = np.stack([j[keep], i[keep], _INVERSE[turn]], axis=1)
    return np.unique(np.concatenate([forward, backward]), axis=0)


def _align_pairs(grey: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Stage 2: the fine crop of image i that best matches image j, for candidates that match closely enough.

    Args:
        grey: Float grey images, shape (N, S, S).
        candidates: Rows (i, j, orientation) from `_candidate_pairs`.

    Returns:
        Rows (i, j, orientation, fine crop) with at most `ALIGNED_DISTANCE` differing bits, one per unordered pair
        (the better-matching direction); the fine crop indexes `_FINE_AXIS_CROPS` as ``rows * 9 + columns``.
    """
    if not len(candidates):
        return np.empty((0, 4), np.int64)
    queries, query_index = np.unique(candidates[:, 0], return_inverse=True)
    fine = np.concatenate([_fine_hashes(grey[chunk]) for chunk in _chunks(queries, 256)])  # (Q, 81, words)
    whole = _crop_coefficients(grey, ((0.0, 1.0),), _RICH_BLOCK)[:, 0, 0]
    best = np.empty(len(candidates), np.int64)
    distance = np.empty(len(candidates), np.int64)
    for part in _chunks(np.arange(len(candidates)), 4096):
        i, j, turn = candidates[part, 0], candidates[part, 1], candidates[part, 2]
        other = _pack(_orient_coefficients(whole[j], turn).reshape(len(part), -1)[:, 1:] > 0)
        distances = np.bitwise_count(fine[query_index[part]] ^ other[:, None, :]).sum(axis=2, dtype=np.int64)
        best[part] = distances.argmin(axis=1)
        distance[part] = distances.min(axis=1)
    close = distance <= ALIGNED_DISTANCE
    aligned = np.column_stack([candidates[close], best[close]])
    # One direction per unordered pair: the one whose fine crop matched best.
    order = np.argsort(distance[close], kind="stable")
    _, first = np.unique(np.sort(aligned[order, :2], axis=1), axis=0, return_index=True)
    return aligned[order[np.sort(first)]]


def _verify_pairs(grey: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    """Stage 3: which aligned pairs, registered exactly, differ nowhere by more than `WINDOW_DIFFERENCE`.

    Args:
        grey: Float grey images, shape (N, S, S).
        aligned: Rows (i, j, orientation, fine crop) from `_align_pairs`.

    Returns:
        A boolean per row: True for a copy.
    """
    difference, plausible = _registered_difference(grey, aligned)
    return plausible & (difference <= WINDOW_DIFFERENCE)


def _registered_difference(grey: np.ndarray, aligned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Register image i of each aligned pair onto image j and measure what is left of their difference.

    Args:
        grey: Float grey images, shape (N, S, S).
        aligned: Rows (i, j, orientation, fine crop) from `_align_pairs`.

    Returns:
        Per row, the largest mean over any `WINDOW` x `WINDOW` window of the edge-discounted difference (see
        `_edge_discounted`), and whether the registration is one a copy could have (see `_plausible`). Pairs that
        already pass at the fine crop are not registered further.
    """
    difference = np.zeros(len(aligned))
    plausible = np.zeros(len(aligned), bool)
    size = grey.shape[1]
    # Blurred a little, the bilinear samples alias less. The template is the other image blurred and shrunk to the
    # thumbnail (the identity warp's samples, as one matrix per side). Stage 3 works in float64: numpy's batched
    # small matrix products are several times faster in it than in float32 here.
    shrink = _bilinear_matrix(size) @ _blur_matrix(size, _ANTIALIAS_SIGMA * size / THUMB)
    for part in _chunks(np.arange(len(aligned)), 512):
        i, j, turn, crop = aligned[part].T
        source = _soften(grey[i].astype(np.float64), _ANTIALIAS_SIGMA * size / THUMB)
        template = _orient_pixels(shrink @ grey[j].astype(np.float64) @ shrink.T, turn)
        warp = _crop_warp(crop, size)
        difference[part], plausible[part] = _compare(source, template, warp)
        redo = np.flatnonzero(difference[part] > WINDOW_DIFFERENCE)
        warp = _register(source[redo], template[redo], warp[redo])
        difference[part[redo]], plausible[part[redo]] = _compare(source[redo], template[redo], warp)
    return difference, plausible


def _compare(source: np.ndarray, template: np.ndarray, warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sampled, valid = _sample(source, warp)
    discounted = np.where(valid, _edge_discounted(sampled, template), 0.0)
    return _largest_window_mean(discounted, valid, WINDOW), _plausible(warp, valid, source.shape[1])


def _edge_discounted(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    # Resampling a copy shifts every edge by a fraction of a pixel, which leaves a thin line of difference wherever
    # both images have an edge. A changed shape differs where at least one of them is flat (inside the shape, or
    # where it was). So the difference is divided down where both images are steep.
    steep = np.minimum(_gradient_magnitude(first), _gradient_magnitude(second))
    return np.abs(first - second) / (1.0 + steep / EDGE_GRADIENT)


def _gradient_magnitude(images: np.ndarray) -> np.ndarray:
    rows, columns = np.gradient(images, axis=(1, 2))
    return np.hypot(rows, columns)


def _plausible(warp: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    # Registration may wander off to a degenerate fit, e.g. zoomed into a flat corner where little of the template
    # lands inside the source. A copy overlaps most of the other image at a scale a crop or a rotation can give.
    scales = np.linalg.svd(warp[:, :, :2], compute_uv=False) / size
    inside = valid.mean(axis=(1, 2)) >= _MIN_OVERLAP
    return inside & (scales.min(axis=1) >= _SCALE_RANGE[0]) & (scales.max(axis=1) <= _SCALE_RANGE[1])


def _crop_warp(crop: np.ndarray, size: int) -> np.ndarray:
    # (P, 2, 3) affine maps from template coordinates (row, column, 1), each in -0.5..0.5 over the thumbnail, to
    # source pixel coordinates, for the fine crops (index rows * 9 + columns of `_FINE_AXIS_CROPS`).
    bounds = np.asarray(_FINE_AXIS_CROPS) * size
    rows, columns = bounds[crop // 9], bounds[crop % 9]
    warp = np.zeros((len(crop), 2, 3))
    for axis, (start, stop) in enumerate((rows.T, columns.T)):
        warp[:, axis, axis] = stop - start
        warp[:, axis, 2] = (start + stop) / 2 - 0.5
    return warp


def _register(source: np.ndarray, template: np.ndarray, warp: np.ndarray) -> np.ndarray:
    # Gauss-Newton on the six affine parameters, minimising the squared difference over pixels that land inside the
    # source. The sampled image's gradient, taken on the template grid, is mapped back through the warp.
    # Smoothed, the error surface is wide enough to converge from the fine crop's 2.5 % misalignment.
    template = _SMOOTH @ template @ _SMOOTH.T
    count, pixels = len(warp), THUMB**2
    for _ in range(_REGISTER_STEPS):
        sampled, valid = _sample(source, warp)
        sampled = _SMOOTH @ sampled @ _SMOOTH.T
        residual = np.where(valid, sampled - template, 0.0).reshape(count, pixels)
        d_row, d_column = np.gradient(sampled, axis=(1, 2))
        # d/d(template coordinate) = THUMB * d/d(template pixel); mapped to source coordinates by the inverse warp.
        local = np.stack([d_row, d_column], axis=-1).reshape(count, pixels, 2) * (THUMB * valid.reshape(count, pixels, 1))
        gradient = local @ np.linalg.inv(warp[:, :, :2])
        # The Jacobian is gradient (x) grid, so its normal equations are sums over pixels of products of the two.
        rr, rc, cc = gradient[..., 0] ** 2, gradient[..., 0] * gradient[..., 1], gradient[..., 1] ** 2
        blocks = (np.stack([rr, rc, rc, cc], axis=1) @ _GRID_OUTER).reshape(count, 2, 2, 3, 3)
        hessian = blocks.transpose(0, 1, 3, 2, 4).reshape(count, 6, 6)
        slope = ((gradient * residual[..., None]).transpose(0, 2, 1) @ _GRID).reshape(count, 6)
        # Levenberg damping; the constant keeps a flat, featureless pair solvable (it then simply stays put).
        hessian += np.eye(6) * (_DAMPING * np.trace(hessian, axis1=1, axis2=2)[:, None, None] + 1e-6)
        warp = warp - np.linalg.solve(hessian, slope[..., None]).reshape(count, 2, 3)
    return warp


def _sample(source: np.ndarray, warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Bilinear samples of each source at its warped template grid, and whether each sample lies inside the source.
    count, size = len(source), source.shape[1]
    points = _GRID @ warp.transpose(0, 2, 1)  # (P, pixels, 2) source (row, column)
    valid = ((points >= 0) & (points <= size - 1)).all(axis=2)
    points = np.clip(points, 0, size - 1.001)
    corner = np.floor(points)
    row, column = points[..., 0] - corner[..., 0], points[..., 1] - corner[..., 1]
    index = (corner[..., 0] * size + corner[..., 1]).astype(np.int64) + (np.arange(count) * size * size)[:, None]
    flat = source.reshape(-1)
    top = flat[index] + column * (flat[index + 1] - flat[index])
    bottom = flat[index + size] + column * (flat[index + size + 1] - flat[index + size])
    sampled = top + row * (bottom - top)
    return sampled.reshape(count, THUMB, THUMB), valid.reshape(count, THUMB, THUMB)


def _soften(images: np.ndarray, sigma: float) -> np.ndarray:
    # A three-tap Gaussian blur along both axes (enough for sigma <= 0.6), edges repeated; cheaper than a matrix.
    side = np.exp(-0.5 / sigma**2)
    side, middle = side / (1 + 2 * side), 1 / (1 + 2 * side)
    for axis in (1, 2):
        images = np.swapaxes(images, axis, -1)
        padded = np.concatenate([images[..., :1], images, images[..., -1:]], axis=-1)
        images = np.swapaxes(middle * images + side * (padded[..., :-2] + padded[..., 2:]), axis, -1)
    return images


def _bilinear_matrix(size: int) -> np.ndarray:
    # (THUMB, size): what `_sample` does along one axis at the identity warp, as a matrix.
    points = np.clip((np.arange(THUMB) + 0.5) * size / THUMB - 0.5, 0, size - 1.001)
    matrix = np.zeros((THUMB, size))
    corner = np.floor(points).astype(np.int64)
    matrix[np.arange(THUMB), corner] = 1 - (points - corner)
    matrix[np.arange(THUMB), corner + 1] = points - corner
    return matrix


def _template_grid() -> np.ndarray:
    # (THUMB**2, 3): every thumbnail pixel centre as (row, column, 1), row and column in -0.5..0.5.
    centres = (np.arange(THUMB) + 0.5) / THUMB - 0.5
    rows, columns = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([rows.ravel(), columns.ravel(), np.ones(THUMB**2)], axis=1)


_GRID = _template_grid()
_GRID_OUTER = (_GRID[:, :, None] * _GRID[:, None, :]).reshape(-1, 9)


def _orient_pixels(images: np.ndarray, orientation: np.ndarray | int) -> np.ndarray:
    """Apply one of the 16 orientations to square grey images (values 0-255).

    Orientation bits, applied in this order: 8 transposes, 4 flips the rows (upside down), 2 flips the columns
    (mirror), 1 inverts (255 - x). Together they give the 8 rotations and mirrorings, each plain or inverted.

    Args:
        images: Shape (..., n, n).
        orientation: An int, or one per image (broadcast against the leading dimensions).

    Returns:
        The oriented images, same shape.
    """
    orientation = np.asarray(orientation)[..., None, None]
    images = np.where(orientation & 8, np.swapaxes(images, -1, -2), images)
    images = np.where(orientation & 4, images[..., ::-1, :], images)
    images = np.where(orientation & 2, images[..., :, ::-1], images)
    return np.where(orientation & 1, 255.0 - images, images)


def _hashes(grey: np.ndarray, first: int) -> tuple[np.ndarray, ...]:
    # For images first, first + 1, ...: the canonical hash and orientation of each, and the query hashes with the
    # image and orientation each was made from.
    coefficients = _crop_coefficients(grey, _QUERY_AXIS_CROPS, _HASH_BLOCK)  # (n, crops, 8, 8); crop 0 is whole
    oriented = _orient_coefficients(coefficients[:, :, None], np.arange(16))  # (n, crops, 16, 8, 8)
    scores = _unit_ac(oriented) @ _CANONICAL_WEIGHTS
    canonical = scores[:, 0].argmax(axis=1)
    stored = _pack(oriented[np.arange(len(grey)), 0, canonical].reshape(len(grey), -1)[:, 1:] > 0)[:, 0]
    # A query for every crop and every orientation that might be the copy's canonical one.
    image, crop, orientation = np.nonzero(scores >= scores.max(axis=2, keepdims=True) - TIE_MARGIN)
    queries = _pack(oriented[image, crop, orientation].reshape(len(image), -1)[:, 1:] > 0)[:, 0]
    return stored, canonical, image + first, orientation, queries


def _orient_coefficients(coefficients: np.ndarray, orientation: np.ndarray | int) -> np.ndarray:
    # The DCT of an oriented image, without recomputing it: transposing the image transposes the coefficients,
    # flipping an axis negates its odd frequencies, inverting negates every AC coefficient (DC is never used).
    orientation = np.asarray(orientation)[..., None, None]
    odd = (np.arange(coefficients.shape[-1]) % 2).astype(bool)
    coefficients = np.where(orientation & 8, np.swapaxes(coefficients, -1, -2), coefficients)
    sign = np.where((orientation & 4).astype(bool) & odd[:, None], -1.0, 1.0)
    sign = sign * np.where((orientation & 2).astype(bool) & odd[None, :], -1.0, 1.0)
    sign = sign * np.where(orientation & 1, -1.0, 1.0)
    return coefficients * sign.astype(coefficients.dtype)


def _compose_table() -> tuple[np.ndarray, np.ndarray]:
    # compose[a, b] is "orientation a, then b", found by applying both to an asymmetric test image.
    probe = np.arange(9.0).reshape(3, 3) ** 2
    each = _orient_pixels(probe, np.arange(16))
    compose = np.empty((16, 16), np.int64)
    for a in range(16):
        for b in range(16):
            twice = _orient_pixels(each[a], b)
            compose[a, b] = int(np.flatnonzero((each == twice).all(axis=(1, 2)))[0])
    return compose, np.argmax(compose == 0, axis=1)


_COMPOSE, _INVERSE = _compose_table()
# The canonical orientation maximises this score. Its weight falls off with frequency: the lowest frequencies move
# least under crops and JPEG, so the choice is stable between a copy and its original.
_CANONICAL_WEIGHTS = (
    np.random.default_rng(0).standard_normal(_HASH_BLOCK**2)
    / (1.0 + np.add.outer(np.arange(_HASH_BLOCK), np.arange(_HASH_BLOCK)).ravel()) ** 2
)[1:].astype(np.float32)


def _unit_ac(coefficients: np.ndarray) -> np.ndarray:
    flat = coefficients.reshape(*coefficients.shape[:-2], -1)[..., 1:]
    return flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-9)


def _hamming_matches(queries: np.ndarray, stored: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    # Exhaustive, in chunks of queries so that the XOR and count buffers stay small.
    rows, columns = [], []
    xor = np.empty((_CHUNK, len(stored)), np.uint64)
    count = np.empty((_CHUNK, len(stored)), np.uint8)
    close = np.empty((_CHUNK, len(stored)), bool)
    for start in range(0, len(queries), _CHUNK):
        chunk = queries[start : start + _CHUNK]
        n = len(chunk)
        np.bitwise_xor(chunk[:, None], stored[None, :], out=xor[:n])
        np.bitwise_count(xor[:n], out=count[:n])
        np.less_equal(count[:n], limit, out=close[:n])
        # flatnonzero is several times faster than a 2-D nonzero.
        hits = np.flatnonzero(close[:n])
        rows.append(hits // len(stored) + start)
        columns.append(hits % len(stored))
    return np.concatenate(rows), np.concatenate(columns)


def _fine_hashes(grey: np.ndarray) -> np.ndarray:
    # (n, 81, words): the rich hash of every fine crop.
    coefficients = _crop_coefficients(grey, _FINE_AXIS_CROPS, _RICH_BLOCK)
    return _pack(coefficients.reshape(len(grey), len(_FINE_AXIS_CROPS) ** 2, -1)[..., 1:] > 0)


def _crop_coefficients(grey: np.ndarray, axis_crops: Sequence[tuple[float, float]], block: int) -> np.ndarray:
    # (N, crops, crops, block, block) -> flattened to (N, crops**2, block, block) except when asked for one crop.
    # Cropping, shrinking to the thumbnail and the DCT are one matrix per axis: D @ R, applied on both sides.
    dct = _dct_matrix(THUMB)[:block]
    left = np.stack([dct @ _axis_matrix(THUMB, grey.shape[1], start, stop) for start, stop in axis_crops])
    rows = np.einsum("ays,nst->nayt", left, grey, optimize=True)
    both = np.einsum("nayt,bxt->nabyx", rows, left, optimize=True)
    if len(axis_crops) == 1:
        return both
    return both.reshape(len(grey), len(axis_crops) ** 2, block, block)


def _axis_matrix(n_out: int, n_in: int, start: float, stop: float) -> np.ndarray:
    # Area-averaging weights that shrink the [start, stop) fraction of an axis of n_in pixels to n_out pixels.
    edges = (start + (stop - start) * np.arange(n_out + 1) / n_out) * n_in
    pixel = np.arange(n_in)[None, :]
    overlap = np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel)
    weights = np.clip(overlap, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _dct_matrix(n: int) -> np.ndarray:
    # Orthonormal DCT-II: row k is the k-th cosine.
    k, x = np.arange(n)[:, None], np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    # Gaussian blur as a matrix, rows renormalised at the borders so that it commutes with flips and inversion.
    offset = np.arange(n)[:, None] - np.arange(n)[None, :]
    weights = np.exp(-0.5 * (offset / sigma) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


_SMOOTH = _blur_matrix(THUMB, 1.0)  # on the thumbnail grid, where both images of a pair are compared


def _largest_window_mean(difference: np.ndarray, valid: np.ndarray, window: int) -> np.ndarray:
    # Mean over the valid pixels of every window x window square, the largest per image; windows less than half
    # valid (the corners a rotation or crop leaves empty) are skipped. Invalid pixels must hold 0.
    sums, counts = _window_sums(difference, window), _window_sums(valid.astype(difference.dtype), window)
    means = np.where(counts >= window**2 / 2, sums / np.maximum(counts, 1.0), 0.0)
    return means.max(axis=(1, 2))


def _window_sums(values: np.ndarray, window: int) -> np.ndarray:
    integral = np.pad(values.cumsum(axis=1).cumsum(axis=2), ((0, 0), (1, 0), (1, 0)))
    return (
        integral[:, window:, window:]
        - integral[:, :-window, window:]
        - integral[:, window:, :-window]
        + integral[:, :-window, :-window]
    )


def _pack(bits: np.ndarray) -> np.ndarray:
    # Booleans (..., n) to uint64 words (..., ceil(n / 64)).
    width = -(-bits.shape[-1] // 64) * 64
    padded = np.zeros((*bits.shape[:-1], width), np.uint8)
    padded[..., : bits.shape[-1]] = bits
    return np.packbits(padded, axis=-1).view(np.uint64)


def _chunks(items: np.ndarray, size: int) -> list[np.ndarray]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _equal_digest_pairs(digests: Sequence[bytes]) -> np.ndarray:
    first: dict[bytes, int] = {}
    pairs = [(first.setdefault(digest, index), index) for index, digest in enumerate(digests)]
    return np.array([pair for pair in pairs if pair[0] != pair[1]], np.int64).reshape(-1, 2)


def _components(n: int, pairs: np.ndarray) -> list[list[int]]:
    # Connected components by label propagation: every image takes the smallest label among its neighbours', then
    # labels are followed to their roots (pointer jumping), until every pair agrees. Labels end as the smallest
    # index of each component.
    labels = np.arange(n)
    while len(pairs):
        a, b = labels[pairs[:, 0]], labels[pairs[:, 1]]
        if np.array_equal(a, b):
            break
        low = np.minimum(a, b)
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        while not np.array_equal(labels, labels[labels]):
            labels = labels[labels]
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.diff(labels[order], prepend=-1))
    groups = [members.tolist() for members in np.split(order, starts[1:])]
    return [group for group in groups if len(group) > 1]
