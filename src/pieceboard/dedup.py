"""Near-duplicate groups from pixels: which images are copies of one another, and what the check cannot see.

Pure computation, no file I/O. A copy may be rotated by a multiple of 90 degrees, mirrored, colour-inverted,
rescaled, cropped by up to about 10 % on each side, turned grey, re-encoded as JPEG, made brighter or darker, given
more or less contrast, gamma, saturation or another hue (torchvision's ``ColorJitter(0.4, 0.4, 0.4, 0.1)``), blurred,
sharpened or given noise, alone or combined (the combinations measured are in docs/data.md). Copies turned by other
angles, crops or shifts larger than about 10 % a side, and colour-jittered copies of flat-coloured drawings are
mostly missed: `NOT_FOUND` says so with the measured figures, and every place that shows the check's
verdict repeats it::

    from pieceboard.dedup import find_duplicates

    groups = find_duplicates(pixels)             # pixels: uint8 (N, S, S, 3), every image squashed to S x S
    groups = find_duplicates(pixels, digests)    # images with equal file digests are always grouped
    # [[0, 7], [3, 12, 40], ...]: sorted indices, each image in at most one group

Three stages, each dearer per pair than the one before and run on fewer pairs:

1. Candidates. Every image gets a 63-bit perceptual hash (signs of the 8x8 lowest DCT frequencies of a 32x32 grey
   thumbnail) in a canonical orientation: of the 16 rotations, mirrorings and inversions, the one that maximises a
   fixed linear score, so that a copy and its original pick the same one. Each image is also hashed as a query in
   16 crops (a crop moves the hash most) and in every orientation whose score is close to the best, since a
   near-tie may fall either way on the copy. Every query meets every canonical hash by XOR and popcount, in chunks.
2. Alignment. A candidate pair is compared on a 255-bit hash (16x16 frequencies) over 81 finer crops of one image,
   the other turned into its orientation; the best crop aligns the two to within 2.5 % of the side.
3. Verification. Starting from that crop, Gauss-Newton registers the pair with a full affine map (and a gain and
   offset, for copies with another brightness or contrast). The first image's colours are then mapped onto the
   second's grey by a least-squares fit of the changes a colour jitter makes (gain, offset, gamma, and the grey a hue
   change moves with each pixel's colour), and the two 32x32 thumbnails are subtracted. A copy leaves only thin lines
   where resampling moved edges by a fraction of a pixel, and those are discounted where both images are steep; a
   moved, resized or recoloured shape leaves a solid patch. A pair is a copy if no 3x3 window of what is left is
   large.

Groups are the connected components of the verified pairs and of the equal digests. The thresholds below were set
by measurement on planted copies and look-alikes (tests/_planted.py, tests/_photos.py, benchmarks/dedup.py) and on
the built-in digits. Known limits: rotations by other angles than multiples of 90 degrees are not searched for; a copy
rotated by a few degrees is found only where the fill of its empty corners matches the picture. A look-alike whose
change covers less than about 0.5 % of the picture (20 pixels at 64 x 64) comes close to the copies' scores. A change
of colour alone, at equal brightness, is not seen (nor could a grey copy be told from it). On drawn pictures of pure,
saturated colours, a colour jitter clips channel by channel and the copies are found less often than on photographs
(docs/data.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["NOT_FOUND", "find_duplicates"]

NOT_FOUND = (
    "copies turned by other angles than right angles (about 1 in 10 found), shifted or cropped by more than about "
    "10 % a side (RandomResizedCrop: about 2 in 3 found), or colour-jittered copies of drawings in flat, saturated "
    "colours (1 in 6 to 3 in 4 found)"
)
"""What the check does not see, measured on real photographs and drawn pictures (benchmarks/dedup.py, docs/data.md).

Said wherever the check's verdict is shown (check-data, the bench's leak line, the report), so that a split it calls
clean is never taken for one without copies of these kinds.
"""

THUMB = 32
"""Side of the grey thumbnails that hashes and the verification work on."""

CANDIDATE_DISTANCE = 13
"""Most differing bits (of 63) between a query hash and a canonical hash for a candidate pair.

