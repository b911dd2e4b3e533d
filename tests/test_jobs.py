"""jobs.py and bench --jobs: cells side by side in worker processes, with the same figures as one at a time."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

import pytest

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
    assert first["environment"]["threads"] == 1 and first["latency_ms"] > 0
    assert first["peak_mem_mb"] > first["params"] * 4 / 2**20  # the worker held at least the fp32 weights
    assert [p["step"] for p in first["train_log"] if p["epoch"] == 1] == list(range(len(first["train_log"]) // 2))
    assert {p["steps"] for p in first["train_log"]} == {len(first["train_log"]) // 2}
    assert first["transform"]["normalize"] == "dataset" and first["compile_s"] == 0.0
    assert first["notes"] == ["graphs: eager on a CPU (auto captures on a GPU only)"]


@pytest.mark.parametrize(
    "sig, status, error",
    [
        (signal.SIGKILL, "failed", "WorkerDied: the worker process running this cell ended (signal SIGKILL); out of "
         "memory is the usual cause; a rerun continues from its checkpoint after epoch {epoch}"),
        # Issue 22: a worker sent SIGTERM reported "stopped": no row for its cell, and exit code 0.
        (signal.SIGTERM, "skipped", "its worker process was stopped (SIGTERM) before the cell finished; rerun to "
         "continue from its checkpoint after epoch {epoch}"),
    ],
)  # fmt: skip
def test_a_worker_that_dies_or_is_stopped_leaves_a_row_for_its_cell_only(tmp_path, image_folder, sig, status, error):
    body = BODY.replace("lr = 0.003", "lr = 0.003\nepochs = 100000")  # resnet18 runs until its worker is stopped
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    proc = Background(_bench(str(bench), "--output", "out", "--jobs", "2"), cwd=tmp_path)
    proc.wait_for("done mlp")
    # The first worker ready took resnet18 (the costliest cell), so the one left after mlp's exits is running it.
    worker = wait_until(lambda: (kids := children(proc.proc.pid)) and len(kids) == 1 and kids[0], "one worker left")
    state = tmp_path / "out" / "runs" / "resnet18" / "checkpoint" / "state.json"
    wait_until(state.exists, "a checkpoint of resnet18", deadline=600)  # its row names what a rerun continues from
    os.kill(worker, sig)
    code, out, err = proc.finish()
    assert code == 1, (out, err)  # not every cell completed
    assert "Traceback" not in err, err
    result = json.loads((tmp_path / "out" / "runs" / "resnet18" / "result.json").read_text())
    error = error.format(epoch=json.loads(state.read_text())["epoch"])
    assert (result["status"], result["error"]) == (status, error)
    assert f"{status} resnet18: {error}" in out
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert {row["id"]: row["status"] for row in board} == {"mlp": "completed", "resnet18": status}


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


# --- the pool's bookkeeping, with stand-in workers (tests/_fake_worker.py): every cell ends in a row ---------------

FAKE_WORKER = Path(__file__).with_name("_fake_worker.py")


def _pool_run(
    tmp_path: Path, monkeypatch, plan: list[str], cells: int, slots: int = 2, tuning: dict | None = None
) -> list:
    """Run `cells` cells (tuned cells with `tuning`) through a pool of stand-in workers that follow `plan`; returns
    the pool's events."""
    from pieceboard import jobs

    starts = tmp_path / "starts"
    starts.mkdir()
    monkeypatch.setenv("FAKE_WORKER_PLAN", json.dumps(plan))
    monkeypatch.setenv("FAKE_WORKER_STARTS", str(starts))
    monkeypatch.setattr(jobs, "WORKER_COMMAND", [sys.executable, str(FAKE_WORKER)], raising=False)
    spec = jobs.WorkerSpec(str(tmp_path / "out"), "off", "p", "g", threads=1)
    tasks = [jobs.CellTask(f"c{i}", {"run": f"c{i}"}, "no", None, "", None, 0.0, tuning=tuning) for i in range(cells)]
    return list(jobs.WorkerPool(spec, [None] * slots).run(tasks))


def _rows(events: list) -> dict[str, tuple[str, str | None]]:
    done = [e.result for e in events if e.kind == "done"]
    assert len(done) == len({r.id for r in done}), "a cell reported twice"
    return {r.id: (r.status, r.error) for r in done}


