"""Results: one `runs/<id>/result.json` and `predictions.csv` per matrix cell, written atomically.

A benchmark that is killed keeps every finished cell; the next start skips cells whose stored result is
completed with the same configuration, and runs the rest. Tuning trials are stored the same way, beside their cell
(`runs/<cell-id>~<values>/`), and left out of `load_results`. A result file that cannot be read (damaged, edited by
hand, written by a crash of another tool) is never fatal: it is read as a `corrupt` result with the reason, shown
on the leaderboard, and rerun by the next benchmark.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from pieceboard._io import atomic_write_text, is_complete
from pieceboard.config import ADDED_DATA, ADDED_SETTINGS, TRIAL_MARK

RUNS = "runs"
RESULT = "result.json"
PREDICTIONS = "predictions.csv"
# confidence came later: rows of four (and folders written before it) have none, and every reader copes.
PREDICTION_COLUMNS = ("index", "path", "label", "prediction", "confidence")
CHECKPOINT = "checkpoint"  # runs/<id>/checkpoint/: the last finished epoch of a cell in training
MODEL = "model"  # runs/<id>/model/: a kept model in timm's layout (pieceboard.models.save_model_folder)
STATUSES = ("completed", "failed", "skipped", "corrupt")
# Settings that change how a cell runs but not what it trains or scores: a stored result is kept whatever they were.
EXECUTION_KEYS = ("graphs",)


@dataclass
class RunResult:
    """What one matrix cell produced; the fields of result.json."""

    id: str
    status: str  # completed | failed | skipped (stored), corrupt (read back damaged)
    config: dict[str, Any]
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    history: list[dict[str, int | float]] = field(default_factory=list)
    params: int | None = None
    trainable_params: int | None = None
    gflops: float | None = None
    train_s: float | None = None
    train_img_s: float | None = None
    eval_img_s: float | None = None
    cache_s: float | None = None
    data_wait_s: float | None = None
    n_train: int | None = None
    n_test: int | None = None
    precision: str | None = None
    channels_last: bool | None = None
    latency_ms: float | None = None
    peak_mem_mb: float | None = None
    compile_s: float | None = None
    transform: dict[str, Any] = field(default_factory=dict)
    train_log: list[dict[str, int | float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's, with a validation split
    n_val: int | None = None
    tuning: dict[str, Any] = field(default_factory=dict)  # a tuned cell's trials and the values chosen (tune.py)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunResult:
        """Validate a stored result.json: types checked strictly, fields of other versions ignored.

        Raises:
            ValueError: Not JSON, not an object, or a field missing or of the wrong type (the first one is named).
        """
        try:
            result = _ADAPTER.validate_json(text, strict=True)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "top level"
            raise ValueError(f"{where}: {first['msg'].lower()}") from None
        if result.status not in STATUSES[:3]:
            raise ValueError(f"status: {result.status!r} is not one of {', '.join(STATUSES[:3])}")
        return result


_ADAPTER = pydantic.TypeAdapter(RunResult)


def curve_split(history: list[dict[str, Any]]) -> str:
    """The split a per-epoch history was scored on: `val` with a validation split, else `test`."""
    return "val" if history and "val_accuracy" in history[0] else "test"


def curve(history: list[dict[str, Any]], metric: str) -> list[Any]:
    """One per-epoch figure, `accuracy`, `f1_macro` or `loss`, on the split of `curve_split` (None where missing)."""
    split = curve_split(history)
    key = f"{split}_loss" if metric == "loss" else f"val_{metric}" if split == "val" else metric
    return [entry.get(key) for entry in history]


def run_dir(output: Path, run_id: str) -> Path:
    """The folder of one cell's files."""
    return output / RUNS / run_id


def kept_model(output: Path, run_id: str) -> Path | None:
    """The cell's model folder (`runs/<id>/model`) when one was written completely, else None."""
    folder = run_dir(output, run_id) / MODEL
    return folder if is_complete(folder) else None


def save_result(output: Path, result: RunResult, predictions: list[tuple] | None = None) -> None:
    """Store a cell's result (and its test predictions: index, path, label, prediction and, in rows of five,
    confidence: the probability the model gave its prediction).

    Predictions are written first, so a result.json that says completed always has its predictions beside it.
    """
    folder = run_dir(output, result.id)
    if predictions is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS[: len(predictions[0])] if predictions else PREDICTION_COLUMNS)
        writer.writerows(predictions)
        atomic_write_text(folder / PREDICTIONS, buffer.getvalue())
    atomic_write_text(folder / RESULT, json.dumps(result.to_dict(), indent=2, allow_nan=True) + "\n")


def read_result(path: Path) -> RunResult:
    """One stored result.json; a damaged one comes back with status `corrupt` and the reason as its error."""
    run_id = path.parent.name
    try:
        result = RunResult.from_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        return RunResult(id=run_id, status="corrupt", config={}, error=f"{path}: unreadable result ({exc})")
    if result.id != run_id:  # copied or edited by hand: its predictions.csv would be another cell's
        return RunResult(id=run_id, status="corrupt", config={}, error=f"{path}: id {result.id!r} is not its folder's")
    return result


def is_trial(run_id: str) -> bool:
    """Whether a stored result is a tuning trial (`<cell-id>~<values>`) rather than a cell of the matrix."""
    return TRIAL_MARK in run_id


def load_results(output: str | Path, trials: bool = False) -> list[RunResult]:
    """Every stored result of the matrix under `output/runs`, in folder order (damaged ones as `corrupt`).

    Args:
        output: A benchmark's output folder.
        trials: Also the tuning trials.
    """
    paths = sorted((Path(output) / RUNS).glob(f"*/{RESULT}"))
    return [read_result(path) for path in paths if trials or not is_trial(path.parent.name)]


def load_predictions(folder: Path) -> list[dict[str, str]]:
    """The rows of the predictions.csv in a cell's folder (index, path, label, prediction, and confidence in folders
    written since it was added)."""
    with (folder / PREDICTIONS).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def finished(output: Path, run_id: str, config: dict[str, Any]) -> RunResult | None:
    """The stored result of a cell if it completed with exactly this configuration, else None."""
    path = run_dir(output, run_id) / RESULT
    if not path.exists():
        return None
    stored = read_result(path)
    same = comparable_config(stored.config) == comparable_config(config)
    if stored.status == "completed" and same and (path.parent / PREDICTIONS).exists():
        return stored
    return None


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored configuration without the keys that change how a cell runs but not what it trains (`graphs`), and
    without settings added later that hold the value every result stored before them trained with."""
    kept = {
        k: v
        for k, v in config.items()
        if k not in EXECUTION_KEYS and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])
    }
    if isinstance(kept.get("data"), dict):
        kept["data"] = {k: v for k, v in kept["data"].items() if not (k in ADDED_DATA and v == ADDED_DATA[k])}
    return kept
