"""The leaderboard: completed runs ranked by macro F1, with verdicts and costs; failed and corrupt runs with reasons.

    from pieceboard import Leaderboard
    board = Leaderboard.from_dir("results/demo")
    print(board.to_markdown())

It is derived from the stored files alone and never changes them. Beyond the stored figures, each row gets:

- a check: a completed row whose figures differ from its `predictions.csv` becomes `corrupt`, naming the file;
- clean accuracy and F1: the same predictions scored only on test images without a copy in train;
- a verdict: `p_vs_best`, a paired test against the leader on the same test images, and whether it is tied;
- time to accuracy: training seconds and epochs until test accuracy first reached a fraction of the run's best;
- cost: `latency_ms`, `peak_mem_mb` beside parameters, FLOPs and throughput, and the Pareto front of F1 and latency;
- guardrails: rows trained or scored under other conditions than most rows (split, epochs, augmentation,
  evaluation transform) say so.
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
from rich.markup import escape
from rich.table import Table

from pieceboard._io import atomic_write_text
from pieceboard.data import MANIFEST_META, leaked_test_paths
from pieceboard.metrics import mcnemar_midp, mean_ci, paired_t_pvalue, score_predictions
from pieceboard.results import PREDICTIONS, RunResult, comparable_config, load_predictions, load_results, run_dir

ALPHA = 0.05  # level of the paired tests against the leader: p >= ALPHA is "tied with the leader"
ACC_FRACTION = 0.95  # time to accuracy: until test accuracy first reaches this fraction of the run's best
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
    """One displayed column: the row key, its header, and a format string or one of the renderers below."""

    key: str
    header: str
    spec: str = "{}"


# In display order (terminal table, leaderboard.md, report.html); the keys are the row fields.
COLUMNS = [
    Column("rank", "#"),
    Column("id", "run"),
    Column("model", "model"),
    Column("mode", "mode"),
    Column("image_size", "px"),
    Column("batch_size", "batch"),
    Column("epochs", "epochs"),
    Column("accuracy", "acc", "{:.4f}"),
    Column("clean_accuracy", "clean acc", "{:.4f}"),
    Column("f1_macro", "F1", "{:.4f}"),
    Column("test_loss", "test loss", "{:.4f}"),
    Column("train_loss", "train loss", "{:.4f}"),
    Column("p_vs_best", "vs best", "verdict"),
    Column("time_to_acc_s", "to acc", "time_to_acc"),
    Column("params", "params", "count"),
    Column("gflops", "GFLOP/img", "{:.3f}"),
    Column("latency_ms", "latency ms", "{:.2f}"),
    Column("peak_mem_mb", "peak MB", "{:.0f}"),
    Column("train_s", "train s", "{:.1f}"),
    Column("train_img_s", "train img/s", "{:.0f}"),
    Column("eval_img_s", "eval img/s", "{:.0f}"),
    Column("pareto", "pareto", "yesno"),
    Column("precision", "precision"),
    Column("guardrail", "guardrail"),
    Column("status", "status"),
]
SEED_COLUMNS = [
    Column("rank", "#"),
    Column("group", "runs"),
    Column("seeds", "seeds", "count"),
    Column("accuracy", "acc", "interval"),
    Column("f1_macro", "F1", "interval"),
    Column("test_loss", "test loss", "interval"),
    Column("clean_accuracy_mean", "clean acc", "{:.4f}"),
    Column("p_vs_best", "vs best", "verdict"),
    Column("time_to_acc_s_mean", "s to acc", "{:.1f}"),
    Column("params", "params", "count"),
    Column("latency_ms_mean", "latency ms", "{:.2f}"),
    Column("peak_mem_mb_mean", "peak MB", "{:.0f}"),
    Column("train_s_mean", "train s", "{:.1f}"),
    Column("pareto", "pareto", "yesno"),
    Column("guardrail", "guardrail"),
]
IDENTITY = {"rank", "id", "model", "mode", "image_size", "batch_size", "epochs"}  # shown for rows that did not complete
TEXT = {"id", "model", "mode", "precision", "guardrail", "status", "group"}  # left-aligned


# --- rows ----------------------------------------------------------------------------------------------------------


def _row(result: RunResult, acc_fraction: float) -> dict[str, Any]:
    config = result.config
    row: dict[str, Any] = {"id": result.id, "status": result.status, "error": result.error}
    for key in ("run", "model", "mode", "image_size", "batch_size", "epochs", "seed"):
        row[key] = config.get(key)
    for key in METRICS:
        row[key] = result.metrics.get(key)
    for key in COSTS:
        row[key] = getattr(result, key)
    row["precision"] = result.precision
    row["channels_last"] = result.channels_last
    row["processes"] = result.environment.get("processes")
    row["seed_group"] = _seed_group(result)
    row["time_to_acc_s"], row["epochs_to_acc"] = time_to_accuracy(result.history, acc_fraction)
    for key in ("leaked_test_images", "clean_accuracy", "clean_f1_macro", "p_vs_best", "tied_with_best", "pareto"):
        row[key] = None  # filled in from the stored files when they allow it
    row["guardrail"] = None
    return row


def time_to_accuracy(history: list[dict[str, Any]], fraction: float = ACC_FRACTION) -> tuple[float | None, int | None]:
    """Training seconds and epochs until test accuracy first reached `fraction` of the run's best accuracy.

    Args:
        history: A result's per-epoch entries, with `accuracy` and `train_s` (that epoch's training seconds).
        fraction: The share of the best accuracy to reach, in (0, 1].

    Returns:
        `(seconds, epochs)`: the summed `train_s` of the epochs up to and including that one, and its `epoch`.
        None for what the history does not hold (no history, an epoch without accuracy or without `train_s`).
    """
    accuracies = [entry.get("accuracy") for entry in history]
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


def _manifest_meta(output: Path) -> dict[str, Any]:
    try:
        meta = json.loads((output / MANIFEST_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def class_names(result: RunResult, output: Path) -> list[str] | None:
    """The run's classes in index order: from its per-class table, else from manifest.json; None when neither says."""
    if result.per_class:
        return [str(entry.get("label")) for entry in result.per_class]
    names = _manifest_meta(output).get("class_names")
    return [str(n) for n in names] if isinstance(names, list) else None


