"""Run a benchmark: every cell of the matrix, then the leaderboard.

    accelerate launch -m pieceboard.bench benchmarks/demo.toml [--output DIR] [--set KEY=VALUE ...]
    python -m pieceboard.bench benchmarks/demo.toml --set defaults.epochs=1
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m pieceboard.bench benchmarks/demo.toml

Exit codes: 0 every run completed; 1 some run failed (the others still ran and were written); 2 the input is
wrong (one message, nothing trained); 130 interrupted (finished runs are kept; a rerun does the rest).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from rich.console import Console

from pieceboard._console import Display, PieceboardError, check_stop, install_stop_handlers, print_error, wide_console
from pieceboard.config import Cell, Config, load_config
from pieceboard.data import MANIFEST, Manifest, build_cache, cache_root, channel_stats, make_manifest
from pieceboard.device import device_type, make_accelerator, resolve_precision
from pieceboard.leaderboard import Leaderboard
from pieceboard.models import probe, resolve_weights
from pieceboard.results import RESULT, RunResult, finished, run_dir, save_result
from pieceboard.tracking import Tracker, resolve_mode
from pieceboard.train import NonFiniteLoss, RunData, fit


def _run_data(manifest: Manifest, pixels: np.ndarray, cache_s: float, need_stats: bool) -> RunData:
    train = manifest.train_indices
    # Only scratch runs normalise with the dataset's statistics; pretrained ones use their backbone's config.
    stats = channel_stats(pixels, train) if need_stats else None
    return RunData(pixels, manifest.labels, train, manifest.test_indices, manifest.class_names, stats, cache_s)


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


def _preflight(config: Config, processes: int) -> tuple[dict[str, str | None], dict[str, str]]:
    """Everything that can be wrong before training: batch split, weights and precision for every cell."""
    weights, precisions = {}, {}
    device = device_type()
    for cell in config.cells:
        if cell.settings.batch_size < 2 * processes:
            raise PieceboardError(
                f"{config.path or '<config>'}: [[runs]] '{cell.run}': batch_size {cell.settings.batch_size} gives "
                f"fewer than 2 images to each of the {processes} processes; BatchNorm cannot train on one image"
            )
        if cell.settings.batch_size % processes:
            raise PieceboardError(
                f"{config.path or '<config>'}: [[runs]] '{cell.run}': batch_size {cell.settings.batch_size} is the "
                f"global batch and must divide evenly over the {processes} processes (e.g. "
                f"{processes * max(1, cell.settings.batch_size // processes)})"
            )
        try:
            weights[cell.id] = resolve_weights(cell.model, cell.mode, cell.weights)
            traits = probe(cell.model, cell.settings.image_size)
            precisions[cell.id] = resolve_precision(
                cell.settings.precision, device, traits.depthwise, traits.strided_conv_on_one_pixel
            )
        except PieceboardError as exc:
            raise PieceboardError(f"{config.path or '<config>'}: [[runs]] '{cell.run}': {exc}") from None
    return weights, precisions


def _stored_config(cell: Cell, config: Config, manifest_digest: str) -> dict[str, Any]:
    # The manifest's digest ties a stored result to the exact split it was scored on: a re-split folder reruns it.
    data = config.data.model_dump(exclude={"cache_dir"}) | {"manifest_sha256": manifest_digest}
    return cell.to_dict() | {"data": data}


def run(
    source: str | Path | dict[str, Any],
    output: str | Path | None = None,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> list[RunResult]:
    """Run every cell of a benchmark that has no completed result yet, and write the leaderboard.

    Args:
        source: A benchmark TOML file (or its content as a dict).
        output: Output folder; default `[benchmark] output` or `results/<name>`.
        overrides: `KEY=VALUE` strings with dotted keys, as `--set` takes them.
        console: Where the progress and leaderboard go; default stdout.

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
    weights, precisions = _preflight(config, state.num_processes)
    tracker = Tracker(
        resolve_mode(config.benchmark.wandb),
        config.benchmark.wandb_project or config.benchmark.name,
        output,
        active=main,
    )
    results: list[RunResult] = []
    caches: dict[int, RunData] = {}
    with Display(console, len(config.cells), main) as display:
        manifest = _main_first(state, lambda: make_manifest(config.data, output, display.stage if main else None))
        n_test = int(manifest.is_test.sum())
        manifest_digest = hashlib.sha256((output / MANIFEST).read_bytes()).hexdigest()[:16]
        display.note(
            f"[bold]{config.benchmark.name}[/bold]: {len(manifest.paths)} images, {len(manifest.class_names)} classes, "
            f"{len(manifest.paths) - n_test} train / {n_test} test, {len(manifest.skipped)} skipped as undecodable; "
            f"{len(config.cells)} runs on {state.num_processes} process(es) -> {output}"
        )
        try:
            for cell in config.cells:
                check_stop()
                stored_config = _stored_config(cell, config, manifest_digest)
                stored = finished(output, cell.id, stored_config)
                if stored is not None:
                    results.append(stored)
                    display.skip(f"[dim]kept[/dim] {cell.id} (completed earlier)")
                    continue
                size = cell.settings.image_size
                if size not in caches:
                    started = time.perf_counter()
                    progress = display.stage if main else None
                    build = functools.partial(build_cache, manifest.files(), size, cache_root(config.data), progress)
                    pixels = _main_first(state, build)
                    scratch = any(c.mode == "scratch" and c.settings.image_size == size for c in config.cells)
                    caches[size] = _run_data(manifest, pixels, time.perf_counter() - started, scratch)
                display.start_run(cell)
                result, predictions = _run_cell(
                    cell,
                    stored_config,
                    caches[size],
                    weights[cell.id],
                    precisions[cell.id],
                    tracker,
                    display,
                    config.benchmark.name,
                    output,
                )
                if main:
                    save_result(output, result, _prediction_rows(manifest, caches[size], predictions))
                state.wait_for_everyone()
                results.append(result)
                display.end_run(result)
        except KeyboardInterrupt:
            if main:
                reason = "interrupted before it finished; rerun to continue"
                _record_skipped(config, output, results, reason, manifest_digest)
                Leaderboard.from_results(results).write(output)
            raise
    board = Leaderboard.from_results(results)
    if main:
        board.write(output)
        console.print(board.table(title=f"{config.benchmark.name} — {output}"))
        if (seeds := board.seed_table()) is not None:
            console.print(seeds)
    return results