Measured on planted copies: random crops of up to 10 % a side reached 12, every other transform 3 at most. Under
1 % of pairs of distinct synthetic pictures also come within 13; the next stages sort them out.
"""

ALIGNED_DISTANCE = 64
"""Most differing bits (of 255) between the best-aligned fine crop and the other image for a pair to be verified.

Measured on planted copies: 99.7 % within 64; the rest were copies of copies, which their original connects anyway.
Distinct pictures: most above 64, except look-alikes, which only stage 3 tells apart.
"""

WINDOW = 3
"""Side, in thumbnail pixels, of the windows the verification averages over: about the smallest shape it must see.

Of sides 2 to 8, 3 separated copies from look-alikes best.
"""

WINDOW_DIFFERENCE = 5.0
"""Largest mean edge-discounted grey difference (0-255) in any window for a verified copy.

Measured on 12,000 planted images (2,400 pictures, each with two copies and a look-alike that has a copy of its
own): after registration, copies reached 5.3 (4 of 9,572 pairs above 5.0) and look-alikes went down to 5.5; at 5.0
no look-alike was grouped and pair recall was 0.9993, copies of one picture holding together through each other.
The margin is thin: look-alikes whose change covers less than 0.5 % of the picture would cross it. With the colour
map of issue 17 the same set gives 0.99885 and no look-alike; pairs above `SURE_DIFFERENCE` must pass both ways.
"""

SURE_DIFFERENCE = 3.5
"""Pairs that pass with a larger window difference than this must pass the other way round too.

Measured on real photographs (benchmarks/dedup.py --photos): two distinct border tiles of one retina photograph, one
given another hue and the other turned and colour-jittered, passed at 4.95 one way and failed at 7.6 the other.
"""

EDGE_GRADIENT = 20.0
"""Grey levels per thumbnail pixel at which a difference on an edge that both images share counts half.

Of 5, 10, 20 and 40, 20 gave the widest gap between the largest copy and the smallest look-alike score.
"""

TIE_MARGIN = 0.02
"""Orientation scores within this (the score of a unit-norm coefficient vector) of the best are all queried.

