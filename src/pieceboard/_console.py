"""What a person sees: the rich console, the live progress of a benchmark, and user errors as one line.

Shared by `pieceboard.bench` and `pieceboard.cli`; imports nothing else of pieceboard.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class PieceboardError(Exception):
    """The user's input is wrong: shown as one message, exit code 2, no traceback."""


# Set by the SIGINT/SIGTERM handler. Raising KeyboardInterrupt from inside a signal handler can land in a finalizer
# or a torch callback, where it is swallowed or turned into another error; long loops check this flag between steps
# instead and stop at a clean point.
STOP = threading.Event()


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for an error shown or stored as one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop was requested."""
    if STOP.is_set():
        raise KeyboardInterrupt("stop requested")


def _on_signal(signum: int, frame: object) -> None:
    if STOP.is_set():  # a second signal: stop now, wherever we are
        raise KeyboardInterrupt(signal.Signals(signum).name)
    STOP.set()


def install_stop_handlers() -> None:
    """Ctrl-C or a scheduler's SIGTERM (SLURM preemption, torchrun stopping the job) stops at the next step; a
    second signal stops at once."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # `nohup ... &` asked for Ctrl-C to be ignored
        signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def version_text() -> str:
    """`pieceboard --version`: pieceboard's version and those a bug report needs, read without importing them."""
    import platform
    from importlib.metadata import version

    stack = ", ".join(f"{name} {version(name)}" for name in ("torch", "timm", "accelerate"))
    return f"pieceboard {version('pieceboard')} (Python {platform.python_version()}; {stack})"


def bench_parser():
    """The `bench` command line (here, not in pieceboard.bench, so that its --help and --version import nothing)."""
    import argparse

    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
        return int(text)

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
    parser.add_argument("--jobs", "-j", type=positive, help="cells trained at once (default: [benchmark] jobs)")
    parser.add_argument("--threads", type=positive, help="CPU threads per cell (default: [benchmark] threads)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the cells, their settings and what would be kept or run"
    )
    parser.add_argument("--version", action="version", version=version_text())
    return parser


def wide_console(stderr: bool = False) -> Console:
    """A console that does not squeeze the leaderboard into 80 columns when output goes to a file or pipe."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=240)


def print_whole(console: Console, renderable: Any) -> None:
    """Print a table at least as wide as it needs: wider than the terminal, its lines wrap there rather than have
    rich cut its figures short."""
    console.print(renderable, width=max(console.width, console.measure(renderable).maximum), crop=False)


def print_error(exc: BaseException) -> None:
    """One plain line on stderr (no markup: `[defaults]` in a message is text, not a style)."""
    Console(stderr=True).print(f"pieceboard: error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)


class Display:
    """The live view on the main process: the matrix, one line per cell in flight with its epoch, loss and accuracy."""

    def __init__(self, console: Console, total: int, enabled: bool):
        self.console, self.enabled = console, enabled
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # Only on a terminal: to a file or a pipe the live view shows nothing, and rich ends it with an empty line.
        live = enabled and console.is_interactive
        self.progress = Progress(*columns, console=console, disable=not live, transient=True)
        self.matrix = self.progress.add_task("matrix", total=total)
        self.data = self.progress.add_task("", total=1, visible=False)
        # id -> (progress task, cell, last figures). Cells and results are pieceboard.config.Cell and
        # pieceboard.results.RunResult, used by their attributes only: this leaf imports no other pieceboard module.
        self.cells: dict[str, tuple[Any, Any, dict[str, float]]] = {}

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        """A line that stays above the live view."""
        if self.enabled:
            self.console.print(text, highlight=False)

    def stage(self, what: str, done: int, total: int) -> None:
        """Progress of a data stage (checking images, caching)."""
        self.progress.update(self.data, description=what, completed=done, total=total, visible=done < total)

    def start_run(self, cell: Any) -> None:
        """A cell begins."""
        self.cells[cell.id] = (self.progress.add_task(cell.id, total=None), cell, {})

    def event(self, cell_id: str, event: dict[str, Any]) -> None:
        """Train-loss and epoch events of a cell (epochs counted from 1); a `note` event is a line of its own."""
        if event["event"] == "note":  # e.g. `resumed <id> from epoch N`
            self.note(escape(event["text"]))
            return
        task, cell, last = self.cells[cell_id]
        epochs = cell.settings.epochs
        done = total = None
        if event["event"] == "train":
            last["loss"] = event["train/loss"]
            done = (event["epoch"] - 1) * event["steps"] + event["step"] + 1
            total = epochs * event["steps"]
        else:  # an epoch's evaluation: of the validation split when there is one
            last["acc"] = event["val_accuracy"] if "val_accuracy" in event else event["accuracy"]
            last["split"] = "val acc" if "val_accuracy" in event else "acc"
        text = f"{cell_id} epoch {event['epoch']}/{epochs}"
        text += f" loss {last['loss']:.3f}" if "loss" in last else ""
        text += f" {last['split']} {last['acc']:.3f}" if "acc" in last else ""
        self.progress.update(task, description=text, completed=done, total=total)

    def skip(self, text: str) -> None:
        """A cell that needs no work (kept from an earlier run)."""
        self.note(text)
        self.progress.advance(self.matrix)

    def end_run(self, result: Any, trace: str | None = None) -> None:
        """A cell finished: one line that survives in logs (and the last frames of a failure, dimmed)."""
        if result.id in self.cells:
            self.progress.remove_task(self.cells.pop(result.id)[0])
        self.progress.advance(self.matrix)
        if result.status == "completed":
            # A tuning trial has validation figures only; a tuned cell says what its trials chose.
            m, prefix = (result.metrics, "") if result.metrics else (result.val_metrics, "val ")
            chosen = (result.tuning or {}).get("chosen")
            tuned = " with " + ", ".join(f"{k}={v}" for k, v in chosen.items()) if chosen else ""
            self.note(
                f"[green]done[/green] {escape(result.id)}{escape(tuned)}: {prefix}acc {m['accuracy']:.4f} "
                f"{prefix}F1 {m['f1_macro']:.4f} in {result.train_s:.1f}s ({result.train_img_s:.0f} img/s)"
            )
            return
        if trace:
            self.note(f"[dim]{escape(trace)}[/dim]")
        self.note(f"[red]{result.status}[/red] {escape(result.id)}: {escape(result.error or '')}")
