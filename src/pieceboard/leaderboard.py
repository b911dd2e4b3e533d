"""The leaderboard: completed runs ranked by macro F1, cost beside quality, failed and skipped runs with reasons.

    from pieceboard import Leaderboard
    board = Leaderboard.from_dir("results/demo")
    print(board.to_markdown())

It is derived from the stored results alone and never changes them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from pieceboard._io import atomic_write_text
from pieceboard.metrics import mean_ci
from pieceboard.results import RunResult, load_results

# (row key, header, format) in display order; the same names as result.json.
COLUMNS: list[tuple[str, str, str]] = [
    ("rank", "#", "{}"),
    ("id", "run", "{}"),
    ("model", "model", "{}"),
    ("mode", "mode", "{}"),
    ("image_size", "px", "{}"),
    ("batch_size", "batch", "{}"),
    ("epochs", "epochs", "{}"),
    ("accuracy", "acc", "{:.4f}"),
    ("f1_macro", "F1", "{:.4f}"),
    ("precision_macro", "prec", "{:.4f}"),
    ("recall_macro", "recall", "{:.4f}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("params", "params", "{}"),
    ("gflops", "GFLOP/img", "{:.3f}"),
    ("train_s", "train s", "{:.1f}"),
    ("train_img_s", "train img/s", "{:.0f}"),
    ("eval_img_s", "eval img/s", "{:.0f}"),
    ("precision", "precision", "{}"),
    ("status", "status", "{}"),
]
METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "test_loss", "train_loss")
COSTS = ("params", "trainable_params", "gflops", "train_s", "train_img_s", "eval_img_s", "cache_s", "n_test")


def _row(result: RunResult) -> dict[str, Any]:
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
    return row


SEED_METRICS = ("accuracy", "f1_macro", "test_loss")


def _seed_group(result: RunResult) -> str:
    """Runs that differ only by seed share this key: a digest of their stored configuration without the seed."""
    text = json.dumps({k: v for k, v in result.config.items() if k != "seed"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _without_seed_label(run_id: str, seed: Any) -> str:
    """The cell id with its `seedN` axis label removed, to name a seed group."""
    run, _, labels = run_id.partition("@")
    kept = [label for label in labels.split("-") if label and label != f"seed{seed}"]
    return run + ("@" + "-".join(kept) if kept else "")


def seed_summary(rows: list[dict[str, Any]], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Completed rows grouped by everything but the seed: mean and Student-t interval of each metric.

    Returns:
        One row per group that has at least two seeds, ranked by mean macro F1; empty when no group repeats.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "completed":
            groups.setdefault(row["seed_group"], []).append(row)
    summary = []
    for members in groups.values():
        if len(members) < 2:
            continue
        first = members[0]
        name = _without_seed_label(first["id"], first["seed"])
        entry: dict[str, Any] = {"group": name, "seeds": sorted(m["seed"] for m in members)}
        entry |= {k: first[k] for k in ("model", "mode", "image_size", "batch_size", "epochs")}
        for key in SEED_METRICS:
            mean, low, high = mean_ci([m[key] for m in members], confidence)
            entry |= {f"{key}_mean": mean, f"{key}_ci_low": low, f"{key}_ci_high": high}
        entry["train_s_mean"] = sum(m["train_s"] for m in members) / len(members)
        summary.append(entry)
    summary.sort(key=lambda e: -e["f1_macro_mean"])
    for rank, entry in enumerate(summary, start=1):
        entry["rank"] = rank
    return summary


def _human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _reason(row: dict[str, Any]) -> str:
    """The status column of a row that did not complete: status and error on one line."""
    return f"{row['status']}: {row.get('error') or ''}".strip().replace("\n", " ")


def _fmt(key: str, spec: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key == "params":
        return _human_count(int(value))
    return spec.format(value)


@dataclass
class Leaderboard:
    """Rows ranked by macro F1 (then accuracy); rows that did not complete come last, with their error."""

    rows: list[dict[str, Any]]

    @property
    def seeds(self) -> list[dict[str, Any]]:
        """Runs that differ only by seed, summarised with 95% confidence intervals (see `seed_summary`)."""
        return seed_summary(self.rows)

    @classmethod
    def from_results(cls, results: list[RunResult]) -> Leaderboard:
        """Rank a list of results."""
        rows = [_row(r) for r in results]
        done = sorted(
            (r for r in rows if r["status"] == "completed"),
            key=lambda r: (-(r["f1_macro"] or 0.0), -(r["accuracy"] or 0.0), r["id"]),
        )
        others = sorted((r for r in rows if r["status"] != "completed"), key=lambda r: r["id"])
        for rank, row in enumerate(done, start=1):
            row["rank"] = rank
        for row in others:
            row["rank"] = None
        return cls(done + others)

    @classmethod
    def from_dir(cls, output: str | Path) -> Leaderboard:
        """Rank the results stored under a benchmark's output folder."""
        return cls.from_results(load_results(Path(output)))

    def table(self, title: str | None = None) -> Table:
        """A rich table for the terminal."""
        table = Table(title=title, header_style="bold", show_lines=False)
        numeric = {k for k, _, spec in COLUMNS if spec != "{}"} | {"params", "image_size", "batch_size", "epochs"}
        for key, header, _ in COLUMNS:
            table.add_column(header, justify="right" if key in numeric or key == "rank" else "left")
        for row in self.rows:
            if row["status"] == "completed":
                table.add_row(*(_fmt(k, spec, row.get(k)) for k, _, spec in COLUMNS))
            else:
                cells = [_fmt(k, spec, row.get(k)) for k, _, spec in COLUMNS[:7]]
                table.add_row(*cells, *["-"] * (len(COLUMNS) - 8), f"[red]{escape(_reason(row))}[/red]")
        return table

    def seed_table(self) -> Table | None:
        """The seed summary as a rich table, or None when no configuration ran with several seeds."""
        summary = self.seeds
        if not summary:
            return None
        table = Table(title="over seeds: mean [95% CI]", header_style="bold")
        for header in ("#", "runs", "seeds", "acc", "F1", "test loss", "train s"):
            table.add_column(header, justify="left" if header == "runs" else "right")
        for e in summary:
            cells = [f"{e[f'{k}_mean']:.4f} [{e[f'{k}_ci_low']:.4f}, {e[f'{k}_ci_high']:.4f}]" for k in SEED_METRICS]
            table.add_row(str(e["rank"]), e["group"], str(len(e["seeds"])), *cells, f"{e['train_s_mean']:.1f}")
        return table

    def to_json(self) -> str:
        """All rows with every field, as JSON."""
        return json.dumps(self.rows, indent=2) + "\n"

    def to_csv(self) -> str:
        """All rows with every field, as CSV."""
        buffer = io.StringIO()
        fields = list(dict.fromkeys(["rank", *(k for row in self.rows for k in row)]))
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def to_markdown(self) -> str:
        """The displayed columns as a Markdown table (errors in the status column)."""
        lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in self.rows:
            cells = [_fmt(k, spec, row.get(k)) for k, _, spec in COLUMNS]
            if row["status"] != "completed":
                cells[-1] = _reason(row).replace("|", "\\|")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, output: str | Path) -> None:
        """Write leaderboard.json, .csv and .md into the output folder."""
        output = Path(output)
        atomic_write_text(output / "leaderboard.json", self.to_json())
        atomic_write_text(output / "leaderboard.csv", self.to_csv())
        atomic_write_text(output / "leaderboard.md", self.to_markdown())
        if self.seeds:
            atomic_write_text(output / "leaderboard_seeds.json", json.dumps(self.seeds, indent=2) + "\n")
