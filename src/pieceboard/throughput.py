"""`pieceboard throughput`: how fast pieceboard feeds a model, against the ceiling and the original pipeline.

    pieceboard throughput                       # default cases on a generated mixed-size PNG/JPEG folder
    pieceboard throughput --full --data DIR     # also 200 px, on your own folder

For each case (model, image size, batch size, precision), in one process and with the same training step
(`train.train_step` / `optimizer_step`):

- `train_img_s`: pieceboard's loader (decode-once cache, whole batches, seeded order) feeding the step;
- `synthetic_img_s`: the same step on one uint8 batch already on the device: the ceiling;
- `baseline_img_s`: the original study's pipeline (torchvision ImageFolder, PIL Resize + ToTensor + Normalize,
  DataLoader with shuffle), best of num_workers 0/1/2;
- `eval_img_s` against `timm_eval_img_s`, a timm benchmark.py-style loop (no_grad forward on a device-resident
  randn batch), and `cache_img_s`, decoding the folder into the cache from cold.

The ceiling and pieceboard's loader are timed in alternating rounds (median of each), so drift and stalls on a
shared machine hit both sides alike. Ratios: `pipeline_efficiency` = train / synthetic, `speedup_vs_baseline` =
train / baseline, `eval_parity` = eval / timm eval, `stall_fraction` = time waiting for the next batch / training
time.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pieceboard._console import PieceboardError
from pieceboard._io import atomic_write_text, is_complete, staged_folder
from pieceboard.batches import to_float
from pieceboard.cache import build_cache, channel_stats
from pieceboard.config import Cell, TrainSettings
from pieceboard.data import scan_folder
from pieceboard.device import device_type, make_accelerator, resolve_precision, synchronize
from pieceboard.models import probe
from pieceboard.train import RunData, Setup, environment, optimizer_step, setup, train_step

DEFAULT_CASES = [("pieceboard_mlp", 50), ("resnet18", 64), ("mobilenetv3_large_100", 64)]
FULL_CASES = [("pieceboard_mlp", 200), ("resnet18", 200), ("mobilenetv3_large_100", 200)]
ROUNDS = 3  # alternating rounds of the ceiling and of pieceboard's loader (see _interleaved)


@dataclass
class CaseResult:
    """One row of the throughput table (and of the JSON)."""

    model: str
    image_size: int
    batch_size: int
    precision: str
    channels_last: bool
    train_img_s: float
    synthetic_img_s: float
    baseline_img_s: float
    baseline_workers: int
    pipeline_efficiency: float
    speedup_vs_baseline: float
    stall_fraction: float
    eval_img_s: float
    timm_eval_img_s: float
    eval_parity: float
    cache_img_s: float


def generate_folder(root: Path, images: int = 1200, classes: int = 4, seed: int = 0) -> Path:
    """A class-folder tree of mixed-size PNG and JPEG photos-like images (smooth noise), made once."""
    if not is_complete(root):
        with staged_folder(root) as tmp:
            _write_photos(tmp, images, classes, seed)
    return root


def _write_photos(root: Path, images: int, classes: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(96, 385, size=2))
        coarse = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, size=(h, w, 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
        image.save(folder / (f"{i:05d}.png" if i % 2 else f"{i:05d}.jpg"), quality=90)


def _timed(
    steps: Iterator[Any],
    step: Callable[[Any], torch.Tensor],
    sync: Callable[[], None],
    warmup: int,
    seconds: float,
    min_steps: int,
) -> tuple[float, float, float]:
    """Run warm-up steps, then time steps until both `seconds` and `min_steps` are reached.

    Returns:
        (images per second, seconds spent waiting for the next batch, seconds timed).
    """
    for _ in range(warmup):
        step(next(steps))
    sync()
    images = done = 0
    waited = 0.0
    start = time.perf_counter()
    while done < min_steps or time.perf_counter() - start < seconds:
        before = time.perf_counter()
        batch = next(steps)
        waited += time.perf_counter() - before
        loss = step(batch)
        images += len(batch[1])
        done += 1
    loss.item()
    sync()
    elapsed = time.perf_counter() - start
    return images / elapsed, waited, elapsed


def _forever(loader) -> Iterator[Any]:
    """Epoch after epoch of a BatchLoader (reshuffled by epoch) or a DataLoader (reshuffled by itself)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@dataclass
class _Timing:
    """How each measurement of a case is timed (see `_timed`)."""

    warmup: int
    seconds: float
    min_steps: int


