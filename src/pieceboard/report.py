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
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from PIL import Image

from pieceboard._image import to_rgb
from pieceboard._io import atomic_write_bytes, atomic_write_text, lock_folder, storage_errors
from pieceboard.dedup import NOT_FOUND
from pieceboard.leaderboard import (
    ACC_FRACTION,
    ALPHA,
    COLUMNS,
    SEED_COLUMNS,
    TEXT,
    Column,
    Leaderboard,
    Predictions,
    cells,
    manifest_meta,
    pareto_front,
)
from pieceboard.metrics import RESAMPLES, SEED, most_confused
from pieceboard.results import RunResult, comparable_config, curve, curve_split

REPORT = "report.html"
PLOTS = "plots"
DPI = 90
MAX_PANELS = 12  # panels per axis figure: beyond that a figure is too tall to read
AXIS_IGNORED = {"run", "seed", "data", "tune"}  # config keys that are never a plotted axis (seeds: their own plot)
MISTAKES = 24  # test images shown per run in the gallery of mistakes, most confident first
THUMBNAIL = 96  # pixels: the longest side of a gallery picture
CONFUSED = 5  # most confused class pairs listed per run
# The leaderboard's first table: what the verdict and the choice rest on. Every other column is in the second.
MAIN = ("rank", "id", "accuracy", "clean_accuracy", "f1_macro", "p_vs_best", "flag", "time_to_acc_s", "params",
        "latency_ms", "train_s", "pareto")  # fmt: skip
TUNED = ("tuned", "val_f1_macro")  # in the first table too when the rows were tuned


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
    """Train loss with the per-epoch evaluation loss on the same axis (the overfitting view), and the per-epoch
    accuracy and F1: of the validation split when there is one, else of the test split."""
    figure = Figure(figsize=(9, 3.2), layout="constrained")
    loss, quality = figure.subplots(1, 2)
    split = curve_split(result.history)
    xs, ys = train_loss_curve(result)
    loss.plot(xs, ys, label="train loss", color="tab:blue", linewidth=1)
    epochs = _epochs(result)
    loss.plot(epochs, curve(result.history, "loss"), "o-", label=f"{split} loss", color="tab:red")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for key, label in (("accuracy", "accuracy"), ("f1_macro", "macro F1")):
        quality.plot(epochs, curve(result.history, key), "o-", label=f"{split} {label}")
    quality.set(xlabel="epoch", ylabel="score", title=f"{split} accuracy and F1")
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
    axes.scatter([c for _, c in points], [q for q, _ in points], color="tab:blue", zorder=3, label="run (number: rank)")
    axes.step([c for c, _ in front], [q for _, q in front], where="post", color="tab:orange", label="Pareto front")
    for row in placed:
        axes.annotate(str(row["rank"]), (row[cost], row["f1_macro"]), textcoords="offset points", xytext=(4, 3))
    costs = [c for _, c in points]
    if min(costs) > 0 and max(costs) / min(costs) > 20:
        _log_axis(axes)
    axes.set(xlabel=label, ylabel="macro F1", title=f"macro F1 against {label}")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return figure


