"""Fit and evaluate one run of the matrix under `accelerate.Accelerator`.

    accelerator = make_accelerator("auto")          # from pieceboard.device
    outcome = fit(cell, run_data, accelerator, weights_file=None, log=print)

The loop in one breath: seed, build the timm model, prepare it with the optimizer, resume from the cell's checkpoint
if it has one (`pieceboard.checkpoint`), then per epoch train on whole batches from the decode-once cache, evaluate a
whole split exactly once (every process scores its own shard; the shards are gathered, checked for completeness and
scored on every process) and checkpoint. Without a validation split the split evaluated every epoch is the test
split; with one, the curves are validation curves and the test split is scored once, after the last epoch (a tuning
trial is never tested).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
import timm
import timm.optim
import timm.scheduler
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from pieceboard._console import check_stop
from pieceboard._image import RESIZE_METHOD
from pieceboard.batches import RESIDENT_SHARE, BatchLoader, Recipe, resident_copy, to_float
from pieceboard.capture import Capture
from pieceboard.checkpoint import Checkpoints, Progress
from pieceboard.config import Cell, PieceboardError
from pieceboard.device import (
    cpu_has_bf16,
    fused_kwargs,
    peak_memory_mb,
    reset_peak_memory,
    synchronize,
    use_channels_last,
)
from pieceboard.metrics import classification_metrics
from pieceboard.models import build_model, count_gflops, count_parameters, normalization, set_train_mode

AUGMENT_SEED_STRIDE = 7919  # a prime above any process count: seed * stride + rank never collides across runs
LATENCY_WARMUP, LATENCY_REPEATS = 5, 30  # batch-1 inference timings: warm-up calls, then the median of these


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
    device_share: float = RESIDENT_SHARE  # of a GPU's memory the cached images may take (workers share a GPU)
    val_indices: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # empty: no validation


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
    n_test: int  # test images scored: 0 for a tuning trial
    predictions: np.ndarray  # predicted class per image of `positions`
    confidence: np.ndarray  # the softmax probability of that class, image for image
    positions: np.ndarray  # the split the predictions are on: test_indices, or val_indices for a tuning trial
    precision: str
    channels_last: bool
    latency_ms: float
    peak_mem_mb: float
    compile_s: float
    transform: dict[str, Any]
    train_log: list[dict[str, float]]
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained model (unwrapped), to keep
    val_metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's, with a validation split
    n_val: int = 0


class NonFiniteLoss(RuntimeError):
    """Training diverged: the run is recorded as failed."""


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


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean_std: tuple,
    channels_last: bool,
    recipe: Recipe | None = None,
    label_smoothing: float = 0.0,
    clip_grad: float = 0.0,
) -> torch.Tensor:
    """One optimizer step on a uint8 batch already on the device; returns the (undetached) loss.

    `pieceboard throughput` times this same function against other input pipelines, so they compare like for like.
    A `recipe` (augmentation, mixup) turns the batch into the model's input and targets; without one the images are
    only normalised.
    """
    if recipe is None:
        x, targets = to_float(images, *mean_std, channels_last), labels
    else:
        x, targets = recipe(images, labels, *mean_std, channels_last)
    return optimizer_step(model, optimizer, accelerator, x, targets, label_smoothing, clip_grad)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    x: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    clip_grad: float = 0.0,
) -> torch.Tensor:
    """Forward, loss, backward and update on a normalised float batch.

    `targets` are class indices, or class probabilities (after mixup); torch's cross-entropy smooths either.
    `clip_grad` > 0 clips the norm of all gradients (unscaled first under fp16) before the update.
    """
    with accelerator.autocast():
        loss = F.cross_entropy(model(x), targets, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if clip_grad:
        accelerator.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    return loss


def evaluate(
    model: torch.nn.Module,
    loader: BatchLoader,
    accelerator: Accelerator,
    mean_std: tuple,
    expected: np.ndarray,
    channels_last: bool = True,
    capture: Capture | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Score every test image exactly once across all processes.

    Args:
        model: The model; put in eval mode here.
        loader: This process's shard of the test split.
        accelerator: The run's accelerator.
        mean_std: Normalisation.
        expected: Manifest positions of the whole test split, to check the gathered predictions against.
        channels_last: The model's memory layout.
        capture: Full batches through the captured model, when the run captures its steps.

    Returns:
        (positions, predictions, losses, confidence) sorted by manifest position, identical on every process;
        confidence is the softmax probability of the predicted class.

    Raises:
        RuntimeError: The gathered predictions do not cover the test split exactly once.
    """
    model.eval()
    positions, predictions, losses, confidence = [], [], [], []
    with torch.no_grad(), accelerator.autocast():
        for images, labels, index in loader:
            check_stop()
            x = to_float(images, *mean_std, channels_last)
            logits = (capture.infer(x) if capture is not None else model(x)).float()
            losses.append(F.cross_entropy(logits, labels, reduction="none"))
            top, predicted = logits.softmax(dim=1).max(dim=1)
            predictions.append(predicted)
            confidence.append(top)
            positions.append(index.to(accelerator.device))
    device = accelerator.device
    columns = (positions, predictions, losses, confidence)
    empty = torch.empty(0, dtype=torch.float64, device=device)
    local = torch.stack([torch.cat(column).double() if column else empty for column in columns], dim=1)
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
    return got, gathered[:, 1].astype(np.int64), gathered[:, 2], gathered[:, 3]


