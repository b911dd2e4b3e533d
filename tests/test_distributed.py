"""Several real processes on the CPU (torchrun + gloo): exact evaluation and the same figures at any world size."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score

from conftest import make_image_folder, run_command, write_benchmark

pytestmark = pytest.mark.distributed
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return run_command([*TORCHRUN, "--nproc_per_node", str(nproc), *args], cwd=cwd, env=env)


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_scores_every_image_once(tmp_path, world):
    script = Path(__file__).with_name("_distributed_eval.py")
    proc = _torchrun(world, str(script), str(tmp_path / "report.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world"] == world
    for n in (1, 7, world * 4 + 1):
        entry = report[str(n)]
        assert entry["positions"] == list(range(5, 5 + n))
        assert entry["predictions"] == entry["losses"] == n


@pytest.mark.parametrize("world, classes, batch", [(2, 7, 4), (3, 19, 6)])
def test_benchmark_under_several_processes(tmp_path, world, classes, batch):
    # One test image per class (4 images each, test_fraction 0.25): 7 for world 2 (odd, not a multiple of the
    # batch), 19 = 3 x 6 + 1 for world 3.
    folder = make_image_folder(tmp_path / "images", classes=classes, per_class=4)
    body = f"""
[defaults]
epochs = 2
batch_size = {batch}
image_size = 8
log_every = 1

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"

[[runs]]
name = "resnet18"
model = "resnet18"
mode = "scratch"
"""
    bench = write_benchmark(tmp_path / "b.toml", folder, body)
    proc = _torchrun(world, "-m", "pieceboard.bench", str(bench), "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done mlp") == 1  # only the main process talks
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        test_paths = sorted(r["path"] for r in csv.DictReader(f) if r["split"] == "test")
    assert len(test_paths) == {2: 7, 3: 19}[world]
    for run in ("mlp", "resnet18"):
        result = json.loads((tmp_path / "out" / "runs" / run / "result.json").read_text())
        assert result["status"] == "completed"
        assert result["environment"]["processes"] == world
        assert result["n_test"] == len(test_paths)
        with open(tmp_path / "out" / "runs" / run / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["path"] for r in rows) == test_paths
        y, p = [r["label"] for r in rows], [r["prediction"] for r in rows]
        assert result["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, p))
        labels = sorted(set(y))
        f1 = f1_score(y, p, labels=labels, average="macro", zero_division=0)
        assert result["metrics"]["f1_macro"] == pytest.approx(f1)


def test_two_processes_match_one_process(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=80)
    body = """
[defaults]
epochs = 2
batch_size = 32
image_size = 8
precision = "no"

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"
"""
    bench = write_benchmark(tmp_path / "b.toml", folder, body)
    single = run_command([sys.executable, "-m", "pieceboard.bench", str(bench), "--output", "one"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(2, "-m", "pieceboard.bench", str(bench), "--output", "two", cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "runs" / "mlp" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "runs" / "mlp" / "result.json").read_text())
    assert two["environment"]["processes"] == 2 and one["environment"]["processes"] == 1
    assert one["n_test"] == two["n_test"] == 60  # a quarter of each class of 80
    assert one["metrics"]["accuracy"] > 0.8
    # Per-process BatchNorm statistics and summation order differ, not the data: the same score within 2 images.
    assert abs(one["metrics"]["accuracy"] - two["metrics"]["accuracy"]) <= 2 / 60


def test_global_batch_must_split_evenly(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=4)
    body = '[defaults]\nbatch_size = 5\n\n[[runs]]\nname = "mlp"\nmodel = "pieceboard_mlp"\nmode = "scratch"\n'
    bench = write_benchmark(tmp_path / "b.toml", folder, body)
    proc = _torchrun(2, "-m", "pieceboard.bench", str(bench), "--output", "out", cwd=tmp_path)
    assert proc.returncode != 0
    assert "batch_size 5 is the global batch and must divide evenly over the 2 processes" in proc.stderr
    assert "pieceboard/bench.py" not in proc.stderr  # torchrun reports the exit; pieceboard prints no traceback


def test_a_data_error_stops_every_process_with_one_message(tmp_path):
    body = '[[runs]]\nname = "mlp"\nmodel = "pieceboard_mlp"\nmode = "scratch"\n'
    bench = write_benchmark(tmp_path / "b.toml", tmp_path / "missing", body)
    proc = _torchrun(2, "-m", "pieceboard.bench", str(bench), "--output", "out", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("is not a folder") == 1  # every process stops on the main process's error; one says why
    assert "pieceboard/bench.py" not in proc.stderr


def test_each_process_runs_its_share_of_the_cells(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=8)
    body = """