def _log_axis(axes: Axes) -> None:
    """A log x axis labelled at 1, 2 and 5 of each decade in plain numbers (0.5, 1, 2, 5, 10, ...), nothing between:
    matplotlib's default labels its minor ticks in scientific notation where a range spans under a decade, and
    those labels run into each other."""
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())


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
    """One row per group of runs that differ only in `axis`: accuracy per epoch (validation accuracy with a
    validation split) and training loss, overlaid."""
    shown = panels[:MAX_PANELS]
    figure = Figure(figsize=(10, 2.6 * len(shown) + 0.6), layout="constrained")
    grid = figure.subplots(len(shown), 2, squeeze=False)
    for (quality, loss), group in zip(grid, shown, strict=True):
        for colour, (value, members) in enumerate(sorted(group.items())):
            for i, result in enumerate(members):  # several members: the seeds of one value, in one colour
                label = f"{axis}={_short(json.loads(value))}" if i == 0 else None
                style = {"color": f"C{colour}", "label": label, "alpha": 1.0 if len(members) == 1 else 0.6}
                quality.plot(_epochs(result), curve(result.history, "accuracy"), "o-", **style)
                loss.plot(*train_loss_curve(result), linewidth=1, **style)
        split = curve_split(next(iter(group.values()))[0].history)
        quality.set(xlabel="epoch", ylabel=f"{split} accuracy")
        loss.set(xlabel="epoch", ylabel="train loss")
        quality.set_title(_panel_title(group, axis, varying), fontsize=9, loc="left")
        for axes in (quality, loss):
            _epoch_axis(axes)
            axes.legend(fontsize=8)
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
    legend = [
        Line2D([], [], color="tab:blue", marker="o", label="mean, 95% interval (3+ seeds)"),
        Line2D([], [], color="tab:gray", marker="x", linestyle="none", label="one seed"),
    ]
    axes.legend(handles=legend, fontsize=8, loc="best")
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
        caption = f"Runs that differ only in {axis}: accuracy per epoch and training loss.{more}"
        shared.append(Plot(f"axis-{_slug(axis)}.png", caption, _png(axis_figure(axis, panels, list(axes)))))
    if board.seeds:
        shared.append(Plot("seeds.png", "Macro F1 over seeds.", _png(seeds_figure(board.seeds))))
    per_run = {}
    for result in done:
        name = f"run-{_slug(result.id)}"
        split = "validation" if curve_split(result.history) == "val" else "test"
        caption = f"Loss, accuracy and F1 per epoch, on the {split} split."
        own = [Plot(f"{name}-curves.png", caption, _png(curves_figure(result)))]
        if result.confusion_matrix:
            own.append(Plot(f"{name}-confusion.png", "Confusion matrix.", _png(confusion_figure(result))))
        per_run[result.id] = own
    return shared, per_run


# --- the verdict in words, the mistakes ------------------------------------------------------------------------


def _figures(row: dict[str, Any]) -> str:
    """A row's quality and cost in words: macro F1, accuracy, clean accuracy, latency and training seconds."""
    parts = [f"macro F1 {row['f1_macro']:.4f}", f"accuracy {row['accuracy']:.4f}"]
    if row.get("clean_accuracy") is not None:
        parts.append(f"clean accuracy {row['clean_accuracy']:.4f}")
    costs = []
    if row.get("latency_ms") is not None:
        costs.append(f"{row['latency_ms']:.2f} ms per image")
    if row.get("train_s") is not None:
        costs.append(f"{row['train_s']:.1f} s of training")
    return ", ".join(parts) + (f"; {' and '.join(costs)}" if costs else "")


@dataclass(frozen=True)
class LeakCheck:
    """What the leak check of a split found: counts from manifest.json."""

    split: str  # grouped | random
    groups: int  # groups of near-duplicate pictures
    straddling: int  # groups with members on both sides of the split
    leaked: int  # test images with a copy in train

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> LeakCheck | None:
        """From an output folder's manifest.json (`leaderboard.manifest_meta`); None for a folder split before
        pieceboard looked for copies."""
        if not isinstance(meta.get("duplicate_groups"), list):
            return None
        straddling, leaked = meta.get("cross_split_groups") or [], meta.get("leaked_test") or []
        return cls(str(meta.get("split", "random")), len(meta["duplicate_groups"]), len(straddling), len(leaked))


