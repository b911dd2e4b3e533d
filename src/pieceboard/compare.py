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
from pieceboard.leaderboard import ALPHA, Predictions, check_predictions, split_digest
from pieceboard.metrics import mcnemar_midp
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
    """Positions in b's predictions of a's test images, after checking that both scored the same images.

    Raises:
        PieceboardError: Another split, other images or labels, or other classes.
    """
    split_a, split_b = split_digest(a.result), split_digest(b.result)
    if split_a and split_b and split_a != split_b:
        raise PieceboardError(f"{a.name} and {b.name} were scored on different splits ({split_a} vs {split_b})")
    pa, pb = a.predictions, b.predictions
    if pa.class_names != pb.class_names:
        raise PieceboardError(f"{a.name} and {b.name} have different classes")
    where = {path: i for i, path in enumerate(pb.paths)}
    if sorted(pa.paths) != sorted(where):
        raise PieceboardError(f"{a.name} and {b.name} were not scored on the same test images")
    order = np.array([where[path] for path in pa.paths])
    if not np.array_equal(pa.labels, pb.labels[order]):
        raise PieceboardError(f"{a.name} and {b.name} give the same test images different labels")
    return order


def _confusions(matrix: list[list[int]], names: list[str]) -> list[dict[str, Any]]:
    """The most frequent mistakes: (true class, predicted class, count), largest first."""
    counts = np.array(matrix)
    np.fill_diagonal(counts, 0)
    # Stable sort on the negated counts: equal counts stay in class order.
    flat = np.argsort(-counts, axis=None, kind="stable")[:TOP_CONFUSIONS]
    pairs = [np.unravel_index(i, counts.shape) for i in flat]
    return [{"label": names[t], "predicted": names[p], "count": int(counts[t, p])} for t, p in pairs if counts[t, p]]


def verdict(a: str, b: str, a_only: int, b_only: int, p_value: float) -> str:
    """The paired test's result in one sentence, e.g. `A is better than B: 41 vs 17 discordant images, p = 0.0015`."""
    if p_value < ALPHA:
        (winner, wins), (loser, losses) = sorted([(a, a_only), (b, b_only)], key=lambda x: -x[1])
        return f"{winner} is better than {loser}: {wins} vs {losses} discordant images, p = {p_value:.2g}"
    return (
        f"{a} and {b} are not shown apart: {a_only} vs {b_only} discordant images, p = {p_value:.2g} "
        f"(needs p < {ALPHA})"
    )


def compare(a: Run, b: Run) -> dict[str, Any]:
    """Per-class scores side by side, the classes each wins, the most-confused pairs, and McNemar's mid-p test.

    Returns:
        A JSON-ready dict; `per_class` holds `label`, `support`, `precision_a`, `precision_b`, `recall_a`,
        `recall_b`, `f1_a`, `f1_b` and `f1_diff` (A minus B).

    Raises:
        PieceboardError: The runs were not scored on the same test images.
    """
    order = _aligned(a, b)
    pa, pb = a.predictions, b.predictions
    score_a, score_b = pa.scores, pb.scores  # per-class and overall figures do not depend on the images' order
    per_class = []
    for ca, cb in zip(score_a["per_class"], score_b["per_class"], strict=True):
        entry: dict[str, Any] = {"label": ca["label"], "support": ca["support"]}
        for key in ("precision", "recall", "f1"):
            entry |= {f"{key}_a": ca[key], f"{key}_b": cb[key]}
        entry["f1_diff"] = ca["f1"] - cb["f1"]
        per_class.append(entry)
    test = mcnemar_midp(pa.labels == pa.predicted, (pb.labels == pb.predicted)[order])
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
        "confused_a": _confusions(score_a["confusion_matrix"], pa.class_names),
        "confused_b": _confusions(score_b["confusion_matrix"], pb.class_names),
        "a_only_correct": test.a_only,
        "b_only_correct": test.b_only,
        "test": "McNemar mid-p",
        "p_value": test.p_value,
        "alpha": ALPHA,
        "verdict": verdict(*names, test.a_only, test.b_only, test.p_value),
    }


def tables(comparison: dict[str, Any]) -> list[Table | str]:
    """What `pieceboard compare` prints: the per-class table, the wins, the confusions and the verdict."""
    a, b = escape(comparison["a"]), escape(comparison["b"])
    per_class = Table(title=f"A = {a}, B = {b}, on {comparison['n_test']} test images", header_style="bold")
    for header in ("class", "images", "prec A", "prec B", "recall A", "recall B", "F1 A", "F1 B", "F1 A-B"):
        per_class.add_column(header, justify="left" if header == "class" else "right")
    for e in comparison["per_class"]:
        figures = [f"{e[k]:.4f}" for k in ("precision_a", "precision_b", "recall_a", "recall_b", "f1_a", "f1_b")]
        per_class.add_row(escape(e["label"]), str(e["support"]), *figures, f"{e['f1_diff']:+.4f}")
    confused = Table(title="most confused (true -> predicted: images)", header_style="bold")
    confused.add_column(f"A = {a}")
    confused.add_column(f"B = {b}")
    columns = [comparison["confused_a"], comparison["confused_b"]]
    for i in range(max(map(len, columns))):
        confused.add_row(*(_confusion_text(column[i]) if i < len(column) else "" for column in columns))
    lines = [
        f"accuracy: A {comparison['accuracy_a']:.4f}, B {comparison['accuracy_b']:.4f}; "
        f"macro F1: A {comparison['f1_macro_a']:.4f}, B {comparison['f1_macro_b']:.4f}",
        f"A wins on: {escape(', '.join(comparison['a_wins']) or 'no class')}",
        f"B wins on: {escape(', '.join(comparison['b_wins']) or 'no class')}",
    ]
    return [per_class, *lines, confused, f"[bold]{escape(comparison['verdict'])}[/bold]"]


def _confusion_text(entry: dict[str, Any]) -> str:
    return escape(f"{entry['label']} -> {entry['predicted']}: {entry['count']}")
