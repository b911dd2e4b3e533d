"""Shared fixtures: offline environment, a private cache, tiny image folders and benchmark files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests never touch the network and never write into the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["PIECEBOARD_CACHE"] = str(tmp_path_factory.mktemp("pieceboard-cache"))


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, seed: int = 0) -> Path:
    """Class folders of small mixed-size PNG and JPEG images whose colour depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"class_{chr(ord('a') + k)}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(12, 28, size=2)
            base = np.zeros(3)
            base[k % 3] = 200
            pixels = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


def write_benchmark(path: Path, data_path: Path | str, body: str) -> Path:
    """A benchmark file with [benchmark] and [data] filled in and `body` (defaults, runs, matrix) after them."""
    path.write_text(
        f'[benchmark]\nname = "t"\nwandb = "off"\n\n[data]\npath = "{data_path}"\ntest_fraction = 0.25\n\n{body}'
    )
    return path