@dataclass
class Setup:
    """A run ready to train: model and optimizer prepared by accelerate, loaders, normalisation and costs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: BatchLoader
    test_loader: BatchLoader
    mean_std: tuple[list[float], list[float]]
    channels_last: bool
    generator: torch.Generator
    params: int
    trainable_params: int
    gflops: float
    capture: Capture
    val_loader: BatchLoader | None = None  # None without a validation split
    recipe: Recipe | None = None  # None: the batch is only normalised
    ema: timm.utils.ModelEmaV3 | None = None  # the moving average of the weights, which is evaluated when there is one

    def scored_model(self) -> tuple[torch.nn.Module, Capture | None]:
        """The weights an evaluation scores, and the capture to run full batches through (the trained model's)."""
        return (self.ema.module, None) if self.ema is not None else (self.model, self.capture)


def setup(cell: Cell, data: RunData, accelerator: Accelerator, weights_file: str | None = None) -> Setup:
    """Seed, build the timm model, its optimizer and schedule, and the loaders of this process's shard.

    Raises:
        PieceboardError: The training split is too small for one batch.
    """
    s = cell.settings
    set_seed(s.seed)
    model = build_model(cell.model, cell.mode, len(data.class_names), s.image_size, weights_file, s.drop_path)
    mean_std = normalization(model, cell.mode, data.mean_std)
    params, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    channels_last = use_channels_last(model, s.channels_last)
    model = model.to(accelerator.device)
    gflops = count_gflops(model, s.image_size, accelerator.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=s.optimizer, lr=s.lr, weight_decay=s.weight_decay, **fused_kwargs(accelerator.device)
    )
    resident = resident_copy(data.pixels, data.labels, accelerator.device, data.device_share)
    shard = {
        "rank": accelerator.process_index, "world": accelerator.num_processes, "device": accelerator.device,
        "resident": resident,
    }  # fmt: skip
    train_loader = BatchLoader(
        data.pixels, data.labels, data.train_indices, s.batch_size, shuffle=True, seed=s.seed, **shard
    )
    test_loader = BatchLoader(data.pixels, data.labels, data.test_indices, s.batch_size, shuffle=False, **shard)
    val_loader = None
    if len(data.val_indices):
        val_loader = BatchLoader(data.pixels, data.labels, data.val_indices, s.batch_size, shuffle=False, **shard)
    if len(train_loader) == 0:
        raise PieceboardError(
            f"the training split has {len(data.train_indices)} images: too few for one batch of at least 2 images "
            f"per process; add images or lower test_fraction"
        )
    scheduler = _scheduler(optimizer, cell, len(train_loader))
    model, optimizer = accelerator.prepare(model, optimizer)
    # Each process draws its own augmentations (its images differ too), reproducibly for a seed and world size.
    augment_seed = s.seed * AUGMENT_SEED_STRIDE + accelerator.process_index
    generator = torch.Generator(device=accelerator.device)
    generator.manual_seed(augment_seed)
    recipe = None
    if s.augment or s.mixup or s.cutmix:
        recipe = Recipe(s.augment, s.crop_scale, s.mixup, s.cutmix, len(data.class_names), generator, augment_seed)
    # timm's warm-up ramps the decay up from 0 (0.97 after 200 updates): without it, the average of a short benchmark
    # would stay close to the random initial weights. Every process averages its copy of the same weights.
    ema = timm.utils.ModelEmaV3(accelerator.unwrap_model(model), decay=s.ema, use_warmup=True) if s.ema else None
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every full batch has the same shape: tune the kernels once
    full_steps = len(data.train_indices) // s.batch_size * s.epochs
    capture = Capture(model, s.graphs, accelerator.device, s.batch_size // accelerator.num_processes, full_steps)
    return Setup(
        model, optimizer, scheduler, train_loader, test_loader, mean_std, channels_last, generator, params,
        trainable, gflops, capture, val_loader, recipe, ema,
    )  # fmt: skip


@dataclass
class EpochStats:
    """What one pass over the training split measured."""

    train_loss: float
    images: int  # trained on, over all processes
    seconds: float
    wait_s: float  # spent waiting for the next batch
    update: int  # optimizer updates so far, over the whole run
    log: list[dict[str, float]] = field(default_factory=list)  # the train-loss points of this epoch


def train_one_epoch(
    run: Setup,
    cell: Cell,
    accelerator: Accelerator,
    epoch: int,
    update: int,
    log: Callable[[dict[str, Any]], None],
) -> EpochStats:
    """One pass over this process's shard of the training split (epochs count from 1).

    Raises:
        NonFiniteLoss: The loss became NaN or infinite (all processes see the same averaged value and stop).
    """
    s = cell.settings
    set_train_mode(run.model)
    run.train_loader.set_epoch(epoch - 1)
    steps = len(run.train_loader)
    loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    seen = 0
    wait_s = 0.0
    points = []
    started = waited_from = time.perf_counter()
    for step, (images, labels, _) in enumerate(run.train_loader):
        wait_s += time.perf_counter() - waited_from
        check_stop()

        loss = run.capture.step(
            lambda model, images=images, labels=labels: train_step(
                model, run.optimizer, accelerator, images, labels, run.mean_std, run.channels_last, run.recipe,
                s.label_smoothing, s.clip_grad,
            ),
            len(labels),
        )  # fmt: skip
        update += 1
        if run.ema is not None:
            run.ema.update(accelerator.unwrap_model(run.model), step=update)
        if run.scheduler is not None:
            run.scheduler.step_update(update)
        loss_sum += loss.detach().double() * len(labels)
        seen += len(labels)
        if step % s.log_every == 0:
            # Averaged over processes so that all of them agree on a divergence and stop together; .item() waits
            # for the device, hence only every log_every batches.
            value = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            if not math.isfinite(value):
                raise NonFiniteLoss(f"training loss became {value} at epoch {epoch}, step {step + 1}")
            lr = run.optimizer.param_groups[0]["lr"]
            event = {"event": "train", "epoch": epoch, "step": step, "steps": steps, "update": update}
            log(event | {"train/loss": value, "train/lr": lr})
            points.append({"update": update, "epoch": epoch, "step": step, "steps": steps, "loss": value, "lr": lr})
        waited_from = time.perf_counter()
    synchronize(accelerator.device)
    seconds = time.perf_counter() - started
    totals = accelerator.reduce(torch.stack([loss_sum, torch.tensor(float(seen), device=loss_sum.device).double()]))
    train_loss = float(totals[0] / max(totals[1], 1))
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch}")
    return EpochStats(train_loss, int(totals[1]), seconds, wait_s, update, points)


@dataclass
class Scored:
    """One evaluation of a whole split."""

    split: str  # val or test
    positions: np.ndarray  # manifest positions, sorted
    predictions: np.ndarray
    confidence: np.ndarray  # the softmax probability of the predicted class
    loss: float  # mean cross-entropy
    scores: dict[str, Any]  # metrics.classification_metrics
    seconds: float


def score(run: Setup, data: RunData, accelerator: Accelerator, split: str) -> Scored:
    """Evaluate every image of the `val` or `test` split once (the moving average of the weights when there is one)."""
    indices, loader = (data.val_indices, run.val_loader) if split == "val" else (data.test_indices, run.test_loader)
    model, capture = run.scored_model()
    started = time.perf_counter()
    positions, predictions, losses, confidence = evaluate(
        model, loader, accelerator, run.mean_std, indices, run.channels_last, capture
    )
    synchronize(accelerator.device)
    seconds = time.perf_counter() - started
    scores = classification_metrics(predictions, data.labels[positions], len(data.class_names), data.class_names)
    return Scored(split, positions, predictions, confidence, float(losses.mean()), scores, seconds)


def _entry(epoch: int, stats: EpochStats, scored: Scored) -> dict[str, float]:
    # Test curves keep their first names (accuracy, f1_macro); validation curves say so (val_accuracy).
    prefix = "val_" if scored.split == "val" else ""
    return {
        "epoch": epoch,
        "train_loss": stats.train_loss,
        f"{scored.split}_loss": scored.loss,
        f"{prefix}accuracy": scored.scores["accuracy"],
        f"{prefix}f1_macro": scored.scores["f1_macro"],
    }


SCORES = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


def fit(
    cell: Cell,
    data: RunData,
    accelerator: Accelerator,
    weights_file: str | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    checkpoints: Checkpoints | None = None,
    test: bool = True,
) -> FitOutcome:
    """Train one cell, evaluating after every epoch: on the validation split when there is one, else on the test split.

    Args:
        cell: The run with resolved settings.
        data: Cached pixels, labels and split.
        accelerator: From `device.make_accelerator`, with the run's precision.
        weights_file: Pretrained weights (from `models.resolve_weights`) unless the mode is scratch.
        log: Receives `{"event": "train", ...}` every `log_every` batches and `{"event": "epoch", ...}` per epoch;
            both count epochs from 1. `{"event": "note", "text": ...}` is a line for a person (a resume).
        checkpoints: Where the cell resumes from and checkpoints to (`pieceboard.checkpoint`); None for neither.
        test: With a validation split, score the test split once after the last epoch. False for a tuning trial,
            which is never tested: its predictions are then the validation split's.

    Returns:
        The test metrics (of the last epoch, or of the one test evaluation after it), the last epoch's validation
        metrics, the per-epoch history, costs and the predictions.
    """
    log = log or (lambda _: None)
    reset_peak_memory(accelerator.device)
    run = setup(cell, data, accelerator, weights_file)
    curves = "val" if run.val_loader is not None else "test"
    progress = (checkpoints.resume(run, accelerator, log) if checkpoints else None) or Progress()
    started = time.perf_counter() - (progress.history[-1]["elapsed_s"] if progress.history else 0.0)
    for epoch in range(progress.epoch + 1, cell.settings.epochs + 1):
        stats = train_one_epoch(run, cell, accelerator, epoch, progress.update, log)
        progress.update = stats.update
        progress.train_log += stats.log
        progress.train_s, progress.wait_s = progress.train_s + stats.seconds, progress.wait_s + stats.wait_s
        progress.trained_images += stats.images
        scored = score(run, data, accelerator, curves)
        progress.eval_s += scored.seconds
        progress.evaluated += len(scored.positions)
        entry = _entry(epoch, stats, scored) | {
            "lr": run.optimizer.param_groups[0]["lr"],
            "train_s": stats.seconds,
            "elapsed_s": time.perf_counter() - started,
        }
        progress.history.append(entry)
        progress.epoch = epoch
        log({"event": "epoch", "update": progress.update, **entry})
        if checkpoints:
            checkpoints.save(run, accelerator, progress, log)

    val_metrics: dict[str, float] = {}
    if curves == "val":
        val_metrics = {k: scored.scores[k] for k in SCORES} | {"val_loss": scored.loss}
        if test:  # the one look at the test split
            scored = score(run, data, accelerator, "test")
            progress.eval_s += scored.seconds
            progress.evaluated += len(scored.positions)
    metrics: dict[str, float] = {}
    if scored.split == "test":
        metrics = {k: scored.scores[k] for k in SCORES} | {"test_loss": scored.loss, "train_loss": stats.train_loss}
    # predictions come back sorted by manifest position; store them in the split's own order.
    indices = data.test_indices if scored.split == "test" else data.val_indices
    order = np.searchsorted(scored.positions, indices)
    peak = max(progress.peak_mem_mb, peak_memory_mb(accelerator.device))  # before the latency runs (they need less)
    normalize = "dataset" if cell.mode == "scratch" else "pretrained"
    return FitOutcome(
        metrics=metrics,
        per_class=scored.scores["per_class"],
        confusion_matrix=scored.scores["confusion_matrix"],
        history=progress.history,
        params=run.params,
        trainable_params=run.trainable_params,
        gflops=run.gflops,
        train_s=progress.train_s,
        train_img_s=progress.trained_images / progress.train_s if progress.train_s else 0.0,
        eval_img_s=progress.evaluated / progress.eval_s if progress.eval_s else 0.0,
        data_wait_s=progress.wait_s,
        n_train=len(data.train_indices),
        n_test=len(scored.positions) if scored.split == "test" else 0,
        predictions=scored.predictions[order],
        confidence=scored.confidence[order],
        positions=indices,
        precision=accelerator.mixed_precision,
        channels_last=bool(run.channels_last),
        latency_ms=latency_ms(run, accelerator, cell.settings.image_size),
        peak_mem_mb=peak,
        compile_s=run.capture.compile_s,
        transform={"resize": RESIZE_METHOD, "normalize": normalize, "mean": run.mean_std[0], "std": run.mean_std[1]},
        train_log=progress.train_log,
        notes=([run.capture.note] if run.capture.note else []) + progress.notes,
        environment=environment(accelerator),
        model=accelerator.unwrap_model(run.scored_model()[0]),  # the weights that were tested (EMA's, with ema)
        val_metrics=val_metrics,
        n_val=len(data.val_indices),
    )


def latency_ms(run: Setup, accelerator: Accelerator, image_size: int) -> float:
    """Median time of one image's inference (batch 1, eval mode, the run's precision and layout), in ms.

    What a deployment of the model would see per request; eager, since batch-1 serving rarely captures graphs.
    """
    model = accelerator.unwrap_model(run.model).eval()
    # An NCHW view of NHWC memory, as the batch loader gives: channels_last unless the run wants NCHW.
    pixels = torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8, device=accelerator.device)
    x = to_float(pixels.permute(0, 3, 1, 2), *run.mean_std, run.channels_last)
    timings = []
    with torch.no_grad(), accelerator.autocast():
        for i in range(LATENCY_WARMUP + LATENCY_REPEATS):
            synchronize(accelerator.device)
            started = time.perf_counter()
            model(x)
            synchronize(accelerator.device)
            if i >= LATENCY_WARMUP:
                timings.append(time.perf_counter() - started)
    return float(np.median(timings) * 1e3)


def environment(accelerator: Accelerator) -> dict[str, Any]:
    """Versions, device and process count, so a result says where it came from."""
    import accelerate
    import datasets

    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "pieceboard": version("pieceboard"),
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