def verdict(board: Leaderboard, leak: LeakCheck | None) -> list[str]:
    """The leaderboard in sentences: who leads and at what cost, who is tied with it, by how much the others are
    behind, which runs to look at before trusting them, what did not complete, and what the leak check found.

    Args:
        board: The leaderboard.
        leak: What the leak check of its split found; None when there was none.

    Returns:
        Plain-text paragraphs (escape them for HTML).
    """
    done = [row for row in board.rows if row["status"] == "completed"]
    if not done:
        return ["No run completed."] + _not_completed(board.rows)
    best = done[0]
    lines = [f"{best['id']} leads: {_figures(best)}."]
    tied = [row for row in done[1:] if row["tied_with_best"]]
    worse = [row for row in done[1:] if row["tied_with_best"] is False]
    if tied:
        names = "; ".join(f"{r['id']} (macro F1 {r['f1_macro']:.4f}, p={r['p_vs_best']:.2g})" for r in tied)
        lines.append(f"Tied with it (this benchmark does not tell them apart at the {ALPHA:.0%} level): {names}.")
        cheap = [r for r in [best, *tied] if r.get("latency_ms") is not None]
        cheapest = min(cheap, key=lambda r: r["latency_ms"]) if cheap else best
        if cheapest is not best:
            lines.append(f"The cheapest of these to run is {cheapest['id']}: {_figures(cheapest)}.")
    if worse:
        first = worse[0]
        gap = best["f1_macro"] - first["f1_macro"]
        others = "The other runs are" if tied else "Every other run is"
        lines.append(
            f"{others} worse than the leader (p < {ALPHA}); the best of them, {first['id']}, by {gap:.4f} macro F1 "
            f"(p={first['p_vs_best']:.2g})."
        )
    untested = [row["id"] for row in done[1:] if row["p_vs_best"] is None]
    if untested:
        lines.append(f"Not tested against the leader (scored on other test images): {', '.join(untested)}.")
    flagged = [f"{row['id']} ({row['flag']})" for row in done if row.get("flag")]
    if flagged:
        lines.append(f"Look at these before trusting them: {'; '.join(flagged)}.")
    guarded = [f"{row['id']} ({row['guardrail']})" for row in done if row.get("guardrail")]
    if guarded:
        lines.append(f"Trained or scored under other conditions than most runs: {'; '.join(guarded)}.")
    return lines + _not_completed(board.rows) + [_leak_sentence(leak, best.get("n_test"))]


def _not_completed(rows: list[dict[str, Any]]) -> list[str]:
    failed = [
        f"{row['id']} ({row['status']}: {row.get('error') or ''})" for row in rows if row["status"] != "completed"
    ]
    return [f"{len(failed)} run(s) did not complete: {'; '.join(failed)}."] if failed else []


def _leak_sentence(leak: LeakCheck | None, n_test: int | None) -> str:
    if leak is None:
        return "This folder was split before pieceboard looked for copies of pictures: there is no leak check."
    blind = f" The check does not find {NOT_FOUND}."
    if not leak.leaked:
        return (
            f"Leak check: {leak.groups} groups of near-duplicate pictures, each on one side of the split "
            f"({leak.split}): no test image has a copy in train that the check can see.{blind}"
        )
    of = f" of {n_test}" if n_test else ""
    return (
        f"Leak check: {leak.straddling} groups of near-duplicate pictures straddle the split ({leak.split}): "
        f"{leak.leaked}{of} test images have a copy in train, which inflates accuracy; clean accuracy leaves them out."
        f"{blind}"
    )


@dataclass
class Mistake:
    """One test image a run got wrong."""

    path: str
    label: str
    predicted: str
    confidence: float | None


def mistakes(predictions: Predictions, limit: int = MISTAKES) -> list[Mistake]:
    """The test images a run got wrong, most confident first (in file order where predictions.csv has no
    confidence)."""
    wrong = np.flatnonzero(predictions.labels != predictions.predicted)
    if predictions.confidence is not None:
        wrong = wrong[np.argsort(-predictions.confidence[wrong], kind="stable")]
    names = predictions.class_names
    confidence = predictions.confidence
    return [
        Mistake(
            predictions.paths[i],
            names[predictions.labels[i]],
            names[predictions.predicted[i]],
            None if confidence is None else float(confidence[i]),
        )
        for i in wrong[:limit]
    ]


