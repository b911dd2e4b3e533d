"""Run a benchmark: check the data, train every cell of the matrix that has no result yet, write the leaderboard.

    python -m pieceboard.bench benchmarks/demo.toml [--output DIR] [--set KEY=VALUE ...] [--jobs N] [--dry-run]
    accelerate launch -m pieceboard.bench benchmarks/demo.toml
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m pieceboard.bench benchmarks/demo.toml

One process (the usual case) runs the cells in `jobs` worker processes side by side (pieceboard.jobs); under a
launcher with several processes, every process trains each cell together (`parallel = "data"`) or each runs its
own share of the cells (`parallel = "cells"`). With `[tune]`, every cell's trials run first, the same way (they are
cells too); each cell then trains with the values its trials chose on the validation split (pieceboard.tune).

Exit codes: 0 every run completed; 1 some run did not complete (it failed, or its worker died or was stopped; the
others still ran and were written); 2 the input is wrong (one message, nothing trained); 130 interrupted (finished
runs are kept; a rerun does the rest).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m pieceboard.bench`: a mistake in the file is told before torch loads (seconds)
    from pieceboard.config import check_bench_file

    check_bench_file(sys.argv[1:])

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pieceboard._console import (
    Display,
    PieceboardError,
    bench_parser,
    check_stop,
    install_stop_handlers,
    print_error,
    wide_console,
)
from pieceboard._io import in_use, lock_folder, make_folder, require_space
from pieceboard.cache import build_cache, cache_root, channel_stats
from pieceboard.config import Cell, Config, load_config
from pieceboard.data import MANIFEST, Manifest, cross_split, make_manifest, resolve_root, scan_folder
from pieceboard.dedup import NOT_FOUND
from pieceboard.device import device_type, resolve_precision
from pieceboard.jobs import CellTask, WorkerPool, WorkerSpec, run_cell, run_data, store
from pieceboard.leaderboard import Leaderboard, check_predictions
from pieceboard.models import has_drop_path, probe, resolve_weights
from pieceboard.report import write_report
from pieceboard.results import (
    CHECKPOINT,
    MODEL,
    RESULT,
    RUNS,
    RunResult,
    finished,
    is_trial,
    read_result,
    run_dir,
    save_result,
)
from pieceboard.tracking import Tracker, check_mode, resolve_mode
from pieceboard.tune import all_failed, choose

GPU_PACK = 4  # cells per GPU with jobs = "auto": 4 resnet18 trainings side by side gave 3.9x the throughput of one
# on an H200 (the step is launch-bound); more would contend for memory with larger models
RESULT_MARGIN = 1 << 20  # bytes beyond the results: leaderboard, report and the file system's own needs
RANKS = ".ranks"  # with parallel = "cells", each process marks here that it finished its share
SHOWN_SKIPPED = 10  # skipped files listed in the output; manifest.json has them all
BLIND_SPOT = "not found by the leak check:"  # begins the line after the leak check's, then dedup.NOT_FOUND


@dataclass
class Plan:
    """What the preflight resolved for one cell."""

    weights: str | None
    precision: str
    cost: float  # relative training cost, to start the longest cells first
    problem: str | None = None  # what stops this cell (only collected by a dry run)
    params: int = 0  # of the model: the size of its checkpoints and model folder
    keeps_model: bool = True  # a tuning trial keeps none


def _main_first(state: PartialState, work: Callable[[], Any]) -> Any:
    """Run `work` on the main process, then on the others (which find its result on disk: the manifest, the cache).

    A user error on the main process is sent to every process, so all of them stop with the same message and exit
    code 2 instead of the others waiting at a barrier until the launcher kills them.
    """
    error: list[str | None] = [None]
    result = None
    if state.is_main_process:
        try:
            result = work()
        except PieceboardError as exc:
            error[0] = str(exc)
    if state.num_processes > 1:
        broadcast_object_list(error)
    if error[0] is not None:
        raise PieceboardError(error[0])
    return result if state.is_main_process else work()


def _preflight(config: Config, cells: list[Cell], processes: int, strict: bool = True) -> dict[str, Plan]:
    """Everything that can be wrong before training: batch split, weights, image size, drop path and precision of
    each cell (or trial).

    Raises:
        PieceboardError: The first problem found, unless `strict` is False (then each plan names its problem).
    """
    plans = {}
    device = device_type()
    where = config.path or "<config>"
    for cell in cells:
        try:
            plans[cell.id] = _plan(cell, processes, device, str(config.path) if config.path else None)
        except PieceboardError as exc:
            message = f"{where}: [[runs]] '{cell.run}': {exc}"
            if strict:
                raise PieceboardError(message) from None
            plans[cell.id] = Plan(None, "-", 0.0, message)
    return plans


def _plan(cell: Cell, processes: int, device: str, source: str | None) -> Plan:
    batch = cell.settings.batch_size
    if batch < 2 * processes:
        raise PieceboardError(
            f"batch_size {batch} gives fewer than 2 images to each of the {processes} processes; BatchNorm cannot "
            "train on one image"
        )
    if batch % processes:
        raise PieceboardError(
            f"batch_size {batch} is the global batch and must divide evenly over the {processes} processes (e.g. "
            f"{processes * max(1, batch // processes)})"
        )
    if cell.settings.drop_path and not has_drop_path(cell.model):
        raise PieceboardError(
            f"key 'drop_path': {cell.model} has no stochastic depth (timm's drop_path_rate); set drop_path only in "
            "the runs of models that have it"
        )
    weights = resolve_weights(cell.model, cell.mode, cell.weights, source, cell.settings.image_size)
    traits = probe(cell.model, cell.settings.image_size)
    precision = resolve_precision(cell.settings.precision, device, traits.depthwise, traits.strided_conv_on_one_pixel)
    # Training costs about 3 forward passes per image; the split is the same for every cell.
    cost = 3 * traits.gflops * cell.settings.epochs
    return Plan(weights, precision, cost, params=traits.params, keeps_model=cell.trial_of is None)


def _stored_config(cell: Cell, config: Config, manifest_digest: str) -> dict[str, Any]:
    # The manifest's digest ties a stored result to the exact split it was scored on: a re-split folder reruns it.
    data = config.data.model_dump(exclude={"cache_dir"}) | {"manifest_sha256": manifest_digest}
    # A tuned cell's settings hold the values its trials chose; how it was tuned (space, budget) is part of it too.
    tune = {"tune": config.tuning(cell)} if config.tune is not None and cell.trial_of is None else {}
    return cell.to_dict() | {"data": data} | tune


def _manifest_digest(output: Path) -> str:
    return hashlib.sha256((output / MANIFEST).read_bytes()).hexdigest()[:16]


def run(
    source: str | Path | dict[str, Any],
    output: str | Path | None = None,
    overrides: list[str] | None = None,
    console: Console | None = None,
    jobs: int | None = None,
    threads: int | None = None,
) -> list[RunResult]:
    """Run every cell of a benchmark that has no completed result yet, and write the leaderboard.

    Args:
        source: A benchmark TOML file (or its content as a dict).
        output: Output folder; default `[benchmark] output` or `results/<name>`.
        overrides: `KEY=VALUE` strings with dotted keys, as `--set` takes them.
        console: Where the progress and leaderboard go; default stdout.
        jobs: Cells trained at once; default `[benchmark] jobs`.
        threads: CPU threads per cell; default `[benchmark] threads`.

    Returns:
        One result per cell, in matrix order (stored ones included).

    Raises:
        PieceboardError: The benchmark file, data or weights are wrong; nothing was trained.
    """
    config = load_config(source, overrides)
    output = Path(output) if output else config.output
    # cpu=True is what makes torchrun on a machine without GPUs (or with ACCELERATE_USE_CPU=1) start gloo.
    state = PartialState(cpu=device_type() == "cpu")
    main = state.is_main_process
    console = console or wide_console()
    trials = {cell.id: config.trials.get(cell.id, []) for cell in config.cells}
    plans = _preflight(config, [*config.cells, *(t for group in trials.values() for t in group)], state.num_processes)
    check_mode(resolve_mode(config.benchmark.wandb), _project(config))
    total = len(config.cells) + sum(map(len, trials.values()))
    with ExitStack() as held, Display(console, total, main) as display:
        # One benchmark per output folder: a second writer stops here, naming the first (issue: two splits mixed).
        what = f"pieceboard bench {source}" if not isinstance(source, dict) else "pieceboard.run(...)"
        _main_first(state, lambda: held.enter_context(lock_folder(output, what)) if main else None)
        _main_first(state, lambda: make_folder(cache_root(config.data)))  # a bad cache_dir, before any decoding
        manifest = _main_first(state, lambda: make_manifest(config.data, output, display.stage if main else None))
        digest = _manifest_digest(output)
        _describe(config, manifest, state, output, display)
        if main and (line := _tracker(config, output).describe()):
            display.note(escape(line))
        session = _Session(config, state, manifest, plans, digest, output, display, jobs, threads)
        share = state.num_processes > 1 and config.benchmark.parallel == "cells"
        # With parallel = "cells" each process takes whole cells, trials included: its choices need no other's trials.
        mine = _share(session, trials) if share else config.cells
        results: list[RunResult] = []
        try:
            try:
                results = _train(session, mine, trials)
            finally:
                if share:  # also after a failure: the main process waits for every mark
                    (make_folder(output / RANKS) / str(state.process_index)).write_text("done\n")
            if share and main:
                results = _gather_ranks(output, state.num_processes, [c.id for c in config.cells], results)
            check_stop()
        except KeyboardInterrupt:
            if main:
                _record_skipped(config, output, results, "interrupted before it finished; rerun to continue", digest)
                Leaderboard.from_results(results, output).write(output)
            raise
        order = {cell.id: i for i, cell in enumerate(config.cells)}
        results.sort(key=lambda r: order.get(r.id, len(order)))
        if main:
            display.progress.stop()  # the live view ends before the leaderboard is printed
            _finish(config, results, output, console)
    return results


@dataclass
class _Session:
    """One benchmark command at work: what each stage (the trials, then the cells) needs."""

    config: Config
    state: PartialState
    manifest: Manifest
    plans: dict[str, Plan]
    digest: str
    output: Path
    display: Display
    jobs: int | None
    threads: int | None
    caches: dict[int, tuple[np.ndarray, float, Any]] = field(default_factory=dict)  # by image size (see `_tasks`)

    def stage(self, cells: list[Cell], tunings: dict[str, dict[str, Any]] | None = None) -> list[RunResult]:
        """Keep the completed results of `cells` and train the others, side by side or data parallel."""
        config, state, output = self.config, self.state, self.output
        results, todo = _kept(config, cells, output, self.digest, self.display)
        if state.is_main_process:
            if not config.benchmark.keep_checkpoints:  # left by a kill between a result and its clean-up
                for result in results:
                    shutil.rmtree(run_dir(output, result.id) / CHECKPOINT, ignore_errors=True)
            if todo:  # a full disk found after training would lose the results: look before
                at_once = _at_once(config, state.num_processes, len(todo), self.jobs, self.threads)
                _check_space(config, output, self.manifest, [self.plans[c.id] for c in todo], at_once)
        if not todo:
            return results
        tasks = _tasks(
            config, state, self.manifest, todo, self.plans, self.digest, self.display, tunings or {}, self.caches
        )
        if state.num_processes > 1 and config.benchmark.parallel == "data":
            return results + _run_here(config, state, self.manifest, tasks, output, self.display)
        tasks.sort(key=lambda t: -self.plans[t.cell_id].cost)  # the longest first
        return results + _run_in_workers(
            config, state, self.manifest, tasks, output, self.display, self.jobs, self.threads
        )


def _train(session: _Session, cells: list[Cell], trials: dict[str, list[Cell]]) -> list[RunResult]:
    """The trials of `cells` first, then each cell with the values its trials chose (as it is without [tune])."""
    config = session.config
    tried = {r.id: r for r in session.stage([t for cell in cells for t in trials[cell.id]])}
    if config.tune is None:
        return session.stage(cells)
    finals, tunings, results = [], {}, []
    for cell in cells:
        choice = choose(cell, trials[cell.id], tried, config.tuning(cell))
        if choice.cell is None:
            results.append(_untrainable(session, cell, choice.record))
            continue
        finals.append(choice.cell)
        tunings[cell.id] = choice.record
    session.plans |= _preflight(config, finals, session.state.num_processes)  # chosen values may change the plan
    return results + session.stage(finals, tunings)


def _untrainable(session: _Session, cell: Cell, record: dict[str, Any]) -> RunResult:
    """The failed result of a tuned cell none of whose trials completed (nothing to choose from)."""
    config = _stored_config(cell, session.config, session.digest)
    result = RunResult(id=cell.id, status="failed", config=config, error=all_failed(record), tuning=record)
    if session.state.is_main_process or session.config.benchmark.parallel == "cells":
        save_result(session.output, result)
    session.display.end_run(result)
    return result


def _describe(config: Config, manifest: Manifest, state: PartialState, output: Path, display: Display) -> None:
    n_test, n_val = len(manifest.test_indices), len(manifest.val_indices)
    tuning = ""
    if config.tune is not None:
        budgets = {json.dumps(config.tuning(cell)["budget"]) for cell in config.cells}
        budget = json.loads(budgets.pop()) if len(budgets) == 1 else None
        tuning = f", each tuned on validation with {len(next(iter(config.trials.values())))} trials"
        tuning += f" ({budget['epochs']} epochs in all)" if budget else " (budgets differ: see the guardrails)"
    counts = (
        len(manifest.class_names), len(manifest.train_indices), n_test, len(manifest.skipped), len(config.cells),
        state.num_processes,
    )  # fmt: skip
    line = split_line(*counts, output, n_val, tuning)
    display.note(f"[bold]{escape(config.benchmark.name)}[/bold]{escape(line)}")
    groups = manifest.groups or []
    if straddling := cross_split(manifest.splits, groups):
        display.note(
            f"[bold red]leak[/bold red]: {len(straddling)} near-duplicate groups straddle the split: "
            f"{int(manifest.leaked().sum())} of {n_test} test images have a copy in train, so every score is "
            f'inflated; the leaderboard\'s clean accuracy leaves them out, and \\[data] split = "grouped" keeps each '
            f"group on one side"
        )
    elif groups:
        display.note(f"{len(groups)} near-duplicate groups, each kept on one side of the split ({manifest.split})")
    if manifest.groups is not None:
        display.note(f"[dim]{BLIND_SPOT} {NOT_FOUND}[/dim]")
    for skipped in manifest.skipped[:SHOWN_SKIPPED]:
        display.note(f"[yellow]skipped[/yellow] {escape(skipped['path'])}: {escape(skipped['reason'])}")
    if len(manifest.skipped) > SHOWN_SKIPPED:
        display.note(f"[yellow]skipped[/yellow] {len(manifest.skipped) - SHOWN_SKIPPED} more (see manifest.json)")
    for warning in data_warnings(config, manifest):
        display.note(f"[yellow]warning[/yellow]: {warning}")


def split_line(
    classes: int,
    n_train: int,
    n_test: int,
    skipped: int,
    runs: int,
    processes: int,
    output: Path,
    n_val: int = 0,
    tuning: str = "",
) -> str:
    """What a benchmark prints after its name before training, e.g.
    `: 5391 images, 10 classes, 4314 train / 1077 test, 0 skipped; 6 runs on 1 process(es) -> results/demo`;
    with a validation split `3879 train / 435 val / 1077 test`, and with `[tune]` `tuning` after the runs."""
    val = f" / {n_val} val" if n_val else ""
    return (
        f": {n_train + n_val + n_test} images, {classes} classes, {n_train} train{val} / {n_test} test, {skipped} "
        f"skipped; {runs} runs{tuning} on {processes} process(es) -> {output}"
    )


def data_warnings(config: Config, manifest: Manifest) -> list[str]:
    """What about the split makes scores fragile: a tiny test or validation split, batches larger than the training
    split."""
    warnings = []
    n_test, n_val = len(manifest.test_indices), len(manifest.val_indices)
    n_train = len(manifest.train_indices)
    if n_test < 100:
        warnings.append(
            f"the test split has {n_test} images: one image moves accuracy by {100 / n_test:.1f} points, so small "
            f"differences between runs are noise"
        )
    if 0 < n_val < 100:
        warnings.append(
            f"the validation split has {n_val} images: one image moves accuracy by {100 / n_val:.1f} points, so "
            f"trials that differ by less are chosen by chance"
        )
    for size in sorted({c.settings.batch_size for c in config.cells if c.settings.batch_size > n_train}):
        runs = sorted({c.run for c in config.cells if c.settings.batch_size == size})
        warnings.append(
            f"batch_size {size} ({', '.join(runs)}) is larger than the {n_train} training images: one step per epoch"
        )
    return warnings


def _result_bytes(manifest: Manifest) -> int:
    """A generous size of one cell's files: a predictions.csv row per test (or, for a trial, validation) image, and
    result.json."""
    longest = max(len(p) for p in manifest.paths)
    return max(len(manifest.test_indices), len(manifest.val_indices)) * (longest + 40) + 256 * 1024


def _check_space(config: Config, output: Path, manifest: Manifest, plans: list[Plan], at_once: int) -> None:
    """Room on the output disk for the results of the cells to run, and for the checkpoints and models they will hold
    at most at once: a full disk found after training would lose them.

    Raises:
        StorageError: One line, naming what needs the room.
    """
    kept, what = _kept_bytes(config, plans, at_once)
    needed = len(plans) * _result_bytes(manifest) + kept + RESULT_MARGIN
    require_space(output, needed, f"the results{what} of {len(plans)} cell(s)")


def _at_once(config: Config, processes: int, cells: int, jobs: int | None, threads: int | None) -> int:
    """How many cells train at the same time (at most)."""
    if processes > 1:
        return 1 if config.benchmark.parallel == "data" else cells
    slots, _ = worker_slots(jobs or config.benchmark.jobs, threads or config.benchmark.threads, cells)
    return len(slots)


def _kept_bytes(config: Config, plans: list[Plan], at_once: int) -> tuple[int, str]:
    """A generous size of the checkpoints and model folders that cells to run will hold at most at one time, and
    what they are (", checkpoints and models"), for the free-space check.

    Args:
        config: The benchmark, for its [benchmark] keep and checkpoint settings.
        plans: The plan of each cell (or trial) to run: its parameter count, and whether it keeps a model.
        at_once: Cells training at the same time.
    """
    # fp32 bytes of each cell's weights, largest first
    weights = sorted((4 * plan.params for plan in plans), reverse=True)
    modelled = sorted((4 * plan.params for plan in plans if plan.keeps_model), reverse=True)
    b = config.benchmark
    # A checkpoint holds the weights and up to two optimizer moments, and briefly two epochs' while one is written.
    training = sum(6 * w for w in weights[:at_once]) if b.checkpoint_every else 0
    if b.keep_checkpoints:
        training += sum(3 * w for w in weights[at_once:])
    models = {"all": sum(modelled), "best": sum(modelled[: at_once + 1]), "none": 0}[b.keep_models]
    what = [name for name, size in (("checkpoints", training), ("models", models)) if size]
    return training + models, "".join(f", {name}" for name in what[:-1]) + (f" and {what[-1]}" if what else "")


def _kept(
    config: Config, cells: list[Cell], output: Path, digest: str, display: Display
) -> tuple[list[RunResult], list[Cell]]:
    """Completed results stored with the same configuration whose predictions give their figures, and the cells
    still to run (a completed result whose predictions.csv disagrees with it is run again, and says so)."""
    kept, todo = [], []
    for cell in cells:
        stored, problem = _intact(output, cell.id, _stored_config(cell, config, digest))
        if stored is None:
            todo.append(cell)
            if problem:
                display.note(f"[yellow]rerun[/yellow] {escape(cell.id)}: {escape(problem)}")
        else:
            kept.append(stored)
            display.skip(f"[dim]kept[/dim] {cell.id} (completed earlier)")
    return kept, todo


def _intact(output: Path, cell_id: str, stored_config: dict[str, Any]) -> tuple[RunResult | None, str | None]:
    """The stored result to keep, or None and why a completed one cannot be kept (None when there is none)."""
    stored = finished(output, cell_id, stored_config)
    if stored is None:
        return None, None
    try:
        check_predictions(run_dir(output, cell_id), stored)
    except ValueError as exc:
        return None, f"its stored result does not hold up ({exc})"
    return stored, None


def _tasks(
    config: Config,
    state: PartialState,
    manifest: Manifest,
    todo: list[Cell],
    plans: dict[str, Plan],
    digest: str,
    display: Display,
    tunings: dict[str, dict[str, Any]],
    caches: dict[int, tuple[np.ndarray, float, Any]],
) -> list[CellTask]:
    """Build the caches the cells need (once per command, on the main process first) and describe each cell as a
    task (a tuned cell's with its trials and choice, from `tunings`).

    `caches` holds the caches built by earlier stages of the command (the trials'), by image size.
    """
    progress = display.stage if state.is_main_process else None
    for size in sorted({cell.settings.image_size for cell in todo}):
        started = time.perf_counter()
        if size not in caches:
            build = functools.partial(
                build_cache, manifest.files(), size, cache_root(config.data), progress, digests=manifest.digests
            )
            caches[size] = (_main_first(state, build), 0.0, None)
        pixels, cache_s, stats = caches[size]
        # Only scratch runs normalise with the training split's statistics; pretrained ones use their backbone's.
        if stats is None and any(c.mode == "scratch" for c in todo if c.settings.image_size == size):
            stats = channel_stats(pixels, manifest.train_indices)
        caches[size] = (pixels, cache_s + time.perf_counter() - started, stats)
    tasks = []
    for cell in todo:
        pixels, cache_s, stats = caches[cell.settings.image_size]
        plan, stored = plans[cell.id], _stored_config(cell, config, digest)
        b = config.benchmark
        # A trial's model is never kept: it was chosen on validation and never tested (its cell's model is).
        keep = (b.checkpoint_every, b.keep_checkpoints, b.keep_models != "none" and cell.trial_of is None)
        pixels_file = str(pixels.filename)
        task = CellTask(cell.id, stored, plan.precision, plan.weights, pixels_file, stats, cache_s, *keep)
        task.tuning = tunings.get(cell.id)
        tasks.append(task)
    return tasks


def _project(config: Config) -> str:
    return config.benchmark.wandb_project or config.benchmark.name


def _tracker(config: Config, output: Path, active: bool = True, display: Display | None = None) -> Tracker:
    warn = _warner(display) if display is not None else None
    mode = resolve_mode(config.benchmark.wandb)
    return Tracker(mode, _project(config), output, config.benchmark.name, active=active, warn=warn)


def _warner(display: Display) -> Callable[[str], None]:
    """Show each warning once (every worker reports the same W&B fallback)."""
    shown: set[str] = set()

    def warn(text: str) -> None:
        if text not in shown:
            shown.add(text)
            display.note(f"[yellow]warning[/yellow]: {escape(text)}")

    return warn


def _run_here(
    config: Config, state: PartialState, manifest: Manifest, tasks: list[CellTask], output: Path, display: Display
) -> list[RunResult]:
    """Data parallel: every process trains each cell together, in this process."""
    tracker = _tracker(config, output, active=state.is_main_process, display=display)
    results = []
    for task in tasks:
        check_stop()
        cell = task.cell()
        data = run_data(manifest, task)
        display.start_run(cell)
        outcome = run_cell(cell, task, data, manifest, tracker, functools.partial(display.event, cell.id), output)
        if state.is_main_process:
            store(output, outcome, task)
        state.wait_for_everyone()
        results.append(outcome.result)
        display.end_run(outcome.result, outcome.trace)
        if state.is_main_process:
            _keep_best_so_far(config, output, results)
    return results


def worker_slots(jobs: int | str, threads: int | str, tasks: int, local: tuple[int, int] = (0, 1)) -> tuple:
    """The device of each worker (None on a CPU) and the CPU threads each gets.

    Args:
        jobs: `[benchmark] jobs` or --jobs: a number, or "auto" (every core on a CPU, `GPU_PACK` per GPU).
        threads: `[benchmark] threads` or --threads: a number, or "auto" (1 on a CPU, the cores shared on a GPU).
        tasks: Cells to run; never more workers than that.
        local: (this process's index, processes) on this machine, when several share it (parallel = "cells").

    Returns:
        (slots, threads per worker).
    """
    index, count = local
    cores = max(1, len(os.sched_getaffinity(0)) // count)
    if device_type() == "cuda":
        import torch

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        devices = devices[index::count] or devices[index % len(devices) :][:1]
        wanted = len(devices) * GPU_PACK if jobs == "auto" else int(jobs)
        n = max(1, min(wanted, tasks))
        per = max(1, cores // n) if threads == "auto" else int(threads)
        return [devices[i % len(devices)] for i in range(n)], per
    # On a CPU one thread per cell, every core busy with its own cell: thread pools that busy-wait collapse when
    # the cores are shared (measured with benchmarks/threads.py; see docs/training.md), and the figures of a cell
    # then do not depend on --jobs.
    per = 1 if threads == "auto" else int(threads)
    wanted = max(1, cores // per) if jobs == "auto" else int(jobs)
    return [None] * max(1, min(wanted, tasks)), per


def _share(session: _Session, trials: dict[str, list[Cell]]) -> list[Cell]:
    """This process's cells with parallel = "cells": longest first (a cell with its trials, less what is kept), each
    to the least loaded process."""
    config, state = session.config, session.state

    def cost(cell: Cell) -> float:
        cells = [*trials[cell.id], cell]
        todo = [c for c in cells if not finished(session.output, c.id, _stored_config(c, config, session.digest))]
        return sum(session.plans[c.id].cost for c in todo)

    loads = [0.0] * state.num_processes
    mine = []
    for cell, weight in sorted(((c, cost(c)) for c in config.cells), key=lambda pair: -pair[1]):
        target = loads.index(min(loads))
        loads[target] += weight
        if target == state.process_index:
            mine.append(cell)
    return mine


def _run_in_workers(
    config: Config,
    state: PartialState,
    manifest: Manifest,
    tasks: list[CellTask],
    output: Path,
    display: Display,
    jobs: int | None,
    threads: int | None,
) -> list[RunResult]:
    """Cells side by side in worker processes.

    One worker's worth of cells runs in this process instead: the same code, without a second start of torch.
    """
    local = (state.local_process_index, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    slots, per_worker = worker_slots(
        jobs or config.benchmark.jobs, threads or config.benchmark.threads, len(tasks), local
    )
    if state.is_main_process:
        display.note(f"training {len(tasks)} cell(s), {len(slots)} at a time, {per_worker} CPU thread(s) each")
    if state.num_processes == 1 and len(slots) == 1:
        import torch

        caller_threads = torch.get_num_threads()  # a library caller gets its own setting back
        torch.set_num_threads(per_worker)
        try:
            return _run_here(config, state, manifest, tasks, output, display)
        finally:
            torch.set_num_threads(caller_threads)
    tracker = _tracker(config, output)
    spec = WorkerSpec(
        output=str(output),
        wandb_mode=tracker.mode,
        wandb_project=tracker.project,
        group=tracker.group,
        threads=per_worker,
    )
    cells = {task.cell_id: task.cell() for task in tasks}
    results = []
    warn = _warner(display)
    for event in WorkerPool(spec, slots).run(tasks):
        if event.kind == "event":
            if event.cell_id not in display.cells:
                display.start_run(cells[event.cell_id])
            display.event(event.cell_id, event.event)
        elif event.kind == "note":
            warn(event.text)
        elif event.kind == "done":
            results.append(event.result)
            display.end_run(event.result, event.trace)
            _keep_best_so_far(config, output, results)
    return results


def _gather_ranks(output: Path, world: int, todo: list[str], mine: list[RunResult]) -> list[RunResult]:
    """With parallel = "cells", wait until every process finished its share of the cells `todo`, then read their
    results."""
    marks = output / RANKS
    while not all((marks / str(rank)).exists() for rank in range(world)):
        check_stop()
        time.sleep(1.0)  # the other processes write their marks; torchrun ends the job if one of them dies
    for rank in range(world):
        (marks / str(rank)).unlink(missing_ok=True)
    ids = {r.id for r in mine}
    others = [run_dir(output, cell_id) / RESULT for cell_id in todo if cell_id not in ids]
    return mine + [read_result(path) for path in others if path.exists()]


def dry_run(
    source: str | Path | dict[str, Any], output: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[Table, list[str]]:
    """What `run` would do, without training: every cell (and tuning trial) with its resolved settings and whether
    it is kept or run, and every problem that would stop `run` before training.

    The checks are `run`'s: the benchmark file and its model names; each cell's batch, weights, image size and
    precision; the W&B setting; the cache folder; the data folder (scanned, not decoded: a new split's image checks
    wait for the run) or, when the output folder holds a split, whether it still matches and the disk has room for
    the results to come; and whether another benchmark holds the output folder. A cell is `kept` only if its
    completed result matches the split already stored there; a tuned cell is known only once its trials are: until
    then it is `run after its trials`.

    Returns:
        The table, and the problems (one line each; none when the run would start).

    Raises:
        PieceboardError: The benchmark file is wrong (nothing else can be checked then).
    """
    config = load_config(source, overrides)
    output = Path(output) if output else config.output
    processes = int(os.environ.get("WORLD_SIZE", 1))
    trials = [t for cell in config.cells for t in config.trials.get(cell.id, [])]
    plans = _preflight(config, [*config.cells, *trials], processes, strict=False)
    problems = list(dict.fromkeys(plan.problem for plan in plans.values() if plan.problem))
    try:
        check_mode(resolve_mode(config.benchmark.wandb), _project(config))
    except PieceboardError as exc:
        problems.append(str(exc))
    manifest, found = _folder_problems(config, output)
    problems += found
    digest = _manifest_digest(output) if manifest is not None else None
    title = f"{config.benchmark.name}: {len(config.cells)} cells" + (f", {len(trials)} trials" if trials else "")
    table = Table(title=f"{title} -> {output}", header_style="bold")
    for header in ("run", "model", "mode", "px", "batch", "epochs", "lr", "precision", "weights", "action"):
        table.add_column(header, justify="right" if header in ("px", "batch", "epochs", "lr") else "left")
    todo = []

    def add(cell: Cell, action: str) -> None:
        s, plan = cell.settings, plans[cell.id]
        action = "stops the run (below)" if plan.problem else action
        weights = Path(plan.weights).name if plan.weights else "-"
        row = (cell.id, cell.model, cell.mode, s.image_size, s.batch_size, s.epochs, f"{s.lr:g}", plan.precision)
        table.add_row(*map(escape, map(str, row)), escape(weights), action)
        if action != "kept":
            todo.append(plan)

    def stored(cell: Cell) -> dict[str, Any] | None:
        return _stored_config(cell, config, digest) if digest else None

    # A trial counts as done as the run would keep it: completed, with predictions that give its figures.
    tried = {t.id: result for t in trials if digest and (result := _intact(output, t.id, stored(t))[0]) is not None}
    for cell in config.cells:
        if config.tune is None:
            add(cell, _action(output, cell, stored(cell)))
            continue
        for trial in config.trials[cell.id]:
            add(trial, _action(output, trial, stored(trial)))
        if not all(t.id in tried for t in config.trials[cell.id]):
            add(cell, "run after its trials")
            continue
        final = choose(cell, config.trials[cell.id], tried, config.tuning(cell)).cell
        plans |= _preflight(config, [final], processes, strict=False)
        add(final, _action(output, final, stored(final)))
    if manifest is not None and todo:  # the run's look at the disk, before it trains
        try:
            _check_space(config, output, manifest, todo, _at_once(config, processes, len(todo), None, None))
        except PieceboardError as exc:
            problems.append(str(exc))
    return table, problems


def _folder_problems(config: Config, output: Path) -> tuple[Manifest | None, list[str]]:
    """What `run` would stop at in its folders before training (see `dry_run`), and the stored split if any."""
    problems = [holder] if (holder := in_use(output)) else []
    manifest = None
    try:
        make_folder(cache_root(config.data))
        if (output / MANIFEST).exists():  # a stored split: the rerun's checks (same settings, same files)
            manifest = make_manifest(config.data, output)
        else:  # the folder as the run finds it; its images are checked when the run decodes them
            scan_folder(resolve_root(config.data))
    except PieceboardError as exc:
        problems.append(str(exc))
    return manifest, problems


def _action(output: Path, cell: Cell, stored_config: dict[str, Any] | None) -> str:
    path = run_dir(output, cell.id) / RESULT
    if not path.exists():
        return "run"
    if stored_config is not None:
        stored, problem = _intact(output, cell.id, stored_config)
        if stored is not None:
            return "kept"
        if problem:
            return "rerun (predictions.csv disagrees with result.json)"
    status = read_result(path).status
    return {"completed": "rerun (settings or split changed)", "corrupt": "rerun (damaged result)"}.get(
        status, f"rerun ({status} earlier)"
    )


def _keep_best(config: Config, output: Path, board: Leaderboard) -> None:
    """With keep_models = "best", remove the model folder of every cell but the leader of `board`.

    Called as results come in (the cells of this command only, so at most the leader's and those of cells still in
    training exist at a time), and once more when the leaderboard of every cell is written.
    """
    if config.benchmark.keep_models != "best":
        return
    for row in board.rows:
        if row["rank"] != 1:
            shutil.rmtree(run_dir(output, row["id"]) / MODEL, ignore_errors=True)
            row["model_dir"] = None


def _keep_best_so_far(config: Config, output: Path, results: list[RunResult]) -> None:
    """`_keep_best` among the cells finished so far in this command (trials keep no model and are never ranked)."""
    cells = [result for result in results if not is_trial(result.id)]
    if cells and config.benchmark.keep_models == "best":
        _keep_best(config, output, Leaderboard.from_results(cells))


def _finish(config: Config, results: list[RunResult], output: Path, console: Console) -> None:
    board = Leaderboard.from_results(results, output)
    _keep_best(config, output, board)
    board.write(output)
    console.print(board.table(title=f"{config.benchmark.name} — {output}", width=console.width))
    if (seeds := board.seed_table(console.width)) is not None:
        console.print(seeds)
    if config.benchmark.keep_models != "none" and board.rows and board.rows[0]["rank"] == 1:
        console.print(_models_line(output, board), highlight=False, markup=False)
    console.print(f"report: {write_report(output, board)}")


def _models_line(output: Path, board: Leaderboard) -> str:
    """Where the leader's model is (and how many others are kept), or why it has none."""
    leader = board.rows[0]
    if leader["model_dir"] is None:
        path = run_dir(output, leader["id"]) / RESULT
        return (
            f"the leader {leader['id']} has no model folder (it completed in an earlier command that kept none); "
            f"delete {path} and rerun to train it again and keep its model"
        )
    more = sum(1 for row in board.rows[1:] if row["model_dir"])
    others = f" ({more} more under {output / RUNS}/<id>/{MODEL})" if more else ""
    return f"model of the leader: {output / leader['model_dir']}{others}"


def _record_skipped(config: Config, output: Path, results: list[RunResult], reason: str, digest: str) -> None:
    done = {r.id for r in results}
    for cell in config.cells:
        # A result stored by an earlier command stays as it is; only cells with none get a skipped row.
        if cell.id not in done and not (run_dir(output, cell.id) / RESULT).exists():
            result = RunResult(id=cell.id, status="skipped", config=_stored_config(cell, config, digest), error=reason)
            save_result(output, result)
            results.append(result)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m pieceboard.bench`; returns the exit code."""
    args = bench_parser().parse_args(argv)
    # Finished runs are kept and the others are marked skipped; a rerun does the rest.
    install_stop_handlers()
    try:
        if args.dry_run:
            table, problems = dry_run(args.file, args.output, args.overrides)
            wide_console().print(table)
            for problem in problems:  # each on its own line, as the run would print the first
                print_error(PieceboardError(problem))
            return 2 if problems else 0
        results = run(args.file, output=args.output, overrides=args.overrides, jobs=args.jobs, threads=args.threads)
    except PieceboardError as exc:
        if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every process stops; one says why
            print_error(exc)
        return 2
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", 0)) == 0:
            Console(stderr=True).print("pieceboard: interrupted; finished runs are kept, a rerun does the rest")
        return 130
    return 1 if any(r.status != "completed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