With 0.02 every planted copy's canonical orientation was among its original's queries; images get 30 queries on
average (16 crops, about 2 orientations each); 0.03 gives 39.
"""

# Crops as (start, stop) fractions of one axis: the query crops of stage 1 cover every crop of up to 10 % a side to
# within 5 % of the side; the fine crops of stage 2 to within 2.5 %.
_QUERY_AXIS_CROPS = ((0.0, 1.0), (0.1, 0.9), (0.1, 1.0), (0.0, 0.9))
_FINE_AXIS_CROPS = tuple((start, 1.0 - end) for start in (0.0, 0.05, 0.1) for end in (0.0, 0.05, 0.1))

_HASH_BLOCK = 8
_RICH_BLOCK = 16
_ANTIALIAS_SIGMA = 0.25  # in thumbnail pixels, before sampling
_REGISTER_STEPS = 5
# Window difference at the fine crop beyond which registration is not tried. Measured before registration, copies
# that verified after it reached 32 (planted) and 71 (digits, a slightly rotated one); distinct pairs median 70.
_HOPELESS = 80.0
_RETRY_DIFFERENCE = 15.0  # pairs that failed with up to this (or an implausible map) are tried the other way
_MIN_OVERLAP = 0.6  # of the template's pixels inside the source after registration
_SCALE_RANGE = (0.6, 1.5)  # source pixels per template side, over the source's side: a 20 % crop gives 0.8
_DAMPING = 1e-3  # Levenberg damping of registration steps, relative to the mean curvature
_CHUNK = 32  # query hashes compared at a time: the XOR, count and hit buffers stay small
_CLIPPED = 2.0  # template grey this close to 0 or 255 is clipped: left out of the colour map's fit
_GAIN_RANGE = (0.3, 3.0)  # slopes of the colour map a copy may have: ColorJitter's contrast 0.4 stays well inside
_CHROMA_VISIBLE = 3.0  # grey levels by which the colour terms must move a pixel to count as changing it
_CHROMA_SPREAD = 0.3  # share of the fitted pixels the colour terms must change, or they are left out
_LEAST_NARROWED = 0.25  # share of the overlap the colour map is refitted on without clipped pixels, or it is not
_LEAST_FITTED = 0.05  # share of the overlap the colour map must be fitted on, or the pair is not a copy
_CHROMA_RIDGE = 5e-4  # ridge on the colour terms of the colour map, per fitted pixel (features in 0-1)
_DULL = 20.0  # grey standard deviation below which a template counts as dull, and its differences are raised
_DULL_MOST = 4.0  # at most by this factor
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
        grey = np.concatenate([chunk.astype(np.float32) @ _LUMA for chunk in _chunks(pixels, 1024)])
        candidates = _candidate_pairs(grey)
        aligned = _align_pairs(grey, candidates)
        pairs.append(aligned[_verify_pairs(pixels, grey, aligned)][:, :2])
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
    stored, canonical, image, orientation, queries = (np.concatenate(column) for column in zip(*parts, strict=True))
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
        j, turn = candidates[part, 1], candidates[part, 2]
        # Image j turned into image i's orientation, hashed like the fine crops of image i.
        other = _pack(_orient_coefficients(whole[j], turn).reshape(len(part), -1)[:, 1:] > 0)
        crops = fine[query_index[part]]
        # Word by word: numpy sums a short last axis slowly.
        distances = np.zeros(crops.shape[:2], np.uint16)
        for word in range(other.shape[1]):
            distances += np.bitwise_count(crops[:, :, word] ^ other[:, word, None])
        best[part] = distances.argmin(axis=1)
        distance[part] = distances[np.arange(len(part)), best[part]]
    close = distance <= ALIGNED_DISTANCE
    aligned = np.column_stack([candidates[close], best[close]])
    # One direction per unordered pair: the one whose fine crop matched best.
    order = np.argsort(distance[close], kind="stable")
    _, first = np.unique(np.sort(aligned[order, :2], axis=1), axis=0, return_index=True)
    return aligned[order[np.sort(first)]]


def _verify_pairs(pixels: np.ndarray, grey: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    """Stage 3: which aligned pairs, registered exactly, differ nowhere by more than `WINDOW_DIFFERENCE`.

    Args:
        pixels: The uint8 RGB images, shape (N, S, S, 3): the colour explains a copy's change of hue or saturation.
        grey: Float grey images, shape (N, S, S).
        aligned: Rows (i, j, orientation, fine crop) from `_align_pairs`.

    Returns:
        A boolean per row: True for a copy.
    """
    difference, plausible, coloured = _registered_difference(pixels, grey, aligned)
    passed = plausible & (difference <= WINDOW_DIFFERENCE)
    # A pair that passed only with the colour terms of the map may be a look-alike whose recoloured shape they painted
    # back; from the other side the map would have to paint the shape's new colour out of its old one too. A hue
    # change looks the same both ways, so such pairs must also pass the other way round. So must pairs that passed
    # narrowly: look-alikes that differ only in faint detail (two tiles of one photograph's border) come that close.
    doubt = np.flatnonzero(passed & (coloured | (difference > SURE_DIFFERENCE)))
    passed[doubt] = _passes_reversed(pixels, grey, aligned[doubt], WINDOW_DIFFERENCE, colour_terms=True)
    # A pair that failed narrowly may pass the other way round: mapping the duller of two copies onto the other
    # amplifies its noise and quantisation (a colour jitter that took contrast away). Without the colour terms, which
    # the first way did not confirm, and not narrowly: the first way already had its doubts.
    retry = np.flatnonzero(~passed & (difference <= _RETRY_DIFFERENCE))
    passed[retry] = _passes_reversed(pixels, grey, aligned[retry], SURE_DIFFERENCE, colour_terms=False)
    return passed


def _passes_reversed(
    pixels: np.ndarray, grey: np.ndarray, rows: np.ndarray, limit: float, colour_terms: bool
) -> np.ndarray:
    """Whether aligned pairs pass stage 3 the other way round: image j registered onto image i.

    Registration starts from the inverse of the fine crop: image j, turned into image i's orientation, matched that
    crop of image i, so image i seen from image j extends past it by as much.

    Args:
        pixels: The uint8 RGB images, shape (N, S, S, 3).
        grey: Float grey images, shape (N, S, S).
        rows: Rows (i, j, orientation, fine crop) from `_align_pairs`.
        limit: The largest window difference that passes.
        colour_terms: Whether a pass that needs the colour terms of the map counts.

    Returns:
        A boolean per row.
    """
    if not len(rows):
        return np.zeros(0, bool)
    i, j, turn, crop = rows.T
    back = _INVERSE[turn]
    reverse = np.column_stack([j, i, back, crop])
    warp = _uncrop_warp(crop, back, grey.shape[1])
    difference, plausible, coloured = _registered_difference(pixels, grey, reverse, warp)
    return plausible & (difference <= limit) & (colour_terms | ~coloured)


def _uncrop_warp(crop: np.ndarray, orientation: np.ndarray, size: int) -> np.ndarray:
    # (P, 2, 3) affine maps from the coordinates of image i turned by `orientation` (-0.5..0.5 over the thumbnail) to
    # pixels of image j, where image j covers the fine crop `crop` of image i. The crop's bounds, as fractions of image
    # i's axes, are carried through the orientation the way `_orient_pixels` moves pixels.
    bounds = np.asarray(_FINE_AXIS_CROPS)
    rows, columns = bounds[crop // 9], bounds[crop % 9]
    transposed = (orientation & 8).astype(bool)[:, None]
    rows, columns = np.where(transposed, columns, rows), np.where(transposed, rows, columns)
    rows = np.where((orientation & 4).astype(bool)[:, None], 1.0 - rows[:, ::-1], rows)
    columns = np.where((orientation & 2).astype(bool)[:, None], 1.0 - columns[:, ::-1], columns)
    warp = np.zeros((len(crop), 2, 3))
    for axis, (start, stop) in enumerate((rows.T, columns.T)):
        scale = size / (stop - start)
        warp[:, axis, axis] = scale
        warp[:, axis, 2] = (0.5 - start) * scale - 0.5
    return warp


def _registered_difference(
    pixels: np.ndarray, grey: np.ndarray, aligned: np.ndarray, warp: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Register image i of each aligned pair onto image j and measure what is left of their difference.

    Args:
        pixels: The uint8 RGB images, shape (N, S, S, 3).
        grey: Float grey images, shape (N, S, S).
        aligned: Rows (i, j, orientation, fine crop) from `_align_pairs`.
        warp: Where registration starts, shape (P, 2, 3) (see `_crop_warp`); by default, at the fine crop.

    Returns:
        Per row, the largest mean over any `WINDOW` x `WINDOW` window of the difference left once image i's colours
        are mapped onto image j's grey (see `_colour_difference`), raised for dull pictures (see `_DULL`); whether
        the registration and the colour map are ones a copy could have (see `_plausible`); and whether the score
        needed the map's colour terms. Pairs that already pass at the fine crop, or differ by more than `_HOPELESS`
        there, are not registered.
    """
    difference = np.zeros(len(aligned))
    plausible = np.zeros(len(aligned), bool)
    coloured = np.zeros(len(aligned), bool)
    size = grey.shape[1]
    # Blurred a little, the bilinear samples alias less. A template is the other image blurred and shrunk to a grid
    # (the identity warp's samples, as one matrix per side). Stage 3 works in float64: numpy's batched small matrix
    # products are several times faster in it than in float32 here.
    shrink = _shrink_matrix(size, THUMB)
    sigma = _ANTIALIAS_SIGMA * size / THUMB
    # In order of the source image, so that a chunk prepares each of its sources once for all its pairs.
    for part in _chunks(np.argsort(aligned[:, 0], kind="stable"), 1024):
        i, j, turn, crop = aligned[part].T
        images, which = np.unique(i, return_inverse=True)
        # The sources' colour channels, softened one by one; their grey is the channels' ITU-R 601 sum.
        colour = pixels[images].astype(np.float64).transpose(0, 3, 1, 2).reshape(-1, size, size)
        colour = _soften(colour, sigma).reshape(len(images), 3, size, size)
        source = np.einsum("c,pcij->pij", _LUMA.astype(np.float64), colour)
        template = _orient_pixels(shrink @ grey[j].astype(np.float64) @ shrink.T, turn)
        start = _crop_warp(crop, size) if warp is None else warp[part]
        difference[part], plausible[part], coloured[part] = _compare(colour, which, template, start)
        # Registration only for pairs not already verified, and not hopelessly different.
        redo = np.flatnonzero((difference[part] > WINDOW_DIFFERENCE) & (difference[part] <= _HOPELESS))
        if not len(redo):
            continue
        registered = _register(source, which[redo], template[redo], start[redo])
        difference[part[redo]], plausible[part[redo]], coloured[part[redo]] = _compare(
            colour, which[redo], template[redo], registered
        )
    return difference, plausible, coloured


