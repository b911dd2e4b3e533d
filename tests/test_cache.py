"""cache.py: the decode-once cache and the training split's statistics."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from pieceboard._image import load_rgb
from pieceboard.cache import CHECK_SIZE, ChangedFile, build_cache, channel_stats, check_images, file_digest
from pieceboard.data import scan_folder


def test_cache_equals_uncached_pixels(image_folder, tmp_path):
    files = [image_folder / p for p in scan_folder(image_folder).paths]
    pixels = build_cache(files, 16, root=tmp_path / "cache", workers=2)
    assert pixels.shape == (36, 16, 16, 3) and pixels.dtype == np.uint8
    for i, path in enumerate(files):
        assert np.array_equal(pixels[i], load_rgb(path, 16))


def test_cache_rebuilds_only_when_content_changes(image_folder, tmp_path):
    files = [image_folder / p for p in scan_folder(image_folder).paths]
    first = build_cache(files, 16, root=tmp_path / "cache")
    marker = os.path.join(os.path.dirname(first.filename), ".complete")
    stamp = os.stat(marker).st_mtime_ns
    os.utime(files[0])  # touched but unchanged: same content, same cache
    again = build_cache(files, 16, root=tmp_path / "cache")
    assert again.filename == first.filename and os.stat(marker).st_mtime_ns == stamp
    assert build_cache(files, 20, root=tmp_path / "cache").filename != first.filename  # new size, new cache
    Image.new("RGB", (16, 16), (255, 255, 255)).save(files[0])  # edited image
    edited = build_cache(files, 16, root=tmp_path / "cache")
    assert edited.filename != first.filename
    assert (edited[0] == 255).all() and np.array_equal(edited[1:], first[1:])


def test_channel_stats_match_numpy():
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    idx = np.arange(0, 40, 3)
    mean, std = channel_stats(pixels, idx, chunk_bytes=5 * 8 * 8 * 3 * 8)  # blocks of 5 images
    ref = pixels[idx].astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(axis=(0, 1, 2))) and np.allclose(std, ref.std(axis=(0, 1, 2)))


def test_a_file_changed_while_it_is_checked_is_refused_and_not_remembered(image_folder, tmp_path):
    # Issue 22: a file truncated while the image check ran was remembered as bad under the digest of its intact
    # content, so it stayed skipped after being restored byte for byte.
    files = [image_folder / p for p in scan_folder(image_folder).paths]
    digests = [file_digest(f) for f in files]  # what the manifest read before the check
    intact = files[5].read_bytes()
    files[5].write_bytes(intact[: len(intact) // 2])  # cut by a copy still under way
    with pytest.raises(ChangedFile) as info:
        check_images(files, digests, tmp_path / "cache")
    assert str(files[5]) in str(info.value) and "still writing to the folder" in str(info.value)
    assert not list((tmp_path / "cache" / "checks").iterdir())  # nothing kept, not even a staging folder
    files[5].write_bytes(intact)
    check = check_images(files, digests, tmp_path / "cache")
    assert check.errors == {} and np.array_equal(check.pixels[5], load_rgb(files[5], CHECK_SIZE))


def test_a_file_changed_since_the_manifest_is_not_cached_as_the_old_content(image_folder, tmp_path):
    files = [image_folder / p for p in scan_folder(image_folder).paths]
    digests = [file_digest(f) for f in files]
    Image.new("RGB", (16, 16), (255, 255, 255)).save(files[0])  # decodable, but other pixels
    with pytest.raises(ChangedFile, match="changed while pieceboard was reading the images"):
        build_cache(files, 16, root=tmp_path / "cache", digests=digests)
    assert not list((tmp_path / "cache" / "pixels").iterdir())
