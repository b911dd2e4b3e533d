"""The leaderboard: completed runs ranked by macro F1, with verdicts and costs; failed and corrupt runs with reasons.

    from pieceboard import Leaderboard
    board = Leaderboard.from_dir("results/demo")
    print(board.to_markdown())

It is derived from the stored files alone and never changes them. Beyond the stored figures, each row gets:

- a check: a completed row whose figures differ from its `predictions.csv` becomes `corrupt`, naming the file;
- clean accuracy and F1: the same predictions scored only on test images without a copy in train;
- a verdict: `p_vs_best`, a paired test against the leader on the same test images, and whether it is tied;
- time to accuracy: training seconds and epochs until accuracy first reached a fraction of the run's best (on the
  validation split when there is one, since that is where the curves are);
- tuning: the values each tuned row's trials chose, and every row's validation score;
- cost: `latency_ms`, `peak_mem_mb` beside parameters, FLOPs and throughput, and the Pareto front of F1 and latency;
- guardrails: rows trained or scored under other conditions than most rows (split, epochs, augmentation,
  evaluation transform, tuning budget) say so;
- `model_dir`: where the cell's trained model is kept, when it is.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.cells import cell_len
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pieceboard._io import atomic_write_text
from pieceboard.data import MANIFEST_META, leaked_test_paths
from pieceboard.metrics import RESAMPLES, SEED, mean_ci, paired_f1_test, paired_t_pvalue, score_predictions
from pieceboard.results import (
    MODEL,
    PREDICTIONS,
    RUNS,
    RunResult,
    comparable_config,
    curve,
    is_trial,
    kept_model,
    load_predictions,
    load_results,
    run_dir,
)

ALPHA = 0.05  # level of the paired tests against the leader: p >= ALPHA is "tied with the leader"
ONE_CLASS_SHARE = 0.95  # a run that gives one class to this share of the test images (or more) is flagged
ACC_FRACTION = 0.95  # time to accuracy: until accuracy first reaches this fraction of the run's best
MIN_SEEDS_FOR_INTERVAL = 3  # with 2 seeds the t quantile is 12.7: the interval spans the whole range
TOLERANCE = 1e-9  # stored figures against the ones recomputed from predictions.csv
CHECKED = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "test_loss", "train_loss")
COSTS = (
    "params", "trainable_params", "gflops", "latency_ms", "peak_mem_mb", "compile_s", "train_s", "train_img_s",
    "eval_img_s", "cache_s", "n_test",
)  # fmt: skip
SEED_METRICS = {"accuracy": (0.0, 1.0), "f1_macro": (0.0, 1.0), "test_loss": (0.0, math.inf)}  # with their ranges
SEED_MEANS = (
    "clean_accuracy", "time_to_acc_s", "epochs_to_acc", "train_s", "train_img_s", "latency_ms", "peak_mem_mb",
)  # fmt: skip


@dataclass(frozen=True)
class Column:
    """One displayed column: the row key, its header, a format string or one of the renderers below, and a priority.

    In a terminal too narrow for every column, the columns of priority 0 are shown first, then the others from the
    lowest priority number up, as long as they fit whole (see `fit_columns`).
    """

    key: str
    header: str
    spec: str = "{}"
    priority: int = 5


# In display order (terminal table, leaderboard.md, report.html); the keys are the row fields.
COLUMNS = [
    Column("rank", "#", priority=0),
    Column("id", "run", priority=0),
    Column("model", "model", priority=7),
    Column("mode", "mode", priority=7),
    Column("image_size", "px", priority=6),
    Column("batch_size", "batch", priority=6),
    Column("epochs", "epochs", priority=7),
    Column("tuned", "tuned", "settings", priority=2),
    Column("accuracy", "acc", "{:.4f}", priority=0),
    Column("clean_accuracy", "clean acc", "{:.4f}", priority=0),
    Column("f1_macro", "F1", "{:.4f}", priority=0),
    Column("val_f1_macro", "val F1", "{:.4f}", priority=3),
    Column("test_loss", "test loss", "{:.4f}", priority=8),
    Column("train_loss", "train loss", "{:.4f}", priority=8),
    Column("p_vs_best", "vs best", "verdict", priority=0),
    Column("flag", "flag", priority=0),
    Column("time_to_acc_s", "to acc", "time_to_acc", priority=3),
    Column("params", "params", "count", priority=4),
    Column("gflops", "GFLOP/img", "{:.3f}", priority=6),
    Column("latency_ms", "latency ms", "{:.2f}", priority=1),
    Column("peak_mem_mb", "peak MB", "{:.0f}", priority=5),
    Column("train_s", "train s", "{:.1f}", priority=1),
    Column("train_img_s", "train img/s", "{:.0f}", priority=8),
    Column("eval_img_s", "eval img/s", "{:.0f}", priority=8),
    Column("pareto", "pareto", "yesno", priority=4),
    Column("precision", "precision", priority=8),
    Column("guardrail", "guardrail", priority=2),
    Column("status", "status", priority=9),
]
SEED_COLUMNS = [
    Column("rank", "#", priority=0),
    Column("group", "runs", priority=0),
    Column("seeds", "seeds", "count", priority=3),
    Column("accuracy", "acc", "interval", priority=2),
    Column("f1_macro", "F1", "interval", priority=0),
    Column("test_loss", "test loss", "interval", priority=8),
    Column("clean_accuracy_mean", "clean acc", "{:.4f}", priority=2),
    Column("p_vs_best", "vs best", "verdict", priority=0),
    Column("flag", "flag", priority=0),
    Column("time_to_acc_s_mean", "s to acc", "{:.1f}", priority=5),
    Column("params", "params", "count", priority=4),
    Column("latency_ms_mean", "latency ms", "{:.2f}", priority=1),
    Column("peak_mem_mb_mean", "peak MB", "{:.0f}", priority=5),
    Column("train_s_mean", "train s", "{:.1f}", priority=1),
    Column("pareto", "pareto", "yesno", priority=4),
    Column("guardrail", "guardrail", priority=2),
]
IDENTITY = {"rank", "id", "model", "mode", "image_size", "batch_size", "epochs"}  # shown for rows that did not complete
TEXT = {"id", "model", "mode", "tuned", "precision", "guardrail", "status", "group", "flag", "label"}  # left-aligned
WRAPPED = {"guardrail", "status", "flag"}  # sentences: in a terminal they wrap onto more lines rather than widen
SENTENCES = WRAPPED - {"status"}  # listed under a table that leaves them out (a status is, only when not completed)
WRAPPED_WIDTH = 24  # the width a wrapped column is given when the table is fitted to a terminal


# --- rows ----------------------------------------------------------------------------------------------------------


def _row(result: RunResult, acc_fraction: float) -> dict[str, Any]:
    config = result.config
    row: dict[str, Any] = {"id": result.id, "status": result.status, "error": result.error}
    for key in ("run", "model", "mode", "image_size", "batch_size", "epochs", "seed"):
        row[key] = config.get(key)
    for key in METRICS:
        row[key] = result.metrics.get(key)
    row["val_accuracy"], row["val_f1_macro"] = (result.val_metrics.get(k) for k in ("accuracy", "f1_macro"))
    row["tuned"] = result.tuning.get("chosen")  # the values the trials chose on validation
    row["tune_budget"] = result.tuning.get("budget")
    for key in COSTS:
        row[key] = getattr(result, key)
    row["precision"] = result.precision
    row["channels_last"] = result.channels_last
    row["processes"] = result.environment.get("processes")
    row["seed_group"] = _seed_group(result)
    row["time_to_acc_s"], row["epochs_to_acc"] = time_to_accuracy(result.history, acc_fraction)
    for key in ("leaked_test_images", "clean_accuracy", "clean_f1_macro", "p_vs_best_raw", "p_vs_best"):
        row[key] = None  # filled in from the stored files when they allow it
    row["tied_with_best"] = row["pareto"] = row["guardrail"] = None
    row["flag"] = degenerate(result) if result.status == "completed" else None
    row["model_dir"] = None  # runs/<id>/model, relative to the output folder, when the cell's model is kept
    return row


def degenerate(result: RunResult) -> str | None:
    """Why a completed run says nothing about its model, or None: it gives one class to (nearly) every test image,
    or a loss is not a number.

    One class counts when it takes at least `ONE_CLASS_SHARE` of the predictions and at least half of the images
    its true share leaves (a test split that is 97 % one class is not flagged for predicting it 97 % of the time).
    """
    flags = []
    counts = np.array(result.confusion_matrix, dtype=np.int64)
    if counts.ndim == 2 and counts.size and counts.sum():
        predicted, true = counts.sum(axis=0), counts.sum(axis=1)
        top = int(np.argmax(predicted))
        share, true_share = predicted[top] / counts.sum(), true[top] / counts.sum()
        if share >= max(ONE_CLASS_SHARE, (1 + true_share) / 2):
            flags.append(f"one class ({100 * share:.0f}%)")
    for key in ("test_loss", "train_loss"):
        value = result.metrics.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            flags.append(f"{key.replace('_', ' ')} {value}")
    return "; ".join(flags) or None


def time_to_accuracy(history: list[dict[str, Any]], fraction: float = ACC_FRACTION) -> tuple[float | None, int | None]:
    """Training seconds and epochs until accuracy first reached `fraction` of the run's best accuracy.

    The accuracy of the per-epoch curves: validation accuracy with a validation split, else test accuracy.

    Args:
        history: A result's per-epoch entries, with `accuracy` (or `val_accuracy`) and `train_s` (that epoch's
            training seconds).
        fraction: The share of the best accuracy to reach, in (0, 1].

    Returns:
        `(seconds, epochs)`: the summed `train_s` of the epochs up to and including that one, and its `epoch`.
        None for what the history does not hold (no history, an epoch without accuracy or without `train_s`).
    """
    accuracies = curve(history, "accuracy")
    if not accuracies or not all(isinstance(a, int | float) and math.isfinite(a) for a in accuracies):
        return None, None
    target = fraction * max(accuracies)
    reached = next(i for i, accuracy in enumerate(accuracies) if accuracy >= target)  # the best one at the latest
    spent = [entry.get("train_s") for entry in history[: reached + 1]]
    seconds = None if any(s is None for s in spent) else float(sum(spent))
    return seconds, int(history[reached].get("epoch", reached + 1))


def _seed_group(result: RunResult) -> str:
    """Runs that differ only by seed share this key: a digest of their stored configuration without the seed."""
    text = json.dumps({k: v for k, v in comparable_config(result.config).items() if k != "seed"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = sorted(
        (r for r in rows if r["status"] == "completed"),
        key=lambda r: (-(r["f1_macro"] or 0.0), -(r["accuracy"] or 0.0), r["id"]),
    )
    others = sorted((r for r in rows if r["status"] != "completed"), key=lambda r: r["id"])
    for rank, row in enumerate(done, start=1):
        row["rank"] = rank
    for row in others:
        row["rank"] = None
    return done + others


# --- checks against predictions.csv, clean accuracy ----------------------------------------------------------------


def manifest_meta(output: Path) -> dict[str, Any]:
    """An output folder's manifest.json (how the split was made, the leak check); {} when missing or unreadable."""
    try:
        meta = json.loads((output / MANIFEST_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def class_names(result: RunResult, output: Path) -> list[str] | None:
    """The run's classes in index order: from its per-class table, else from manifest.json; None when neither says."""
    if result.per_class:
        return [str(entry.get("label")) for entry in result.per_class]
    names = manifest_meta(output).get("class_names")
    return [str(n) for n in names] if isinstance(names, list) else None


@dataclass
class Predictions:
    """A run's predictions.csv as class indices."""

    paths: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    class_names: list[str]
    confidence: np.ndarray | None = None  # probability of each prediction; None in folders written before it

    @functools.cached_property
    def scores(self) -> dict[str, Any]:
        """`metrics.score_predictions` on all images (computed once: the check, clean columns and compare use it)."""
        return score_predictions(self.predicted, self.labels, len(self.class_names), self.class_names)

    def score(self, keep: np.ndarray | None = None) -> dict[str, Any]:
        """`scores`, or the same on the images where `keep` is True."""
        if keep is None or keep.all():
            return self.scores
        return score_predictions(self.predicted[keep], self.labels[keep], len(self.class_names), self.class_names)


def read_predictions(folder: Path, result: RunResult) -> Predictions:
    """A completed run's predictions.csv, from its folder (`runs/<id>` of an output folder, or a copy elsewhere),
    with the run's class names.

    Raises:
        ValueError: The file is missing or unreadable, or names a class the run does not have; the message names
            the file.
    """
    path = folder / PREDICTIONS
    try:
        rows = load_predictions(folder)
        # A row with fields missing (or too many) is a file cut short or edited: said before any field is read.
        cut = next((n for n, row in enumerate(rows, start=2) if None in row.values() or None in row), None)
        if cut is not None:
            fields = len([key for key in rows[0] if key is not None])
            raise ValueError(f"line {cut} does not have the {fields} fields of its header (the file is cut or edited)")
        paths = [row["path"] for row in rows]
        pairs = [(row["label"], row["prediction"]) for row in rows]
        confidence = (
            np.array([float(row["confidence"]) for row in rows]) if rows and rows[0].get("confidence") else None
        )
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable predictions ({type(exc).__name__}: {exc})") from None
    output = folder.parent.parent  # for its manifest, when the result has no per-class table
    names = class_names(result, output) or sorted({name for pair in pairs for name in pair if name is not None})
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(name) for pair in pairs for name in pair if name not in index})
    if unknown:
        raise ValueError(f"{path}: classes {', '.join(unknown[:3])} are not the run's")
    if not pairs:
        raise ValueError(f"{path}: no predictions")
    codes = np.array([(index[label], index[prediction]) for label, prediction in pairs], dtype=np.int64)
    return Predictions(paths, codes[:, 0], codes[:, 1], names, confidence)


