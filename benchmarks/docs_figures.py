"""The figures of README.md and docs/ come from real runs and stay what the tool prints.

    python benchmarks/docs_figures.py --run   # run the demo (grouped and random split), benchmarks/report.toml,
                                              # `pieceboard compare` and the report's screenshots; store docs/samples/
    python benchmarks/docs_figures.py         # rewrite every marked block of README.md and docs/*.md from docs/samples/

A marked block is the text between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->`. Each is rendered from the
stored output of the real runs (docs/samples/) by today's code: the leaderboard's cells and columns, the lines a
benchmark prints, the report's verdict, `pieceboard compare`'s tables. tests/test_docs.py renders every block again
and fails when a file differs, so a renamed column or another cell format cannot leave the docs behind.
`--run` takes about 25 minutes on 2 cores (the demo twice, report.toml once, Chromium for the screenshots).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from pieceboard._console import Display
from pieceboard.bench import BLIND_SPOT, split_line
from pieceboard.compare import tables
from pieceboard.compare import verdict as compare_verdict
from pieceboard.dedup import NOT_FOUND
from pieceboard.leaderboard import COLUMNS, Leaderboard, pick_columns
from pieceboard.metrics import PairedF1Test
from pieceboard.report import LeakCheck, verdict
from pieceboard.results import RunResult

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "docs" / "samples"
FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARK = re.compile(r"(<!-- figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)
README_COLUMNS = "rank,id,accuracy,clean_accuracy,f1_macro,p_vs_best,time_to_acc_s,params,latency_ms,train_s,precision"
COMPARED = ("resnet18-scratch@32px-bs64", "mlp@32px-bs32")  # the pair docs/report.md compares
EXCERPT = "mlp@16px"  # the demo run whose result.json docs/results.md shows
COMPARE_WIDTH = 100  # columns of the terminal the compare output is shown for


# --- stored samples ------------------------------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any]:
    folder = SAMPLES / name
    sample = {"rows": json.loads((folder / "leaderboard.json").read_text(encoding="utf-8"))}
    sample["split"] = json.loads((folder / "split.json").read_text(encoding="utf-8"))
    for extra in ("bench.txt", "compare.json", "result.json"):
        if (folder / extra).exists():
            text = (folder / extra).read_text(encoding="utf-8")
            sample[extra] = json.loads(text) if extra.endswith(".json") else text
    return sample


def _board(sample: dict[str, Any]) -> Leaderboard:
    return Leaderboard(sample["rows"])


def _leak(sample: dict[str, Any]) -> LeakCheck:
    split = sample["split"]
    return LeakCheck(split["split"], split["groups"], split["straddling"], split["leaked"])


# --- the blocks ----------------------------------------------------------------------------------------------------


def _printed(markup: str) -> str:
    return Text.from_markup(markup).plain


def _done_line(row: dict[str, Any]) -> str:
    """The line `pieceboard bench` prints when a run completes, by the code that prints it."""
    console = Console(file=io.StringIO(), width=200, record=True)
    result = RunResult(row["id"], "completed", {}, metrics={k: row[k] for k in ("accuracy", "f1_macro")})
    result.train_s, result.train_img_s = row["train_s"], row["train_img_s"]
    Display(console, 1, enabled=True).end_run(result)
    return console.export_text().strip()


def _header(name: str, sample: dict[str, Any], output: str) -> str:
    split, rows = sample["split"], sample["rows"]
    counts = (split["classes"], split["n_train"], split["n_test"], split["skipped"], len(rows), 1)
    return name + _printed(split_line(*counts, Path(output)))


def demo_output(demo: dict[str, Any]) -> str:
    """The lines `make demo` prints before its table: the split, the leak check, the plan, one line per run."""
    printed = demo["bench.txt"].splitlines()
    rows = {row["id"]: row for row in demo["rows"]}
    lines = [_header("demo", demo, "results/demo")]
    for line in printed[1:]:
        if not line.strip() or line.lstrip().startswith(("demo —", "#")):  # the table begins
            break
        if line.startswith(BLIND_SPOT):  # the stored run's wording of it; today's follows the group line
            continue
        done = re.match(r"done (\S+):", line)
        lines.append(_done_line(rows[done.group(1)]) if done else line.rstrip())
        if "near-duplicate groups" in line:
            lines.append(f"{BLIND_SPOT} {NOT_FOUND}")
    return "```text\n" + "\n".join(lines) + "\n```\n"


def demo_table(demo: dict[str, Any]) -> str:
    return _board(demo).to_markdown(columns=pick_columns(README_COLUMNS, COLUMNS))


def _sentences(sample: dict[str, Any]) -> str:
    return "\n".join(f"> {line}" for line in verdict(_board(sample), _leak(sample))) + "\n"


def demo_leak(demo: dict[str, Any], random: dict[str, Any]) -> str:
    """The demo's figures under the random split beside the grouped split's."""
    grouped = {row["id"]: row for row in demo["rows"]}
    split = random["split"]
    lines = [
        f"The same demo with the original study's random split (`--set data.split=random --output "
        f"results/demo-random`) puts {split['leaked']:,} of its {split['n_test']:,} test images beside a copy of "
        "themselves in the training split:",
        "",
        f"| run | random split: accuracy | random split: clean accuracy ({split['n_test'] - split['leaked']} images) "
        "| grouped split: accuracy |",
        "|---|---:|---:|---:|",
    ]
    for row in random["rows"]:
        clean = "-" if row["clean_accuracy"] is None else f"{row['clean_accuracy']:.4f}"
        lines.append(f"| {row['id']} | {row['accuracy']:.4f} | {clean} | {grouped[row['id']]['accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def report_compare(report: dict[str, Any]) -> str:
    """`pieceboard compare` on two runs of benchmarks/report.toml, in a terminal `COMPARE_WIDTH` columns wide."""
    console = Console(file=io.StringIO(), width=COMPARE_WIDTH, record=True)
    for part in tables(report["compare.json"], COMPARE_WIDTH):
        console.print(part)
    text = "\n".join(line.rstrip() for line in console.export_text().splitlines())
    return f"```text\n$ pieceboard compare results/report {' '.join(COMPARED)}\n{text}\n```\n"


def compare_sentence(report: dict[str, Any]) -> str:
    comparison = report["compare.json"]
    fields = ("f1_macro_a", "f1_macro_b", "a_only_correct", "b_only_correct", "discordant", "resamples", "exact")
    test = PairedF1Test(*(comparison[key] for key in fields), comparison["p_value"])
    return f"`{compare_verdict(comparison['a'], comparison['b'], test)}`\n"


def result_excerpt(demo: dict[str, Any]) -> str:
    """The start of a demo run's result.json, numbers rounded."""
    result = demo["result.json"]
    keep = ("run", "model", "mode", "weights", "epochs", "batch_size", "image_size")
    config = {k: result["config"][k] for k in keep} | {"...": "...", "data": result["config"]["data"]}
    environment = {k: result["environment"][k] for k in ("pieceboard", "device", "processes", "precision", "threads")}
    shown: dict[str, Any] = {"id": result["id"], "status": result["status"], "config": config, "error": None}
    shown["metrics"] = {k: round(v, 4) for k, v in result["metrics"].items()}
    for key in ("params", "trainable_params", "gflops", "train_s", "train_img_s", "eval_img_s", "cache_s"):
        shown[key] = round(result[key], 4) if isinstance(result[key], float) else result[key]
    for key in ("data_wait_s", "n_train", "n_test", "precision", "channels_last", "latency_ms", "peak_mem_mb"):
        shown[key] = round(result[key], 4) if isinstance(result[key], float) else result[key]
    shown["environment"] = environment | {"...": "..."}
    return "```json\n" + json.dumps(shown, indent=2) + "\n```\n"


