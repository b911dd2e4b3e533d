"""The documentation site: it builds offline with --strict, and its reference pages cover the code's names."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pieceboard.cli import build_parser
from pieceboard.config import BenchmarkTable, DataTable, RunTable, TrainSettings, TuneTable
from pieceboard.results import RunResult

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _missing(names: list[str], text: str) -> list[str]:
    return [name for name in names if f"`{name}`" not in text]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    for page in ("index.html", "benchmark-file/index.html", "results/index.html", "cli/index.html", "api/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for anchor in ("pieceboard.config.load_config", "pieceboard.bench.run", "pieceboard.leaderboard.Leaderboard"):
        assert f'id="{anchor}"' in api, anchor


@pytest.mark.parametrize(
    "table", [BenchmarkTable, DataTable, TrainSettings, RunTable, TuneTable], ids=lambda t: t.__name__
)
def test_benchmark_file_page_names_every_key(table) -> None:
    assert _missing(list(table.model_fields), _page("benchmark-file.md")) == []


def test_results_page_names_every_result_field() -> None:
    fields = [field.name for field in dataclasses.fields(RunResult)]
    assert _missing(fields, _page("results.md")) == []


def test_cli_page_names_every_subcommand() -> None:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = list(subparsers.choices)
    assert commands
    text = _page("cli.md")
    assert [c for c in commands if f"pieceboard {c}" not in text] == []


def test_throughput_page_names_every_report_field() -> None:
    from pieceboard.throughput import CaseResult

    fields = [field.name for field in dataclasses.fields(CaseResult)]
    assert _missing(fields, _page("throughput.md")) == []


# --- the figures of README.md and docs/ are what the tool prints ----------------------------------------------------


def _figures_module():
    spec = importlib.util.spec_from_file_location("docs_figures", REPO / "benchmarks" / "docs_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_marked_blocks_are_what_the_tool_prints() -> None:
    figures = _figures_module()
    rendered = figures.blocks()
    used = set()
    for path in figures.FILES:
        text = path.read_text(encoding="utf-8")
        used |= {match.group("name") for match in figures.MARK.finditer(text)}
        # On a difference: `python benchmarks/docs_figures.py` rewrites the blocks (--run: from new runs).
        assert figures.apply(text, rendered) == text, f"{path.name}: a marked block is not what the tool prints"
    assert used == set(rendered)


SPLIT_LINE = re.compile(
    r"^(?P<name>[\w.+-]+): (?P<images>\d+) images, (?P<classes>\d+) classes, (?P<train>\d+) train / (?P<test>\d+) "
    r"test, (?P<skipped>\d+) skipped; (?P<runs>\d+) runs on (?P<processes>\d+) process\(es\) -> (?P<output>\S+)$",
    re.M,
)


def test_every_split_line_in_the_docs_is_printed_so() -> None:
    from pieceboard.bench import split_line

    found = 0
    for path in [REPO / "README.md", *DOCS.glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        for line in re.findall(r"^\w[\w.+-]*: \d+ images.*$", text, flags=re.M):
            m = SPLIT_LINE.match(line)
            assert m, f"{path.name}: {line!r} is not the line a benchmark prints"
            n = {k: int(v) for k, v in m.groupdict().items() if k not in ("name", "output")}
            assert n["images"] == n["train"] + n["test"], line
            counts = (n["classes"], n["train"], n["test"], n["skipped"], n["runs"], n["processes"])
            assert m["name"] + split_line(*counts, Path(m["output"])) == line
            found += 1
    assert found >= 3


def test_the_demo_split_and_time_agree_everywhere() -> None:
    split = json.loads((DOCS / "samples" / "demo" / "split.json").read_text())
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shown = f"{split['n_train']} train / {split['n_test']} test"
    assert shown in readme and shown in _page("cli.md")
    minutes = json.loads((DOCS / "samples" / "demo" / "timing.json").read_text())["minutes"]
    said = re.search(r"make demo .*about ([\d.]+) minutes on 2 CPU cores", readme).group(1)
    assert float(said) == round(minutes * 2) / 2  # to the half minute
    demo_toml = (REPO / "benchmarks" / "demo.toml").read_text(encoding="utf-8")
    assert f"About {said} minutes on a 2-core CPU" in demo_toml


STALE = [  # what the docs once said and the tool does not print
    "to 95 % of best",  # the column is `to acc`
    "s, epoch 2",  # the cell is `35.8s ep 2`
    "without a leak check, so no clean accuracy",  # every benchmark checks
    "`make demo` passes `--mixed_precision no`",
    "4313 train / 1078 test",  # the demo's split is in docs/samples/demo/split.json
    "discordant images, p =",  # the verdict tests macro F1, not McNemar's counts
    "McNemar",
]


def test_no_stale_figure_or_name_is_left() -> None:
    for path in [REPO / "README.md", *DOCS.glob("*.md"), REPO / "benchmarks" / "demo.toml"]:
        text = " ".join(path.read_text(encoding="utf-8").split())
        assert [s for s in STALE if s in text] == [], path.name


@pytest.mark.slow
def test_the_demo_split_is_the_one_the_docs_show(tmp_path: Path) -> None:
    from pieceboard.config import load_config
    from pieceboard.data import make_manifest

    config = load_config(REPO / "benchmarks" / "demo.toml")
    manifest = make_manifest(config.data, tmp_path)
    split = json.loads((DOCS / "samples" / "demo" / "split.json").read_text())
    n_test = int(manifest.is_test.sum())
    assert (len(manifest.paths) - n_test, n_test) == (split["n_train"], split["n_test"])
    assert len(manifest.groups) == split["groups"]