def check_predictions(folder: Path, result: RunResult) -> Predictions:
    """A completed run's predictions, after checking that they give the figures stored in its result.json (a tuning
    trial's: its validation figures, the split its predictions are on).

    Raises:
        ValueError: The file is missing, unreadable, or gives other figures (beyond 1e-9); the message names it.
    """
    predictions = read_predictions(folder, result)
    scores = predictions.score()
    figures = result.val_metrics if is_trial(result.id) else result.metrics
    for key in CHECKED:
        stored = figures.get(key)
        if stored is None or not abs(stored - scores[key]) <= TOLERANCE:  # `not <=` also catches NaN
            raise ValueError(f"{folder / PREDICTIONS}: gives {key} {scores[key]:.6f}, but result.json says {stored}")
    return predictions


def clean_columns(predictions: Predictions, leaked: set[str] | None) -> dict[str, Any]:
    """`leaked_test_images`, `clean_accuracy`, `clean_f1_macro`: scores on test images without a copy in train."""
    if leaked is None:
        return {"leaked_test_images": None, "clean_accuracy": None, "clean_f1_macro": None}
    keep = np.array([path not in leaked for path in predictions.paths])
    clean = predictions.score(keep) if keep.any() else {"accuracy": None, "f1_macro": None}
    n_leaked = int((~keep).sum())
    return {"leaked_test_images": n_leaked, "clean_accuracy": clean["accuracy"], "clean_f1_macro": clean["f1_macro"]}


