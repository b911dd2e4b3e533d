"""Real photographs with planted near-duplicate copies and look-alikes, for test_dedup.py and benchmarks/dedup.py.

The photographs are the ones scikit-image ships inside its wheel (`PHOTOS`; no download). Each is cut into
non-overlapping square tiles of `TILE` pixels, the originals. Neighbouring tiles of one photograph are the hard
look-alikes: same light, colours and texture, yet distinct pictures. Every tile also gets two look-alikes of its own:
the tile with an object (a patch cut from a tile of another photograph) pasted over its centre, and the same object
pasted elsewhere (an object added, an object moved). Copies go through the augmentations users apply (`FAMILIES`,
with torchvision's functional ops where torchvision has the op). Every image comes back squashed as pieceboard caches
it (`_planted.squash`).

    from _photos import photo_set
    pixels, truth, kind = photo_set(families=["rotate", "jitter"], tiles=40, seed=0)
    # truth[i]: an original and its copies share an id, each look-alike has its own
    # kind[i]: "original", "lookalike" or the family name of the copy

Saturation and hue leave grey photographs unchanged, so on grey tiles those copies equal their original.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torchvision.transforms.v2.functional as F
from PIL import Image

from _planted import TRANSFORMS, Transform, squash

PHOTOS: tuple[str, ...] = (
    "astronaut",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "text",
)
"""`skimage.data` photographs bundled in scikit-image's wheel (each loads with no network).

