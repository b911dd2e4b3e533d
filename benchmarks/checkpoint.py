"""What a per-epoch checkpoint costs against the epoch it follows, in one process: resnet18 at 64 px by default.

    .venv/bin/python benchmarks/checkpoint.py [--model resnet18] [--image-size 64] [--images 4314] [--threads 1]
                                              [--repeats 5] [--output results/checkpoint.json]

It trains one epoch of a cell (train.setup + train.train_one_epoch, the code a benchmark runs, on `--images` random
images: the time of a step does not depend on what the pixels show; 4,314 is the training split of builtin:digits),
then takes the checkpoint a benchmark takes after it (`checkpoint.Checkpoints.save`: state dicts, serialisation, the
free-space check and the atomic writes into OUTPUT/runs/<id>/checkpoint) `--repeats` times, restores it once into
the run (`Checkpoints.resume`), and writes the cell's model folder once (`models.save_model_folder`). Figures are
seconds and MB, and the checkpoint's seconds as a share of the epoch's training seconds, measured in the same run.
One thread by default: what each cell gets on a CPU (`threads = "auto"`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pieceboard.checkpoint import Checkpoints, Progress
from pieceboard.config import Cell, TrainSettings
from pieceboard.device import device_type, make_accelerator, resolve_precision
from pieceboard.models import probe, save_model_folder
from pieceboard.train import RunData, setup, train_one_epoch


def measure(model: str, image_size: int, images: int, repeats: int, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    n_test = max(1, images // 4)
    pixels = rng.integers(0, 256, size=(images + n_test, image_size, image_size, 3), dtype=np.uint8)
    labels = np.arange(images + n_test) % 10
    data = RunData(
        pixels, labels, np.arange(images), np.arange(images, images + n_test), [str(i) for i in range(10)],
        ([0.5] * 3, [0.25] * 3),
    )  # fmt: skip
    traits = probe(model, image_size)
    precision = resolve_precision("auto", device_type(), traits.depthwise, traits.strided_conv_on_one_pixel)
    settings = TrainSettings(epochs=10, batch_size=32, image_size=image_size, precision=precision)
    cell = Cell("bench", "bench", model, "scratch", None, settings)
    accelerator = make_accelerator(precision)
    run = setup(cell, data, accelerator)
    stats = train_one_epoch(run, cell, accelerator, 1, 0, lambda event: None)

    checkpoints = Checkpoints(folder / "runs" / "bench" / "checkpoint", "bench", cell.to_dict(), precision, every=1)
    progress = Progress(epoch=1, update=stats.update, train_s=stats.seconds, trained_images=stats.images)
    saves = []
    for _ in range(repeats):
        started = time.perf_counter()
        checkpoints.save(run, accelerator, progress, print)
        saves.append(time.perf_counter() - started)
    size = (checkpoints.folder / "epoch-1.pt").stat().st_size
    started = time.perf_counter()
    assert checkpoints.resume(run, accelerator, lambda event: None) is not None
    resume_s = time.perf_counter() - started

    model_folder = folder / "runs" / "bench" / "model"
    started = time.perf_counter()
    save_model_folder(
        accelerator.unwrap_model(run.model), model_folder, model, data.class_names, image_size, run.mean_std,
        {"run": "bench"},
    )  # fmt: skip
    model_s = time.perf_counter() - started
    model_mb = sum(p.stat().st_size for p in model_folder.iterdir()) / 2**20
    checkpoint_s = statistics.median(saves)
    return {
        "model": model, "image_size": image_size, "images": images, "precision": precision,
        "threads": torch.get_num_threads(), "epoch_train_s": stats.seconds, "checkpoint_s": checkpoint_s,
        "checkpoint_s_all": saves, "checkpoint_mb": size / 2**20, "share_of_epoch": checkpoint_s / stats.seconds,
        "resume_s": resume_s, "model_folder_s": model_s, "model_folder_mb": model_mb,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=4314, help="training images in the epoch (default 4314)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a cell on a CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="checkpoints taken; the median is reported")
    parser.add_argument("--output", default="results/checkpoint.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(
        dir=Path(args.output).parent if Path(args.output).parent.is_dir() else None
    ) as tmp:
        report = measure(args.model, args.image_size, args.images, args.repeats, Path(tmp))
    print(
        f"{report['model']}@{report['image_size']}px ({report['precision']}, {report['threads']} thread(s)): "
        f"epoch of {report['images']} images {report['epoch_train_s']:.1f} s; "
        f"checkpoint {report['checkpoint_mb']:.0f} MB in {report['checkpoint_s']:.2f} s "
        f"({100 * report['share_of_epoch']:.2f} % of the epoch); "
        f"resume {report['resume_s']:.2f} s; model folder {report['model_folder_mb']:.0f} MB in "
        f"{report['model_folder_s']:.2f} s"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
