"""Fit and evaluate one run of the matrix under `accelerate.Accelerator`.

    accelerator = make_accelerator("auto")
    outcome = fit(cell, run_data, accelerator, weights_file=None, log=print)

The loop in one breath: seed, build the timm model, prepare it with the optimizer, then per epoch train on whole
batches from the decode-once cache and evaluate the full test split exactly once (every process scores its own
shard; the shards are gathered, checked for completeness and scored on every process).
"""

from __future__ import annotations

import math
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm
import timm.optim
import timm.scheduler
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from pieceboard.config import Cell, PieceboardError
from pieceboard.data import BatchLoader, augment, to_float
from pieceboard.metrics import classification_metrics
from pieceboard.models import build_model, count_parameters, is_convnet, normalization, set_train_mode

# DDP warns once per run when a 1x1 convolution's gradient comes out in another stride order than its bucket;
# it costs a copy, not correctness.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


@dataclass
class RunData:
    """What a run needs from the data side: cached pixels, labels and the split."""

    pixels: np.ndarray
    labels: np.ndarray
    train_indices: np.ndarray
    test_indices: np.ndarray
    class_names: list[str]
    mean_std: tuple[list[float], list[float]] | None  # the training split's; needed by scratch runs only
    cache_s: float = 0.0


@dataclass
class FitOutcome:
    """Everything a run measured; `results.RunResult` stores it."""

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    confusion_matrix: list[list[int]]
    history: list[dict[str, float]]
    params: int
    trainable_params: int
    gflops: float
    train_s: float
    train_img_s: float
    eval_img_s: float
    data_wait_s: float
    n_train: int
    n_test: int
    predictions: np.ndarray  # predicted class per test image, in test_indices order
    precision: str
    channels_last: bool
    environment: dict[str, Any] = field(default_factory=dict)


# Set by `pieceboard.bench`'s SIGINT/SIGTERM handler. Raising KeyboardInterrupt from inside a signal handler can land
# in a finalizer or a torch callback, where it is swallowed or turned into another error; the loop checks this flag
# between steps instead and stops at a clean point.
STOP = threading.Event()


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop was requested."""
    if STOP.is_set():
        raise KeyboardInterrupt("stop requested")


class NonFiniteLoss(RuntimeError):
    """Training diverged: the run is recorded as failed."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16), so bf16 autocast is faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(requested: str, device_type: str, depthwise: bool = False) -> str:
    """The precision a run uses.

    `auto`: `accelerate launch --mixed_precision X` when given; otherwise bf16 on a GPU that supports it, fp16 on
    an older GPU; on a CPU with AMX or AVX512-BF16, bf16 unless the model uses depthwise convolutions (measured with
    `pieceboard throughput` on such a CPU: bf16 made resnet18 and the MLP 1.5-1.9x faster, but MobileNetV3 2x slower
    at 64 px and no faster at 200 px); fp32 ("no") on other CPUs.

    Raises:
        PieceboardError: fp16 on a CPU (autocast would silently train in fp32 there).
    """
    if requested == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launched in ("bf16", "fp16"):
            requested = launched
        elif device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            return "bf16" if cpu_has_bf16() and not depthwise else "no"
    if requested == "fp16" and device_type != "cuda":
        raise PieceboardError(
            f'precision = "fp16" needs a GPU (this run is on {device_type}); use "bf16", "no" or "auto"'
        )
    return requested