[defaults]
epochs = 2
batch_size = 6
image_size = 8

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"

[[runs]]
name = "mlp-fast"
model = "pieceboard_mlp"
mode = "scratch"
lr = 0.01

[[runs]]
name = "resnet18"
model = "resnet18"
mode = "scratch"
"""
    bench = write_benchmark(tmp_path / "b.toml", folder, body)
    single = run_command([sys.executable, "-m", "pieceboard.bench", str(bench), "--output", "one"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    shared = _torchrun(
        2, "-m", "pieceboard.bench", str(bench), "--output", "two", "--set", 'benchmark.parallel="cells"', cwd=tmp_path
    )
    assert shared.returncode == 0, shared.stderr[-3000:]
    board = json.loads((tmp_path / "two" / "leaderboard.json").read_text())
    assert sorted(row["id"] for row in board) == ["mlp", "mlp-fast", "resnet18"]
    for run in ("mlp", "mlp-fast", "resnet18"):
        one = json.loads((tmp_path / "one" / "runs" / run / "result.json").read_text())
        two = json.loads((tmp_path / "two" / "runs" / run / "result.json").read_text())
        assert two["status"] == "completed" and two["environment"]["processes"] == 1  # each cell trained alone
        assert two["metrics"] == one["metrics"], run  # the same figures as one process running every cell
    assert not list((tmp_path / "two" / ".ranks").iterdir())


TUNED = """
[defaults]
epochs = 2
batch_size = 6
image_size = 8
precision = "no"

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"

[[runs]]
name = "mlp-wide"
model = "pieceboard_mlp"
mode = "scratch"
batch_size = 12

[tune]
lr = [1e-3, 1e-2]
trial_epochs = 1
"""


@pytest.fixture(scope="module")
def tuned_single(tmp_path_factory):
    """A tuned benchmark and its output from one process, shared by the launches compared with it."""
    root = tmp_path_factory.mktemp("tuned")
    folder = make_image_folder(root / "images", classes=3, per_class=12)
    bench = write_benchmark(root / "b.toml", folder, TUNED)
    bench.write_text(bench.read_text().replace("test_fraction = 0.25", "test_fraction = 0.25\nval_fraction = 0.25"))
    single = run_command([sys.executable, "-m", "pieceboard.bench", str(bench), "--output", "one"], cwd=root)
    assert single.returncode == 0, single.stderr[-3000:]
    return bench, root / "one"


@pytest.mark.parametrize("parallel", ["data", "cells"])
def test_tuning_under_several_processes(tmp_path, tuned_single, parallel):
    bench, single = tuned_single
    args = ["--set", f'benchmark.parallel="{parallel}"']
    proc = _torchrun(2, "-m", "pieceboard.bench", str(bench), "--output", str(tmp_path / "two"), *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "two" / "runs").iterdir())
    assert runs == ["mlp", "mlp-wide", "mlp-wide~lr0.001", "mlp-wide~lr0.01", "mlp~lr0.001", "mlp~lr0.01"]
    for run in ("mlp", "mlp-wide"):
        one = json.loads((single / "runs" / run / "result.json").read_text())
        two = json.loads((tmp_path / "two" / "runs" / run / "result.json").read_text())
        assert two["status"] == "completed" and [t["status"] for t in two["tuning"]["trials"]] == ["completed"] * 2
        assert two["tuning"]["budget"] == {"trials": 2, "epochs": 2} and two["n_test"] == one["n_test"] == 9
        assert two["environment"]["processes"] == (2 if parallel == "data" else 1)
        if parallel == "cells":  # each process tunes and trains its own cells alone: the figures of one process
            assert two["tuning"] == one["tuning"] | {"trials": two["tuning"]["trials"]}
            assert two["metrics"] == one["metrics"]
    board = json.loads((tmp_path / "two" / "leaderboard.json").read_text())
    assert sorted(row["id"] for row in board) == ["mlp", "mlp-wide"]