def blocks() -> dict[str, str]:
    """Every marked block, rendered from docs/samples/ by today's code."""
    demo, random, report = _load("demo"), _load("demo-random"), _load("report")
    return {
        "demo-output": demo_output(demo),
        "demo-table": demo_table(demo),
        "demo-verdict": _sentences(demo),
        "demo-leak": demo_leak(demo, random),
        "result-excerpt": result_excerpt(demo),
        "report-table": "```\n" + _board(report).to_markdown() + "```\n",
        "report-verdict": _sentences(report),
        "report-compare": report_compare(report),
        "report-compare-sentence": compare_sentence(report),
    }


def apply(text: str, rendered: dict[str, str]) -> str:
    """`text` with the body of every marked block replaced by its rendering.

    Raises:
        KeyError: A block that has no renderer.
    """
    return MARK.sub(lambda m: m.group(1) + rendered[m.group("name")] + m.group(4), text)


# --- the real runs -------------------------------------------------------------------------------------------------


def _pieceboard(*args: str, cwd: Path) -> str:
    env = os.environ | {"COLUMNS": "240", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "pieceboard.cli", *args]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def _store(name: str, output: Path, bench_text: str | None = None) -> None:
    folder = SAMPLES / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(output / "leaderboard.json", folder / "leaderboard.json")
    meta = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
    rows = json.loads((output / "leaderboard.json").read_text(encoding="utf-8"))
    leak = LeakCheck.from_meta(meta)
    split = {"split": leak.split, "groups": leak.groups, "straddling": leak.straddling, "leaked": leak.leaked}
    split |= {"classes": len(meta["class_names"]), "skipped": len(meta["skipped"]), "n_test": rows[0]["n_test"]}
    first = json.loads((output / "runs" / rows[0]["id"] / "result.json").read_text(encoding="utf-8"))
    split["n_train"] = first["n_train"]
    (folder / "split.json").write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    if bench_text is not None:
        (folder / "bench.txt").write_text(bench_text, encoding="utf-8")


