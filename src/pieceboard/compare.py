"""Two runs on the same test images: class by class, their confusions, and a paired test of which is better.

    pieceboard compare results/demo mlp@16px resnet18-scratch@32px
    pieceboard compare results/demo mlp@16px results/other/runs/mlp@16px --json

Everything comes from the runs' predictions.csv (checked against their result.json first); the runs may come from
two output folders, as long as both were scored on the same split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from pieceboard._console import PieceboardError
from pieceboard.leaderboard import ALPHA, Column, Predictions, aligned, check_predictions, rich_table, split_digest
from pieceboard.metrics import RESAMPLES, SEED, PairedF1Test, most_confused, paired_f1_test
from pieceboard.results import RESULT, RUNS, RunResult, read_result

TOP_CONFUSIONS = 5  # most-confused (true, predicted) pairs listed per run


@dataclass
class Run:
    """A completed run and its checked predictions."""

    result: RunResult
    predictions: Predictions

    @property
    def name(self) -> str:
        return self.result.id


def find_run(output: Path, name: str) -> Path:
    """A run's folder: `name` is a run id under `output/runs/`, or the path of a run folder (holding result.json).

    Raises:
        PieceboardError: Neither exists; the message lists the runs that do.
    """
    folder = output / RUNS / name
    if (folder / RESULT).is_file():
        return folder
    if (Path(name) / RESULT).is_file():
        return Path(name)
    known = sorted(p.parent.name for p in (output / RUNS).glob(f"*/{RESULT}"))
    listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
    raise PieceboardError(f"{folder}: no such run (runs here: {listed or 'none'})")


def load_run(folder: Path) -> Run:
    """A completed run with predictions that give its stored figures.

    Raises:
        PieceboardError: The run did not complete, or its files are damaged.
    """
    result = read_result(folder / RESULT)
    if result.status != "completed":
        raise PieceboardError(f"{folder}: the run is {result.status}, not completed ({result.error})")
    try:
        predictions = check_predictions(folder, result)
    except ValueError as exc:
        raise PieceboardError(str(exc)) from None
    return Run(result, predictions)


def _aligned(a: Run, b: Run) -> np.ndarray:
    """B's predicted classes in the order of A's test images, after checking that both scored the same images.

    Raises:
        PieceboardError: Another split, other images or labels, or other classes.
    """
    split_a, split_b = split_digest(a.result), split_digest(b.result)
    if split_a and split_b and split_a != split_b:
        raise PieceboardError(f"{a.name} and {b.name} were scored on different splits ({split_a} vs {split_b})")
    try:
        return aligned(a.predictions, b.predictions)
    except ValueError as exc:
        raise PieceboardError(f"{a.name} and {b.name}: {exc}") from None


def test_name(test: PairedF1Test) -> str:
    """How the p value was computed, in words."""
    if test.exact:
        return f"exact paired permutation test of macro F1 over the test images: all {test.resamples} swaps"
    return f"paired permutation test of macro F1 over the test images: {test.resamples} random swaps, seed {SEED}"


def verdict(a: str, b: str, test: PairedF1Test) -> str:
    """The paired test's result in one sentence, e.g. `A is better than B: macro F1 0.9916 vs 0.9656, p = 0.0001`."""
    if test.p_value < ALPHA:
        (winner, high), (loser, low) = sorted([(a, test.f1_a), (b, test.f1_b)], key=lambda x: -x[1])
        return f"{winner} is better than {loser}: macro F1 {high:.4f} vs {low:.4f}, p = {test.p_value:.2g}"
    return (
        f"{a} and {b} are not shown apart: macro F1 {test.f1_a:.4f} vs {test.f1_b:.4f}, p = {test.p_value:.2g} "
        f"(needs p < {ALPHA})"
    )