@dataclass
class Predictions:
    """A run's predictions.csv as class indices."""

    paths: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    class_names: list[str]

    @property
    def correct(self) -> dict[str, bool]:
        """Whether each test image (by path) was classified correctly."""
        return dict(zip(self.paths, (self.labels == self.predicted).tolist(), strict=True))

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
        paths = [row["path"] for row in rows]
        pairs = [(row["label"], row["prediction"]) for row in rows]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as exc:
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
    return Predictions(paths, codes[:, 0], codes[:, 1], names)


def check_predictions(folder: Path, result: RunResult) -> Predictions:
    """A completed run's predictions, after checking that they give the figures stored in its result.json.

    Raises:
        ValueError: The file is missing, unreadable, or gives other figures (beyond 1e-9); the message names it.
    """
    predictions = read_predictions(folder, result)
    scores = predictions.score()
    for key in CHECKED:
        stored = result.metrics.get(key)
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


def _check_rows(output: Path, results: list[RunResult], rows: list[dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """Check every completed row against its predictions and add the clean columns; returns correctness by id."""
    leaked = leaked_test_paths(output)
    correct = {}
    for result, row in zip(results, rows, strict=True):
        if row["status"] != "completed":
            continue
        try:
            predictions = check_predictions(run_dir(output, result.id), result)
        except ValueError as exc:
            row["status"], row["error"] = "corrupt", str(exc)
            continue
        row |= clean_columns(predictions, leaked)
        correct[row["id"]] = predictions.correct
    return correct


# --- verdicts, Pareto front, guardrails ----------------------------------------------------------------------------


def _add_verdicts(rows: list[dict[str, Any]], correct: dict[str, dict[str, bool]]) -> None:
    """McNemar mid-p of each completed row against the leader, on the same test images (matched by path)."""
    done = [row for row in rows if row["status"] == "completed"]
    best = correct.get(done[0]["id"]) if done else None
    if best is None:
        return
    order = sorted(best)
    for row in done[1:]:
        other = correct.get(row["id"])
        if other is None or other.keys() != best.keys():  # another split: not the same images
            continue
        test = mcnemar_midp([best[p] for p in order], [other[p] for p in order])
        row["p_vs_best"], row["tied_with_best"] = test.p_value, test.p_value >= ALPHA


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


# (label, value) of what must be equal for two rows to be compared fairly; None (unknown, old results) is not judged.
GUARDS: list[tuple[str, Callable[[RunResult], Any]]] = [
    ("split", split_digest),
    ("epochs", lambda r: r.config.get("epochs")),
    ("augment", lambda r: r.config.get("augment")),
    ("eval transform", lambda r: _transform_kind(r.transform)),
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

    For each guard (split fingerprint, epochs, augmentation, evaluation transform) the reference is the value most
    results share; on a tie, the value of the earlier result (pass them best first).
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
    entry["guardrail"] = "; ".join(dict.fromkeys(m["guardrail"] for m in members if m["guardrail"])) or None
    return entry


def _add_seed_verdicts(summary: list[dict[str, Any]]) -> None:
    """Paired t-test of macro F1 against the leading group over the seeds both ran (at least two)."""
    best = summary[0]["f1_by_seed"]
    for entry in summary:
        entry["p_vs_best"] = entry["tied_with_best"] = None
    for entry in summary[1:]:
        seeds = sorted(best.keys() & entry["f1_by_seed"].keys())
        if len(seeds) >= 2:
            p = paired_t_pvalue([best[s] for s in seeds], [entry["f1_by_seed"][s] for s in seeds])
            entry["p_vs_best"], entry["tied_with_best"] = p, p >= ALPHA


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
    return column.spec.format(value)


def _reason(row: dict[str, Any]) -> str:
    """The status column of a row that did not complete: status and error on one line."""
    return f"{row['status']}: {row.get('error') or ''}".strip().replace("\n", " ")


def cells(row: dict[str, Any], columns: list[Column]) -> list[str]:
    """A row's displayed cells; a row that did not complete shows who it is, then `-`, then status and error."""
    if row.get("status", "completed") == "completed":
        return [cell(row, c) for c in columns]
    return [_reason(row) if c.key == "status" else cell(row, c) if c.key in IDENTITY else "-" for c in columns]


def _rich_table(title: str | None, columns: list[Column], rows: list[dict[str, Any]]) -> Table:
    # No rules or padding between columns, one space: the leaderboard is wide, and every character counts.
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, padding=0, pad_edge=False)
    for column in columns:
        justify = "left" if column.key in TEXT else "right"
        if column.key in ("id", "group"):  # the name of a row is never cut short; the other columns wrap
            width = max([len(column.header), *(len(str(row.get(column.key))) for row in rows)])
            table.add_column(column.header, justify=justify, no_wrap=True, min_width=width)
        else:
            table.add_column(column.header, justify=justify)
    for row in rows:
        texts = [escape(text) for text in cells(row, columns)]
        if row.get("status", "completed") != "completed":
            texts[-1] = f"[red]{texts[-1]}[/red]"
        table.add_row(*texts)
    return table


def _markdown(columns: list[Column], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text.replace("|", "\\|") for text in cells(row, columns)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


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
    """

    rows: list[dict[str, Any]]
    seeds: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, RunResult] = field(default_factory=dict, repr=False)

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
        correct = _check_rows(Path(output), results, rows) if output is not None else {}
        rows = _rank(rows)
        by_id = {r.id: r for r in results}
        notes = guardrails(by_id[row["id"]] for row in rows if row["status"] == "completed")
        for row in rows:
            row["guardrail"] = notes.get(row["id"])
        _add_verdicts(rows, correct)
        _add_pareto(rows, "f1_macro", "latency_ms")
        return cls(rows, seed_summary(rows), by_id)

    @classmethod
    def from_dir(cls, output: str | Path, acc_fraction: float = ACC_FRACTION) -> Leaderboard:
        """Rank the results stored under a benchmark's output folder (see `from_results`)."""
        return cls.from_results(load_results(Path(output)), output, acc_fraction)

    def table(self, title: str | None = None) -> Table:
        """A rich table for the terminal."""
        return _rich_table(title, COLUMNS, self.rows)

    def seed_table(self) -> Table | None:
        """The seed summary as a rich table, or None when no configuration ran with several seeds."""
        return _rich_table("over seeds: mean [95% CI]", SEED_COLUMNS, self.seeds) if self.seeds else None

    def to_json(self, seeds: bool = False) -> str:
        """All rows (or the seed summary) with every field, as JSON."""
        return json.dumps(self.seeds if seeds else self.rows, indent=2) + "\n"

    def to_csv(self, seeds: bool = False) -> str:
        """All rows (or the seed summary) with every field, as CSV."""
        return _csv(self.seeds if seeds else self.rows)

    def to_markdown(self, seeds: bool = False) -> str:
        """The displayed columns of the rows (or of the seed summary) as a Markdown table."""
        return _markdown(SEED_COLUMNS, self.seeds) if seeds else _markdown(COLUMNS, self.rows)

    def write(self, output: str | Path) -> None:
        """Write leaderboard.json, .csv and .md into the output folder, and leaderboard_seeds.* with seeds."""
        output = Path(output)
        for name, seeds in (("leaderboard", False), ("leaderboard_seeds", True)):
            if seeds and not self.seeds:
                continue
            atomic_write_text(output / f"{name}.json", self.to_json(seeds))
            atomic_write_text(output / f"{name}.csv", self.to_csv(seeds))
            atomic_write_text(output / f"{name}.md", self.to_markdown(seeds))
