"""Running cells: one in this process (`run_cell`), or several side by side in worker processes (`WorkerPool`).

    python -m pieceboard.jobs     # a worker; pieceboard.bench starts these, never a person

A worker is a fresh Python process (not a fork: CUDA and OpenMP do not survive one) with one device and a fixed
number of CPU threads. It reads a `WorkerSpec` and then one `CellTask` per line on stdin, trains each cell, stores
its result files itself, and reports progress and results as JSON lines on a pipe of its own (stdout stays free for
libraries that print). The parent hands out cells as workers become free, so a slow cell never holds up the queue,
and a worker that dies (out of memory, a crash) fails only the cell it held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pieceboard._console import STOP, PieceboardError, check_stop, one_line
from pieceboard._io import StorageError
from pieceboard.batches import RESIDENT_SHARE
from pieceboard.checkpoint import Checkpoints, saved_epoch
from pieceboard.config import Cell
from pieceboard.data import Manifest, load_manifest
from pieceboard.device import make_accelerator
from pieceboard.models import save_model_folder
from pieceboard.results import CHECKPOINT, MODEL, RunResult, comparable_config, run_dir, save_result
from pieceboard.tracking import Tracker
from pieceboard.train import FitOutcome, NonFiniteLoss, RunData, fit

# Variables through which torchrun and accelerate tell a process it is one rank of many; a worker runs its cell
# alone, so it must not see them.
_DISTRIBUTED_ENV = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE",
)  # fmt: skip


@dataclass
class WorkerSpec:
    """What every cell of a worker shares: where results go, the device and W&B."""

    output: str
    wandb_mode: str
    wandb_project: str
    group: str
    threads: int  # CPU threads of the worker's torch (intra-op)
    sharers: int = 1  # workers on the same device, which share its memory


@dataclass
class CellTask:
    """One cell (or tuning trial) to run, with everything the main process already resolved for it."""

    cell_id: str
    stored_config: dict[str, Any]  # the cell's every setting (`Cell.to_dict`), with the data and tuning keys
    precision: str
    weights: str | None
    pixels: str  # the cache's pixels.npy
    mean_std: list[list[float]] | None  # the training split's, for scratch runs
    cache_s: float
    checkpoint_every: int = 1  # [benchmark] checkpoint_every
    keep_checkpoints: bool = False  # [benchmark] keep_checkpoints
    keep_model: bool = True  # write runs/<id>/model when the cell completes ([benchmark] keep_models is not "none")
    tuning: dict[str, Any] | None = None  # a tuned cell's trials and choice, kept in its result

    def cell(self) -> Cell:
        """The cell this task trains, as its stored configuration describes it."""
        return Cell.from_dict(self.cell_id, self.stored_config)


@dataclass
class Outcome:
    """What `run_cell` gives back: the result and, when it completed, the prediction rows."""

    result: RunResult
    predictions: list[tuple[int, str, str, str, float]] | None = None
    trace: str | None = None  # the last frames of a failure, for the console


# --- one cell, in this process ------------------------------------------------------------------------------------


def run_data(manifest: Manifest, task: CellTask, sharers: int = 1) -> RunData:
    """The data side of a run: its cache (memory-mapped), labels and split; `sharers` processes share its device."""
    pixels = np.load(task.pixels, mmap_mode="r")
    mean_std = (list(task.mean_std[0]), list(task.mean_std[1])) if task.mean_std is not None else None
    return RunData(
        pixels, manifest.labels, manifest.train_indices, manifest.test_indices, manifest.class_names, mean_std,
        task.cache_s, RESIDENT_SHARE / sharers, manifest.val_indices,
    )  # fmt: skip


def run_cell(
    cell: Cell,
    task: CellTask,
    data: RunData,
    manifest: Manifest,
    tracker: Tracker,
    on_event: Callable[[dict[str, Any]], None],
    output: Path,
) -> Outcome:
    """Fit one cell under a fresh Accelerator; an exception becomes a failed result, so that the matrix goes on.

    The cell resumes from its checkpoint when it has a usable one, checkpoints as it trains, and, when it completes,
    writes its model folder (`task.keep_model`; a full disk then costs the folder, not the result). A tuning trial
    (`cell.trial_of`) is never tested: its predictions are the validation split's.

    Raises:
        KeyboardInterrupt: A stop was requested (Ctrl-C, SIGTERM).
        Exception: With several processes, any failure but a divergence (the other processes wait in a
            collective, so the job must end; the failure is recorded first by the main process).
    """
    accelerator = make_accelerator(task.precision)
    folder = run_dir(output, cell.id)
    if accelerator.is_main_process:  # a model of an earlier configuration of this cell must not outlive its result
        shutil.rmtree(folder / MODEL, ignore_errors=True)
    checkpoints = Checkpoints(
        folder / CHECKPOINT, cell.id, comparable_config(task.stored_config), task.precision, task.checkpoint_every
    )
    tracker.start(cell.id, task.stored_config)

    def log(event: dict[str, Any]) -> None:
        tracker.log(event)
        on_event(event)

    try:
        outcome = fit(
            cell, data, accelerator, weights_file=task.weights, log=log, checkpoints=checkpoints,
            test=cell.trial_of is None,
        )  # fmt: skip
    except Exception as exc:
        tracker.finish(failed=True)
        message = f"{type(exc).__name__}: {exc}".strip()
        failed = RunResult(
            id=cell.id, status="failed", config=task.stored_config, error=message, cache_s=task.cache_s,
            precision=task.precision, tuning=task.tuning or {},
        )  # fmt: skip
        if accelerator.num_processes > 1 and not isinstance(exc, NonFiniteLoss):
            if accelerator.is_main_process:
                save_result(output, failed)
            raise
        return Outcome(failed, trace=traceback.format_exc(limit=-3))
    finally:
        accelerator.free_memory()
    if task.keep_model and accelerator.is_main_process:
        try:
            _keep_model(cell, outcome, manifest.class_names, folder / MODEL)
        except StorageError as exc:
            note = f"model of {cell.id} not kept: {exc}"
            outcome.notes.append(note)
            on_event({"event": "note", "text": note})
    outcome.model = None
    validation = {(k if k == "val_loss" else f"val_{k}"): v for k, v in outcome.val_metrics.items()}
    tracker.finish(outcome.metrics | validation | {"train_img_s": outcome.train_img_s, "params": outcome.params})
    measured = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(RunResult) if hasattr(outcome, f.name)}
    result = RunResult(
        id=cell.id, status="completed", config=task.stored_config, cache_s=task.cache_s, tuning=task.tuning or {},
        **measured,
    )  # fmt: skip
    names = manifest.class_names
    rows = [
        (int(i), manifest.paths[i], names[int(data.labels[i])], names[int(p)], round(float(c), 6))
        for i, p, c in zip(outcome.positions, outcome.predictions, outcome.confidence, strict=True)
    ]
    return Outcome(result, rows)


def _keep_model(cell: Cell, outcome: FitOutcome, class_names: list[str], folder: Path) -> None:
    """The trained model as a timm folder, with what `pieceboard predict` needs to preprocess as the cell did."""
    transform = outcome.transform
    about = {
        "run": cell.id,
        "transform": {key: transform[key] for key in ("resize", "normalize")},
        "precision": outcome.precision,
        "channels_last": outcome.channels_last,
        "batch_size": cell.settings.batch_size,
        "metrics": {key: outcome.metrics[key] for key in ("accuracy", "f1_macro")},
    }
    mean_std = (transform["mean"], transform["std"])
    save_model_folder(outcome.model, folder, cell.model, class_names, cell.settings.image_size, mean_std, about)


def store(output: Path, outcome: Outcome, task: CellTask) -> None:
    """Save a cell's result files; then a completed cell's checkpoint is removed, unless it is to be kept."""
    save_result(output, outcome.result, outcome.predictions)
    if outcome.result.status == "completed" and not task.keep_checkpoints:
        shutil.rmtree(run_dir(output, task.cell_id) / CHECKPOINT, ignore_errors=True)


# --- a worker process ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # A worker must not outlive the benchmark that started it, even one killed with SIGKILL (Linux only).
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


_SIGNALLED: list[str] = []  # the signal that asked this worker to stop, for the parent's record


def _on_signal(signum: int, frame: object) -> None:
    _SIGNALLED.append(signal.Signals(signum).name)
    STOP.set()  # the cell stops at its next step; the parent records it as skipped


def worker_main(events_fd: int) -> None:
    """Serve cells read from stdin until it closes; report on `events_fd` (see the module docstring).

    Nothing here ends in a traceback: an error outside a cell's training (the benchmark file or the manifest changed
    since the parent read them, a full disk when storing a result) is sent to the parent as one `fatal` line, and
    the worker exits; the parent decides what it means for the benchmark.
    """
    _die_with_parent()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)  # Ctrl-C reaches the whole process group: stop like the parent
    with os.fdopen(events_fd, "w", buffering=1, encoding="utf-8") as events:

        def send(kind: str, event: dict[str, Any] | None = None, **payload: Any) -> None:
            message = {"kind": kind, **payload} | ({"event": event} if event is not None else {})
            events.write(json.dumps(message) + "\n")

        try:
            spec = WorkerSpec(**json.loads(sys.stdin.readline()))
            import torch

            torch.set_num_threads(spec.threads)
            output = Path(spec.output)
            manifest = load_manifest(output)
            tracker = Tracker(
                spec.wandb_mode, spec.wandb_project, output, spec.group, warn=lambda text: send("note", text=text)
            )
            send("ready")
            for line in sys.stdin:
                task = CellTask(**json.loads(line))
                try:
                    check_stop()
                    data = run_data(manifest, task, spec.sharers)
                    report = functools.partial(send, "event")
                    outcome = run_cell(task.cell(), task, data, manifest, tracker, report, output)
                except KeyboardInterrupt:
                    tracker.finish(failed=True)
                    send("stopped", cell_id=task.cell_id, signal=(_SIGNALLED or ["SIGTERM"])[0])
                    return
                store(output, outcome, task)
                send("done", cell_id=task.cell_id, result=outcome.result.to_dict(), trace=outcome.trace)
        except KeyboardInterrupt:  # a stop before the first cell: nothing to record
            return
        except Exception as exc:
            user = isinstance(exc, PieceboardError)  # the user's input or disk: the parent stops with this line
            send("fatal", error=str(exc) if user else one_line(exc), user=user)
            sys.exit(1)


# --- the pool, in the main process --------------------------------------------------------------------------------


WORKER_COMMAND = [sys.executable, "-m", "pieceboard.jobs"]  # followed by the events pipe's descriptor
START_FAILURES = 3  # workers that may die before they are ready (killed from outside) before the pool gives up


@dataclass
class _Worker:
    process: subprocess.Popen
    slot: int
    task: CellTask | None = None
    ready: bool = False
    fatal: str | None = None  # what the worker reported before it exited, if anything


@dataclass
class PoolEvent:
    """Something a worker reported: `event` (training progress), `done` (a result) or `note` (a line to show)."""

    kind: str
    cell_id: str | None
    event: dict[str, Any] = field(default_factory=dict)
    result: RunResult | None = None
    trace: str | None = None
    text: str | None = None


class WorkerPool:
    """Worker processes, one per slot (a device and a thread count), fed from one queue of cells.

    Every cell handed to the pool gets a `done` event: its result, or a failed or skipped one saying why it did not
    complete (its worker died or was stopped, or no worker could start). A worker that dies or is stopped is replaced
    while cells are left.

    Args:
        spec: What every worker shares; `sharers` is set per slot.
        slots: The CUDA device (or None on a CPU) of each worker.
    """

    def __init__(self, spec: WorkerSpec, slots: list[str | None]):
        self.spec, self.slots = spec, slots
        self.messages: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        self.workers: dict[int, _Worker] = {}
        self._next_id = 0
        self._start_failures = 0

    def _start(self, slot: int) -> None:
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV}
        threads = str(self.spec.threads)
        env |= {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        device = self.slots[slot]
        spec = dataclasses.replace(self.spec, sharers=self.slots.count(device))
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        process = subprocess.Popen(
            [*WORKER_COMMAND, str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            pass_fds=(write_fd,),
            text=True,
        )
        os.close(write_fd)
        worker_id, self._next_id = self._next_id, self._next_id + 1
        self.workers[worker_id] = _Worker(process, slot)
        threading.Thread(target=self._read, args=(worker_id, read_fd), daemon=True).start()
        self._write(self.workers[worker_id], json.dumps(dataclasses.asdict(spec)))

    @staticmethod
    def _write(worker: _Worker, line: str) -> None:
        try:
            worker.process.stdin.write(line + "\n")
            worker.process.stdin.flush()
        except BrokenPipeError:  # it died already: its pipe closing says so next
            pass

    def _read(self, worker_id: int, fd: int) -> None:
        with os.fdopen(fd, encoding="utf-8") as pipe:
            for line in pipe:
                self.messages.put((worker_id, json.loads(line)))
        self.messages.put((worker_id, None))  # the pipe closed: the worker exited or died

    def _assign(self, worker_id: int, tasks: list[CellTask]) -> None:
        worker = self.workers[worker_id]
        if not tasks or STOP.is_set():
            worker.task = None
            with contextlib.suppress(BrokenPipeError):
                worker.process.stdin.close()  # no more work: the worker's loop ends
            return
        worker.task = tasks.pop(0)
        self._write(worker, json.dumps(dataclasses.asdict(worker.task)))

    def run(self, tasks: list[CellTask]) -> Iterator[PoolEvent]:
        """Run every task; yields progress events, notes, and one `done` event per cell, as they happen.

        On a stop (Ctrl-C, SIGTERM) no new cell starts and workers stop their cell at the next step; stopped cells and
        cells never started are left to the caller. Nothing of a worker outlives the pool.

        Raises:
            PieceboardError: A worker found a problem with the user's input or the disk (one line, e.g. a full disk
                when storing a result); the other workers are stopped.
        """
        pending = list(tasks)
        for slot in range(min(len(self.slots), len(pending))):
            self._start(slot)
        forwarded = False
        try:
            while self.workers:
                if STOP.is_set() and not forwarded:
                    forwarded = True
                    for worker in self.workers.values():
                        worker.process.send_signal(signal.SIGTERM)
                try:
                    worker_id, message = self.messages.get(timeout=0.5)  # wake up to forward a stop
                except queue.Empty:
                    continue
                yield from self._handle(worker_id, message, pending)
        finally:
            for worker in self.workers.values():
                worker.process.kill()
                worker.process.wait()

    def _handle(self, worker_id: int, message: dict[str, Any] | None, pending: list[CellTask]) -> Iterator[PoolEvent]:
        worker = self.workers[worker_id]
        if message is None:
            yield from self._exited(worker_id, pending)
            return
        kind = message["kind"]
        if kind == "ready":
            worker.ready = True
            self._assign(worker_id, pending)
        elif kind == "event":
            yield PoolEvent("event", worker.task.cell_id, event=message["event"])
        elif kind == "note":
            yield PoolEvent("note", worker.task.cell_id if worker.task else None, text=message["text"])
        elif kind == "done":
            result = RunResult(**message["result"])
            worker.task = None
            yield PoolEvent("done", message["cell_id"], result=result, trace=message.get("trace"))
            self._assign(worker_id, pending)
        elif kind == "stopped":
            task, worker.task = worker.task, None
            if not STOP.is_set():  # stopped by a signal to the worker alone: the benchmark goes on without its cell
                reason = (
                    f"its worker process was stopped ({message.get('signal', 'SIGTERM')}) before the cell finished; "
                    f"rerun to continue{self._resumes_from(task.cell_id, ' from')}"
                )
                yield self._record(RunResult(id=task.cell_id, status="skipped", config=task.stored_config,
                                             error=reason, cache_s=task.cache_s, tuning=task.tuning or {}))  # fmt: skip
        elif kind == "fatal":
            if message.get("user"):
                raise PieceboardError(message["error"])
            worker.fatal = message["error"]

    def _exited(self, worker_id: int, pending: list[CellTask]) -> Iterator[PoolEvent]:
        """A worker's pipe closed: normally after its stdin closed; else it died, was stopped, or could not start."""
        worker = self.workers.pop(worker_id)
        code = worker.process.wait()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if worker.task is not None:
            yield self._record(_died(worker.task, how, worker.fatal, self._resumes_from(worker.task.cell_id)))
        if not worker.ready:
            self._start_failures += 1
        # A worker that reported an error before it was ready would fail the same way again; one killed would not.
        gave_up = (not worker.ready and worker.fatal is not None) or self._start_failures >= START_FAILURES
        if pending and not STOP.is_set() and not gave_up:
            self._start(worker.slot)
        if pending and not self.workers and not STOP.is_set():  # nobody is left to run them
            why = worker.fatal or how
            for task in list(pending):
                error = f"WorkerDied: no worker process could start to run this cell (the last one ended: {why})"
                yield self._record(RunResult(id=task.cell_id, status="failed", config=task.stored_config,
                                             error=error, cache_s=task.cache_s, tuning=task.tuning or {}))  # fmt: skip
            pending.clear()

    def _resumes_from(self, cell_id: str, lead: str = "; a rerun continues from") -> str:
        """What a rerun of a cell that did not finish continues from (its checkpoint), for its row; "" if none."""
        epoch = saved_epoch(run_dir(Path(self.spec.output), cell_id) / CHECKPOINT)
        return f"{lead} its checkpoint after epoch {epoch}" if epoch else ""

    def _record(self, result: RunResult) -> PoolEvent:
        """A result the worker could not store itself: stored here, and reported as done."""
        save_result(Path(self.spec.output), result)
        return PoolEvent("done", result.id, result=result)


def _died(task: CellTask, how: str, fatal: str | None, resume: str) -> RunResult:
    cause = f": {fatal}" if fatal else "; out of memory is the usual cause" if how == "signal SIGKILL" else ""
    error = f"WorkerDied: the worker process running this cell ended ({how}){cause}{resume}"
    return RunResult(
        id=task.cell_id, status="failed", config=task.stored_config, error=error, cache_s=task.cache_s,
        tuning=task.tuning or {},
    )  # fmt: skip


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