def _compare(
    colour: np.ndarray, which: np.ndarray, template: np.ndarray, warp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The colour channels of each pair's source (colour[which]) sampled on the template's grid, mapped onto the
    # template's grey, then compared window by window.
    size = colour.shape[-1]
    sampled, valid = _sample(colour, which, warp, THUMB)
    with_colour, plain, monotone, spread = _colour_difference(sampled, template, valid)
    dullness = _dullness(template, valid)
    score = _largest_window_mean(np.where(valid, plain, 0.0), valid, WINDOW) * dullness
    # The colour terms count only where the map without them does not pass already.
    coloured = spread & (score > WINDOW_DIFFERENCE)
    inside = valid[coloured]
    score[coloured] = _largest_window_mean(np.where(inside, with_colour[coloured], 0.0), inside, WINDOW)
    score[coloured] *= dullness[coloured]
    return score, _plausible(warp, valid, size) & monotone, coloured


def _colour_difference(
    colour: np.ndarray, template: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What is left of the template's grey once the source's colours are mapped onto it, edges discounted.

    The map covers the photometric changes a copy may have gone through: brightness and contrast are a gain and an
    offset, gamma bends the curve (a square term of the grey), and a change of hue moves each pixel's grey in
    proportion to its colour differences (red and blue against green). It is fitted by least squares over the pixels
    that land inside the source, then again without those where the map sends a source channel past 0 or 255 (a
    brightened copy saturates channel by channel, which no smooth map follows) and without the template's clipped
    ones. The colour terms are held back by a ridge, and left out where they would change only a small part of the
    picture: fitted freely, they could paint a recoloured object back to the grey it had.

    Args:
        colour: Sampled source channels, shape (P, 3, n, n), 0-255.
        template: Template grey, shape (P, n, n).
        valid: Which samples lie inside the source, shape (P, n, n).

    Returns:
        The edge-discounted difference (see `_edge_discounted`) with the colour terms and without them, each of
        shape (P, n, n); whether each map is one a copy could have (rising, with a slope in `_GAIN_RANGE` at its
        lowest and highest fitted greys); and whether the colour terms may be used.
    """
    count = len(colour)
    channels = colour.reshape(count, 3, -1)
    level = np.einsum("c,pcx->px", _LUMA.astype(np.float64), channels) / 255.0
    red_green, blue_green = (channels[:, 0] - channels[:, 1]) / 255.0, (channels[:, 2] - channels[:, 1]) / 255.0
    features = np.stack([np.ones_like(level), level, level**2, red_green, blue_green], axis=-1)
    flat = template.reshape(count, -1)
    n_valid = valid.reshape(count, -1).sum(axis=1)
    fit = valid.reshape(count, -1) & (flat > _CLIPPED) & (flat < 255.0 - _CLIPPED)
    for _ in range(2):
        # Clipping is judged by a gain and an offset alone: a curve fitted to a narrow range of greys may bend far
        # off outside it.
        line, _ = _fit_map(features[..., :2], flat, fit)
        sent = line[:, 0, None, None] + line[:, 1, None, None] * (channels / 255.0)  # each source channel, mapped
        # Refitted without the pixels the copy clipped, unless too little would be left to fit.
        narrower = fit & ~(sent >= 255.0 - _CLIPPED).any(axis=1) & ~(sent <= _CLIPPED).any(axis=1)
        keep = narrower.sum(axis=1) >= _LEAST_NARROWED * n_valid
        fit = np.where(keep[:, None], narrower, fit)
    coefficients, mapped = _fit_map(features, flat, fit)
    # Colour terms that matter on a small part of the picture only are not a change of hue: they would paint one
    # recoloured object back to the grey it had. Then the map is fitted without them.
    colour_shift = np.abs(coefficients[:, 3, None] * red_green + coefficients[:, 4, None] * blue_green)
    spread = ((colour_shift > _CHROMA_VISIBLE) & fit).sum(axis=1) >= _CHROMA_SPREAD * np.maximum(fit.sum(axis=1), 1)
    plain, plain_mapped = _fit_map(features[..., :3], flat, fit)
    coefficients = np.where(spread[:, None], coefficients, np.pad(plain, ((0, 0), (0, 2))))
    # A copy's curve rises over the whole range of its greys, with a slope a contrast change can give.
    lowest = np.where(fit, level, 1.0).min(axis=1)  # with nothing fitted, `fitted` is False anyway
    highest = np.where(fit, level, 0.0).max(axis=1)
    slopes = (coefficients[:, 1, None] + 2 * coefficients[:, 2, None] * np.stack([lowest, highest], axis=1)) / 255.0
    rises = ((slopes >= _GAIN_RANGE[0]) & (slopes <= _GAIN_RANGE[1])).all(axis=1)
    fitted = (fit.sum(axis=1) >= _LEAST_FITTED * n_valid) & rises
    with_colour, without = (np.clip(m, 0.0, 255.0).reshape(template.shape) for m in (mapped, plain_mapped))
    return _edge_discounted(with_colour, template), _edge_discounted(without, template), fitted, spread


def _fit_map(features: np.ndarray, target: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Least squares of target on features over the used pixels, a ridge on the colour terms (any past the third).
    weight = use.astype(np.float64)
    weighted = features * weight[..., None]
    normal = weighted.transpose(0, 2, 1) @ features
    used = weight.sum(axis=1)
    for colour_term in range(3, features.shape[-1]):
        normal[:, colour_term, colour_term] += _CHROMA_RIDGE * used
    normal += np.eye(features.shape[-1]) * 1e-6  # a flat or empty overlap stays solvable
    coefficients = np.linalg.solve(normal, weighted.transpose(0, 2, 1) @ target[..., None])[..., 0]
    return coefficients, (features @ coefficients[..., None])[..., 0]


def _dullness(template: np.ndarray, valid: np.ndarray) -> np.ndarray:
    # A copy with less contrast leaves smaller differences, and so does a look-alike of a dull picture: the difference
    # is measured against the template's own spread, as if it had the contrast of an ordinary picture.
    count = len(template)
    weight = valid.reshape(count, -1).astype(np.float64)
    flat = template.reshape(count, -1)
    used = np.maximum(weight.sum(axis=1), 1.0)
    mean = (flat * weight).sum(axis=1) / used
    spread = np.sqrt((((flat - mean[:, None]) ** 2) * weight).sum(axis=1) / used)
    return np.clip(_DULL / np.maximum(spread, 1e-9), 1.0, _DULL_MOST)


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


def _register(source: np.ndarray, which: np.ndarray, template: np.ndarray, warp: np.ndarray) -> np.ndarray:
    # Gauss-Newton on the six affine parameters, minimising the squared difference over pixels that land inside the
    # source, on the template's grid. The sampled image's gradient, taken on that grid, is mapped back through the
    # warp. Both are smoothed by a pixel of the grid: the error surface is then wide enough to converge from the fine
    # crop's 2.5 % misalignment.
    count, n = len(warp), template.shape[1]
    smooth = _blur_matrix(n, 1.0)
    grid = _grid(n)
    grid_outer = (grid[:, :, None] * grid[:, None, :]).reshape(-1, 9)
    unclipped = (template > _CLIPPED) & (template < 255.0 - _CLIPPED)
    template = smooth @ template @ smooth.T
    for _ in range(_REGISTER_STEPS):
        sampled, valid = _sample(source, which, warp, n)
        sampled = smooth @ sampled @ smooth.T
        # A copy may be brighter or have more contrast: each step first fits the gain and offset that map the sample
        # onto the template, then moves the warp under them.
        gain, offset = _gain_offset(sampled, template, valid & unclipped)
        mapped = gain[:, None, None] * sampled + offset[:, None, None]
        residual = np.where(valid, mapped - template, 0.0).reshape(count, n * n)
        d_row, d_column = np.gradient(mapped, axis=(1, 2))
        # d/d(template coordinate) = n * d/d(grid pixel); mapped to source coordinates by the inverse warp.
        local = np.stack([d_row, d_column], axis=-1).reshape(count, n * n, 2) * (n * valid.reshape(count, n * n, 1))
        gradient = local @ np.linalg.inv(warp[:, :, :2])
        # The Jacobian is gradient (x) grid, so its normal equations are sums over pixels of products of the two.
        rr, rc, cc = gradient[..., 0] ** 2, gradient[..., 0] * gradient[..., 1], gradient[..., 1] ** 2
        blocks = (np.stack([rr, rc, rc, cc], axis=1) @ grid_outer).reshape(count, 2, 2, 3, 3)
        hessian = blocks.transpose(0, 1, 3, 2, 4).reshape(count, 6, 6)
        slope = ((gradient * residual[..., None]).transpose(0, 2, 1) @ grid).reshape(count, 6)
        # Levenberg damping; the constant keeps a flat, featureless pair solvable (it then simply stays put).
        hessian += np.eye(6) * (_DAMPING * np.trace(hessian, axis1=1, axis2=2)[:, None, None] + 1e-6)
        warp = warp - np.linalg.solve(hessian, slope[..., None]).reshape(count, 2, 3)
    return warp


def _gain_offset(sampled: np.ndarray, template: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Least-squares gain and offset from sampled to template over the used pixels, the gain kept in `_GAIN_RANGE`.
    count = len(sampled)
    weight = use.reshape(count, -1).astype(np.float64)
    x, y = sampled.reshape(count, -1), template.reshape(count, -1)
    used = np.maximum(weight.sum(axis=1), 1.0)
    mean_x, mean_y = (x * weight).sum(axis=1) / used, (y * weight).sum(axis=1) / used
    covariance = ((x - mean_x[:, None]) * (y - mean_y[:, None]) * weight).sum(axis=1)
    variance = (((x - mean_x[:, None]) ** 2) * weight).sum(axis=1)
    gain = np.clip(covariance / np.maximum(variance, 1e-9), *_GAIN_RANGE)
    return gain, mean_y - gain * mean_x


def _sample(source: np.ndarray, which: np.ndarray, warp: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of each pair's source at its warped n x n grid.

    Args:
        source: Images, shape (U, size, size), or (U, channels, size, size) to sample every channel at once.
        which: The source of each pair, indices into ``source``, shape (P,).
        warp: Affine maps from template coordinates to source pixels, shape (P, 2, 3).
        n: Side of the grid.

    Returns:
        The samples, shape (P, n, n) or (P, channels, n, n), and whether each lies inside the source, (P, n, n).
    """
    size = source.shape[-1]
    channels = source.reshape(len(source), -1, size * size)
    points = _grid(n) @ warp.transpose(0, 2, 1)  # (P, pixels, 2) source (row, column)
    valid = ((points >= 0) & (points <= size - 1)).all(axis=2)
    points = np.clip(points, 0, size - 1.001)
    corner = np.floor(points)
    row, column = (points[..., 0] - corner[..., 0])[:, None], (points[..., 1] - corner[..., 1])[:, None]
    pixel = (corner[..., 0] * size + corner[..., 1]).astype(np.int64)  # (P, pixels)
    start = (which[:, None] * channels.shape[1] + np.arange(channels.shape[1])) * size * size  # (P, channels)
    index = start[:, :, None] + pixel[:, None, :]
    flat = channels.reshape(-1)
    top = flat[index] + column * (flat[index + 1] - flat[index])
    bottom = flat[index + size] + column * (flat[index + size + 1] - flat[index + size])
    sampled = (top + row * (bottom - top)).reshape(len(warp), *source.shape[1:-2], n, n)
    return sampled, valid.reshape(len(warp), n, n)


def _soften(images: np.ndarray, sigma: float) -> np.ndarray:
    # A three-tap Gaussian blur along both axes (enough for sigma <= 0.6), edges repeated; cheaper than a matrix.
    side = np.exp(-0.5 / sigma**2)
    side, middle = side / (1 + 2 * side), 1 / (1 + 2 * side)
    for axis in (1, 2):
        images = np.swapaxes(images, axis, -1)
        padded = np.concatenate([images[..., :1], images, images[..., -1:]], axis=-1)
        images = np.swapaxes(middle * images + side * (padded[..., :-2] + padded[..., 2:]), axis, -1)
    return images


def _shrink_matrix(size: int, n: int) -> np.ndarray:
    # (n, size): the anti-aliasing blur, then what `_sample` does along one axis at the identity warp.
    points = np.clip((np.arange(n) + 0.5) * size / n - 0.5, 0, size - 1.001)
    sample = np.zeros((n, size))
    corner = np.floor(points).astype(np.int64)
    sample[np.arange(n), corner] = 1 - (points - corner)
    sample[np.arange(n), corner + 1] = points - corner
    return sample @ _blur_matrix(size, _ANTIALIAS_SIGMA * size / n)


def _grid(n: int) -> np.ndarray:
    # (n * n, 3): every grid pixel centre as (row, column, 1), row and column in -0.5..0.5.
    centres = (np.arange(n) + 0.5) / n - 0.5
    rows, columns = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([rows.ravel(), columns.ravel(), np.ones(n * n)], axis=1)


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
    flat = coefficients.reshape(*coefficients.shape[:2], -1)
    scores = flat @ _SCORE_WEIGHTS / np.maximum(np.linalg.norm(flat[..., 1:], axis=-1, keepdims=True), 1e-9)
    canonical = scores[:, 0].argmax(axis=1)
    stored = _oriented_hash(flat[:, 0], canonical)
    # A query for every crop and every orientation that might be the copy's canonical one.
    image, crop, orientation = np.nonzero(scores >= scores.max(axis=2, keepdims=True) - TIE_MARGIN)
    return stored, canonical, image + first, orientation, _oriented_hash(flat[image, crop], orientation)


def _oriented_hash(flat: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    # The 63-bit hash of 8x8 coefficient blocks (flattened) seen in the given orientations.
    oriented = np.take_along_axis(flat, _PERMUTATION[orientation], axis=1) * _SIGN[orientation]
    return _pack(oriented[:, 1:] > 0)[:, 0]


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


def _signed_permutations() -> tuple[np.ndarray, np.ndarray]:
    # Each orientation of an 8x8 coefficient block moves and negates entries: oriented = sign * flat[permutation].
    probe = np.arange(1.0, _HASH_BLOCK**2 + 1).reshape(_HASH_BLOCK, _HASH_BLOCK)
    oriented = _orient_coefficients(probe, np.arange(16)).reshape(16, -1)
    sign = np.sign(oriented)
    sign[:, 0] = 0.0  # DC is never used
    return (np.abs(oriented) - 1).astype(np.int64), sign.astype(np.float32)


_COMPOSE, _INVERSE = _compose_table()
_PERMUTATION, _SIGN = _signed_permutations()
# The canonical orientation maximises a fixed linear score of the unit AC coefficients. Its weights fall off with
# frequency: the lowest frequencies move least under crops and JPEG, so the choice is stable between a copy and its
# original. _SCORE_WEIGHTS[:, e] scores orientation e of the unoriented block: w . (sign * flat[perm]).
_CANONICAL_WEIGHTS = (
    np.random.default_rng(0).standard_normal(_HASH_BLOCK**2)
    / (1.0 + np.add.outer(np.arange(_HASH_BLOCK), np.arange(_HASH_BLOCK)).ravel()) ** 2
)
_SCORE_WEIGHTS = np.zeros((_HASH_BLOCK**2, 16), np.float32)
_SCORE_WEIGHTS[_PERMUTATION, np.arange(16)[:, None]] = _SIGN * _CANONICAL_WEIGHTS


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
    # (N, crops**2, block, block), crops in row-major order (row crop, column crop); (N, 1, 1, ...) for one crop.
    # Cropping, shrinking to the thumbnail and the DCT are one matrix per axis, L = D @ R, applied on both sides:
    # two large matrix products over the whole stack.
    count, size = grey.shape[:2]
    left = np.concatenate([_dct_matrix(THUMB)[:block] @ _axis_matrix(THUMB, size, *crop) for crop in axis_crops])
    width = len(left)
    rows = (grey.reshape(count * size, size) @ left.T).reshape(count, size, width)  # G @ L.T
    # L @ G @ L.T = ((G @ L.T).T @ L.T).T, again one product over the stack.
    both = (rows.transpose(0, 2, 1).reshape(count * width, size) @ left.T).reshape(count, width, width)
    both = both.transpose(0, 2, 1).reshape(count, len(axis_crops), block, len(axis_crops), block)
    both = both.transpose(0, 1, 3, 2, 4)
    if len(axis_crops) == 1:
        return both
    return both.reshape(count, len(axis_crops) ** 2, block, block)


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
