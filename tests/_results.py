"""Result folders written directly (result.json, predictions.csv, manifest.json), for tests that need no training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pieceboard.metrics import score_predictions
from pieceboard.results import RunResult, save_result

CLASSES = ["cat", "dog", "fox"]


def image_paths(n: int) -> list[str]:
    """Relative image paths, as predictions.csv holds them."""
    return [f"img/{i:03d}.png" for i in range(n)]


def write_run(
    output: Path,
    run_id: str,
    labels: list[str],
    predicted: list[str],
    config: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    confidence: list[float] | None = None,
    **fields: Any,
) -> RunResult:
    """A completed run whose stored figures are exactly those of its predictions.

    Args:
        output: The output folder.
        run_id: The cell id; `run` in the config is the part before `@`.
        labels: True class names, one per test image (paths from `image_paths`).
        predicted: Predicted class names.
        config: Overrides of the default configuration.
        history: Per-epoch entries; default two epochs of one training second each, the last at the final accuracy.
        confidence: The probability of each prediction; None writes predictions.csv as before that column existed.
        **fields: Other `RunResult` fields (latency_ms, transform, ...).
    """
    index = {name: i for i, name in enumerate(CLASSES)}
    scores = score_predictions([index[p] for p in predicted], [index[y] for y in labels], len(CLASSES), CLASSES)
    base = {"run": run_id.split("@")[0], "model": "pieceboard_mlp", "mode": "scratch", "image_size": 8,
            "batch_size": 8, "epochs": 2, "seed": 0, "augment": [], "data": {"manifest_sha256": "split-a"}}  # fmt: skip
    metrics = {k: scores[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")}
    metrics |= {"test_loss": 1.0 - scores["accuracy"], "train_loss": 0.5}
    if history is None:
        history = [
            {"epoch": 1, "accuracy": scores["accuracy"] / 2, "f1_macro": 0.1, "train_loss": 1.0, "test_loss": 1.1,
             "train_s": 1.0},
            {"epoch": 2, "accuracy": scores["accuracy"], "f1_macro": scores["f1_macro"], "train_loss": 0.5,
             "test_loss": metrics["test_loss"], "train_s": 1.0},
        ]  # fmt: skip
    result = RunResult(
        id=run_id,
        status="completed",
        config=base | (config or {}),
        metrics=metrics,
        per_class=scores["per_class"],
        confusion_matrix=scores["confusion_matrix"],
        history=history,
        params=1000,
        gflops=0.01,
        train_s=sum(h.get("train_s") or 0 for h in history),
        train_img_s=100.0,
        eval_img_s=400.0,
        precision="no",
        **fields,
    )
    rows = [
        (i, path, y, p) for i, (path, y, p) in enumerate(zip(image_paths(len(labels)), labels, predicted, strict=True))
    ]
    if confidence is not None:
        rows = [(*row, c) for row, c in zip(rows, confidence, strict=True)]
    save_result(output, result, rows)
    return result


def write_manifest(output: Path, leaked: list[str] | None = None) -> None:
    """manifest.json with the class names, and `leaked_test` when given."""
    meta: dict[str, Any] = {"class_names": CLASSES}
    if leaked is not None:
        meta["leaked_test"] = leaked
    output.mkdir(parents=True, exist_ok=True)
    (output / "manifest.json").write_text(json.dumps(meta))


def graded(n: int, n_right: int) -> tuple[list[str], list[str]]:
    """Labels cycling through the classes; the first `n_right` predicted right, the rest as the next class."""
    labels = [CLASSES[i % len(CLASSES)] for i in range(n)]
    wrong = [CLASSES[(i + 1) % len(CLASSES)] for i in range(n)]
    return labels, labels[:n_right] + wrong[n_right:]