def thumbnail(path: Path) -> str | None:
    """A data URI of the image at `path`, at most `THUMBNAIL` pixels a side; None when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG decodes at a fraction of its size: much faster
            picture = to_rgb(image)
            picture.thumbnail((THUMBNAIL, THUMBNAIL))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    buffer = io.BytesIO()
    small = picture.width * picture.height <= 64 * 64  # drawings and tiny scans: lossless, a few hundred bytes
    picture.save(buffer, format="PNG" if small else "JPEG", quality=85)
    kind = "png" if small else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _gallery(run_id: str, predictions: Predictions, result: RunResult, root: Path | None) -> str:
    shown = mistakes(predictions)
    total = int(np.sum(predictions.labels != predictions.predicted))
    order = "most confident first" if predictions.confidence is not None else "in file order (no confidence stored)"
    head = f"{total} of {len(predictions.paths)} test images wrong"
    more = f"; the {len(shown)} shown are {order}" if shown else ""
    parts = [f'<h3 id="mistakes-{_slug(run_id)}">Mistakes of {html.escape(run_id)}</h3>', f"<p>{head}{more}.</p>"]
    figures = []
    for mistake in shown:
        uri = thumbnail(root / mistake.path) if root is not None else None
        image = (
            f'<img class="thumb" src="{uri}" alt="{html.escape(mistake.path)}">'
            if uri
            else '<div class="thumb missing">image not found</div>'
        )
        sure = f" ({mistake.confidence:.0%})" if mistake.confidence is not None else ""
        caption = f"true <b>{html.escape(mistake.label)}</b><br>predicted <b>{html.escape(mistake.predicted)}</b>{sure}"
        title = html.escape(mistake.path)
        figures.append(f'<figure class="mistake" title="{title}">{image}<figcaption>{caption}</figcaption></figure>')
    if figures:
        parts.append(f'<div class="gallery">{"".join(figures)}</div>')
    pairs = most_confused(result.confusion_matrix, predictions.class_names, CONFUSED) if result.confusion_matrix else []
    if pairs:
        rows = "".join(
            f'<tr><td class="text">{html.escape(p["label"])}</td><td class="text">{html.escape(p["predicted"])}</td>'
            f"<td>{p['count']}</td></tr>"
            for p in pairs
        )
        head_row = "<tr><th>true class</th><th>predicted as</th><th>test images</th></tr>"
        parts += ["<p>Most confused classes:</p>", f'<table class="confused">{head_row}{rows}</table>']
    return "\n".join(parts)


# --- the page ------------------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1800px; }
p.verdict { font-size: 1.05em; margin: 0.3em 0; max-width: 70em; }
p.verdict.lead { font-size: 1.2em; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; white-space: normal; vertical-align: bottom; }
td.text { text-align: left; }
td.wrap { white-space: normal; min-width: 6em; overflow-wrap: anywhere; }
tr.best td { background: #e6f4ea; }
tr.tied td { background: #f3faf5; }
tr.failed td { color: #b00020; }
td.guard { color: #a15c00; }
td.flag { color: #b00020; font-weight: bold; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.6em; margin-bottom: 1em; }
figure.mistake { margin: 0; width: 110px; text-align: center; }
img.thumb, div.thumb { width: 96px; height: 96px; object-fit: contain; background: #f7f7f7; }
img.thumb { image-rendering: pixelated; }  /* a 32-pixel scan shown at 96 stays sharp; larger ones are not scaled */
div.thumb.missing { display: flex; align-items: center; justify-content: center; font-size: 0.75em; color: #888; }
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
            if column.spec == "interval":  # the mean, and its interval on a line of its own: narrower columns
                content = content.replace(" [", "<br>[", 1)
            if link and column.key == "id" and kind != "failed":
                content = f'<a href="#run-{_slug(row["id"])}">{content}</a>'
            css = [_CELL_CLASS[column.key]] if column.key in _CELL_CLASS and text != "-" else []
            css += ["text"] if column.key in TEXT else []
            css += ["wrap"] if column.key in ("guardrail", "status", "flag") else []
            tds.append(f'<td class="{" ".join(css)}">{content}</td>' if css else f"<td>{content}</td>")
        body.append(f'<tr class="{kind}">{"".join(tds)}</tr>' if kind else f"<tr>{''.join(tds)}</tr>")
    return f'<table id="{table_id}"><tr>{head}</tr>{"".join(body)}</table>'


_CELL_CLASS = {"guardrail": "guard", "flag": "flag"}


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


def _trials(result: RunResult) -> str:
    """A tuned run's trials: the values each tried, its validation scores, and the one chosen."""
    tuning = result.tuning
    if not tuning.get("trials"):
        return ""
    budget = tuning.get("budget") or {}
    head = (
        "<tr><th>trial</th><th>values</th><th>status</th><th>val F1</th><th>val acc</th><th>val loss</th>"
        "<th>train s</th></tr>"
    )
    rows = []
    for trial in tuning["trials"]:
        values = " ".join(f"{k}={v}" for k, v in (trial.get("values") or {}).items())
        status = trial.get("status", "") + (f": {trial['error']}" if trial.get("error") else "")
        texts = [str(trial.get("id")), values, status]
        figures = [(trial.get(k), "{:.4f}") for k in ("val_f1_macro", "val_accuracy", "val_loss")]
        figures.append((trial.get("train_s"), "{:.1f}"))
        tds = "".join(f'<td class="text">{html.escape(text)}</td>' for text in texts)
        tds += "".join(f"<td>{'-' if value is None else spec.format(value)}</td>" for value, spec in figures)
        css = ' class="best"' if trial.get("id") == tuning.get("trial") else ""
        rows.append(f"<tr{css}>{tds}</tr>")
    chosen = " ".join(f"{k}={v}" for k, v in (tuning.get("chosen") or {}).items()) or "nothing (no trial completed)"
    summary = (
        f"<p>Tuned on the validation split: {budget.get('trials')} trials, {budget.get('epochs')} epochs in all; chose "
        f"{html.escape(chosen)} (highest validation macro F1, highlighted), then trained for "
        f"{result.config.get('epochs')} epoch(s) and scored the test split once.</p>"
    )
    return f'{summary}<table class="trials">{head}{"".join(rows)}</table>'