def aligned(a: Predictions, b: Predictions) -> np.ndarray:
    """B's predicted classes in the order of A's test images, after checking that both scored the same images.

    Raises:
        ValueError: Other classes, other images, or other labels for the same images.
    """
    if a.class_names != b.class_names:
        raise ValueError("different classes")
    where = {path: i for i, path in enumerate(b.paths)}
    if len(where) != len(a.paths) or any(path not in where for path in a.paths):
        raise ValueError("not scored on the same test images")
    order = np.array([where[path] for path in a.paths])
    if not np.array_equal(a.labels, b.labels[order]):
        raise ValueError("the same test images have different labels")
    return b.predicted[order]


def _check_rows(output: Path, results: list[RunResult], rows: list[dict[str, Any]]) -> dict[str, Predictions]:
    """Check every completed row against its predictions and add the clean columns; returns the predictions by id."""
    leaked = leaked_test_paths(output)
    checked = {}
    for result, row in zip(results, rows, strict=True):
        if row["status"] != "completed":
            continue
        try:
            predictions = check_predictions(run_dir(output, result.id), result)
        except ValueError as exc:
            row["status"], row["error"] = "corrupt", str(exc)
            continue
        row |= clean_columns(predictions, leaked)
        checked[row["id"]] = predictions
    return checked


