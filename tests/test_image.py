import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pieceboard._image import RESIZE_METHOD, ImageError, load_rgb, to_rgb


def _halves(mode: str, left, right, size: int = 4) -> Image.Image:
    """A size x size image whose left half is ``left`` and right half is ``right``."""
    image = Image.new(mode, (size, size), left)
    image.paste(right, (size // 2, 0, size, size))
    return image


def _load(image: Image.Image, path: Path, size: int = 4) -> np.ndarray:
    image.save(path)
    pixels = load_rgb(path, size)
    assert pixels.shape == (size, size, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous
    return pixels


def _over_white(colour: tuple[int, int, int], alpha: int) -> np.ndarray:
    return np.array([c * alpha / 255 + 255 * (1 - alpha / 255) for c in colour])


def test_resize_squashes_with_bilinear_as_its_name_says(tmp_path):
    # RESIZE_METHOD is part of the cache key: it must describe what load_rgb really does.
    assert RESIZE_METHOD == "squash-bilinear"
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, size=(10, 30, 3), dtype=np.uint8))
    wide.save(tmp_path / "wide.png")
    expected = np.asarray(wide.resize((12, 12), Image.Resampling.BILINEAR))  # whole picture, aspect ignored
    assert np.array_equal(load_rgb(tmp_path / "wide.png", 12), expected)


def test_rgb_png_round_trips_and_resizes(tmp_path):
    image = _halves("RGB", (10, 20, 30), (200, 150, 100))
    pixels = _load(image, tmp_path / "rgb.png")
    assert pixels[0, 0].tolist() == [10, 20, 30]
    assert pixels[3, 3].tolist() == [200, 150, 100]

    squashed = load_rgb(tmp_path / "rgb.png", 9)
    assert squashed.shape == (9, 9, 3)
    assert squashed[4, 0].tolist() == [10, 20, 30]
    assert squashed[4, 8].tolist() == [200, 150, 100]


def test_non_square_image_is_squashed_not_cropped(tmp_path):
    image = Image.new("RGB", (40, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 4, 10))  # a red strip along the left edge must survive
    pixels = _load(image, tmp_path / "wide.png", size=20)
    assert pixels[10, 0].tolist() == [255, 0, 0]
    assert pixels[10, 19].tolist() == [0, 0, 255]


def test_l(tmp_path):
    pixels = _load(_halves("L", 0, 77), tmp_path / "l.png")
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 3].tolist() == [77, 77, 77]


def test_la_transparent_is_white(tmp_path):
    pixels = _load(_halves("LA", (40, 0), (40, 255)), tmp_path / "la.png")
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 3].tolist() == [40, 40, 40]


def test_rgba_half_transparent_blends_with_white(tmp_path):
    colour = (200, 0, 60)
    pixels = _load(_halves("RGBA", (*colour, 128), (*colour, 255)), tmp_path / "rgba.png")
    np.testing.assert_allclose(pixels[0, 0], _over_white(colour, 128), atol=1)  # ~ (227, 127, 157)
    assert pixels[0, 3].tolist() == list(colour)


def test_palette_without_transparency(tmp_path):
    image = _halves("P", 0, 1)
    image.putpalette([255, 0, 0, 0, 128, 0] + [0] * 762)
    pixels = _load(image, tmp_path / "p.png")
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[0, 3].tolist() == [0, 128, 0]


def test_palette_with_transparency_is_white(tmp_path):
    image = _halves("P", 0, 1)
    image.putpalette([255, 0, 0, 0, 128, 0] + [0] * 762)
    path = tmp_path / "p_trns.png"
    image.save(path, transparency=0)
    with Image.open(path) as reopened:
        assert reopened.mode == "P"
        assert "transparency" in reopened.info
    pixels = load_rgb(path, 4)
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 3].tolist() == [0, 128, 0]


def test_cmyk(tmp_path):
    image = Image.new("CMYK", (4, 4), (0, 0, 0, 0))  # no ink: white
    image.paste((255, 0, 0, 0), (0, 0, 2, 4))  # full cyan
    image.paste((0, 0, 0, 255), (2, 0, 4, 2))  # full black
    pixels = _load(image, tmp_path / "cmyk.tif")
    assert pixels[0, 0].tolist() == [0, 255, 255]
    assert pixels[0, 3].tolist() == [0, 0, 0]
    assert pixels[3, 3].tolist() == [255, 255, 255]


