"""Tuning: the values each cell's trials tried, compared on the validation split, and the cell they choose.

    trials = config.trials[cell.id]                       # expanded from [tune] by pieceboard.config
    choice = choose(cell, trials, results_by_id, config.tuning(cell))
    choice.cell                                           # the cell with its best trial's values, or None

Every cell gets the same trials (the same combinations, the same epochs each), so every run is tuned with the same
budget. The best trial has the highest validation macro F1, then validation accuracy, then the lowest validation
loss, then comes first in the grid; failed trials count in the budget but are never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pieceboard.config import Cell, TrainSettings
from pieceboard.results import RunResult


@dataclass
class Choice:
    """What a cell's trials chose: the cell to train and test, and the record its result keeps (`tuning`)."""

    cell: Cell | None  # None when no trial completed
    record: dict[str, Any]


def _trial_entry(trial: Cell, values: dict[str, Any], result: RunResult | None) -> dict[str, Any]:
    scores = result.val_metrics if result is not None else {}
    return {
        "id": trial.id,
        "values": values,
        "status": result.status if result is not None else "missing",
        "val_f1_macro": scores.get("f1_macro"),
        "val_accuracy": scores.get("accuracy"),
        "val_loss": scores.get("val_loss"),
        "train_s": result.train_s if result is not None else None,
        "error": result.error if result is not None else None,
    }


def choose(cell: Cell, trials: list[Cell], results: dict[str, RunResult], tuning: dict[str, Any]) -> Choice:
    """The best of a cell's trials on the validation split, and the cell with its values.

    Args:
        cell: A cell of the matrix.
        trials: Its trials, in grid order (`Config.trials`).
        results: Results by id, holding those of the trials.
        tuning: `Config.tuning(cell)`: the space searched and the budget (trials, epochs over all trials).

    Returns:
        The choice; its record lists every trial with its values and validation scores, the budget, the values
        chosen and the chosen trial's validation macro F1.
    """
    keys = list(tuning["space"])
    entries = []
    for trial in trials:
        values = {key: getattr(trial.settings, key) for key in keys}
        entries.append(_trial_entry(trial, values, results.get(trial.id)))
    record: dict[str, Any] = {
        "budget": tuning["budget"],
        "chosen": None,
        "trial": None,
        "val_f1_macro": None,
        "trials": entries,
    }
    completed = [i for i, entry in enumerate(entries) if entry["status"] == "completed"]
    if not completed:
        return Choice(None, record)

    def rank(i: int) -> tuple:
        entry = entries[i]
        loss = entry["val_loss"] if entry["val_loss"] is not None else float("inf")
        return (-(entry["val_f1_macro"] or 0.0), -(entry["val_accuracy"] or 0.0), loss, i)

    best = entries[min(completed, key=rank)]
    record |= {"chosen": best["values"], "trial": best["id"], "val_f1_macro": best["val_f1_macro"]}
    settings = TrainSettings.model_validate(cell.settings.model_dump() | best["values"])
    return Choice(Cell(cell.id, cell.run, cell.model, cell.mode, cell.weights, settings), record)


def all_failed(record: dict[str, Any]) -> str:
    """The error of a tuned cell none of whose trials completed."""
    first = next((entry for entry in record["trials"] if entry["error"]), None)
    cause = f"; the first: {first['id']}: {first['error']}" if first else ""
    return f"TuningFailed: none of the {len(record['trials'])} trials completed{cause}"