# --- verdicts, Pareto front, guardrails ----------------------------------------------------------------------------


def _add_verdicts(rows: list[dict[str, Any]], predictions: dict[str, Predictions]) -> None:
    """Each completed row's paired test of macro F1 against the leader on the same test images, then `step_down`."""
    done = [row for row in rows if row["status"] == "completed"]
    best = predictions.get(done[0]["id"]) if done else None
    if best is None:
        return
    tested = []
    for row in done[1:]:
        if row["id"] not in predictions:
            continue
        try:
            other = aligned(best, predictions[row["id"]])
        except ValueError:  # another split: not the same images
            continue
        test = paired_f1_test(best.labels, best.predicted, other, len(best.class_names), RESAMPLES, SEED)
        row["p_vs_best_raw"] = test.p_value
        tested.append(row)
    step_down(tested)


def step_down(ranked: list[dict[str, Any]]) -> None:
    """Make the verdicts agree with the order: `p_vs_best` is the largest `p_vs_best_raw` of a row and every row
    ranked below it, and `tied_with_best` is `p_vs_best >= ALPHA`.

    A row is then called worse than the leader only when every row below it is too: tied rows come first, worse rows
    after them, never a tied row below a worse one. Each `p_vs_best` is at least the row's own p value, so the level
    of each comparison holds.

    Args:
        ranked: The tested rows (each with `p_vs_best_raw`), best first.
    """
    largest = 0.0
    for row in reversed(ranked):
        largest = max(largest, row["p_vs_best_raw"])
        row["p_vs_best"], row["tied_with_best"] = largest, largest >= ALPHA


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (quality, cost) points: True for each point that no other point beats with higher quality and lower cost."""
    return [not any(q > quality and c < cost for q, c in points) for quality, cost in points]


def _add_pareto(rows: list[dict[str, Any]], quality: str, cost: str) -> None:
    placed = [r for r in rows if r.get("status", "completed") == "completed" and None not in (r[quality], r[cost])]
    for row, on_front in zip(placed, pareto_front([(r[quality], r[cost]) for r in placed]), strict=True):
        row["pareto"] = on_front


def split_digest(result: RunResult) -> str | None:
    """The digest of the manifest (the split) a result was scored on, when its config holds one."""
    data = result.config.get("data")
    return data.get("manifest_sha256") if isinstance(data, dict) else None


def _setting(key: str) -> Callable[[RunResult], Any]:
    # A value the row's trials chose is not judged: every row had the same choice, with the same budget.
    return lambda r: None if key in (r.tuning.get("chosen") or {}) else r.config.get(key)


# (label, value) of what must be equal for two rows to be compared fairly; None (unknown, old results) is not judged.
GUARDS: list[tuple[str, Callable[[RunResult], Any]]] = [
    ("split", split_digest),
    ("epochs", _setting("epochs")),
    ("augment", _setting("augment")),
    ("eval transform", lambda r: _transform_kind(r.transform)),
    ("tuning budget", lambda r: r.tuning.get("budget")),
]


def _transform_kind(transform: dict[str, Any]) -> dict[str, Any] | None:
    """How images are resized and normalised at evaluation; not the statistics, which vary with the image size."""
    kind = {key: transform[key] for key in ("resize", "normalize") if key in transform}
    return kind or None  # {} in results written before the field


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def guardrails(results: Iterable[RunResult]) -> dict[str, str]:
    """Why each result is not comparable with most of the others, by id (absent when it is).

    For each guard (split fingerprint, epochs, augmentation, evaluation transform, tuning budget: trials and epochs
    per trial) the reference is the value most results share; on a tie, the value of the earlier result (pass them
    best first). A setting a row's trials chose is not judged.
    """
    results = list(results)
    notes: dict[str, list[str]] = {}
    for label, get in GUARDS:
        values = {r.id: get(r) for r in results if get(r) is not None}
        keys = {run_id: json.dumps(value, sort_keys=True) for run_id, value in values.items()}
        if len(set(keys.values())) < 2:
            continue
        counts = Counter(keys.values())
        common = max(counts, key=counts.__getitem__)  # first of the most common, in the order given
        shown = _show(next(values[run_id] for run_id, key in keys.items() if key == common))
        for run_id, key in keys.items():
            if key != common:
                notes.setdefault(run_id, []).append(f"{label} {_show(values[run_id])} (most rows: {shown})")
    return {run_id: "; ".join(reasons) for run_id, reasons in notes.items()}


# --- seeds ---------------------------------------------------------------------------------------------------------


def _without_seed_label(run_id: str, seed: Any) -> str:
    """The cell id with its `seedN` axis label removed, to name a seed group."""
    run, _, labels = run_id.partition("@")
    kept = [label for label in labels.split("-") if label and label != f"seed{seed}"]
    return run + ("@" + "-".join(kept) if kept else "")


def _mean(values: list[Any]) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _seed_entry(members: list[dict[str, Any]], confidence: float) -> dict[str, Any]:
    first = members[0]
    entry: dict[str, Any] = {"rank": None, "group": _without_seed_label(first["id"], first["seed"])}
    entry["seeds"] = sorted(m["seed"] for m in members)
    entry |= {k: first[k] for k in ("model", "mode", "image_size", "batch_size", "epochs", "params", "gflops")}
    few = len(members) < MIN_SEEDS_FOR_INTERVAL
    for key, bounds in SEED_METRICS.items():
        values = [m[key] for m in members]
        if any(v is None for v in values):  # a result without the figure: nothing to summarise
            mean = low = high = None
        else:
            mean, low, high = mean_ci(values, confidence, bounds)
        entry |= {f"{key}_mean": mean, f"{key}_ci_low": None if few else low, f"{key}_ci_high": None if few else high}
    entry["interval_note"] = f"n={len(members)}: too few seeds for an interval" if few else None
    entry |= {f"{key}_mean": _mean([m[key] for m in members]) for key in SEED_MEANS}
    entry["f1_by_seed"] = {str(m["seed"]): m["f1_macro"] for m in members}
    for key in ("guardrail", "flag"):
        entry[key] = "; ".join(dict.fromkeys(m[key] for m in members if m[key])) or None
    return entry


def _add_seed_verdicts(summary: list[dict[str, Any]]) -> None:
    """Paired t-test of macro F1 against the leading group over the seeds both ran (at least two), then
    `step_down`."""
    best = summary[0]["f1_by_seed"]
    for entry in summary:
        entry["p_vs_best_raw"] = entry["p_vs_best"] = entry["tied_with_best"] = None
    tested = []
    for entry in summary[1:]:
        seeds = sorted(best.keys() & entry["f1_by_seed"].keys())
        if len(seeds) >= 2:
            entry["p_vs_best_raw"] = paired_t_pvalue([best[s] for s in seeds], [entry["f1_by_seed"][s] for s in seeds])
            tested.append(entry)
    step_down(tested)


def seed_summary(rows: list[dict[str, Any]], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Completed rows grouped by everything but the seed: mean and Student-t interval of each metric, and verdicts.

    The interval is clipped to the metric's range (accuracy and F1 in [0, 1], test loss >= 0) and left out (None,
    with `interval_note`) below three seeds. `p_vs_best` is a paired t-test of macro F1 against the leading group
    over the seeds both ran; `pareto` places mean F1 against mean latency.

    Returns:
        One entry per group that has at least two seeds, ranked by mean macro F1; empty when no group repeats.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "completed" and row["seed"] is not None:
            groups.setdefault(row["seed_group"], []).append(row)
    summary = [_seed_entry(members, confidence) for members in groups.values() if len(members) >= 2]
    summary.sort(key=lambda e: (-(e["f1_macro_mean"] or 0.0), e["group"]))
    for rank, entry in enumerate(summary, start=1):
        entry["rank"] = rank
    if summary:
        _add_seed_verdicts(summary)
        for entry in summary:
            entry["pareto"] = None
        _add_pareto(summary, "f1_macro_mean", "latency_ms_mean")
    return summary


# --- rendering -----------------------------------------------------------------------------------------------------


def _human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _verdict(row: dict[str, Any]) -> str:
    if row.get("rank") == 1:
        return "best"
    p = row.get("p_vs_best")
    if p is None:
        return "-"
    return f"tied p={p:.2g}" if row["tied_with_best"] else f"p={p:.2g}"


def _time_to_acc(row: dict[str, Any]) -> str:
    seconds, epochs = row.get("time_to_acc_s"), row.get("epochs_to_acc")
    if epochs is None:
        return "-"
    return f"ep {epochs}" if seconds is None else f"{seconds:.1f}s ep {epochs}"


def _interval(row: dict[str, Any], key: str) -> str:
    mean, low, high = row[f"{key}_mean"], row[f"{key}_ci_low"], row[f"{key}_ci_high"]
    if mean is None:
        return "-"
    if row.get("interval_note"):
        return f"{mean:.4f} [{row['interval_note']}]"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def cell(row: dict[str, Any], column: Column) -> str:
    """The text of one cell; `-` for a missing value."""
    if column.spec == "verdict":
        return _verdict(row)
    if column.spec == "interval":
        return _interval(row, column.key)
    if column.spec == "time_to_acc":
        return _time_to_acc(row)
    value = row.get(column.key)
    if _missing(value):
        return "-"
    if column.spec == "count":
        return str(len(value)) if isinstance(value, list) else _human_count(int(value))
    if column.spec == "yesno":
        return "yes" if value else "no"
    if column.spec == "settings":
        return " ".join(f"{key}={_show(item)}" for key, item in value.items())
    return column.spec.format(value)


def _reason(row: dict[str, Any]) -> str:
    """The status column of a row that did not complete: status and error on one line."""
    return f"{row['status']}: {row.get('error') or ''}".strip().replace("\n", " ")


def cells(row: dict[str, Any], columns: list[Column]) -> list[str]:
    """A row's displayed cells; a row that did not complete shows who it is, then `-`, then status and error."""
    if row.get("status", "completed") == "completed":
        return [cell(row, c) for c in columns]
    return [_reason(row) if c.key == "status" else cell(row, c) if c.key in IDENTITY else "-" for c in columns]