def run_all(work: Path) -> None:
    """Run the benchmarks the docs show, in `work` (a copy of benchmarks/), and store their output as samples."""
    shutil.copytree(REPO / "benchmarks", work / "benchmarks", dirs_exist_ok=True)
    started = time.perf_counter()
    demo = _pieceboard("bench", "benchmarks/demo.toml", cwd=work)
    minutes = (time.perf_counter() - started) / 60
    _store("demo", work / "results" / "demo", demo)
    timing = {"minutes": round(minutes, 2), "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 1)}
    (SAMPLES / "demo" / "timing.json").write_text(json.dumps(timing) + "\n", encoding="utf-8")
    result = json.loads((work / "results" / "demo" / "runs" / EXCERPT / "result.json").read_text(encoding="utf-8"))
    (SAMPLES / "demo" / "result.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"demo: {minutes:.1f} minutes")
    random = ["--set", "data.split=random", "--output", "results/demo-random"]
    _pieceboard("bench", "benchmarks/demo.toml", *random, cwd=work)
    _store("demo-random", work / "results" / "demo-random")
    env = os.environ | {"PYTHON": sys.executable}
    subprocess.run(["bash", str(REPO / "benchmarks" / "screenshots.sh"), str(work)], env=env, check=True, cwd=REPO)
    _store("report", work / "results" / "report")
    comparison = _pieceboard("compare", "results/report", *COMPARED, "--json", cwd=work)
    (SAMPLES / "report" / "compare.json").write_text(comparison, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run the benchmarks first (about 25 minutes on 2 cores)")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    if args.run:
        if args.work:
            run_all(Path(args.work).resolve())
        else:
            with tempfile.TemporaryDirectory() as work:
                run_all(Path(work))
    rendered = blocks()
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        if (new := apply(text, rendered)) != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
