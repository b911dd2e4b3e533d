"""jobs.py and bench --jobs: cells side by side in worker processes, with the same figures as one at a time."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

from conftest import Background, children, run_command, wait_until, write_benchmark
from pieceboard.bench import worker_slots

BODY = """
[defaults]
epochs = 2
batch_size = 8
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
lr = 0.003
"""

TIMING = {"train_s", "elapsed_s"}


def _bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "pieceboard.bench", *args]


def _figures(out: Path, run: str) -> tuple[dict, list, list]:
    result = json.loads((out / "runs" / run / "result.json").read_text())
    history = [{k: v for k, v in entry.items() if k not in TIMING} for entry in result["history"]]
    with open(out / "runs" / run / "predictions.csv", newline="") as f:
        predictions = list(csv.DictReader(f))
    return result["metrics"], history, predictions


def test_one_job_and_two_jobs_give_identical_figures(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    one = cli("bench", bench, "--output", "one", "--jobs", "1", cwd=tmp_path)  # in this process
    two = run_command(_bench(str(bench), "--output", "two", "--jobs", "2"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "1 at a time, 1 CPU thread(s) each" in one.stdout and "2 at a time" in two.stdout
    for run in ("mlp", "resnet18"):
        assert _figures(tmp_path / "one", run) == _figures(tmp_path / "two", run), run
    first = json.loads((tmp_path / "one" / "runs" / "mlp" / "result.json").read_text())
    assert first["environment"]["threads"] == 1 and first["latency_ms"] > 0 and first["peak_mem_mb"] > 0
    assert [p["step"] for p in first["train_log"] if p["epoch"] == 1] == list(range(len(first["train_log"]) // 2))
    assert {p["steps"] for p in first["train_log"]} == {len(first["train_log"]) // 2}
    assert first["transform"]["normalize"] == "dataset" and first["compile_s"] == 0.0
    assert first["notes"] == ["graphs: eager on a CPU (auto captures on a GPU only)"]


def test_a_worker_that_dies_fails_only_its_cell(tmp_path, image_folder):
    body = BODY.replace("lr = 0.003", "lr = 0.003\nepochs = 100000")  # resnet18 runs until its worker is killed
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    proc = Background(_bench(str(bench), "--output", "out", "--jobs", "2"), cwd=tmp_path)
    proc.wait_for("done mlp")
    # The mlp's worker had nothing left to do and exits; the one left runs resnet18.
    worker = wait_until(lambda: (kids := children(proc.proc.pid)) and len(kids) == 1 and kids[0], "one worker left")
    os.kill(worker, signal.SIGKILL)
    code, out, err = proc.finish()
    assert code == 1, (out, err)
    result = json.loads((tmp_path / "out" / "runs" / "resnet18" / "result.json").read_text())
    assert result["status"] == "failed" and "WorkerDied" in result["error"] and "SIGKILL" in result["error"]
    assert json.loads((tmp_path / "out" / "runs" / "mlp" / "result.json").read_text())["status"] == "completed"
    assert "resnet18" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_killing_the_benchmark_kills_its_workers(tmp_path, image_folder):
    body = BODY.replace("epochs = 2", "epochs = 100000")
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    proc = Background(_bench(str(bench), "--output", "out", "--jobs", "2"), cwd=tmp_path)
    proc.wait_for("2 at a time")
    workers = wait_until(lambda: len(kids := children(proc.proc.pid)) == 2 and kids, "two workers started")
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.finish()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), "workers gone after kill -9")


def test_worker_slots_follow_jobs_and_threads(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert worker_slots("auto", "auto", tasks=20) == ([None] * 8, 1)  # a CPU: every core, one thread each
    assert worker_slots("auto", "auto", tasks=3) == ([None] * 3, 1)  # never more workers than cells
    assert worker_slots("auto", 4, tasks=20) == ([None] * 2, 4)
    assert worker_slots(1, "auto", tasks=20) == ([None], 1)
    assert worker_slots("auto", "auto", tasks=20, local=(1, 2)) == ([None] * 4, 1)  # two processes share the node


def test_threads_option_sets_the_cell_threads_and_gives_the_caller_its_own_back(tmp_path, image_folder, cli):
    import torch

    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY.split('[[runs]]\nname = "resnet18"')[0])
    before = torch.get_num_threads()
    proc = cli("bench", bench, "--output", "out", "--jobs", "1", "--threads", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 at a time, 3 CPU thread(s) each" in proc.stdout
    result = json.loads((tmp_path / "out" / "runs" / "mlp" / "result.json").read_text())
    assert result["environment"]["threads"] == 3
    assert torch.get_num_threads() == before