def device_type() -> str:
    """The device accelerate will pick: cuda unless absent or ACCELERATE_USE_CPU is set."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def make_accelerator(precision: str) -> Accelerator:
    """An Accelerator for one run; each run may ask for its own precision."""
    # AcceleratorState fixes mixed precision for the process; reset it (keeping the process group) per run.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, cpu=device_type() == "cpu")


def _scheduler(optimizer, cell: Cell, steps_per_epoch: int):
    s = cell.settings
    if s.scheduler == "none":
        return None
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer,
        sched=s.scheduler,
        num_epochs=s.epochs,
        decay_epochs=max(1, s.epochs // 3),  # step: divide the LR by 10 at each third of training
        decay_rate=0.1,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.lr * 0.01,
        step_on_epochs=False,  # updated every step, so short benchmarks still follow the curve
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler


def use_channels_last(model: torch.nn.Module, setting: bool | str) -> bool:
    """channels_last for convnets unless the run says `false`. `auto` = every convnet: measured with the training
    step on a 2-core AMX CPU, it made resnet18 7% (64 px) to 37% (200 px) and MobileNetV3 70-76% faster."""
    return is_convnet(model) and (setting == "auto" or setting is True)


def fused_kwargs(device: torch.device) -> dict[str, bool]:
    """Fused optimizer kernels where torch has them: on this kind of 2-core CPU, fused Adam made the MLP's whole
    training step 2-4x faster than the default per-tensor loop (measured with `pieceboard throughput`)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def _gflops(model: torch.nn.Module, image_size: int, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def synchronize(accelerator: Accelerator) -> None:
    """Wait for queued device work, so that wall-clock timings include it."""
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize(accelerator.device)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean_std: tuple,
    channels_last: bool,
    augmentations: list[str] | tuple = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One optimizer step on a uint8 batch already on the device; returns the (undetached) loss.

    `pieceboard throughput` times this same function against other input pipelines, so they compare like for like.
    """
    x = to_float(images, *mean_std, channels_last)
    if augmentations:
        x = augment(x, list(augmentations), generator)
    return optimizer_step(model, optimizer, accelerator, x, labels)


def optimizer_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator, x: torch.Tensor, labels
) -> torch.Tensor:
    """Forward, loss, backward and update on a normalised float batch."""
    with accelerator.autocast():
        loss = F.cross_entropy(model(x), labels)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    return loss


def evaluate(
    model: torch.nn.Module,
    loader: BatchLoader,
    accelerator: Accelerator,
    mean_std: tuple,
    expected: np.ndarray,
    channels_last: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score every test image exactly once across all processes.

    Returns:
        (positions, predictions, losses) sorted by manifest position, identical on every process.

    Raises:
        RuntimeError: The gathered predictions do not cover the test split exactly once.
    """
    model.eval()
    positions, predictions, losses = [], [], []
    with torch.no_grad(), accelerator.autocast():
        for images, labels, index in loader:
            check_stop()
            logits = model(to_float(images, *mean_std, channels_last)).float()
            losses.append(F.cross_entropy(logits, labels, reduction="none"))
            predictions.append(logits.argmax(dim=1))
            positions.append(index.to(accelerator.device))
    device = accelerator.device
    local = torch.stack(
        [
            torch.cat(positions).double() if positions else torch.empty(0, dtype=torch.float64, device=device),
            torch.cat(predictions).double() if predictions else torch.empty(0, dtype=torch.float64, device=device),
            torch.cat(losses).double() if losses else torch.empty(0, dtype=torch.float64, device=device),
        ],
        dim=1,
    )
    # Our loader shards without padding, so shards may differ by a few rows: pad with -1, gather, drop padding.
    padded = accelerator.pad_across_processes(local, dim=0, pad_index=-1)
    gathered = accelerator.gather(padded).cpu().numpy()
    gathered = gathered[gathered[:, 0] >= 0]
    gathered = gathered[np.argsort(gathered[:, 0], kind="stable")]
    got = gathered[:, 0].astype(np.int64)
    if len(got) != len(expected) or not np.array_equal(got, np.sort(expected)):
        raise RuntimeError(
            f"evaluation scored {len(got)} images ({len(np.unique(got))} distinct) but the test split has "
            f"{len(expected)}: predictions would be wrong, so the run stops"
        )
    return got, gathered[:, 1].astype(np.int64), gathered[:, 2]


def fit(
    cell: Cell,
    data: RunData,
    accelerator: Accelerator,
    weights_file: str | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> FitOutcome:
    """Train one cell and evaluate it after every epoch.

    Args:
        cell: The run with resolved settings.
        data: Cached pixels, labels and split.
        accelerator: From `make_accelerator`, with the run's precision.
        weights_file: Pretrained weights (from `models.resolve_weights`) unless the mode is scratch.
        log: Receives `{"event": "train", ...}` every `log_every` batches and `{"event": "epoch", ...}` per epoch.

    Returns:
        Metrics of the last epoch, per-epoch history, costs and the test predictions.
    """
    s = cell.settings
    log = log or (lambda _: None)
    set_seed(s.seed)
    num_classes = len(data.class_names)
    model = build_model(cell.model, cell.mode, num_classes, s.image_size, weights_file)
    mean_std = normalization(model, cell.mode, data.mean_std)
    params, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    channels_last = use_channels_last(model, s.channels_last)
    model = model.to(accelerator.device)
    gflops = _gflops(model, s.image_size, accelerator.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=s.optimizer, lr=s.lr, weight_decay=s.weight_decay, **fused_kwargs(accelerator.device)
    )
    shard = {"rank": accelerator.process_index, "world": accelerator.num_processes, "device": accelerator.device}
    train_loader = BatchLoader(
        data.pixels, data.labels, data.train_indices, s.batch_size, shuffle=True, seed=s.seed, **shard
    )
    test_loader = BatchLoader(data.pixels, data.labels, data.test_indices, s.batch_size, shuffle=False, **shard)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise PieceboardError(
            f"the training split has {len(data.train_indices)} images: too few for one batch of at least 2 images "
            f"per process; add images or lower test_fraction"
        )
    scheduler = _scheduler(optimizer, cell, steps_per_epoch)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Each process draws its own augmentations (its images differ too), reproducibly for a seed and world size.
    generator = torch.Generator(device=accelerator.device).manual_seed(s.seed * 7919 + accelerator.process_index)

    history: list[dict[str, float]] = []
    train_s = eval_s = wait_s = 0.0
    trained_images = 0
    started = time.perf_counter()
    update = 0
    for epoch in range(s.epochs):
        set_train_mode(model)
        train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
        seen = 0
        epoch_start = time.perf_counter()
        waited_from = epoch_start
        for step, (images, labels, _) in enumerate(train_loader):
            wait_s += time.perf_counter() - waited_from
            check_stop()
            loss = train_step(
                model, optimizer, accelerator, images, labels, mean_std, channels_last, s.augment, generator
            )
            update += 1
            if scheduler is not None:
                scheduler.step_update(update)
            loss_sum += loss.detach().double() * len(labels)
            seen += len(labels)
            if step % s.log_every == 0:
                # Averaged over processes so that all of them agree on a divergence and stop together; .item()
                # waits for the device, hence only every log_every batches.
                value = accelerator.reduce(loss.detach().float(), reduction="mean").item()
                if not math.isfinite(value):
                    raise NonFiniteLoss(f"training loss became {value} at epoch {epoch + 1}, step {step + 1}")
                lr = optimizer.param_groups[0]["lr"]
                log(
                    {
                        "event": "train",
                        "epoch": epoch,
                        "step": step,
                        "steps": steps_per_epoch,
                        "update": update,
                        "train/loss": value,
                        "train/lr": lr,
                    }
                )
            waited_from = time.perf_counter()
        synchronize(accelerator)
        epoch_train_s = time.perf_counter() - epoch_start
        train_s += epoch_train_s
        totals = accelerator.reduce(torch.stack([loss_sum, torch.tensor(float(seen), device=loss_sum.device).double()]))
        train_loss = float(totals[0] / max(totals[1], 1))
        trained_images += int(totals[1])
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch + 1}")

        eval_start = time.perf_counter()
        positions, predictions, losses = evaluate(
            model, test_loader, accelerator, mean_std, data.test_indices, channels_last
        )
        synchronize(accelerator)
        eval_s += time.perf_counter() - eval_start
        scores = classification_metrics(predictions, data.labels[positions], num_classes, data.class_names)
        entry = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "test_loss": float(losses.mean()),
            "accuracy": scores["accuracy"],
            "f1_macro": scores["f1_macro"],
            "lr": optimizer.param_groups[0]["lr"],
            "train_s": epoch_train_s,
            "elapsed_s": time.perf_counter() - started,
        }
        history.append(entry)
        log({"event": "epoch", "update": update, **entry})

    metrics = {k: scores[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")}
    metrics |= {"test_loss": history[-1]["test_loss"], "train_loss": history[-1]["train_loss"]}
    # predictions come back sorted by manifest position; store them in test_indices order.
    order = np.searchsorted(positions, data.test_indices)
    return FitOutcome(
        metrics=metrics,
        per_class=scores["per_class"],
        confusion_matrix=scores["confusion_matrix"],
        history=history,
        params=params,
        trainable_params=trainable,
        gflops=gflops,
        train_s=train_s,
        train_img_s=trained_images / train_s if train_s else 0.0,
        eval_img_s=len(data.test_indices) * s.epochs / eval_s if eval_s else 0.0,
        data_wait_s=wait_s,
        n_train=len(data.train_indices),
        n_test=len(positions),
        predictions=predictions[order],
        precision=accelerator.mixed_precision,
        channels_last=bool(channels_last),
        environment=environment(accelerator),
    )


def environment(accelerator: Accelerator) -> dict[str, Any]:
    """Versions, device and process count, so a result says where it came from."""
    import accelerate
    import datasets

    import pieceboard

    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "pieceboard": pieceboard.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "device": device.type,
        "device_name": name,
        "processes": accelerator.num_processes,
        "precision": accelerator.mixed_precision,
        "threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
    }
