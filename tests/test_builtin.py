from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pieceboard import builtin
from pieceboard.builtin import BUILTINS, cache_root, is_builtin, materialize, resolve

N_DIGITS = 1797


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    # Built once for the module: writing the 5,391 PNGs takes a couple of seconds.
    return materialize("digits", tmp_path_factory.mktemp("cache"))


def _array(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_digits_tree_layout(digits_root):
    assert digits_root.name == "digits-v2"
    assert digits_root.parent.name == "builtin"
    assert sorted(p.name for p in digits_root.iterdir() if not p.name.startswith(".")) == [str(d) for d in range(10)]
    assert (digits_root / ".complete").is_file()
    assert not [p for p in digits_root.parent.iterdir() if p != digits_root]  # no staging dir left behind

    files = sorted(digits_root.glob("*/*.png"))
    assert len(files) == N_DIGITS * 3
    stems = {p.stem for p in files}
    for index in range(N_DIGITS):
        assert {f"{index:04d}", f"{index:04d}_rot", f"{index:04d}_inv"} <= stems


def test_digits_images_are_32x32_greyscale(digits_root):
    for path in digits_root.glob("*/*.png"):
        with Image.open(path) as image:
            assert image.mode == "L", path
            assert image.size == (32, 32), path


def test_digits_classes_match_sklearn(digits_root):
    from sklearn.datasets import load_digits

    targets = load_digits().target
    for index in (0, 1, 9, 100, N_DIGITS - 1):
        assert (digits_root / str(targets[index]) / f"{index:04d}.png").is_file()


def test_digits_plain_is_the_upscaled_scan(digits_root):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in (0, 1, 42):
        plain = _array(digits_root / str(digits.target[index]) / f"{index:04d}.png")
        scan = np.rint(digits.images[index] * 255 / 16).astype(np.uint8)
        assert plain.max() > 200  # the 0..16 scan is stretched to 0..255
        expected = Image.fromarray(scan).resize((32, 32), Image.Resampling.BICUBIC)
        np.testing.assert_array_equal(plain, np.asarray(expected))


def test_digits_inverted_is_255_minus_plain(digits_root):
    for folder, index in (("0", 0), ("9", 9), ("4", 4)):
        plain = _array(digits_root / folder / f"{index:04d}.png")
        inverted = _array(digits_root / folder / f"{index:04d}_inv.png")
        np.testing.assert_array_equal(inverted, 255 - plain)


def test_digits_rotation_is_a_right_angle_clockwise(digits_root):
    for folder, index in (("0", 0), ("1", 1), ("7", 7)):
        plain = _array(digits_root / folder / f"{index:04d}.png")
        rotated = _array(digits_root / folder / f"{index:04d}_rot.png")
        np.testing.assert_array_equal(rotated, np.rot90(plain, k=-1))  # k=-1: clockwise
        assert not np.array_equal(rotated, plain)


def test_second_materialize_reuses_the_tree(digits_root):
    sample = digits_root / "5" / "0005.png"
    before = (digits_root.stat().st_ino, digits_root.stat().st_mtime_ns, sample.stat().st_mtime_ns)
    again = materialize("digits", digits_root.parent.parent)
    assert again == digits_root
    assert (digits_root.stat().st_ino, digits_root.stat().st_mtime_ns, sample.stat().st_mtime_ns) == before


def _tiny_writer(root: Path) -> None:
    (root / "a").mkdir()
    Image.new("L", (2, 2)).save(root / "a" / "0.png")


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken(root: Path) -> None:
        _tiny_writer(root)
        raise RuntimeError("killed half way")

    monkeypatch.setitem(BUILTINS, "broken", broken)
    with pytest.raises(RuntimeError, match="half way"):
        materialize("broken", tmp_path)
    assert list((tmp_path / "builtin").iterdir()) == []


def test_incomplete_tree_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setitem(BUILTINS, "tiny", _tiny_writer)
    stale = tmp_path / "builtin" / "tiny-v2"
    (stale / "junk").mkdir(parents=True)  # no .complete marker
    assert materialize("tiny", tmp_path) == stale
    assert sorted(p.name for p in stale.iterdir()) == [".complete", "a"]


def test_unknown_name_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="digits") as raised:
        materialize("mnist", tmp_path)
    assert "mnist" in str(raised.value)
    assert not (tmp_path / "builtin").exists()


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PIECEBOARD_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("PIECEBOARD_CACHE")
    assert cache_root() == Path.home() / ".cache" / "pieceboard"


def test_is_builtin():
    assert is_builtin("builtin:digits")
    assert not is_builtin("digits")
    assert not is_builtin("data/builtin:digits")


def test_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("PIECEBOARD_CACHE", str(tmp_path))
    monkeypatch.setitem(BUILTINS, "tiny", _tiny_writer)
    assert resolve("builtin:tiny") == tmp_path / "builtin" / "tiny-v2"
    assert (tmp_path / "builtin" / "tiny-v2" / "a" / "0.png").is_file()
    assert resolve("some/folder") == Path("some/folder")
    assert resolve("~/pictures") == Path.home() / "pictures"
    with pytest.raises(ValueError, match="known: digits"):
        resolve("builtin:nope")


def test_builtins_maps_digits_to_its_writer():
    assert BUILTINS["digits"] is builtin._write_digits
