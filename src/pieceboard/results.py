"""Results: one `runs/<id>/result.json` and `predictions.csv` per matrix cell, written atomically.

A benchmark that is killed keeps every finished cell; the next start skips cells whose stored result is
completed with the same configuration, and runs the rest.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pieceboard._io import atomic_write_text

RUNS = "runs"
RESULT = "result.json"
PREDICTIONS = "predictions.csv"


@dataclass
class RunResult:
    """What one matrix cell produced; the fields of result.json."""

    id: str
    status: str  # completed | failed | skipped
    config: dict[str, Any]
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
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
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunResult:
        """Read a stored result, ignoring fields this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def run_dir(output: Path, run_id: str) -> Path:
    """The folder of one cell's files."""
    return output / RUNS / run_id


def save_result(output: Path, result: RunResult, predictions: list[tuple[int, str, str, str]] | None = None) -> None:
    """Store a cell's result (and its test predictions: index, path, label, prediction).

    Predictions are written first, so a result.json that says completed always has its predictions beside it.
    """
    folder = run_dir(output, result.id)
    if predictions is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["index", "path", "label", "prediction"])
        writer.writerows(predictions)
        atomic_write_text(folder / PREDICTIONS, buffer.getvalue())
    atomic_write_text(folder / RESULT, json.dumps(result.to_dict(), indent=2, allow_nan=True) + "\n")


def load_results(output: str | Path) -> list[RunResult]:
    """Every stored result under `output/runs`, in folder order."""
    results = []
    for path in sorted((Path(output) / RUNS).glob(f"*/{RESULT}")):
        results.append(RunResult.from_dict(json.loads(path.read_text(encoding="utf-8"))))
    return results


def load_predictions(output: Path, run_id: str) -> list[dict[str, str]]:
    """The rows of a cell's predictions.csv."""
    with (run_dir(output, run_id) / PREDICTIONS).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def finished(output: Path, run_id: str, config: dict[str, Any]) -> RunResult | None:
    """The stored result of a cell if it completed with exactly this configuration, else None."""
    path = run_dir(output, run_id) / RESULT
    if not path.exists():
        return None
    try:
        stored = RunResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError):
        return None
    if stored.status == "completed" and stored.config == config and (path.parent / PREDICTIONS).exists():
        return stored
    return None
