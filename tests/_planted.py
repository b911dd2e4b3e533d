"""Synthetic pictures with planted near-duplicate copies, for test_dedup.py and benchmarks/dedup.py.

A picture is a `Scene`: a two-colour gradient background and a few filled shapes, rendered with PIL at a few hundred
pixels with a random aspect ratio. Copies go through the transforms augmentation pipelines apply (`TRANSFORMS`),
alone or chained; siblings are distinct pictures that look almost the same (same background and shapes, one or two
small shapes moved, resized or recoloured). Every image comes back as the pixels pieceboard would cache: converted to
RGB and squashed to a square with the same PIL call as `pieceboard._image.load_rgb`.

    from _planted import planted_set
    pixels, groups = planted_set(n_pictures=100, seed=0)   # groups[i]: which picture image i is a copy of
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]

# Shapes no smaller than this fraction of the picture's side, so that a sibling's changed shape still covers a few
# pixels once the picture is squashed to 64 x 64.
SMALL_SHAPE = (0.08, 0.15)
LARGE_SHAPE = (0.25, 0.5)
# A sibling differs from its family in at least this share of the picture: 0.5 %, about a 7 % x 7 % square, or 20
# pixels once squashed to 64 x 64 (the smallest small shape is 0.64 % of the picture; a triangle in a box is half).
SIBLING_CHANGE = 0.005


@dataclasses.dataclass(frozen=True)
class Shape:
    """A filled shape; the box is (left, top, right, bottom) as fractions of the picture's width and height."""

    kind: str  # "ellipse", "rectangle" or "triangle"
    box: tuple[float, float, float, float]
    colour: tuple[int, int, int]
    small: bool


@dataclasses.dataclass(frozen=True)
class Scene:
    """A picture before rendering: a linear gradient from ``top`` to ``bottom`` along ``angle``, then the shapes."""

    width: int
    height: int
    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    angle: float
    shapes: tuple[Shape, ...]


def random_scene(rng: np.random.Generator, side: tuple[int, int] = (200, 400)) -> Scene:
    """Draw a scene with 2-3 large and 3-6 small shapes and a random size and aspect ratio."""
    width, height = (int(v) for v in rng.integers(side[0], side[1] + 1, size=2))
    shapes = [_random_shape(rng, LARGE_SHAPE, small=False) for _ in range(rng.integers(2, 4))]
    shapes += [_random_shape(rng, SMALL_SHAPE, small=True) for _ in range(rng.integers(3, 7))]
    return Scene(width, height, _colour(rng), _colour(rng), float(rng.uniform(0, 2 * np.pi)), tuple(shapes))


def sibling(scene: Scene, rng: np.random.Generator) -> Scene:
    """A distinct but similar scene: one or two of the small shapes moved, resized or recoloured."""
    small = [i for i, shape in enumerate(scene.shapes) if shape.small]
    shapes = list(scene.shapes)
    for i in rng.choice(small, size=int(rng.integers(1, 3)), replace=False):
        change = rng.choice(["move", "resize", "recolour"])
        shapes[i] = {"move": _move, "resize": _resize, "recolour": _recolour}[change](shapes[i], rng)
    return dataclasses.replace(scene, shapes=tuple(shapes))