def compare(a: Run, b: Run) -> dict[str, Any]:
    """Per-class scores side by side, the classes each wins, the most-confused pairs, and the paired test of macro F1
    that the leaderboard's verdict uses (`metrics.paired_f1_test`).

    Returns:
        A JSON-ready dict; `per_class` holds `label`, `support`, `precision_a`, `precision_b`, `recall_a`,
        `recall_b`, `f1_a`, `f1_b` and `f1_diff` (A minus B).

    Raises:
        PieceboardError: The runs were not scored on the same test images.
    """
    predicted_b = _aligned(a, b)
    pa, pb = a.predictions, b.predictions
    score_a, score_b = pa.scores, pb.scores  # per-class and overall figures do not depend on the images' order
    per_class = []
    for ca, cb in zip(score_a["per_class"], score_b["per_class"], strict=True):
        entry: dict[str, Any] = {"label": ca["label"], "support": ca["support"]}
        for key in ("precision", "recall", "f1"):
            entry |= {f"{key}_a": ca[key], f"{key}_b": cb[key]}
        entry["f1_diff"] = ca["f1"] - cb["f1"]
        per_class.append(entry)
    test = paired_f1_test(pa.labels, pa.predicted, predicted_b, len(pa.class_names), RESAMPLES, SEED)
    names = (a.name, b.name) if a.name != b.name else (f"{a.name} (A)", f"{b.name} (B)")
    return {
        "a": names[0],
        "b": names[1],
        "n_test": len(pa.paths),
        **{f"{key}_a": score_a[key] for key in ("accuracy", "f1_macro")},
        **{f"{key}_b": score_b[key] for key in ("accuracy", "f1_macro")},
        "per_class": per_class,
        "a_wins": [e["label"] for e in per_class if e["f1_diff"] > 0],
        "b_wins": [e["label"] for e in per_class if e["f1_diff"] < 0],
        "confused_a": most_confused(score_a["confusion_matrix"], pa.class_names, TOP_CONFUSIONS),
        "confused_b": most_confused(score_b["confusion_matrix"], pb.class_names, TOP_CONFUSIONS),
        "a_only_correct": test.a_only,
        "b_only_correct": test.b_only,
        "discordant": test.discordant,
        "test": test_name(test),
        "resamples": test.resamples,
        "exact": test.exact,
        "p_value": test.p_value,
        "alpha": ALPHA,
        "verdict": verdict(*names, test),
    }


PER_CLASS = [
    Column("label", "class", priority=0),
    Column("support", "images", priority=2),
    Column("precision_a", "prec A", "{:.4f}", priority=4),
    Column("precision_b", "prec B", "{:.4f}", priority=4),
    Column("recall_a", "recall A", "{:.4f}", priority=3),
    Column("recall_b", "recall B", "{:.4f}", priority=3),
    Column("f1_a", "F1 A", "{:.4f}", priority=0),
    Column("f1_b", "F1 B", "{:.4f}", priority=0),
    Column("f1_diff", "F1 A-B", "{:+.4f}", priority=1),
]


def tables(comparison: dict[str, Any], width: int | None = None) -> list[Table | str]:
    """What `pieceboard compare` prints: the per-class table (fitted to a terminal `width` characters wide, None:
    every column), the wins, the confusions and the verdict."""
    a, b = escape(comparison["a"]), escape(comparison["b"])
    title = f"A = {a}, B = {b}, on {comparison['n_test']} test images"
    per_class = rich_table(title, PER_CLASS, comparison["per_class"], width, hint="--json has every figure")
    confused = Table(title="most confused (true -> predicted: images)", header_style="bold")
    confused.add_column(f"A = {a}", overflow="fold")
    confused.add_column(f"B = {b}", overflow="fold")
    columns = [comparison["confused_a"], comparison["confused_b"]]
    for i in range(max(map(len, columns))):
        confused.add_row(*(_confusion_text(column[i]) if i < len(column) else "" for column in columns))
    lines = [
        f"accuracy: A {comparison['accuracy_a']:.4f}, B {comparison['accuracy_b']:.4f}; "
        f"macro F1: A {comparison['f1_macro_a']:.4f}, B {comparison['f1_macro_b']:.4f}",
        f"A wins on: {escape(', '.join(comparison['a_wins']) or 'no class')}",
        f"B wins on: {escape(', '.join(comparison['b_wins']) or 'no class')}",
    ]
    verdict_line = f"[bold]{escape(comparison['verdict'])}[/bold] [dim]({escape(comparison['test'])})[/dim]"
    return [per_class, *lines, confused, verdict_line]


def _confusion_text(entry: dict[str, Any]) -> str:
    return escape(f"{entry['label']} -> {entry['predicted']}: {entry['count']}")