def test_cmyk_jpeg(tmp_path):
    pixels = _load(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), tmp_path / "cmyk.jpg", size=8)
    np.testing.assert_allclose(pixels[4, 4], [0, 255, 255], atol=3)


def test_ycbcr():
    image = Image.new("YCbCr", (2, 2), (128, 128, 128))  # mid grey
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    np.testing.assert_allclose(np.asarray(rgb)[0, 0], [128, 128, 128], atol=1)


def test_bilevel(tmp_path):
    pixels = _load(_halves("1", 0, 1), tmp_path / "one.png")
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 3].tolist() == [255, 255, 255]


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 32768], [0, 257]], dtype=np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode in ("I;16", "I")
    pixels = load_rgb(path, 2)
    assert pixels[..., 0].tolist() == [[255, 128], [0, 1]]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()


def test_16bit_big_endian_tiff(tmp_path):
    values = np.array([[65535, 32768], [0, 257]], dtype=">u2")
    image = Image.frombytes("I;16B", (2, 2), values.tobytes())
    path = tmp_path / "sixteen_be.tif"
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "I;16B"
    assert load_rgb(path, 2)[..., 0].tolist() == [[255, 128], [0, 1]]


def test_32bit_int_uses_16bit_range(tmp_path):
    image = Image.fromarray(np.array([[65535, 32768], [0, 70000]], dtype=np.int32))
    assert image.mode == "I"
    path = tmp_path / "int.tif"
    image.save(path)
    # Values beyond 16 bits are clipped to white rather than rescaling the rest.
    assert load_rgb(path, 2)[..., 0].tolist() == [[255, 128], [0, 255]]


def test_float_in_unit_range(tmp_path):
    image = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32))
    assert image.mode == "F"
    path = tmp_path / "unit.tif"
    image.save(path)
    assert load_rgb(path, 2)[..., 2].tolist() == [[0, 128], [255, 64]]


def test_float_above_one_is_scaled_by_max(tmp_path):
    image = Image.fromarray(np.array([[0.0, 1.0], [4.0, 2.0]], dtype=np.float32))
    path = tmp_path / "big.tif"
    image.save(path)
    assert load_rgb(path, 2)[..., 1].tolist() == [[0, 64], [255, 128]]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)

    with Image.open(path) as reopened:
        assert reopened.size == (40, 20)
        upright = to_rgb(reopened)
    assert upright.size == (20, 40)

    pixels = load_rgb(path, 40)
    top_right, top_left = pixels[3, 36].astype(int), pixels[3, 3].astype(int)
    assert top_right[0] > 200 and top_right[1] < 60 and top_right[2] < 60
    assert top_left.min() > 200


def test_to_rgb_leaves_its_input_alone():
    image = Image.new("LA", (2, 2), (10, 0))
    assert to_rgb(image).mode == "RGB"
    assert image.mode == "LA"


def _assert_image_error(path: Path) -> None:
    with pytest.raises(ImageError, match=re.escape(str(path)) + ": cannot decode image"):
        load_rgb(path, 4)


def test_truncated_png_raises(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    whole = tmp_path / "whole.png"
    Image.fromarray(noise).save(whole)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_image_error(truncated)


def test_truncated_png_raises_even_if_pil_was_told_to_load_truncated_images(tmp_path, monkeypatch):
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64), dtype=np.uint8)
    whole = tmp_path / "whole.png"
    Image.fromarray(noise).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:500])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.warns(RuntimeWarning, match="LOAD_TRUNCATED_IMAGES"):
        _assert_image_error(truncated)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_empty_file_raises(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _assert_image_error(empty)


def test_text_file_named_jpg_raises(tmp_path):
    text = tmp_path / "x.jpg"
    text.write_text("this is not a picture\n")
    _assert_image_error(text)


def test_missing_file_raises(tmp_path):
    _assert_image_error(tmp_path / "missing.png")


def test_size_must_be_positive(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (2, 2)).save(path)
    with pytest.raises(ValueError, match="size"):
        load_rgb(path, 0)
