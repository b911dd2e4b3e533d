"""Classify images with a kept model, preprocessed exactly as its cell was trained and tested.

    pieceboard predict results/demo/runs/mlp@32px/model photos/ --top 3 --json predictions.json

    model, transform = pieceboard.load_model("results/demo/runs/mlp@32px/model")
    logits = model(transform("photo.jpg").unsqueeze(0))

A model folder (`runs/<id>/model`, written by `models.save_model_folder`) is timm's layout plus a `pieceboard`
section in `config.json`: the cell's resize method, precision and memory layout. Predicting decodes each file as the
decode-once cache did (`pieceboard._image`: any mode to RGB, EXIF orientation, a squash resize), normalises on the
device as the training loop did (`batches.to_float`) and runs the model in the cell's precision, so that on the
cell's own test images the predicted classes are those of its `predictions.csv`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pieceboard._console import PieceboardError
from pieceboard._image import RESIZE_METHOD, ImageError, load_rgb, squash, to_rgb
from pieceboard.batches import to_float
from pieceboard.models import MODEL_CONFIG, MODEL_WEIGHTS

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Transform:
    """A cell's evaluation preprocessing: decode to upright RGB, squash to `image_size` (bilinear), normalise.

    Attributes:
        image_size: The square side the cell was trained and tested at.
        mean: Per-channel mean, on the 0..1 scale.
        std: Per-channel standard deviation, on the 0..1 scale.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def pixels(self, image: str | os.PathLike[str] | Image.Image) -> np.ndarray:
        """uint8 pixels (image_size, image_size, 3), as the decode-once cache holds them.

        Raises:
            ImageError: A file that cannot be decoded completely.
        """
        if isinstance(image, Image.Image):
            return squash(to_rgb(image), self.image_size)
        return load_rgb(image, self.image_size)

    def normalize(self, pixels: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """A uint8 batch (N, H, W, 3), on any device, as the normalised float NCHW batch the model takes."""
        return to_float(pixels.permute(0, 3, 1, 2), list(self.mean), list(self.std), channels_last)

    def __call__(self, image: str | os.PathLike[str] | Image.Image) -> torch.Tensor:
        """One image (a file or a PIL image) as a normalised float tensor (3, image_size, image_size)."""
        return self.normalize(torch.from_numpy(np.stack([self.pixels(image)])))[0]


def read_model_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The `config.json` of a model folder written by pieceboard.

    Raises:
        PieceboardError: The folder is not such a model folder (one line, naming it).
    """
    folder = Path(folder)
    hint = ""
    if (folder / "model").is_dir():
        hint = f"; did you mean {folder / 'model'}?"
    elif (folder / "runs").is_dir():
        hint = "; a benchmark keeps its models in runs/<id>/model (see leaderboard.json's model_dir)"
    if not folder.is_dir():
        raise PieceboardError(f"{folder}: no such folder")
    if not (folder / MODEL_CONFIG).is_file() or not (folder / MODEL_WEIGHTS).is_file():
        raise PieceboardError(f"{folder}: not a model folder (no {MODEL_CONFIG} and {MODEL_WEIGHTS}){hint}")
    try:
        config = json.loads((folder / MODEL_CONFIG).read_text(encoding="utf-8"))
        about, cfg = config["pieceboard"], config["pretrained_cfg"]
        resize = about["transform"]["resize"]
        _ = about["precision"], about["channels_last"], about["batch_size"], config["label_names"]
        _ = cfg["input_size"], cfg["mean"], cfg["std"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PieceboardError(f"{folder / MODEL_CONFIG}: not a model folder written by pieceboard ({exc!r})") from None
    if resize != RESIZE_METHOD:
        raise PieceboardError(
            f"{folder}: its cell resized images with {resize!r}, this pieceboard with {RESIZE_METHOD!r}; its "
            f"predictions could not be reproduced"
        )
    return config


def load_model(
    folder: str | os.PathLike[str], device: str | torch.device | None = None
) -> tuple[torch.nn.Module, Transform]:
    """A kept model, ready for inference, and the preprocessing its cell used.

    The same model as `timm.create_model(f"local-dir:{folder}", pretrained=True)` (which this calls, after
    registering pieceboard's MLP), in eval mode and the cell's memory layout.

    Args:
        folder: A model folder, `OUTPUT/runs/<id>/model`.
        device: Where to put the model; default the GPU when there is one (as accelerate picks), else the CPU.

    Returns:
        (model, transform): `model(transform(path).unsqueeze(0).to(device))` gives the logits of one image.

    Raises:
        PieceboardError: `folder` is not a model folder written by pieceboard.
    """
    model, transform, _ = _load(folder, device)
    return model, transform


def _load(folder: str | os.PathLike[str], device: str | torch.device | None):
    import timm

    import pieceboard.models  # noqa: F401  (registers pieceboard_mlp with timm)
    from pieceboard.device import device_type

    config = read_model_config(folder)
    device = torch.device(device or device_type())
    model = timm.create_model(f"local-dir:{Path(folder)}", pretrained=True).eval().to(device)
    if config["pieceboard"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    cfg = config["pretrained_cfg"]
    return model, Transform(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"])), config


def image_files(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """The files to classify: each file as named, and every image under each folder (sorted, by the extensions and
    listing rules of a data folder).

    Raises:
        PieceboardError: A path does not exist, or none of them holds an image.
    """
    from pieceboard.data import _image_extensions, _list_files  # the rules `data.scan_folder` reads a folder by

    extensions = _image_extensions()
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():  # listed absolute, named as the user named the folder
            found = [f for f in _list_files(item.resolve()) if os.path.splitext(f)[1].lower() in extensions]
            files += sorted(item / os.path.relpath(f, item.resolve()) for f in found)
        elif item.exists():
            files.append(item)
        else:
            raise PieceboardError(f"{item}: no such file or folder")
    if not files:
        raise PieceboardError(f"no images in {', '.join(map(str, paths))}")
    return files


def predict(
    folder: str | os.PathLike[str],
    paths: list[str | os.PathLike[str]],
    top: int = 1,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Classify images with a kept model, in batches, in the precision and layout its cell was tested with.

    Args:
        folder: A model folder, `OUTPUT/runs/<id>/model`.
        paths: Image files, or folders of them (searched recursively).
        top: How many classes to give per image, most probable first.
        batch_size: Images per forward pass; default the cell's batch size.
        device: Default the GPU when there is one, else the CPU.
        on_skip: Called with one line per image that cannot be decoded (the others go on).

    Yields:
        Per image, in the order of `paths` (folders sorted): `path`, `class` (the name), `index`, `probability`,
        and `top`: the `top` most probable classes as `{class, index, probability}`.

    Raises:
        PieceboardError: Not a model folder, a path that does not exist, or no image at all.
    """
    read_model_config(folder)  # a wrong folder is named before the images are listed
    files = image_files(paths)
    model, transform, config = _load(folder, device)
    about, names = config["pieceboard"], config["label_names"]
    device = next(model.parameters()).device
    dtype = _AUTOCAST.get(about["precision"])
    size = batch_size or about["batch_size"]

    def decode(path: Path) -> np.ndarray | str:
        try:
            return transform.pixels(path)
        except ImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as decoders:  # PIL decodes outside the GIL
        for start in range(0, len(files), size):
            chunk = files[start : start + size]
            decoded = list(decoders.map(decode, chunk))
            for reason in (d for d in decoded if isinstance(d, str)):
                if on_skip:
                    on_skip(reason)
            batch = [(path, pixels) for path, pixels in zip(chunk, decoded, strict=True) if not isinstance(pixels, str)]
            if not batch:
                continue
            x = torch.from_numpy(np.stack([pixels for _, pixels in batch])).to(device)
            x = transform.normalize(x, about["channels_last"])
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x).float()
            probabilities = logits.softmax(dim=1).cpu()
            # Ranked as the cell's evaluation chose its prediction (`train.evaluate`): the highest probability, the
            # first of equal ones (a stable sort).
            order = torch.argsort(probabilities, dim=1, descending=True, stable=True)[:, :top]
            for (path, _), ranked, probs in zip(batch, order.tolist(), probabilities, strict=True):
                best = [{"class": names[i], "index": i, "probability": float(probs[i])} for i in ranked]
                yield {"path": str(path), **best[0], "top": best}