def _cold_cache(folder: Path, image_size: int, batch_size: int) -> tuple[RunData, float]:
    """Decode the folder into a cache from cold: the run data, and images cached per second."""
    scan = scan_folder(folder)
    if len(scan.paths) < batch_size:
        raise PieceboardError(f"{folder}: fewer images than one batch of {batch_size}")
    names = sorted(set(scan.classes))
    labels = np.array([names.index(c) for c in scan.classes], dtype=np.int64)
    files = [folder / p for p in scan.paths]
    with tempfile.TemporaryDirectory() as cold:
        started = time.perf_counter()
        pixels = build_cache(files, image_size, root=Path(cold))
        cache_img_s = len(files) / (time.perf_counter() - started)
        pixels = np.array(pixels)  # keep the pixels once the temporary cache folder goes
    everything = np.arange(len(files))
    return RunData(pixels, labels, everything, everything, names, channel_stats(pixels, everything)), cache_img_s


def _baseline(run: Setup, accelerator, folder: Path, image_size: int, timing: _Timing, workers) -> tuple[float, int]:
    """The original study's pipeline feeding the same step: images per second, best of several worker counts."""
    import torchvision
    from torchvision import transforms

    mean, std = run.mean_std
    tf = transforms.Compose(
        [transforms.Resize((image_size, image_size)), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    device = accelerator.device

    def float_step(batch):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return optimizer_step(run.model, run.optimizer, accelerator, x, y)

    best, best_workers = 0.0, 0
    for n in workers:
        # The seed's DataLoader as it was written: default settings (workers restart every epoch, no pinning).
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=run.train_loader.batch_size, shuffle=True, num_workers=n
        )
        rate, _, _ = _timed(_forever(loader), float_step, _sync(device), *astuple(timing))
        if rate > best:
            best, best_workers = rate, n
    return best, best_workers


def _eval_rates(run: Setup, accelerator, image_size: int, timing: _Timing) -> tuple[float, float]:
    """pieceboard's evaluation loop, and a timm benchmark.py-style loop on a device-resident random batch."""
    model, (mean, std), device = run.model, run.mean_std, accelerator.device
    model.eval()

    def eval_step(batch):
        with torch.no_grad(), accelerator.autocast():
            return model(to_float(batch[0], mean, std, run.channels_last)).float().sum()

    ours, _, _ = _timed(_forever(run.test_loader), eval_step, _sync(device), *astuple(timing))
    batch_size = run.test_loader.batch_size
    noise = torch.randn(batch_size, 3, image_size, image_size, device=device)
    if run.channels_last:
        noise = noise.contiguous(memory_format=torch.channels_last)
    timm_batch = (noise, torch.zeros(batch_size))

    def timm_step(batch):
        with torch.no_grad(), accelerator.autocast():
            return model(batch[0]).float().sum()

    timm, _, _ = _timed(iter(lambda: timm_batch, None), timm_step, _sync(device), *astuple(timing))
    return ours, timm


def _interleaved(
    ceiling: Iterator[Any],
    ours: Iterator[Any],
    step: Callable[[Any], torch.Tensor],
    sync: Callable[[], None],
    timing: _Timing,
) -> tuple[float, float, float, float]:
    """The ceiling and pieceboard's loader timed in alternating rounds; each rate is the median over the rounds.

    On a shared machine the speed drifts, and a stall of a few seconds (another tenant, a page-in) can land on one
    side of a ratio measured side by side; alternating puts both sides in the same conditions and the median drops
    a round that caught a stall. `timing` is the budget of each side: it is split over the rounds.

    Returns:
        (ceiling images per second, ours, seconds waiting for the next batch in ours, seconds timed in ours).
    """
    share = _Timing(timing.warmup, timing.seconds / ROUNDS, -(-timing.min_steps // ROUNDS))
    ceiling_rates, our_rates, waited, elapsed = [], [], 0.0, 0.0
    for round_ in range(ROUNDS):
        if round_ == 1:
            share.warmup = 1  # the kernels are warm after the first round; one step refills the caches
        ceiling_rates.append(_timed(ceiling, step, sync, *astuple(share))[0])
        rate, waited_round, elapsed_round = _timed(ours, step, sync, *astuple(share))
        our_rates.append(rate)
        waited, elapsed = waited + waited_round, elapsed + elapsed_round
    return float(np.median(ceiling_rates)), float(np.median(our_rates)), waited, elapsed


def _sync(device) -> Callable[[], None]:
    return functools.partial(synchronize, device)


def measure_case(
    model_name: str,
    image_size: int,
    batch_size: int,
    folder: Path,
    precision: str = "auto",
    seconds: float = 4.0,
    warmup: int = 3,
    min_steps: int = 8,
    workers: tuple[int, ...] = (0, 1, 2),
) -> CaseResult:
    """Measure one case; see the module docstring for what each figure means."""
    timing = _Timing(warmup, seconds, min_steps)
    data, cache_img_s = _cold_cache(folder, image_size, batch_size)
    # The same model, optimizer, loader and step as a benchmark run (train.setup), at a fixed learning rate.
    traits = probe(model_name, image_size)
    precision = resolve_precision(precision, device_type(), traits.depthwise, traits.strided_conv_on_one_pixel)
    settings = TrainSettings(batch_size=batch_size, image_size=image_size, precision=precision, scheduler="none")
    accelerator = make_accelerator(precision)
    run = setup(
        Cell(f"{model_name}@{image_size}px", model_name, model_name, "scratch", None, settings), data, accelerator
    )

    def uint8_step(batch):
        return train_step(run.model, run.optimizer, accelerator, batch[0], batch[1], run.mean_std, run.channels_last)

    fixed = next(iter(run.test_loader))  # the ceiling: one batch already on the device
    synthetic, ours, waited, elapsed = _interleaved(
        iter(lambda: fixed, None), _forever(run.train_loader), uint8_step, _sync(accelerator.device), timing
    )
    baseline, best_workers = _baseline(run, accelerator, folder, image_size, timing, workers)
    ours_eval, timm_eval = _eval_rates(run, accelerator, image_size, timing)
    accelerator.free_memory()
    return CaseResult(
        model=model_name,
        image_size=image_size,
        batch_size=batch_size,
        precision=precision,
        channels_last=bool(run.channels_last),
        train_img_s=ours,
        synthetic_img_s=synthetic,
        baseline_img_s=baseline,
        baseline_workers=best_workers,
        pipeline_efficiency=ours / synthetic,
        speedup_vs_baseline=ours / baseline,
        stall_fraction=waited / elapsed,
        eval_img_s=ours_eval,
        timm_eval_img_s=timm_eval,
        eval_parity=ours_eval / timm_eval,
        cache_img_s=cache_img_s,
    )


def default_seconds() -> float:
    """Timed seconds per measurement: 2 on a GPU (the default cases then take about a minute), 4 on a CPU."""
    return 2.0 if device_type() == "cuda" else 4.0


def run_throughput(
    cases: list[tuple[str, int]],
    folder: Path,
    batch_size: int = 64,
    precision: str = "auto",
    seconds: float | None = None,
    on_case: Callable[[CaseResult], None] | None = None,
    output: Path | None = None,
) -> dict[str, Any]:
    """Measure every case; returns the JSON-ready report (environment and one entry per case).

    `seconds` per measurement defaults to `default_seconds()`. With `output`, the report is written after every
    case, so a run stopped half way keeps what it measured.
    """
    seconds = seconds or default_seconds()
    report = {
        "folder": str(folder),
        "images": len(scan_folder(folder).paths),
        "environment": environment(make_accelerator("no")),
        "cases": [],
    }
    for model_name, size in cases:
        result = measure_case(model_name, size, batch_size, folder, precision=precision, seconds=seconds)
        report["cases"].append(asdict(result))
        if output is not None:
            save_report(report, output)
        if on_case:
            on_case(result)
    return report


def table(report: dict[str, Any]):
    """The report as a rich table."""
    from rich.table import Table

    columns = [
        ("model", "model", "{}"),
        ("image_size", "px", "{}"),
        ("precision", "precision", "{}"),
        ("train_img_s", "pieceboard img/s", "{:.0f}"),
        ("synthetic_img_s", "ceiling img/s", "{:.0f}"),
        ("baseline_img_s", "seed pipeline img/s", "{:.0f}"),
        ("pipeline_efficiency", "efficiency", "{:.2f}"),
        ("speedup_vs_baseline", "speedup", "{:.2f}x"),
        ("stall_fraction", "stall", "{:.1%}"),
        ("eval_img_s", "eval img/s", "{:.0f}"),
        ("eval_parity", "eval parity", "{:.2f}"),
        ("cache_img_s", "cache img/s", "{:.0f}"),
    ]
    out = Table(title=f"throughput on {report['images']} images ({report['folder']})")
    for _, header, _ in columns:
        out.add_column(header, justify="right")
    for case in report["cases"]:
        out.add_row(*(spec.format(case[key]) for key, _, spec in columns))
    return out


def save_report(report: dict[str, Any], path: Path) -> None:
    """Write the JSON report."""
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
