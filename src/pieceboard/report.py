"""Pictures of a benchmark: plots under OUTPUT/plots/ and one self-contained OUTPUT/report.html.

    pieceboard report results/demo

    from pieceboard.report import write_report
    write_report("results/demo")

Everything is drawn from the stored results (through `Leaderboard`) with matplotlib's Agg canvas, so no display is
needed, and embedded in the page as data URIs: report.html opens alone, offline, and can be mailed or archived.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pieceboard._io import atomic_write_bytes, atomic_write_text
from pieceboard.leaderboard import ALPHA, COLUMNS, SEED_COLUMNS, TEXT, Column, Leaderboard, cells, pareto_front
from pieceboard.results import RunResult, comparable_config

REPORT = "report.html"
PLOTS = "plots"
DPI = 90
MAX_PANELS = 12  # panels per axis figure: beyond that a figure is too tall to read
AXIS_IGNORED = {"run", "seed", "data"}  # config keys that are never a plotted axis (seeds are in their own plot)


@dataclass
class Plot:
    """One picture: its file name under plots/, a caption, and the PNG bytes."""

    name: str
    caption: str
    png: bytes


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@=-]+", "_", text)


# --- one run -------------------------------------------------------------------------------------------------------


def _steps_per_epoch(log: list[dict[str, Any]]) -> float:
    """Training steps per epoch, to place logged losses on an epoch axis.

    Stored with each entry (`steps`); for results logged before that, `update` counts steps over all epochs and
    `step` within one, so any entry after the first epoch tells it exactly; within one epoch only the last logged
    step is known.
    """
    for entry in log:
        if entry.get("steps"):
            return float(entry["steps"])
    later = [(e["update"] - e["step"] - 1) / (e["epoch"] - 1) for e in log if e["epoch"] > 1 and "update" in e]
    return later[0] if later else max(e["step"] for e in log) + 1.0


def train_loss_curve(result: RunResult) -> tuple[list[float], list[float]]:
    """Training loss against (fractional) epochs: every `log_every` batches from `train_log`, else once per epoch.

    Returns:
        `(epochs, losses)`; the epoch of a logged step `s` (from 0) of epoch `e` is `e - 1 + (s + 1) / steps`.
    """
    log = [e for e in result.train_log or [] if {"epoch", "step", "loss"} <= e.keys()]
    if not log:
        kept = [h for h in result.history if h.get("train_loss") is not None]
        return [h.get("epoch", i + 1) for i, h in enumerate(kept)], [h["train_loss"] for h in kept]
    steps = _steps_per_epoch(log)
    return [e["epoch"] - 1 + (e["step"] + 1) / steps for e in log], [e["loss"] for e in log]


def _epoch_axis(axes: Axes) -> None:
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole; logged steps fall between them
    axes.grid(alpha=0.3)


def _epochs(result: RunResult) -> list[int]:
    return [h.get("epoch", i + 1) for i, h in enumerate(result.history)]


def curves_figure(result: RunResult) -> Figure:
    """Train loss with the per-epoch test loss on the same axis (the overfitting view), and test accuracy and F1."""
    figure = Figure(figsize=(9, 3.2), layout="constrained")
    loss, quality = figure.subplots(1, 2)
    xs, ys = train_loss_curve(result)
    loss.plot(xs, ys, label="train loss", color="tab:blue", linewidth=1)
    epochs = _epochs(result)
    loss.plot(epochs, [h.get("test_loss") for h in result.history], "o-", label="test loss", color="tab:red")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for key, label in (("accuracy", "accuracy"), ("f1_macro", "macro F1")):
        quality.plot(epochs, [h.get(key) for h in result.history], "o-", label=f"test {label}")
    quality.set(xlabel="epoch", ylabel="score", title="test accuracy and F1")
    for axes in (loss, quality):
        _epoch_axis(axes)
        axes.legend(fontsize=8)
    figure.suptitle(result.id, fontsize=10)
    return figure


def confusion_figure(result: RunResult) -> Figure:
    """The confusion matrix normalised by true class (each row sums to 1), with class names."""
    counts = np.array(result.confusion_matrix, dtype=float)
    names = [str(c.get("label"))[:18] for c in result.per_class]
    if len(names) != len(counts):
        names = [str(i) for i in range(len(counts))]
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(names)
    side = max(3.5, 0.38 * n + 1.5)
    figure = Figure(figsize=(side + 1, side), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(n), names, rotation=90, fontsize=8)
    axes.set_yticks(range(n), names, fontsize=8)
    axes.set(xlabel="predicted", ylabel="true", title=f"{result.id}: confusion (share of each true class)")
    axes.title.set_fontsize(9)
    if n <= 20:  # beyond that the numbers no longer fit in their cells; the colours still read
        for (i, j), rate in np.ndenumerate(rates):
            if counts[i, j]:
                colour = "white" if rate > 0.5 else "black"
                axes.text(j, i, f"{rate:.2f}", ha="center", va="center", fontsize=7 if n <= 10 else 5, color=colour)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    return figure


# --- across runs ---------------------------------------------------------------------------------------------------


def quality_cost_figure(rows: list[dict[str, Any]], cost: str, label: str) -> Figure | None:
    """Macro F1 against a cost, each point labelled with its rank, and the Pareto front drawn; None without data."""
    placed = [r for r in rows if r["status"] == "completed" and None not in (r["f1_macro"], r[cost])]
    if not placed:
        return None
    points = [(r["f1_macro"], r[cost]) for r in placed]
    front = sorted((c, q) for (q, c), on in zip(points, pareto_front(points), strict=True) if on)
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    axes = figure.subplots()
    axes.scatter([c for _, c in points], [q for q, _ in points], color="tab:blue", zorder=3)
    axes.step([c for c, _ in front], [q for _, q in front], where="post", color="tab:orange", label="Pareto front")
    for row in placed:
        axes.annotate(str(row["rank"]), (row[cost], row["f1_macro"]), textcoords="offset points", xytext=(4, 3))
    costs = [c for _, c in points]
    if min(costs) > 0 and max(costs) / min(costs) > 20:
        axes.set_xscale("log")
    axes.set(xlabel=label, ylabel="macro F1", title=f"macro F1 against {label} (numbers: rank)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return figure


def axis_groups(results: Iterable[RunResult]) -> dict[str, list[dict[str, list[RunResult]]]]:
    """For each configuration key that varies: groups of results equal in everything else (but the seed).

    Returns:
        `{key: [{value as JSON: [results]}, ...]}`, keeping only groups that hold at least two values of the key.
    """
    configs = [(r, comparable_config(r.config)) for r in results]
    keys = sorted({k for _, config in configs for k in config} - AXIS_IGNORED)
    axes: dict[str, list[dict[str, list[RunResult]]]] = {}
    for key in keys:
        groups: dict[str, dict[str, list[RunResult]]] = {}
        for result, config in configs:
            rest = {k: v for k, v in config.items() if k not in (key, "seed", "run")}
            value = json.dumps(config.get(key), sort_keys=True)
            groups.setdefault(json.dumps(rest, sort_keys=True), {}).setdefault(value, []).append(result)
        panels = [group for group in groups.values() if len(group) >= 2]
        if panels:
            axes[key] = panels
    return axes


def _panel_title(group: dict[str, list[RunResult]], axis: str, varying: list[str]) -> str:
    first = next(iter(group.values()))[0].config
    runs = sorted({str(r.config.get("run")) for members in group.values() for r in members})
    fixed = [f"{k}={_short(first.get(k))}" for k in varying if k != axis and k in first]
    return " · ".join(["/".join(runs), *fixed])


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def axis_figure(axis: str, panels: list[dict[str, list[RunResult]]], varying: list[str]) -> Figure:
    """One row per group of runs that differ only in `axis`: test accuracy per epoch and training loss, overlaid."""
    shown = panels[:MAX_PANELS]
    figure = Figure(figsize=(10, 2.6 * len(shown) + 0.6), layout="constrained")
    grid = figure.subplots(len(shown), 2, squeeze=False)
    for (quality, loss), group in zip(grid, shown, strict=True):
        for colour, (value, members) in enumerate(sorted(group.items())):
            for i, result in enumerate(members):  # several members: the seeds of one value, in one colour
                label = f"{axis}={_short(json.loads(value))}" if i == 0 else None
                style = {"color": f"C{colour}", "label": label, "alpha": 1.0 if len(members) == 1 else 0.6}
                quality.plot(_epochs(result), [h.get("accuracy") for h in result.history], "o-", **style)
                loss.plot(*train_loss_curve(result), linewidth=1, **style)
        quality.set(xlabel="epoch", ylabel="test accuracy")
        loss.set(xlabel="epoch", ylabel="train loss")
        quality.set_title(_panel_title(group, axis, varying), fontsize=9, loc="left")
        for axes in (quality, loss):
            _epoch_axis(axes)
        quality.legend(fontsize=8)
    return figure


def seeds_figure(seeds: list[dict[str, Any]]) -> Figure:
    """Macro F1 per configuration over seeds: the mean, its 95% interval where there is one, and every seed."""
    figure = Figure(figsize=(7, 0.45 * len(seeds) + 1.2), layout="constrained")
    axes: Axes = figure.subplots()
    for y, entry in enumerate(seeds):
        mean, low, high = entry["f1_macro_mean"], entry["f1_macro_ci_low"], entry["f1_macro_ci_high"]
        if low is not None and not math.isnan(low):
            axes.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color="tab:blue", capsize=4)
        else:
            axes.plot(mean, y, "o", color="tab:blue")
        axes.plot(list(entry["f1_by_seed"].values()), [y] * len(entry["f1_by_seed"]), "x", color="tab:gray")
    axes.set_yticks(range(len(seeds)), [e["group"] for e in seeds], fontsize=8)
    axes.invert_yaxis()
    axes.set(xlabel="macro F1", title="over seeds: mean, 95% interval (3+ seeds), each seed (x)")
    axes.grid(alpha=0.3, axis="x")
    return figure


# --- the page ------------------------------------------------------------------------------------------------------


def _plots(board: Leaderboard) -> tuple[list[Plot], dict[str, list[Plot]]]:
    """The pictures across runs, and each completed run's own."""
    shared = []
    for cost, label in (("train_s", "training seconds"), ("latency_ms", "batch-1 latency (ms)")):
        if (figure := quality_cost_figure(board.rows, cost, label)) is not None:
            shared.append(Plot(f"quality-{cost}.png", f"Macro F1 against {label}.", _png(figure)))
    done = [board.results[r["id"]] for r in board.rows if r["status"] == "completed" and r["id"] in board.results]
    axes = axis_groups(done)
    for axis, panels in axes.items():
        more = f" The first {MAX_PANELS} of {len(panels)} groups." if len(panels) > MAX_PANELS else ""
        caption = f"Runs that differ only in {axis}: test accuracy and training loss.{more}"
        shared.append(Plot(f"axis-{_slug(axis)}.png", caption, _png(axis_figure(axis, panels, list(axes)))))
    if board.seeds:
        shared.append(Plot("seeds.png", "Macro F1 over seeds.", _png(seeds_figure(board.seeds))))
    per_run = {}
    for result in done:
        name = f"run-{_slug(result.id)}"
        own = [Plot(f"{name}-curves.png", "Loss, accuracy and F1 per epoch.", _png(curves_figure(result)))]
        if result.confusion_matrix:
            own.append(Plot(f"{name}-confusion.png", "Confusion matrix.", _png(confusion_figure(result))))
        per_run[result.id] = own
    return shared, per_run


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.text { text-align: left; }
tr.best td { background: #e6f4ea; }
tr.tied td { background: #f3faf5; }
tr.failed td { color: #b00020; }
td.guard { color: #a15c00; white-space: normal; min-width: 12em; }
.wide { overflow-x: auto; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _table(columns: list[Column], rows: list[dict[str, Any]], table_id: str, link: bool) -> str:
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in columns)
    body = []
    for row in rows:
        kind = "failed" if row.get("status", "completed") != "completed" else ""
        kind = kind or ("best" if row.get("rank") == 1 else "tied" if row.get("tied_with_best") else "")
        tds = []
        for column, text in zip(columns, cells(row, columns), strict=True):
            content = html.escape(text)
            if link and column.key == "id" and kind != "failed":
                content = f'<a href="#run-{_slug(row["id"])}">{content}</a>'
            css = "guard" if column.key == "guardrail" and text != "-" else "text" if column.key in TEXT else ""
            tds.append(f'<td class="{css}">{content}</td>' if css else f"<td>{content}</td>")
        body.append(f'<tr class="{kind}">{"".join(tds)}</tr>' if kind else f"<tr>{''.join(tds)}</tr>")
    return f'<div class="wide"><table id="{table_id}"><tr>{head}</tr>{"".join(body)}</table></div>'


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    caption = html.escape(plot.caption)
    image = f'<img src="data:image/png;base64,{data}" alt="{caption}">'
    return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"


def _per_class(result: RunResult) -> str:
    rows = "".join(
        f'<tr><td class="text">{html.escape(str(c.get("label")))}</td><td>{c.get("precision", 0):.4f}</td>'
        f"<td>{c.get('recall', 0):.4f}</td><td>{c.get('f1', 0):.4f}</td><td>{c.get('support', '')}</td></tr>"
        for c in result.per_class
    )
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>test images</th></tr>"
    return f'<table class="per-class">{head}{rows}</table>'


def _page(output: Path, board: Leaderboard, shared: list[Plot], per_run: dict[str, list[Plot]]) -> str:
    counts: dict[str, int] = {}
    for row in board.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no runs"
    written = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        f'<h1 id="top">pieceboard report: {html.escape(output.name)}</h1>',
        f"<p>{html.escape(str(output))}: {summary}. Written {html.escape(written)}.</p>",
        '<h2 id="leaderboard-section">Leaderboard</h2>',
        "<p>Ranked by macro F1. <em>vs best</em>: McNemar mid-p test against the leader on the same test images; "
        f"<em>tied</em> when p &ge; {ALPHA}. See the pieceboard docs (Results) for every column.</p>",
        _table(COLUMNS, board.rows, "leaderboard", link=True),
    ]
    if board.seeds:
        parts += ['<h2 id="over-seeds">Over seeds</h2>', _table(SEED_COLUMNS, board.seeds, "seeds", link=False)]
    if shared:
        parts += ['<h2 id="across-runs">Across runs</h2>', *map(_figure, shared)]
    if per_run:
        parts.append('<h2 id="runs">Runs</h2>')
    for run_id, plots in per_run.items():
        result = board.results[run_id]
        parts += [f'<h3 id="run-{_slug(run_id)}">{html.escape(run_id)}</h3>', *map(_figure, plots)]
        parts.append(_per_class(result))
    title = f"pieceboard report: {html.escape(output.name)}"
    head = f'<meta charset="utf-8"><title>{title}</title><style>{STYLE}</style>'
    return f'<!doctype html>\n<html lang="en"><head>{head}</head><body>\n' + "\n".join(parts) + "\n</body></html>\n"


def write_report(output: str | Path, board: Leaderboard | None = None) -> Path:
    """Draw every plot into `output/plots/` and write the self-contained `output/report.html`.

    Args:
        output: A benchmark's output folder.
        board: Its leaderboard; default `Leaderboard.from_dir(output)`.

    Returns:
        The path of report.html.

    Raises:
        StorageError: A file could not be written.
    """
    output = Path(output)
    board = board if board is not None else Leaderboard.from_dir(output)
    shared, per_run = _plots(board)
    written = {plot.name for plot in shared} | {plot.name for plots in per_run.values() for plot in plots}
    for plot in [*shared, *(p for plots in per_run.values() for p in plots)]:
        atomic_write_bytes(output / PLOTS / plot.name, plot.png)
    for stale in (output / PLOTS).glob("*.png"):  # pictures of runs or axes that are gone would mislead
        if stale.name not in written:
            stale.unlink()
    atomic_write_text(output / REPORT, _page(output, board, shared, per_run))
    return output / REPORT