def _width(text: str) -> int:
    return max(map(cell_len, text.splitlines() or [""]))


def fit_columns(columns: list[Column], rows: list[dict[str, Any]], width: int) -> list[Column]:
    """The columns shown in a terminal `width` characters wide: by priority, each one only if it fits whole.

    Every figure keeps its full width (rich would otherwise cut it to `0.…`); sentences (`WRAPPED`) count as
    `WRAPPED_WIDTH` and wrap. A column that has nothing to show (`-` on every row) comes last. At least the rank and
    the name of each row are kept, even if they do not fit.

    Returns:
        The chosen columns, in display order.
    """
    texts = [cells(row, columns) for row in rows]
    natural, empty = {}, set()
    for i, column in enumerate(columns):
        body = [line[i] for line in texts]
        natural[column.key] = max(_width(t) for t in [column.header, *body])
        if column.key in WRAPPED:
            natural[column.key] = min(natural[column.key], WRAPPED_WIDTH)
        if all(text == "-" for text in body):
            empty.add(column.key)
    chosen: set[str] = set()
    used = 1  # the table's two edges and the space between columns: one character each
    for column in sorted(columns, key=lambda c: (c.key in empty, c.priority)):
        if used + natural[column.key] + 1 <= width or column.key in ("rank", "id", "group", "label"):
            chosen.add(column.key)
            used += natural[column.key] + 1
    return [column for column in columns if column.key in chosen]


