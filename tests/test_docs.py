"""The documentation site: it builds offline with --strict, and its reference pages cover the code's names."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from pieceboard.cli import build_parser
from pieceboard.config import BenchmarkTable, DataTable, RunTable, TrainSettings
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


@pytest.mark.parametrize("table", [BenchmarkTable, DataTable, TrainSettings, RunTable], ids=lambda t: t.__name__)
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