Left out: ``brick`` (a periodic wall: neighbouring tiles are translated copies of one pattern, so "never group them"
would be an unfair demand), ``cat`` (the same picture as ``chelsea``), ``horse`` (a binary silhouette),
``checkerboard``, ``colorwheel``, ``logo``, ``binary_blobs`` and ``shepp_logan_phantom`` (drawn, not photographed),
``microaneurysms`` and ``lfw_subset`` (smaller than one tile), and everything fetched on first use (``eagle``,
``lily``, ``skin``, ``cells3d``, ``brain``, ``kidney``, ...). Of ``stereo_motorcycle`` only the left view is used.
"""

TILE = 128
"""Side of a tile in pixels. The photographs are 300-640 pixels a side, so 128 gives most of them neighbours in both
directions (177 tiles pass the rules below) while a tile still has twice the side of the 64 x 64 that the check
sees."""

LONGEST = 640
"""Photographs with a longer side are first scaled down to it, so that the two large ones (retina 1411 px, Hubble
1000 px) do not supply most of the tiles."""

FLAT_STD = 10.0
"""Tiles whose grey standard deviation is below this are skipped as nearly flat: plain sky, blank background, the
out-of-focus parts of ``clock`` and ``cell``. Two such neighbours are the same picture to the eye (a smooth gradient
and sensor noise), so requiring the check to keep them apart would be unfair, and a brightness or contrast copy of
one would be as close to its neighbour as to its original. Looked at by eye: from 10 up every tile shows a shape of
its own (a tower, craters, vessels, galaxies)."""

BLANK_BLOCK = 16
"""Side in pixels of the blocks that `BLANK_SHARE` counts."""

BLANK_SHARE = 0.75
"""Tiles of which more than this share of blocks is blank (grey standard deviation under 2: the black border of
``retina``, clear sky) are skipped too, whatever their overall spread. Such a tile shows little but one edge between
two flat regions, and the photograph's other such tiles show the same edge at another corner: near mirror images of
one another, told apart only by a thin sliver of texture. Above three quarters only such tiles go (six: the retina's
nearly black corners, the cameraman's sky); the rocket against its sky (73 % blank), the cameraman's head (56 %) and
the retina's other border tiles, each with vessels of its own, stay as hard look-alikes."""

OBJECT_AREA = (0.08, 0.12)
"""Share of the tile covered by the pasted object of a look-alike."""

OBJECT_CHANGE = 40
"""Grey levels by which at least half of the object's pixels must differ from what it covers (in both places), so
that the added or moved object is plainly visible; otherwise another source is drawn."""


class PhotoSet(NamedTuple):
    """A photo set with where each image comes from (for splitting false pairs by kind)."""

    pixels: np.ndarray  # uint8 (N, size, size, 3)
    truth: np.ndarray  # int group id: an original and its copies share one, each look-alike has its own
    kind: np.ndarray  # "original", "lookalike" or the family name
    photo: np.ndarray  # index into PHOTOS of the photograph the image's tile was cut from
    tile: np.ndarray  # index of the image's tile (originals, their copies and look-alikes share it)


def photo_set(
    families: Sequence[str] | None = None, tiles: int | None = None, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tiles of real photographs, one copy of each per family and two look-alikes each, squashed, shuffled.

    Args:
        families: Names from `FAMILIES` (None: all of them); each tile gets one copy per family.
        tiles: Use at most this many tiles (None: all), taken in turn from each photograph.
        size: Side of the squashed output.
        seed: Every random draw comes from this seed.

    Returns:
        pixels uint8 (N, size, size, 3), truth (int group per image) and kind (str per image).
    """
    built = photo_sources(families, tiles, size, seed)
    return built.pixels, built.truth, built.kind


def photo_sources(
    families: Sequence[str] | None = None, tiles: int | None = None, size: int = 64, seed: int = 0
) -> PhotoSet:
    """`photo_set`, also telling each image's photograph and tile."""
    rng = np.random.default_rng(seed)
    names = list(FAMILIES) if families is None else list(families)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        raise KeyError(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    every_tile = photo_tiles()
    chosen = _round_robin(every_tile, tiles)
    images: list[np.ndarray] = []
    truth: list[int] = []
    kind: list[str] = []
    photo: list[int] = []
    tile: list[int] = []
    for index, (photo_index, picture) in enumerate(chosen):
        original_group = 3 * index
        made = [(picture, original_group, "original")]
        made += [
            (lookalike, original_group + 1 + k, "lookalike")
            for k, lookalike in enumerate(lookalikes(picture, photo_index, every_tile, rng))
        ]
        made += [(FAMILIES[name](picture, rng), original_group, name) for name in names]
        for image, group, what in made:
            images.append(squash(image, size))
            truth.append(group)
            kind.append(what)
            photo.append(photo_index)
            tile.append(index)
    order = rng.permutation(len(images))
    return PhotoSet(
        np.stack(images)[order],
        np.asarray(truth)[order],
        np.asarray(kind)[order],
        np.asarray(photo)[order],
        np.asarray(tile)[order],
    )


@functools.cache
def load_photo(name: str) -> Image.Image:
    """One of `PHOTOS` as an RGB image, scaled down to `LONGEST` pixels on its longer side."""
    import skimage.data  # a benchmark and test dependency only, imported when photos are asked for

    pixels = getattr(skimage.data, name)()
    if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
        pixels = pixels[0]
    image = Image.fromarray(pixels).convert("RGB")
    factor = LONGEST / max(image.size)
    if factor < 1:
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    return image


@functools.cache
def photo_tiles() -> tuple[tuple[int, Image.Image], ...]:
    """Every tile neither nearly flat nor mostly blank: (index into PHOTOS, tile), photo by photo, in raster order."""
    found = []
    for photo_index, name in enumerate(PHOTOS):
        image = load_photo(name)
        for top in range(0, image.height - TILE + 1, TILE):
            for left in range(0, image.width - TILE + 1, TILE):
                tile = image.crop((left, top, left + TILE, top + TILE))
                grey = _grey(tile)
                if grey.std() >= FLAT_STD and _blank_share(grey) <= BLANK_SHARE:
                    found.append((photo_index, tile))
    return tuple(found)


def lookalikes(
    picture: Image.Image, photo_index: int, every_tile: Sequence[tuple[int, Image.Image]], rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    """The tile with an object pasted over its centre, and the same object pasted elsewhere.

    The object is a square patch of `OBJECT_AREA` of the tile, cut from a tile of another photograph and redrawn
    until it differs visibly (`OBJECT_CHANGE`) from what it covers in both places.
    """
    width, height = picture.size
    others = [tile for index, tile in every_tile if index != photo_index]
    best: tuple[float, Image.Image, tuple[int, int], tuple[int, int]] | None = None
    for _ in range(50):
        side = round(math.sqrt(rng.uniform(*OBJECT_AREA) * width * height))
        source = others[int(rng.integers(len(others)))]
        left, top = (int(v) for v in rng.integers(0, np.subtract(source.size, side) + 1))
        patch = source.crop((left, top, left + side, top + side))
        centre = ((width - side) // 2, (height - side) // 2)
        moved = _away_from(centre, side, picture.size, rng)
        changed = min(_changed_share(picture, patch, centre), _changed_share(picture, patch, moved))
        if best is None or changed > best[0]:
            best = (changed, patch, centre, moved)
        if changed >= 0.5:
            break
    assert best is not None
    _, patch, centre, moved = best
    return _pasted(picture, patch, centre), _pasted(picture, patch, moved)


def _round_robin(every_tile: Sequence[tuple[int, Image.Image]], limit: int | None) -> list[tuple[int, Image.Image]]:
    # One tile of each photograph in turn, in raster order within a photograph, so that a small set still covers
    # every photograph and keeps neighbouring tiles (consecutive tiles of a row) together.
    by_photo: dict[int, list[Image.Image]] = {}
    for photo_index, tile in every_tile:
        by_photo.setdefault(photo_index, []).append(tile)
    ordered = []
    for rank in range(max(len(tiles) for tiles in by_photo.values())):
        ordered += [(photo_index, tiles[rank]) for photo_index, tiles in by_photo.items() if rank < len(tiles)]
    return ordered if limit is None else ordered[:limit]


def _away_from(centre: tuple[int, int], side: int, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    # A position for the moved object that does not overlap the central one: beside it on a random side, anywhere
    # along the other axis.
    width, height = size
    axis = int(rng.integers(2))
    extent = (width, height)[axis]
    before = range(0, centre[axis] - side + 1)
    after = range(centre[axis] + side, extent - side + 1)
    spots = list(before) + list(after)
    along = int(spots[int(rng.integers(len(spots)))]) if spots else 0
    across = int(rng.integers(0, (height, width)[axis] - side + 1))
    return (along, across) if axis == 0 else (across, along)


def _changed_share(picture: Image.Image, patch: Image.Image, where: tuple[int, int]) -> float:
    left, top = where
    covered = picture.crop((left, top, left + patch.width, top + patch.height))
    difference = np.abs(_grey(covered) - _grey(patch))
    return float(np.mean(difference >= OBJECT_CHANGE))


def _pasted(picture: Image.Image, patch: Image.Image, where: tuple[int, int]) -> Image.Image:
    result = picture.copy()
    result.paste(patch, where)
    return result


def _blank_share(grey: np.ndarray) -> float:
    rows, columns = grey.shape[0] // BLANK_BLOCK, grey.shape[1] // BLANK_BLOCK
    blocks = grey[: rows * BLANK_BLOCK, : columns * BLANK_BLOCK].reshape(rows, BLANK_BLOCK, columns, BLANK_BLOCK)
    return float(np.mean(blocks.std(axis=(1, 3)) < 2))


def _grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


# Photometric families, at the strengths of torchvision's ColorJitter(0.4, 0.4, 0.4, 0.1).
JITTER = 0.4
HUE = 0.1


def _factor(rng: np.random.Generator) -> float:
    return float(rng.uniform(1 - JITTER, 1 + JITTER))


def jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """ColorJitter(0.4, 0.4, 0.4, 0.1): all four changes, in a random order as torchvision applies them.

    The factors are drawn from ``rng`` rather than by calling the transform, which draws from torch's global
    generator, so that a set is the same for the same seed.
    """
    changes = [
        lambda im: F.adjust_brightness(im, _factor(rng)),
        lambda im: F.adjust_contrast(im, _factor(rng)),
        lambda im: F.adjust_saturation(im, _factor(rng)),
        lambda im: F.adjust_hue(im, float(rng.uniform(-HUE, HUE))),
    ]
    for index in rng.permutation(len(changes)):
        image = changes[index](image)
    return image


def noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian noise of 5-12 grey levels, per pixel and channel, clipped.

    Drawn with numpy: torchvision's gaussian_noise takes float tensors and torch's global generator.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    noisy = pixels + rng.normal(0.0, rng.uniform(5, 12), size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, kernel 5, 7 or 9, sigma 0.5-2."""
    kernel = int(rng.choice([5, 7, 9]))
    sigma = float(rng.uniform(0.5, 2.0))
    return F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def translate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shifted by up to 10 % of each side, black fill: RandomAffine(0, translate=(0.1, 0.1))."""
    width, height = image.size
    shift = [round(rng.uniform(-0.1, 0.1) * width), round(rng.uniform(-0.1, 0.1) * height)]
    return F.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])


def any_angle(rng: np.random.Generator) -> float:
    """An angle in [-180, 180] degrees at least 3 degrees from every multiple of 90 (those are the rot90 family)."""
    while True:
        angle = float(rng.uniform(-180, 180))
        if abs(angle - 90 * round(angle / 90)) >= 3:
            return angle


def rotate(fill: tuple[int, int, int]) -> Transform:
    """Turned by `any_angle` about the centre, same size, the corners filled with ``fill``: RandomRotation.

    Nearest-neighbour sampling, torchvision's default for RandomRotation.
    """
    return lambda image, rng: F.rotate(image, any_angle(rng), fill=[float(v) for v in fill])


def rotate_reflect(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Turned by `any_angle` with reflected corners: padded by reflection, turned, cut back to the centre."""
    width, height = image.size
    angle = any_angle(rng)
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    # The turned frame's extent in the source, less the source's own half sides: what the corners reach beyond it.
    pad_x = math.ceil((width * cos + height * sin - width) / 2) + 1
    pad_y = math.ceil((width * sin + height * cos - height) / 2) + 1
    padded = F.pad(image, [pad_x, pad_y], padding_mode="reflect")
    return F.center_crop(F.rotate(padded, angle), [height, width])


def rotate_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Turned by `any_angle`, then cut to the largest centred axis-aligned rectangle holding no corner."""
    angle = any_angle(rng)
    inner_width, inner_height = inner_box(*image.size, angle)
    return F.center_crop(F.rotate(image, angle), [inner_height, inner_width])


def inner_box(width: int, height: int, degrees: float) -> tuple[int, int]:
    """Width and height of the largest centred axis-aligned rectangle inside a width x height turned by degrees.

    A centred rectangle of half sides (a, b) lies inside the turned one when a cos + b sin <= width / 2 and
    a sin + b cos <= height / 2 (its corners, written in the turned frame), and inside the unturned frame of the
    same size when a <= width / 2 and b <= height / 2. For each a on a fine grid, b is the largest the constraints
    allow; the best area wins.
    """
    cos, sin = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    half_w, half_h = width / 2, height / 2
    a = np.linspace(0, half_w, 1025)[1:]
    b = np.full_like(a, half_h)
    if sin > 1e-9:
        b = np.minimum(b, (half_w - a * cos) / sin)
    if cos > 1e-9:
        b = np.minimum(b, (half_h - a * sin) / cos)
    best = int(np.argmax(a * np.maximum(b, 0)))
    return max(1, math.floor(2 * a[best])), max(1, math.floor(2 * b[best]))


def resized_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RandomResizedCrop to the image's own size, scale (0.5, 1), ratio (3/4, 4/3).

    The box is drawn as torchvision draws it (area share and log-uniform aspect ratio, ten tries), from ``rng``.
    """
    width, height = image.size
    for _ in range(10):
        area = rng.uniform(0.5, 1.0) * width * height
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        box_w, box_h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return F.resized_crop(image, top, left, box_h, box_w, [height, width])
    return image  # torchvision falls back to a centre crop; on square tiles the first try nearly always fits


def chain(*names: str) -> Transform:
    """The named families applied one after the other."""

    def apply(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for name in names:
            image = FAMILIES[name](image, rng)
        return image

    return apply


FAMILIES: dict[str, Transform] = {
    # Found by the check before issue 17 (from _planted.TRANSFORMS).
    **{
        name: TRANSFORMS[name]
        for name in (
            "rot90",
            "flip_h",
            "transpose",
            "invert",
            "half",
            "double",
            "crop",
            "crop_max",
            "crop_corner",
            "grey",
            "jpeg",
        )
    },
    # Photometric, at ColorJitter(0.4, 0.4, 0.4, 0.1) strengths; gamma over the same range.
    "brightness": lambda im, rng: F.adjust_brightness(im, _factor(rng)),
    "contrast": lambda im, rng: F.adjust_contrast(im, _factor(rng)),
    "saturation": lambda im, rng: F.adjust_saturation(im, _factor(rng)),
    "hue": lambda im, rng: F.adjust_hue(im, float(rng.uniform(-HUE, HUE))),
    "gamma": lambda im, rng: F.adjust_gamma(im, float(rng.uniform(0.6, 1.4))),
    "jitter": jitter,
    # Filters.
    "blur": blur,
    "noise": noise,
    "sharpen": lambda im, rng: F.adjust_sharpness(im, float(rng.uniform(2, 4))),
    # Geometric.
    "translate": translate,
    "rotate": rotate((0, 0, 0)),
    "rotate_white": rotate((255, 255, 255)),
    "rotate_reflect": rotate_reflect,
    "rotate_crop": rotate_crop,
    "resized_crop": resized_crop,
}
"""Every copy family by name: each draws its parameters from the rng it is given."""

FAMILIES.update(
    {
        "+".join(names): chain(*names)
        for names in (
            ("flip_h", "brightness"),
            ("flip_h", "blur"),
            ("rot90", "jitter"),
            ("crop", "blur"),
            ("invert", "contrast"),
            ("jpeg", "noise"),
            ("grey", "rotate_crop"),
        )
    }
)
