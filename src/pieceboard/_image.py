"""Decode one image file to RGB pixels for the data cache.

Every image, whatever its mode, ends up as 8-bit RGB so that models see the same kind of input regardless of how the
user's files were saved. Anything that cannot be decoded completely is an error rather than a silently padded image:
a truncated file must not end up in a benchmark as a half-grey picture.
"""

from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["RESIZE_METHOD", "ImageError", "load_rgb", "load_rgb_sized", "squash", "to_rgb"]

RESIZE_METHOD = "squash-bilinear"
"""How `load_rgb` resizes: straight to a square with bilinear resampling, ignoring the aspect ratio (no crop, no pad).

Part of the cache key, so change it whenever the resizing changes.
"""

# Errors PIL raises for unreadable or damaged files. UnidentifiedImageError is an OSError but is listed for clarity;
# EOFError and struct.error escape from some plugins on truncated headers; a decompression bomb is a bad input file,
# not a programming error.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)

_WHITE = (255, 255, 255)
_GREY_16BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("LA", "PA", "RGBA", "RGBa")
# Modes whose transparency lives in info["transparency"] (a palette index or a colour key) instead of a channel.
_KEYED_TRANSPARENCY_MODES = ("1", "L", "P", "RGB", "I", "I;16")


class ImageError(Exception):
    """An image file that cannot be decoded completely."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any mode to 3-channel, 8-bit RGB, upright.

    The EXIF orientation is applied first, so a phone photo stored sideways comes out the way it is displayed.
    Transparent pixels are composited on white. 16-bit greyscale is scaled (not clipped) to 0..255; floating-point
    greyscale is scaled by 255 if its values lie within 0..1, otherwise by 255 / its maximum.

    Args:
        image: The image; it is not modified.

    Returns:
        A new image in mode "RGB" with the displayed orientation.

    Raises:
        ValueError: The mode has no conversion to RGB (e.g. "LAB").
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "La":
        # Premultiplied alpha has no direct conversion to RGBA; going through LA un-premultiplies it.
        image = image.convert("LA")
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _ALPHA_MODES or (mode in _KEYED_TRANSPARENCY_MODES and "transparency" in image.info):
        if mode in ("I", "I;16"):
            # PIL cannot convert 16-bit to RGBA directly; a colour key on 16-bit grey is too rare to be worth more.
            return _grey_16bit_to_rgb(image)
        return _composite_on_white(image.convert("RGBA"))
    if mode in _GREY_16BIT_MODES:
        return _grey_16bit_to_rgb(image)
    if mode == "F":
        return _grey_float_to_rgb(image)
    # 1, L, P, CMYK, YCbCr, HSV: PIL's own conversions are exact for these.
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode an image file completely and resize it to a square of RGB pixels.

    The image is squashed to ``size`` x ``size`` with bilinear resampling (see `RESIZE_METHOD`).

    Args:
        path: The image file.
        size: Side of the square output, in pixels.

    Returns:
        A C-contiguous uint8 array of shape (size, size, 3).

    Raises:
        ImageError: The file is missing, empty, not an image, truncated or otherwise undecodable.
        ValueError: ``size`` is not positive.
    """
    return load_rgb_sized(path, size)[0]


def load_rgb_sized(
    path: str | os.PathLike[str], size: int, data: bytes | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """`load_rgb`, and the image's own (width, height) as displayed (after the EXIF orientation).

    `data`, when given, is the file's content already read (errors still name `path`).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    _require_strict_decoding()
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            # load() decodes every byte now; lazily decoded images would only fail (or not) much later.
            image.load()
            rgb = to_rgb(image)
        pixels = squash(rgb, size)
    except _DECODE_ERRORS as error:
        raise ImageError(f"{os.fspath(path)}: cannot decode image ({error})") from error
    return pixels, rgb.size


def squash(rgb: Image.Image, size: int) -> np.ndarray:
    """An RGB image resized straight to ``size`` x ``size`` with bilinear resampling (see `RESIZE_METHOD`).

    Returns:
        A C-contiguous uint8 array of shape (size, size, 3).
    """
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


def _require_strict_decoding() -> None:
    # PIL's switch is process-wide; if any other import turned it on, truncated files would decode "successfully"
    # with grey padding and poison the cache. Turning it back off is the lesser evil.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was enabled; pieceboard turned it off so that truncated images "
            "are reported instead of being padded",
            RuntimeWarning,
            stacklevel=3,
        )
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_16bit_to_rgb(image: Image.Image) -> Image.Image:
    # Mode "I" is 32-bit but in practice holds 16-bit samples (16-bit PNG and TIFF open as "I" in older Pillows), so
    # it gets the same 0..65535 range; anything outside it is clipped.
    values = np.asarray(image).astype(np.float64)
    scaled = np.clip(values, 0, 65535) * (255.0 / 65535.0)
    return _grey_to_rgb(scaled)


def _grey_float_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    peak = float(values.max()) if values.size else 0.0
    # Floats in 0..1 are a normalised image; anything larger has no declared range, so its own maximum is white.
    scale = 255.0 if peak <= 1.0 else 255.0 / peak
    return _grey_to_rgb(values * scale)


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    grey = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.stack([grey, grey, grey], axis=-1)))