LEFT_OUT_HINT = "--columns picks columns; --format md shows every one"


def rich_table(
    title: str | None,
    columns: list[Column],
    rows: list[dict[str, Any]],
    width: int | None = None,
    hint: str = LEFT_OUT_HINT,
) -> Table:
    """A rich table of `rows` that fits a terminal `width` characters wide (`fit_columns`); None: every column.
    `hint` says, under a fitted table, where to see the columns left out.

    When fitted, its caption names the columns left out and gives each row's sentences of left-out columns (a failed
    row's error, a guardrail), so that nothing the table says is lost.
    """
    shown = columns if width is None else fit_columns(columns, rows, width)
    # No rules or padding between columns, one space: the leaderboard is wide, and every character counts.
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    texts = [cells(row, shown) for row in rows]
    for i, column in enumerate(shown):
        justify = "left" if column.key in TEXT else "right"
        if column.key in WRAPPED:
            table.add_column(column.header, justify=justify, overflow="fold")
        else:  # never cut short: its widest cell is its least width
            least = max(_width(t) for t in [column.header, *(line[i] for line in texts)])
            table.add_column(column.header, justify=justify, no_wrap=True, min_width=least)
    for row, line in zip(rows, texts, strict=True):
        line = [escape(text) for text in line]
        if row.get("status", "completed") != "completed":
            line = [f"[red]{t}[/red]" if c.key == "status" else t for c, t in zip(shown, line, strict=True)]
        table.add_row(*line)
    notes = _left_out(columns, shown, rows, hint) if width is not None else []
    if notes:  # a caption wraps within the table's width
        table.caption, table.caption_justify = Text("\n".join(notes), style="dim"), "left"
    return table