def _page(
    output: Path,
    board: Leaderboard,
    shared: list[Plot],
    per_run: dict[str, list[Plot]],
    gallery: list[str],
) -> str:
    counts: dict[str, int] = {}
    for row in board.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no runs"
    written = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sentences = verdict(board, LeakCheck.from_meta(manifest_meta(output)))
    tuned = any(row.get("tuned") for row in board.rows)
    main = [c for c in COLUMNS if c.key in MAIN or (tuned and c.key in TUNED)]
    details = [c for c in COLUMNS if c.key in ("rank", "id") or c not in main]
    parts = [
        f'<h1 id="top">pieceboard report: {html.escape(output.name)}</h1>',
        '<div id="verdict">',
        *(f'<p class="verdict{" lead" if i == 0 else ""}">{html.escape(s)}</p>' for i, s in enumerate(sentences)),
        "</div>",
        f"<p>{html.escape(str(output))}: {summary}. Written {html.escape(written)}.</p>",
        '<h2 id="leaderboard-section">Leaderboard</h2>',
        f"<p>Ranked by macro F1. <em>vs best</em>: a paired permutation test of macro F1 against the leader on the "
        f"same test images ({RESAMPLES} random swaps of the two runs' predictions, seed {SEED}); <em>tied</em> when "
        f"p &ge; {ALPHA}, and a row is only called worse when every row below it is too. See the pieceboard docs "
        "(Results) for every column.</p>",
        _table(main, board.rows, "leaderboard", link=True),
        "<p>Settings and the other costs of each run:</p>",
        _table(details, board.rows, "details", link=False),
    ]
    if kept := [row for row in board.rows if row.get("model_dir")]:
        where = ", ".join(f"{html.escape(row['id'])}: <code>{html.escape(row['model_dir'])}</code>" for row in kept)
        parts.append(f"<p>Kept models, in this folder (<code>pieceboard predict FOLDER IMAGES</code>): {where}.</p>")
    if gallery:
        parts += ['<h2 id="mistakes">Mistakes</h2>', *gallery]
    if board.seeds:
        parts += ['<h2 id="over-seeds">Over seeds</h2>', _table(SEED_COLUMNS, board.seeds, "seeds", link=False)]
    if shared:
        parts += ['<h2 id="across-runs">Across runs</h2>', *map(_figure, shared)]
    if per_run:
        parts.append('<h2 id="runs">Runs</h2>')
    for run_id, plots in per_run.items():
        result = board.results[run_id]
        parts += [f'<h3 id="run-{_slug(run_id)}">{html.escape(run_id)}</h3>', _trials(result), *map(_figure, plots)]
        parts.append(_per_class(result))
    title = f"pieceboard report: {html.escape(output.name)}"
    head = f'<meta charset="utf-8"><title>{title}</title><style>{STYLE}</style>'
    return f'<!doctype html>\n<html lang="en"><head>{head}</head><body>\n' + "\n".join(parts) + "\n</body></html>\n"


