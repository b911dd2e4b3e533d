"""data.py: scanning, checking, the manifest and the split."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_augmented_folder, make_image_folder, picture_of
from pieceboard.cache import file_digest
from pieceboard.config import DataTable
from pieceboard.data import (
    DataError,
    cross_split,
    grouped_split,
    leaked_test,
    leaked_test_paths,
    make_manifest,
    scan_folder,
    stratified_split,
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


def _random_groups(rng: np.random.Generator, labels: np.ndarray) -> list[list[int]]:
    groups, members = [], {label: list(rng.permutation(np.flatnonzero(labels == label))) for label in set(labels)}
    for label in members:
        pool = members[label]
        while len(pool) >= 3:
            size = int(rng.integers(1, 4))
            group, pool[:] = pool[:size], pool[size:]
            if size > 1:
                groups.append(sorted(int(i) for i in group))
    return groups


@pytest.mark.parametrize("seed", range(12))
def test_grouped_split_keeps_groups_whole_and_classes_on_target(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), rng.integers(20, 60, size=5))
    groups = _random_groups(rng, labels)
    assert groups and max(len(g) for g in groups) == 3
    is_test = grouped_split(labels, groups, 0.2, seed)
    assert not any(is_test[g].any() and not is_test[g].all() for g in groups)  # no group on both sides
    for label in range(5):
        size = int((labels == label).sum())
        n_test = int(is_test[labels == label].sum())
        assert abs(n_test - round(0.2 * size)) <= 1 and 0 < n_test < size
    assert np.array_equal(is_test, grouped_split(labels, groups, 0.2, seed))  # seeded


def test_grouped_split_without_groups_is_the_random_split():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    for seed in range(5):
        assert np.array_equal(grouped_split(labels, [], 0.2, seed), stratified_split(labels, 0.2, seed))


def test_leaks_and_straddling_groups():
    is_test = np.array([True, False, True, True, False, False])
    groups = [[0, 1], [2, 3], [4, 5]]
    assert leaked_test(is_test, groups).tolist() == [True, False, False, False, False, False]
    assert cross_split(is_test, groups) == [[0, 1]]


@pytest.mark.parametrize("split", ["random", "grouped"])
def test_manifest_records_copies_and_what_the_split_leaks(tmp_path, split):
    folder = make_augmented_folder(tmp_path / "aug", classes=3, pictures=6)
    manifest = make_manifest(DataTable(path=str(folder), split=split), tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "manifest.json").read_text())
    pictures = {picture_of(p) for p in manifest.paths}
    truth = sorted(sorted(p for p in manifest.paths if picture_of(p) == pic) for pic in pictures)
    assert sorted(meta["duplicate_groups"]) == truth  # every copy found, nothing else grouped
    side = dict(zip(manifest.paths, manifest.is_test, strict=True))
    straddling = [g for g in truth if len({side[p] for p in g}) == 2]
    assert sorted(meta["cross_split_groups"]) == straddling
    leaked = sorted(p for g in straddling for p in g if side[p])
    assert sorted(meta["leaked_test"]) == leaked
    if split == "grouped":
        assert straddling == [] and leaked == []
    again = make_manifest(DataTable(path=str(folder), split=split), tmp_path / "out")  # reused, groups read back
    assert again.groups == manifest.groups and again.split == split
    with pytest.raises(DataError, match="split='random'|split='grouped'"):
        make_manifest(
            DataTable(path=str(folder), split="random" if split == "grouped" else "grouped"), tmp_path / "out"
        )


def test_the_leak_of_a_folder_from_before_the_check_is_found_from_its_images(tmp_path):
    folder = make_augmented_folder(tmp_path / "aug", classes=3, pictures=6)
    make_manifest(DataTable(path=str(folder), split="random"), tmp_path / "out")
    meta_path = tmp_path / "out" / "manifest.json"
    meta = json.loads(meta_path.read_text())
    assert meta["leaked_test"]  # a random split of this folder leaks
    old = {k: v for k, v in meta.items() if k not in ("leaked_test", "duplicate_groups", "cross_split_groups")}
    meta_path.write_text(json.dumps(old))
    assert leaked_test_paths(tmp_path / "out") == set(meta["leaked_test"])
    (folder / meta["leaked_test"][0]).unlink()  # the images are gone: nothing to say
    assert leaked_test_paths(tmp_path / "out") is None


def test_a_class_of_one_picture_cannot_be_split_without_leaking(tmp_path):
    picture = Image.effect_noise((40, 40), 60).convert("RGB")
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
    for i in range(4):
        picture.save(tmp_path / "d" / "a" / f"{i}.png")  # class a: four copies of one picture
        Image.effect_noise((40, 40), 60).convert("RGB").save(tmp_path / "d" / "b" / f"{i}.png")
    with pytest.raises(DataError, match="every image of class 'a' is a copy of one picture"):
        make_manifest(DataTable(path=str(tmp_path / "d")), tmp_path / "grouped")
    random = make_manifest(DataTable(path=str(tmp_path / "d"), split="random"), tmp_path / "random")
    assert random.leaked().sum() == int(random.is_test[random.labels == 0].sum())  # every test image of a leaks


def test_an_unreadable_image_is_one_line_naming_it(tmp_path, image_folder, monkeypatch):
    # Issue 22: PermissionError traceback. (Tests run as root, who reads everything: the refusal is simulated.)
    import pieceboard.data

    blocked = image_folder / "class_b" / "img_003.jpg"

    def digest(path):
        if path == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return file_digest(path)

    monkeypatch.setattr(pieceboard.data, "file_digest", digest)
    with pytest.raises(DataError) as info:
        make_manifest(DataTable(path=str(image_folder)), tmp_path / "out")
    assert str(info.value) == (
        f"data.path: cannot read {blocked} (Permission denied); make it readable, or move it out of the data folder"
    )


def test_a_class_folder_that_cannot_be_used_says_why(tmp_path, image_folder, monkeypatch):
    # Issue 22: both said "holds no images".
    bad = os.path.join(image_folder, os.fsdecode(b"caf\xe9"))
    os.mkdir(bad)
    Image.new("RGB", (9, 9)).save(os.path.join(bad, "a.png"))
    with pytest.raises(DataError, match="its name is not valid UTF-8, so it cannot be a class name; rename it"):
        scan_folder(image_folder)
    os.rename(bad, image_folder / "locked")
    os.remove(image_folder / "locked" / "a.png")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "locked" and real_access(path, mode))
    with pytest.raises(DataError, match=r"class folder .*locked cannot be read \(permission denied\)"):
        scan_folder(image_folder)


# --- the validation split ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_validation_split_is_grouped_stratified_disjoint_and_stable(tmp_path, seed):
    folder = make_augmented_folder(tmp_path / "aug", classes=3, pictures=8, singles=4)
    data = DataTable(path=str(folder), split_seed=seed, val_fraction=0.25)
    manifest = make_manifest(data, tmp_path / "out")
    splits = manifest.splits
    assert {*splits} == {"train", "val", "test"}
    assert not (manifest.is_val & manifest.is_test).any()  # disjoint from the test split
    assert sorted([*manifest.train_indices, *manifest.val_indices, *manifest.test_indices]) == list(range(84))
    # Grouped: no picture has copies in two splits (train/val, val/test or train/test).
    side: dict[str, set[str]] = {}
    for path, split in zip(manifest.paths, splits, strict=True):
        side.setdefault(picture_of(path), set()).add(split)
    assert all(len(sides) == 1 for sides in side.values())
    assert cross_split(splits, manifest.groups) == []
    # Stratified: each class gives a quarter of its training images, as near as whole groups (3 copies) allow.
    for label in range(3):
        trained = int(((splits != "test") & (manifest.labels == label)).sum())
        held = int((manifest.is_val & (manifest.labels == label)).sum())
        assert held >= 1 and abs(held - round(0.25 * trained)) <= 1, (label, held, trained)
    # The test split is the one the same folder gets without validation.
    plain = make_manifest(DataTable(path=str(folder), split_seed=seed), tmp_path / "plain")
    assert np.array_equal(plain.is_test, manifest.is_test) and not plain.is_val.any()
    # Stable: reused as stored, and drawn the same in another output folder.
    again = make_manifest(data, tmp_path / "out")
    assert np.array_equal(again.is_val, manifest.is_val)
    make_manifest(data, tmp_path / "other")
    assert (tmp_path / "other" / "manifest.csv").read_bytes() == (tmp_path / "out" / "manifest.csv").read_bytes()
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == splits.tolist()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["val_fraction"] == 0.25
    with pytest.raises(DataError, match=r"val_fraction=0.25.*val_fraction=0.1"):
        make_manifest(DataTable(path=str(folder), split_seed=seed, val_fraction=0.1), tmp_path / "out")


def test_random_validation_split_is_exactly_stratified(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=20)
    manifest = make_manifest(DataTable(path=str(folder), split="random", val_fraction=0.2), tmp_path / "out")
    for label in range(3):
        assert int((manifest.is_test & (manifest.labels == label)).sum()) == 4
        assert int((manifest.is_val & (manifest.labels == label)).sum()) == round(0.2 * 16)


def test_a_folder_from_before_the_validation_split_reads_as_without_one(tmp_path, image_folder):
    data = DataTable(path=str(image_folder), test_fraction=0.25)
    first = make_manifest(data, tmp_path / "out")
    meta_path = tmp_path / "out" / "manifest.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "val_fraction"}))
    again = make_manifest(data, tmp_path / "out")
    assert not again.is_val.any() and np.array_equal(again.train_indices, first.train_indices)
    assert set(first.splits) == {"train", "test"}


def test_validation_needs_three_images_per_class_and_a_class_of_several_pictures(tmp_path):
    folder = make_image_folder(tmp_path / "small", classes=2, per_class=2)
    with pytest.raises(DataError, match=r"at least 3 usable images \(one for each split\)"):
        make_manifest(DataTable(path=str(folder), val_fraction=0.2), tmp_path / "a")
    # Class a: one picture held out for testing, the others all copies of one other picture.
    picture = Image.effect_noise((40, 40), 60).convert("RGB")
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
    for i in range(6):
        Image.effect_noise((40, 40), 60).convert("RGB").save(tmp_path / "d" / "b" / f"{i}.png")
    Image.effect_noise((40, 40), 60).convert("RGB").save(tmp_path / "d" / "a" / "single.png")
    for i in range(4):
        picture.save(tmp_path / "d" / "a" / f"{i}.png")
    with pytest.raises(DataError, match="every training image of class 'a' is a copy of one picture"):
        make_manifest(DataTable(path=str(tmp_path / "d"), val_fraction=0.2), tmp_path / "b")


def test_a_test_image_is_leaked_only_by_a_copy_in_the_images_trained_on():
    is_test = np.array([True, False, True, False])
    groups = [[0, 1], [2, 3]]
    trained = np.array([False, True, False, False])  # image 3 is in the validation split
    assert leaked_test(is_test, groups, trained).tolist() == [True, False, False, False]
    assert cross_split(np.array(["test", "train", "test", "val"]), groups) == [[0, 1], [2, 3]]