def _left_out(columns: list[Column], shown: list[Column], rows: list[dict[str, Any]], hint: str) -> list[str]:
    keys = {column.key for column in shown}
    texts = [cells(row, columns) for row in rows]
    # Left out and with something to show: a column of `-` alone is not worth a word.
    hidden = [c for i, c in enumerate(columns) if c.key not in keys and any(line[i] != "-" for line in texts)]
    if not hidden:
        return []
    name = next(column.key for column in columns if column.key in ("id", "group", "label"))
    notes = []
    for row in rows:
        if "status" not in keys and row.get("status", "completed") != "completed":
            notes.append(f"{row[name]}: {_reason(row)}")
        notes += [f"{row[name]}: {c.header} {row[c.key]}" for c in hidden if c.key in SENTENCES and row.get(c.key)]
    listed = ", ".join(column.key for column in hidden)
    return [*notes, f"not shown at this width: {listed} ({hint})"]


def _markdown(columns: list[Column], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text.replace("|", "\\|") for text in cells(row, columns)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pick_columns(names: str, columns: list[Column]) -> list[Column]:
    """The columns named in a comma-separated list, by field (`f1_macro`) or header (`F1`), in the list's order.

    Raises:
        ValueError: A name that is no column's; the message lists the columns.
    """
    by_name = {c.key: c for c in columns} | {c.header: c for c in columns}
    picked = []
    for name in (n.strip() for n in names.split(",")):
        if name not in by_name:
            listed = ", ".join(c.key for c in columns)
            raise ValueError(f"unknown column {name!r}; columns (field names, or the headers shown): {listed}")
        picked.append(by_name[name])
    return picked


def _only(rows: list[dict[str, Any]], columns: list[Column] | None) -> list[dict[str, Any]]:
    """The rows with only the fields of `columns` (with both fields of the verdict and of time to accuracy)."""
    if not columns:
        return rows
    keys = [c.key for c in columns]
    keys += [extra for c in columns for extra in _SHOWN_WITH.get(c.key, ())]
    return [{key: row.get(key) for key in dict.fromkeys(keys)} for row in rows]


_SHOWN_WITH = {"p_vs_best": ("tied_with_best",), "time_to_acc_s": ("epochs_to_acc",)}


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(["rank", *(k for row in rows for k in row)]))
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    # Lists and dicts (seeds, F1 by seed) as JSON, so that a CSV reader gets them back whole.
    writer.writerows({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


@dataclass
class Leaderboard:
    """Rows ranked by macro F1 (then accuracy); rows that did not complete come last, with their error.

    Attributes:
        rows: One dict per result, best first (see docs/results.md for the fields).
        seeds: The summary over seeds (`seed_summary`), empty without a seed axis.
        results: The results the rows come from, by id.
        predictions: The checked predictions of the completed rows, by id (none without an output folder).
    """

    rows: list[dict[str, Any]]
    seeds: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, RunResult] = field(default_factory=dict, repr=False)
    predictions: dict[str, Predictions] = field(default_factory=dict, repr=False)

    @classmethod
    def from_results(
        cls, results: list[RunResult], output: str | Path | None = None, acc_fraction: float = ACC_FRACTION
    ) -> Leaderboard:
        """Rank a list of results.

        Args:
            results: The results, e.g. of one benchmark file's cells.
            output: Their benchmark's output folder. With it, each completed row is checked against its
                predictions.csv and gets clean accuracy and `p_vs_best`; without it, those stay None.
            acc_fraction: For `time_to_acc_s` and `epochs_to_acc`: the fraction of each run's best accuracy.

        Raises:
            ValueError: If `acc_fraction` is not in (0, 1].
        """
        if not 0 < acc_fraction <= 1:
            raise ValueError(f"acc_fraction must be in (0, 1], got {acc_fraction}")
        rows = [_row(r, acc_fraction) for r in results]
        checked = _check_rows(Path(output), results, rows) if output is not None else {}
        for row in rows:
            if output is not None and row["status"] == "completed" and kept_model(Path(output), row["id"]):
                row["model_dir"] = f"{RUNS}/{row['id']}/{MODEL}"
        rows = _rank(rows)
        by_id = {r.id: r for r in results}
        notes = guardrails(by_id[row["id"]] for row in rows if row["status"] == "completed")
        for row in rows:
            row["guardrail"] = notes.get(row["id"])
        _add_verdicts(rows, checked)
        _add_pareto(rows, "f1_macro", "latency_ms")
        return cls(rows, seed_summary(rows), by_id, checked)

    @classmethod
    def from_dir(cls, output: str | Path, acc_fraction: float = ACC_FRACTION) -> Leaderboard:
        """Rank the results stored under a benchmark's output folder (see `from_results`)."""
        return cls.from_results(load_results(Path(output)), output, acc_fraction)

    def table(self, title: str | None = None, width: int | None = None, columns: list[Column] | None = None) -> Table:
        """A rich table for a terminal `width` characters wide (None: every column), or of the given columns."""
        return rich_table(title, columns, self.rows) if columns else rich_table(title, COLUMNS, self.rows, width)

    def seed_table(self, width: int | None = None, columns: list[Column] | None = None) -> Table | None:
        """The seed summary as a rich table (as `table`), or None when no configuration ran with several seeds."""
        if not self.seeds:
            return None
        title = "over seeds: mean [95% CI]"
        return rich_table(title, columns, self.seeds) if columns else rich_table(title, SEED_COLUMNS, self.seeds, width)

    def to_json(self, seeds: bool = False, columns: list[Column] | None = None) -> str:
        """All rows (or the seed summary) with every field, or only the fields of `columns`, as JSON."""
        return json.dumps(_only(self.seeds if seeds else self.rows, columns), indent=2) + "\n"

    def to_csv(self, seeds: bool = False, columns: list[Column] | None = None) -> str:
        """All rows (or the seed summary) with every field, or only the fields of `columns`, as CSV."""
        return _csv(_only(self.seeds if seeds else self.rows, columns))

    def to_markdown(self, seeds: bool = False, columns: list[Column] | None = None) -> str:
        """The displayed columns (or `columns`) of the rows (or of the seed summary) as a Markdown table."""
        return _markdown(columns or (SEED_COLUMNS if seeds else COLUMNS), self.seeds if seeds else self.rows)

    def write(self, output: str | Path) -> None:
        """Write leaderboard.json, .csv and .md into the output folder, and leaderboard_seeds.* with seeds."""
        output = Path(output)
        for name, seeds in (("leaderboard", False), ("leaderboard_seeds", True)):
            if seeds and not self.seeds:
                continue
            atomic_write_text(output / f"{name}.json", self.to_json(seeds))
            atomic_write_text(output / f"{name}.csv", self.to_csv(seeds))
            atomic_write_text(output / f"{name}.md", self.to_markdown(seeds))