def _run_cell(
    cell: Cell,
    stored_config: dict[str, Any],
    data: RunData,
    weights_file: str | None,
    precision: str,
    tracker: Tracker,
    display: Display,
    group: str,
    output: Path,
) -> tuple[RunResult, np.ndarray | None]:
    """Fit one cell; an exception becomes a failed result so that the matrix goes on."""
    accelerator = make_accelerator(precision)
    tracker.start(cell.id, stored_config, group)

    def log(event: dict[str, Any]) -> None:
        tracker.log(event)
        display.event(event)

    try:
        outcome = fit(cell, data, accelerator, weights_file=weights_file, log=log)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".strip()
        display.note(f"[dim]{traceback.format_exc(limit=-3)}[/dim]")
        tracker.finish(failed=True)
        failed = RunResult(
            id=cell.id, status="failed", config=stored_config, error=message, cache_s=data.cache_s, precision=precision
        )
        if accelerator.num_processes > 1 and not isinstance(exc, NonFiniteLoss):
            # Only a divergence is detected by all processes at once. Any other error hit this process alone
            # while the others wait in a collective: record it, then end the job (torchrun stops the rest).
            save_result(output, failed)
            raise
        return failed, None
    finally:
        accelerator.free_memory()
    tracker.finish(outcome.metrics | {"train_img_s": outcome.train_img_s, "params": outcome.params})
    measured = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(RunResult) if hasattr(outcome, f.name)}
    result = RunResult(id=cell.id, status="completed", config=stored_config, cache_s=data.cache_s, **measured)
    return result, outcome.predictions


def _prediction_rows(manifest: Manifest, data: RunData, predictions: np.ndarray | None) -> list[tuple] | None:
    if predictions is None:
        return None
    names = manifest.class_names
    return [
        (int(i), manifest.paths[i], names[int(data.labels[i])], names[int(p)])
        for i, p in zip(data.test_indices, predictions, strict=True)
    ]


def _record_skipped(config: Config, output: Path, results: list[RunResult], reason: str, digest: str) -> None:
    done = {r.id for r in results}
    for cell in config.cells:
        # A result stored by an earlier command stays as it is; only cells with none get a skipped row.
        if cell.id not in done and not (run_dir(output, cell.id) / RESULT).exists():
            result = RunResult(id=cell.id, status="skipped", config=_stored_config(cell, config, digest), error=reason)
            save_result(output, result)
            results.append(result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The `bench` command line."""
    parser = argparse.ArgumentParser(prog="pieceboard bench", description="Run a pieceboard benchmark file.")
    parser.add_argument("file", help="benchmark TOML file, e.g. benchmarks/demo.toml")
    parser.add_argument("--output", "-o", help="output folder (default: [benchmark] output or results/<name>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the file with a dotted key, e.g. --set defaults.epochs=3 (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m pieceboard.bench`; returns the exit code."""
    args = parse_args(argv)
    # Finished runs are kept and the others are marked skipped; a rerun does the rest.
    install_stop_handlers()
    try:
        results = run(args.file, output=args.output, overrides=args.overrides)
    except PieceboardError as exc:
        print_error(exc)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("pieceboard: interrupted; finished runs are kept, a rerun does the rest")
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
