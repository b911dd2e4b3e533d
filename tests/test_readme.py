"""The README's commands, run as written in the order it gives them, on a small generated folder.

What a user sees is checked: the documented exit code, no traceback, no warning block, and the results of earlier
commands left as they were. Only the data and the size of the runs change (a small folder, one epoch), so
that the test stays fast.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from conftest import make_augmented_folder, run_command

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
SMALL = ["--set", "defaults.epochs=1"]

pytestmark = pytest.mark.slow


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(section), flags=re.S)


def _commands(section: str) -> list[list[str]]:
    lines = [line.split("#")[0].strip() for block in _blocks(section, "bash") for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def _demo_command() -> list[str]:
    recipe = re.search(r"^demo:.*\n\t(.*)$", (REPO / "Makefile").read_text(), flags=re.M).group(1)
    assert "$(BIN)/pieceboard bench benchmarks/demo.toml" in recipe and "make demo" in README
    return shlex.split(recipe.replace("$(BIN)/", ".venv/bin/"))


def _run(argv: list[str], cwd: Path, folder: Path):
    assert argv[0] == ".venv/bin/pieceboard", argv  # every command of these sections uses the set-up's venv
    argv = [sys.executable, "-m", "pieceboard.cli", *(folder.as_posix() if a == "/path/to/my/images" else a
                                                       for a in argv[1:])]  # fmt: skip
    if argv[3] == "bench":
        argv += ["--set", f"data.path={folder}", *SMALL]
    proc = run_command(argv, cwd=cwd)
    assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr and "warn" not in proc.stderr.lower()
    return proc


def _stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_readme_commands_work_as_written_and_keep_earlier_results(tmp_path):
    shutil.copytree(REPO / "benchmarks", tmp_path / "benchmarks")
    folder = make_augmented_folder(tmp_path / "images", classes=2, pictures=3, singles=6)
    # Set-up: `make demo`.
    demo = _run(_demo_command(), tmp_path, folder)
    assert "report: results/demo/report.html" in demo.stdout
    before = _stamps(tmp_path / "results" / "demo")
    # Your own images: check-data, bench into its own folder, compare two of its runs, predict with the winner.
    own = _commands("Your own images")
    assert [c[1] for c in own] == ["check-data", "bench", "compare", "predict"]
    for argv in own[:3]:
        proc = _run(argv, tmp_path, folder)
    assert "is better than" in proc.stdout or "are not shown apart" in proc.stdout
    board = json.loads((tmp_path / "results" / "my-images" / "leaderboard.json").read_text())
    predict = own[3]
    assert predict[2] == "results/my-images/runs/resnet18-scratch@32px/model"
    # The winner of this small run may be another cell than the README's: its folder, as the benchmark named it.
    predict[2] = f"results/my-images/{board[0]['model_dir']}"
    proc = _run(predict, tmp_path, folder)
    images = [p for p in folder.rglob("*.png")]
    assert len(proc.stdout.splitlines()) == len(images) and proc.stdout.startswith(f"{folder}/class_a/")
    # As a library: the snippet, with the same small settings.
    [snippet] = _blocks("As a library", "python")
    assert 'overrides=["defaults.epochs=1"]' in snippet and "data.path=/data/onepiece" in snippet
    small = f'overrides=["defaults.epochs=1", "data.path={folder}"]'
    code = snippet.replace('overrides=["defaults.epochs=1"]', small)
    proc = run_command([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "results" / "library" / "report.html").exists()
    # Nothing overwrote the demo's results.
    assert _stamps(tmp_path / "results" / "demo") == before