def render(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image of its own size."""
    y, x = np.mgrid[0 : scene.height, 0 : scene.width].astype(np.float64)
    along = x / scene.width * np.cos(scene.angle) + y / scene.height * np.sin(scene.angle)
    t = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    top, bottom = np.array(scene.top, dtype=np.float64), np.array(scene.bottom, dtype=np.float64)
    background = top + t[..., None] * (bottom - top)
    image = Image.fromarray(np.rint(background).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        left, top_, right, bottom_ = shape.box
        box = (left * scene.width, top_ * scene.height, right * scene.width, bottom_ * scene.height)
        if shape.kind == "ellipse":
            draw.ellipse(box, fill=shape.colour)
        elif shape.kind == "rectangle":
            draw.rectangle(box, fill=shape.colour)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=shape.colour)
    return image


def squash(image: Image.Image, size: int = 64) -> np.ndarray:
    """The pixels pieceboard caches for an image: RGB, squashed to ``size`` x ``size`` (as `load_rgb` does)."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Round-trip an image through JPEG at the given quality."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Cut the given fractions of the width and height off each side."""
    width, height = image.size
    return image.crop(
        (round(left * width), round(top * height), round((1 - right) * width), round((1 - bottom) * height))
    )


def rescale(image: Image.Image, factor: float) -> Image.Image:
    """Resize the whole image by ``factor`` (what a copy saved at another resolution looks like)."""
    width, height = image.size
    return image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BICUBIC)


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate by an arbitrary angle about the centre, same size, black fill (torchvision's RandomRotation)."""
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


TRANSFORMS: dict[str, Transform] = {
    "rot90": lambda im, rng: im.transpose(Image.Transpose.ROTATE_90),
    "rot180": lambda im, rng: im.transpose(Image.Transpose.ROTATE_180),
    "rot270": lambda im, rng: im.transpose(Image.Transpose.ROTATE_270),
    "flip_h": lambda im, rng: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "flip_v": lambda im, rng: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "transpose": lambda im, rng: im.transpose(Image.Transpose.TRANSPOSE),
    "invert": lambda im, rng: ImageOps.invert(im.convert("RGB")),
    "half": lambda im, rng: rescale(im, 0.5),
    "double": lambda im, rng: rescale(im, 2.0),
    "crop": lambda im, rng: crop(im, *rng.uniform(0.0, 0.1, size=4)),
    "crop_max": lambda im, rng: crop(im, 0.1, 0.1, 0.1, 0.1),
    "crop_corner": lambda im, rng: crop(im, 0.1, 0.1, 0.0, 0.0),
    "grey": lambda im, rng: im.convert("L").convert("RGB"),
    "jpeg50": lambda im, rng: jpeg(im, 50),
    "jpeg": lambda im, rng: jpeg(im, int(rng.integers(50, 96))),
}
"""The transforms each planted copy is made of, by name; random ones draw their parameters from ``rng``."""

# What a copy in a benchmark-sized set goes through: one dihedral or no move, then any of the others.
_DIHEDRAL = ("rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose")
_OTHERS = ("invert", "half", "double", "crop", "grey", "jpeg")

COMBINATIONS: tuple[tuple[str, ...], ...] = (
    ("rot90", "invert"),
    ("flip_h", "crop", "jpeg50"),
    ("half", "rot270", "invert", "jpeg50"),
    ("crop_max", "grey", "flip_v"),
    ("double", "crop_corner", "rot180", "jpeg"),
    ("transpose", "invert", "grey", "half", "jpeg50"),
)
"""Chains of transforms tested as single copies."""


def apply(image: Image.Image, names: Sequence[str], rng: np.random.Generator) -> Image.Image:
    """Apply the named transforms (keys of `TRANSFORMS`, or ``"rotate<degrees>"``) in order."""
    for name in names:
        if name.startswith("rotate"):
            image = rotate(image, float(name[len("rotate") :]))
        else:
            image = TRANSFORMS[name](image, rng)
    return image


def random_chain(rng: np.random.Generator) -> tuple[str, ...]:
    """A random augmentation: a dihedral move (three times in four), then each of the others with chance 0.35."""
    chain: list[str] = []
    if rng.random() < 0.75:
        chain.append(str(rng.choice(_DIHEDRAL)))
    chain += [name for name in _OTHERS if rng.random() < 0.35]
    return tuple(chain) if chain else ("jpeg",)


def planted_set(
    n_pictures: int,
    copies: int = 2,
    siblings: int = 1,
    size: int = 64,
    seed: int = 0,
    side: tuple[int, int] = (200, 400),
) -> tuple[np.ndarray, np.ndarray]:
    """Pictures, each with random copies and with distinct look-alike siblings, as squashed pixels.

    Args:
        n_pictures: How many distinct pictures to draw (each also gets its siblings, which are distinct too).
        copies: Transformed copies of each picture (`random_chain`).
        siblings: Distinct look-alikes of each picture; each comes with one copy of its own, so that the set also
            holds copy pairs of pictures that are almost the same.
        size: Side of the squashed output.
        seed: Everything is drawn from this seed.
        side: Range of the pictures' width and height before squashing.

    Returns:
        The pixels, uint8 of shape (images, size, size, 3), and the ground truth: one group id per image, equal for
        an original and its copies and different for distinct pictures. The order is shuffled.
    """
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    groups: list[int] = []
    for _ in range(n_pictures):
        scene = random_scene(rng, side)
        family = [render(scene)]
        for _ in range(siblings):
            family.append(_visible_sibling(scene, family, rng))
        for picture, n_copies in zip(family, [copies] + [1] * siblings, strict=True):
            group = len(set(groups))
            images.append(squash(picture, size))
            groups.append(group)
            for _ in range(n_copies):
                images.append(squash(apply(picture, random_chain(rng), rng), size))
                groups.append(group)
    order = rng.permutation(len(images))
    return np.stack(images)[order], np.asarray(groups)[order]


def _visible_sibling(scene: Scene, family: list[Image.Image], rng: np.random.Generator) -> Image.Image:
    # A changed shape may end up hidden under a large one, clipped back into place, recoloured to the same
    # brightness (a grey copy could not tell it apart), changed as in an earlier sibling, or so close to the border
    # that a copy's crop cuts it off (the copy would then be a crop of the original): draw again until, against every
    # picture of the family so far, the brightness changed by 40 or more on at least `SIBLING_CHANGE` of the
    # picture, inside the central 80 % that no crop of a copy removes.
    drawn = [_central_brightness(picture) for picture in family]
    while True:
        candidate = render(sibling(scene, rng))
        brightness = _central_brightness(candidate)
        least = SIBLING_CHANGE * candidate.width * candidate.height
        if all((np.abs(brightness - other) >= 40).sum() >= least for other in drawn):
            return candidate


def _central_brightness(picture: Image.Image) -> np.ndarray:
    width, height = picture.size
    central = picture.crop((round(0.1 * width), round(0.1 * height), round(0.9 * width), round(0.9 * height)))
    return np.asarray(central.convert("L"), dtype=np.int16)


def _random_shape(rng: np.random.Generator, extent: tuple[float, float], small: bool) -> Shape:
    width, height = rng.uniform(*extent, size=2)
    left, top = rng.uniform(0, 1 - width), rng.uniform(0, 1 - height)
    kind = str(rng.choice(["ellipse", "rectangle", "triangle"]))
    return Shape(kind, (left, top, left + width, top + height), _colour(rng), small)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _move(shape: Shape, rng: np.random.Generator) -> Shape:
    # Moved by one to two of its own sizes in a random direction, kept inside the picture.
    left, top, right, bottom = shape.box
    width, height = right - left, bottom - top
    angle = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(1.0, 2.0)
    new_left = float(np.clip(left + distance * width * np.cos(angle), 0, 1 - width))
    new_top = float(np.clip(top + distance * height * np.sin(angle), 0, 1 - height))
    return dataclasses.replace(shape, box=(new_left, new_top, new_left + width, new_top + height))


def _resize(shape: Shape, rng: np.random.Generator) -> Shape:
    # Halved or doubled about its centre.
    left, top, right, bottom = shape.box
    factor = 0.5 if rng.random() < 0.5 else 2.0
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half_w, half_h = (right - left) * factor / 2, (bottom - top) * factor / 2
    return dataclasses.replace(shape, box=(cx - half_w, cy - half_h, cx + half_w, cy + half_h))


def _recolour(shape: Shape, rng: np.random.Generator) -> Shape:
    # A colour at least 100 away (Euclidean, RGB), so that the change is visible.
    while True:
        colour = _colour(rng)
        if np.linalg.norm(np.subtract(colour, shape.colour)) >= 100:
            return dataclasses.replace(shape, colour=colour)