def test_a_worker_killed_before_it_is_ready_is_replaced(tmp_path, monkeypatch):
    # Issue 22: a WorkerError traceback, the other worker killed, nothing recorded.
    rows = _rows(_pool_run(tmp_path, monkeypatch, ["die", "ok"], cells=4))  # two slots: the other worker goes on
    assert rows == {f"c{i}": ("completed", None) for i in range(4)}
    # One slot: nobody else can have taken the cells by the time the death is seen, so a replacement must run them.
    (tmp_path / "starts").rename(tmp_path / "starts-1")
    rows = _rows(_pool_run(tmp_path, monkeypatch, ["die", "ok"], cells=4, slots=1))
    assert rows == {f"c{i}": ("completed", None) for i in range(4)}
    assert len(list((tmp_path / "starts").iterdir())) == 2  # the first worker and its replacement


def test_when_no_worker_can_start_every_cell_is_a_failed_row(tmp_path, monkeypatch):
    # Workers killed before they are ready are replaced a few times, then the pool gives up, saying why per cell.
    rows = _rows(_pool_run(tmp_path, monkeypatch, ["die"], cells=3))
    assert set(rows) == {"c0", "c1", "c2"} and {status for status, _ in rows.values()} == {"failed"}
    assert all("no worker process could start" in error and "SIGKILL" in error for _, error in rows.values())
    stored = json.loads((tmp_path / "out" / "runs" / "c1" / "result.json").read_text())
    assert stored["status"] == "failed" and stored["error"] == rows["c1"][1]
    # Two workers, each replaced until jobs.START_FAILURES (3) had died: four starts in all, not endless restarts.
    assert len(list((tmp_path / "starts").iterdir())) == 4

    # A worker that says why it cannot start would fail the same way again: not retried, its reason recorded.
    (tmp_path / "starts").rename(tmp_path / "starts-1")
    rows = _rows(_pool_run(tmp_path, monkeypatch, ["fatal"], cells=2, slots=1))
    assert {error for _, error in rows.values()} == {
        "WorkerDied: no worker process could start to run this cell (the last one ended: ConfigError: b.toml: no "
        "such benchmark file)"
    }


def test_a_user_error_reported_by_a_worker_stops_the_benchmark_with_its_line(tmp_path, monkeypatch):
    from pieceboard._console import PieceboardError

    with pytest.raises(PieceboardError, match=r"^ConfigError: b.toml: no such benchmark file$"):
        _pool_run(tmp_path, monkeypatch, ["user"], cells=2, slots=1)


def test_a_stopped_worker_leaves_a_skipped_row_and_a_replacement_runs_the_rest(tmp_path, monkeypatch):
    # Issue 22: a worker sent SIGTERM reported "stopped" and its cell vanished: no row, no replacement, exit 0.
    rows = _rows(_pool_run(tmp_path, monkeypatch, ["stop", "stop", "ok"], cells=5))
    skipped = {cell for cell, (status, _) in rows.items() if status == "skipped"}
    assert len(skipped) == 2 and len(rows) == 5
    # No checkpoint (stand-in workers write none): nothing said of one.
    assert all(rows[c][1] == "its worker process was stopped (SIGTERM) before the cell finished; rerun to continue"
               for c in skipped)  # fmt: skip
    assert all(status == "completed" for c, (status, _) in rows.items() if c not in skipped)
    for cell in skipped:
        assert json.loads((tmp_path / "out" / "runs" / cell / "result.json").read_text())["status"] == "skipped"


def test_the_row_of_a_tuned_cell_whose_worker_stopped_keeps_its_trials_and_choice(tmp_path, monkeypatch):
    record = {"budget": {"trials": 2, "epochs": 2}, "chosen": {"lr": 0.1}, "trial": "c0~lr0.1", "trials": []}
    events = _pool_run(tmp_path, monkeypatch, ["stop", "ok"], cells=2, slots=1, tuning=record)
    skipped = [e.result for e in events if e.kind == "done" and e.result.status == "skipped"]
    assert [r.id for r in skipped] == ["c0"] and skipped[0].tuning == record
    assert json.loads((tmp_path / "out" / "runs" / "c0" / "result.json").read_text())["tuning"] == record
    assert _rows(events)["c1"] == ("completed", None)  # the replacement ran the rest


def test_a_result_a_worker_cannot_store_is_one_line_not_tracebacks(tmp_path, image_folder):
    # Issue 22: a disk failing under the workers showed each worker's traceback before the one line.
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    (tmp_path / "out" / "runs").mkdir(parents=True)
    (tmp_path / "out" / "runs" / "mlp").write_text("a file where the cell's folder goes\n")
    proc = run_command(_bench(str(bench), "--output", "out", "--jobs", "2"), cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [f"pieceboard: error: cannot write {Path('out', 'runs', 'mlp')}: it is a file, not a folder"]