def write_report(
    output: str | Path,
    board: Leaderboard | None = None,
    mistakes_of: Iterable[str] = (),
    acc_fraction: float = ACC_FRACTION,
) -> Path:
    """Draw every plot into `output/plots/` and write the self-contained `output/report.html`.

    One writer at a time (`plots/.lock`; a second one waits): a `pieceboard report` and the end of a benchmark that
    overlap write one after the other, each from the results as they are once it holds the lock, so the report left
    is the newest and no writer deletes the plots of a run it did not see.

    Args:
        output: A benchmark's output folder.
        board: Its leaderboard; default `Leaderboard.from_dir(output, acc_fraction)`, read once the lock is held.
        mistakes_of: Runs whose mistakes the gallery shows besides the leader's.
        acc_fraction: For the default board: the fraction of each run's best accuracy for time to accuracy.

    Returns:
        The path of report.html.

    Raises:
        ValueError: A run in `mistakes_of` is not a completed run of the board.
        StorageError: A file could not be written (a folder in its place, a full disk, ...).
    """
    output = Path(output)
    with lock_folder(output / PLOTS, f"writing {output / REPORT}", wait=True):
        board = board if board is not None else Leaderboard.from_dir(output, acc_fraction)
        done = [row["id"] for row in board.rows if row["status"] == "completed"]
        chosen = list(dict.fromkeys([*done[:1], *mistakes_of]))
        for run_id in chosen:
            if run_id not in board.predictions:
                raise ValueError(f"{run_id}: not a completed run of {output} (completed: {', '.join(done) or 'none'})")
        root = manifest_meta(output).get("path")
        gallery = [
            _gallery(run_id, board.predictions[run_id], board.results[run_id], Path(root) if root else None)
            for run_id in chosen
        ]
        shared, per_run = _plots(board)
        written = {plot.name for plot in shared} | {plot.name for plots in per_run.values() for plot in plots}
        for plot in [*shared, *(p for plots in per_run.values() for p in plots)]:
            atomic_write_bytes(output / PLOTS / plot.name, plot.png)
        for stale in (output / PLOTS).glob("*.png"):  # pictures of runs or axes that are gone would mislead
            if stale.name not in written and stale.is_file():
                with storage_errors(stale):
                    stale.unlink()
        atomic_write_text(output / REPORT, _page(output, board, shared, per_run, gallery))
    return output / REPORT
