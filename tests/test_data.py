"""data.py: scanning, the manifest and split, the decode-once cache and the batch loader."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from pieceboard._image import load_rgb
from pieceboard.config import DataTable
from pieceboard.data import (
    BatchLoader,
    DataError,
    augment,
    build_cache,
    channel_stats,
    make_manifest,
    scan_folder,
    stratified_split,
    to_float,
)


def test_scan_labels_are_sorted_class_folders(image_folder):
    scan = scan_folder(image_folder)
    paths, classes = scan.paths, scan.classes
    assert len(paths) == 36
    assert sorted(set(classes)) == ["class_a", "class_b", "class_c"]
    assert all(p.split("/")[0] == c for p, c in zip(paths, classes, strict=True))


def test_scan_merges_split_folders_and_nested_images(tmp_path):
    make_image_folder(tmp_path / "d" / "train", classes=2, per_class=3)
    make_image_folder(tmp_path / "d" / "test", classes=2, per_class=2, seed=1)
    nested = tmp_path / "d" / "train" / "class_a" / "deeper"
    nested.mkdir()
    Image.new("RGB", (5, 5)).save(nested / "x.png")
    scan = scan_folder(tmp_path / "d")
    paths, classes = scan.paths, scan.classes
    assert len(paths) == 11
    assert set(classes) == {"class_a", "class_b"}
    assert classes[paths.index("train/class_a/deeper/x.png")] == "class_a"


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"only": 3}, "at least two"),
        ({"a": 3, "b": 0}, "holds no images"),
    ],
)
def test_scan_rejects_bad_layouts(tmp_path, layout, message):
    for name, count in layout.items():
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (4, 4)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(DataError, match=message):
        scan_folder(tmp_path)


def test_scan_rejects_loose_images_and_missing_folder(tmp_path, image_folder):
    Image.new("RGB", (4, 4)).save(image_folder / "loose.png")
    with pytest.raises(DataError, match="loose.png is not inside a class folder"):
        scan_folder(image_folder)
    with pytest.raises(DataError, match="is not a folder"):
        scan_folder(tmp_path / "nope")


def test_manifest_skips_undecodable_files_and_writes_csv(tmp_path, image_folder):
    (image_folder / "class_a" / "empty.png").write_bytes(b"")
    good = image_folder / "class_b" / "img_000.png"
    (image_folder / "class_b" / "truncated.png").write_bytes(good.read_bytes()[:60])
    manifest = make_manifest(DataTable(path=str(image_folder), test_fraction=0.25), tmp_path / "out")
    assert sorted(s["path"] for s in manifest.skipped) == ["class_a/empty.png", "class_b/truncated.png"]
    assert all("cannot decode image" in s["reason"] for s in manifest.skipped)
    assert len(manifest.paths) == 36
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "split"]
    assert len(rows) == 36 and {r["split"] for r in rows} == {"train", "test"}
    assert sum(r["split"] == "test" for r in rows) == 9
    # stratified: each class contributes 3 of its 12 images to the test split
    for name in ("class_a", "class_b", "class_c"):
        assert sum(r["split"] == "test" and r["label"] == name for r in rows) == 3


def test_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    a = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(a, stratified_split(labels, 0.2, seed=0))
    assert not np.array_equal(a, stratified_split(labels, 0.2, seed=1))
    assert np.bincount(labels[a]).tolist() == [10, 6, 4, 2]


def test_manifest_is_reused_and_guards_changes(tmp_path, image_folder):
    data = DataTable(path=str(image_folder), test_fraction=0.25, split_seed=3)
    first = make_manifest(data, tmp_path / "out")
    before = (tmp_path / "out" / "manifest.csv").stat().st_mtime_ns
    again = make_manifest(data, tmp_path / "out")
    assert (tmp_path / "out" / "manifest.csv").stat().st_mtime_ns == before
    assert again.paths == first.paths and np.array_equal(again.is_test, first.is_test)
    assert np.array_equal(again.labels, first.labels)
    with pytest.raises(DataError, match=r"split_seed=3.*split_seed=4"):
        make_manifest(DataTable(path=str(image_folder), test_fraction=0.25, split_seed=4), tmp_path / "out")
    Image.new("RGB", (6, 6)).save(image_folder / "class_c" / "new.png")
    with pytest.raises(DataError, match=r"1 image\(s\) added.*class_c/new.png"):
        make_manifest(data, tmp_path / "out")


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


def _loader(indices, batch_size, world=1, rank=0, shuffle=True, seed=0, n=100):
    pixels = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(2, 1).repeat(2, 2).repeat(3, 3)
    labels = np.arange(n, dtype=np.int64) % 7
    return BatchLoader(pixels, labels, indices, batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world)


def test_every_training_image_once_per_epoch_in_seeded_order():
    indices = np.arange(3, 90, 2)
    loader = _loader(indices, batch_size=8)
    seen, orders = [], []
    for epoch in range(2):
        loader.set_epoch(epoch)
        batch_ids = [idx.numpy() for _, _, idx in loader]
        flat = np.concatenate(batch_ids)
        assert sorted(flat.tolist()) == indices.tolist()
        orders.append(loader.order())
        seen.append(flat)
    assert not np.array_equal(orders[0], orders[1])
    again = _loader(indices, batch_size=8)
    again.set_epoch(1)
    assert np.array_equal(again.order(), orders[1])


def test_batches_carry_matching_pixels_and_labels():
    loader = _loader(np.arange(50), batch_size=16)
    for images, labels, idx in loader:
        assert images.shape[1:] == (3, 2, 2) and images.dtype == torch.uint8
        assert torch.equal(images[:, 0, 0, 0].long(), idx)
        assert torch.equal(labels, idx % 7)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [1, 7, 25])
def test_shards_cover_the_split_exactly_once(world, n):
    indices, batch = np.arange(n), 2 * world  # the global batch divides evenly over the processes
    test_shards = [
        np.concatenate(_loader(indices, batch, world, r, shuffle=False).batches() or [[]]) for r in range(world)
    ]
    covered = np.concatenate(test_shards).astype(int)
    assert sorted(covered.tolist()) == list(range(n))  # evaluation: every image exactly once, nothing dropped
    train = [_loader(indices, batch, world, r).batches() for r in range(world)]
    assert len({len(t) for t in train}) == 1  # every process takes the same number of steps
    flat = np.concatenate([b for t in train for b in t]) if train[0] else np.array([], dtype=int)
    assert len(set(flat.tolist())) == len(flat)  # no image twice
    assert len(flat) >= n - (2 * world - 1)  # at most a last batch under 2 images per process is dropped


def test_training_drops_only_a_single_image_tail():
    assert [len(b) for b in _loader(np.arange(17), batch_size=8).batches()] == [8, 8]
    assert [len(b) for b in _loader(np.arange(18), batch_size=8).batches()] == [8, 8, 2]
    assert [len(b) for b in _loader(np.arange(17), batch_size=8, shuffle=False).batches()] == [8, 8, 1]


def test_to_float_normalises_and_augment_is_seeded():
    images = torch.full((4, 3, 6, 6), 255, dtype=torch.uint8)
    x = to_float(images, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert torch.allclose(x, torch.full_like(x, 2.0))
    ramp = torch.arange(6.0).expand(4, 3, 6, 6).clone()
    a = augment(ramp, ["hflip", "crop"], torch.Generator().manual_seed(0))
    b = augment(ramp, ["hflip", "crop"], torch.Generator().manual_seed(0))
    assert a.shape == ramp.shape and torch.equal(a, b) and torch.isfinite(a).all()
    flipped = augment(ramp, ["hflip"], torch.Generator().manual_seed(1))
    for image in flipped:
        assert torch.equal(image, ramp[0]) or torch.equal(image, ramp[0].flip(2))


def test_scan_keeps_split_named_subfolders_and_symlinks_inside_classes(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=3)
    (root / "class_a" / "test").mkdir()
    Image.new("RGB", (5, 5)).save(root / "class_a" / "test" / "x.png")
    os.symlink(root / "class_b" / "img_000.png", root / "class_b" / "link.png")
    scan = scan_folder(root)
    paths, classes = scan.paths, scan.classes
    assert "class_a/test/x.png" in paths and "class_b/link.png" in paths and len(paths) == 8
    assert classes[paths.index("class_a/test/x.png")] == "class_a"


def test_scan_names_archives_and_links_leaving_the_folder(tmp_path):
    import zipfile

    root = make_image_folder(tmp_path / "d", classes=2, per_class=2)
    with zipfile.ZipFile(root / "class_a" / "more.zip", "w") as zf:
        zf.write(root / "class_a" / "img_000.png", "inner.png")
    with pytest.raises(DataError, match=r"more.zip is an archive"):
        scan_folder(root)
    (root / "class_a" / "more.zip").unlink()
    Image.new("RGB", (5, 5)).save(tmp_path / "elsewhere.png")
    os.symlink(tmp_path / "elsewhere.png", root / "class_b" / "out.png")
    paths = scan_folder(root).paths  # a link is listed where it sits, not where it points
    assert "class_b/out.png" in paths


def test_split_keeps_every_class_on_both_sides():
    labels = np.repeat(np.arange(3), [50, 50, 2])
    for seed in range(5):
        is_test = stratified_split(labels, 0.2, seed)
        assert np.bincount(labels[is_test], minlength=3).tolist() == [10, 10, 1]
    tiny = np.repeat(np.arange(3), 2)
    assert np.bincount(tiny[stratified_split(tiny, 0.8, 0)]).tolist() == [1, 1, 1]


def test_to_float_layout_follows_the_model():
    images = torch.from_numpy(np.zeros((2, 4, 4, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    assert to_float(images, [0.5] * 3, [0.5] * 3).is_contiguous(memory_format=torch.channels_last)
    assert to_float(images, [0.5] * 3, [0.5] * 3, channels_last=False).is_contiguous()
