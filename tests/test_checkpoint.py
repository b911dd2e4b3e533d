"""checkpoint.py: a cell killed mid-training resumes from its last finished epoch with the figures of an uninterrupted
run, in this process, in worker processes and under torchrun; a checkpoint of another configuration or data is not
used; a full disk costs a checkpoint, never the cell."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import Background, children, make_image_folder, run_command, wait_until, write_benchmark
from pieceboard.checkpoint import STATE, Checkpoints, Progress
from pieceboard.config import load_config
from pieceboard.device import make_accelerator
from pieceboard.train import RunData, setup

# resnet18 with augmentation and a warm-up: every kind of state a resume must carry (weights, BatchNorm statistics,
# Adam's moments, the per-step schedule, the augmentation generator); long enough per epoch for a test to see the
# checkpoint of epoch 2 and kill the process before the next one (epoch 4).
KEEP = 'checkpoint_every = 2\nkeep_models = "none"'
BODY = """
[defaults]
epochs = 5
batch_size = 8
image_size = 16
log_every = 3
warmup_epochs = 1
augment = ["crop", "hflip"]

[[runs]]
name = "r18"
model = "resnet18"
mode = "scratch"
"""
TIMING = {
    "train_s", "train_img_s", "eval_img_s", "cache_s", "data_wait_s", "latency_ms", "peak_mem_mb", "compile_s", "notes",
}  # fmt: skip


def _bench(bench: Path, output: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "pieceboard.bench", str(bench), "--output", output, *more]


def _with_benchmark_keys(bench: Path, text: str) -> Path:
    bench.write_text(bench.read_text().replace("jobs = 1\n", f"jobs = 1\n{text}\n"))
    return bench


def _epoch(state: Path) -> int:
    try:
        return json.loads(state.read_text())["epoch"]
    except (OSError, ValueError):
        return 0


def _kill(proc: Background) -> None:
    """SIGKILL a command and every process under it (torchrun starts its workers in sessions of their own)."""
    found, todo = [], [proc.proc.pid]
    while todo:
        found += (kids := [kid for pid in todo for kid in children(pid)])
        todo = kids
    proc.kill()
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in found), "the killed processes gone")


def _kill_after_epoch(args: list[str], cwd: Path, state: Path, env: dict[str, str] | None = None) -> int:
    """Start a benchmark, SIGKILL it and all its processes once `state` says epoch 2 was checkpointed; returns the
    epoch of the checkpoint left behind (2, or later if the process outran the poll)."""
    proc = Background(args, cwd=cwd, env=env)
    try:
        wait_until(lambda: _epoch(state) >= 2, "a checkpoint of epoch 2", deadline=900, poll=0.01)
    finally:
        _kill(proc)
    code, out, err = proc.finish()
    assert code == -9, (code, out[-2000:], err[-2000:])
    return _epoch(state)


def _figures(out: Path, run: str) -> tuple[dict, str]:
    """result.json without timings and notes (history without its seconds), and predictions.csv."""
    result = json.loads((out / "runs" / run / "result.json").read_text())
    assert result["status"] == "completed", result["error"]
    result["history"] = [{k: v for k, v in e.items() if k not in ("train_s", "elapsed_s")} for e in result["history"]]
    figures = {k: v for k, v in result.items() if k not in TIMING}
    return figures, (out / "runs" / run / "predictions.csv").read_text()


def test_a_cell_killed_after_epoch_2_resumes_with_identical_figures(tmp_path, cli):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=24)
    bench = _with_benchmark_keys(write_benchmark(tmp_path / "b.toml", folder, BODY), KEEP)
    reference = cli("bench", bench, "--output", "ref", cwd=tmp_path)  # uninterrupted, in this process
    assert reference.returncode == 0, reference.stderr[-3000:]

    state = tmp_path / "out" / "runs" / "r18" / "checkpoint" / STATE
    epoch = _kill_after_epoch(_bench(bench, "out"), tmp_path, state)
    assert epoch in (2, 4)
    stored = json.loads(state.read_text())
    assert stored["config"]["epochs"] == 5 and stored["config"]["data"]["manifest_sha256"]
    assert sorted(p.name for p in state.parent.iterdir()) == [f"epoch-{epoch}.pt", STATE]  # one epoch, no temp files
    assert not (tmp_path / "out" / "runs" / "r18" / "result.json").exists()

    resumed = run_command(_bench(bench, "out"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed r18 from epoch {epoch}" in resumed.stdout
    assert _figures(tmp_path / "out", "r18") == _figures(tmp_path / "ref", "r18")
    result = json.loads((tmp_path / "out" / "runs" / "r18" / "result.json").read_text())
    assert f"resumed from the checkpoint of epoch {epoch}" in result["notes"]
    assert len(result["history"]) == 5 and len(result["train_log"]) == 5 * 3  # 7 steps an epoch, logged every 3
    assert not state.parent.exists()  # the cell completed: its checkpoint is gone


def test_workers_resume_their_cells(tmp_path, cli):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=24)
    bench = write_benchmark(tmp_path / "b.toml", folder, BODY + "\n[matrix]\nseed = [0, 1]\n")
    _with_benchmark_keys(bench, KEEP)
    reference = cli("bench", bench, "--output", "ref", cwd=tmp_path)  # one cell after the other, in this process
    assert reference.returncode == 0, reference.stderr[-3000:]

    runs = ("r18@seed0", "r18@seed1")
    states = [tmp_path / "out" / "runs" / run / "checkpoint" / STATE for run in runs]
    proc = Background(_bench(bench, "out", "--jobs", "2"), cwd=tmp_path)  # both cells at once, in two workers
    try:
        wait_until(lambda: all(_epoch(s) >= 2 for s in states), "checkpoints of epoch 2", deadline=900, poll=0.01)
    finally:
        _kill(proc)
    assert proc.finish()[0] == -9
    epochs = [_epoch(state) for state in states]
    resumed = run_command(_bench(bench, "out", "--jobs", "2"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "training 2 cell(s), 2 at a time" in resumed.stdout
    for run, epoch in zip(runs, epochs, strict=True):
        assert f"resumed {run} from epoch {epoch}" in resumed.stdout  # a worker's event, shown by the main process
        assert _figures(tmp_path / "out", run) == _figures(tmp_path / "ref", run), run


@pytest.mark.distributed
def test_data_parallel_processes_resume_together(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=24)
    bench = _with_benchmark_keys(write_benchmark(tmp_path / "b.toml", folder, BODY), KEEP)
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    reference = run_command([*torchrun, "-m", "pieceboard.bench", str(bench), "--output", "ref"], tmp_path, env)
    assert reference.returncode == 0, reference.stderr[-3000:]

    state = tmp_path / "out" / "runs" / "r18" / "checkpoint" / STATE
    args = [*torchrun, "-m", "pieceboard.bench", str(bench), "--output", "out"]
    epoch = _kill_after_epoch(args, tmp_path, state, env)
    training = torch.load(state.parent / f"epoch-{epoch}.pt", weights_only=True)
    assert len(training["rng"]) == 2  # one writer holds both processes' random states
    assert not torch.equal(training["rng"][0]["augment"], training["rng"][1]["augment"])
    resumed = run_command(args, tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"resumed r18 from epoch {epoch}") == 1  # said once, by the main process
    assert _figures(tmp_path / "out", "r18") == _figures(tmp_path / "ref", "r18")
    assert json.loads((tmp_path / "out" / "runs" / "r18" / "result.json").read_text())["environment"]["processes"] == 2


MLP = """
[defaults]
epochs = 3
batch_size = 8
image_size = 8

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"
"""


def test_checkpoints_are_taken_every_n_epochs_and_kept_when_asked(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, MLP.replace("epochs = 3", "epochs = 5"))
    _with_benchmark_keys(bench, "checkpoint_every = 2\nkeep_checkpoints = true")
    assert cli("bench", bench, "--output", "out", cwd=tmp_path).returncode == 0
    checkpoint = tmp_path / "out" / "runs" / "mlp" / "checkpoint"
    assert json.loads((checkpoint / STATE).read_text())["epoch"] == 4  # after epochs 2 and 4; never after the last
    assert sorted(p.name for p in checkpoint.iterdir()) == ["epoch-4.pt", STATE]
    # Not to be kept any more: the completed cell is kept (not rerun), its checkpoint goes.
    again = cli("bench", bench, "--output", "out", "--set", "benchmark.keep_checkpoints=false", cwd=tmp_path)
    assert again.returncode == 0 and "kept mlp (completed earlier)" in again.stdout
    assert not checkpoint.exists()

    bench = write_benchmark(tmp_path / "c.toml", image_folder, MLP)
    _with_benchmark_keys(bench, "checkpoint_every = 0")
    assert cli("bench", bench, "--output", "none", cwd=tmp_path).returncode == 0
    assert not (tmp_path / "none" / "runs" / "mlp" / "checkpoint").exists()


def test_a_checkpoint_of_another_configuration_or_data_is_not_used(tmp_path, image_folder, cli):
    bench = _with_benchmark_keys(write_benchmark(tmp_path / "b.toml", image_folder, MLP), "keep_checkpoints = true")
    assert cli("bench", bench, "--output", "out", cwd=tmp_path).returncode == 0
    checkpoint = tmp_path / "out" / "runs" / "mlp" / "checkpoint"
    assert json.loads((checkpoint / STATE).read_text())["epoch"] == 2
    shutil.copytree(checkpoint, tmp_path / "moved" / "runs" / "mlp" / "checkpoint")  # for the data case below

    # Another learning rate: the cell trains again from epoch 1, and ends as a fresh run of that configuration.
    changed = cli("bench", bench, "--output", "out", "--set", "defaults.lr=0.003", cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "not resuming mlp from its checkpoint: it was made with another configuration or data (lr differ)" in (
        changed.stdout
    )
    assert "resumed mlp" not in changed.stdout
    fresh = cli("bench", bench, "--output", "fresh", "--set", "defaults.lr=0.003", cwd=tmp_path)
    assert fresh.returncode == 0
    assert _figures(tmp_path / "out", "mlp") == _figures(tmp_path / "fresh", "mlp")

    # The same configuration on other images (a checkpoint copied into another output folder): not used either.
    other = make_image_folder(tmp_path / "other", per_class=13, seed=1)
    bench = _with_benchmark_keys(write_benchmark(tmp_path / "o.toml", other, MLP), "keep_checkpoints = true")
    moved = cli("bench", bench, "--output", "moved", cwd=tmp_path)
    assert moved.returncode == 0
    assert "(data.manifest_sha256, data.path differ)" in moved.stdout and "resumed mlp" not in moved.stdout


def test_a_damaged_checkpoint_is_one_line_and_a_fresh_start(tmp_path, image_folder, cli):
    bench = _with_benchmark_keys(write_benchmark(tmp_path / "b.toml", image_folder, MLP), "keep_checkpoints = true")
    assert cli("bench", bench, "--output", "ref", cwd=tmp_path).returncode == 0
    checkpoint = tmp_path / "ref" / "runs" / "mlp" / "checkpoint"
    target = tmp_path / "out" / "runs" / "mlp" / "checkpoint"
    shutil.copytree(checkpoint, target)
    (target / "epoch-2.pt").write_bytes((target / "epoch-2.pt").read_bytes()[:-10])  # cut short
    proc = cli("bench", bench, "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not resuming mlp from its checkpoint: its file epoch-2.pt is missing or incomplete" in proc.stdout
    assert _figures(tmp_path / "out", "mlp") == _figures(tmp_path / "ref", "mlp")


# --- a full disk -------------------------------------------------------------------------------------------------


def _fill(disk: Path, leave: int) -> None:
    """Fill `disk` up to `leave` free bytes."""
    (disk / "fill").write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - leave))


def test_a_checkpoint_that_does_not_fit_costs_only_itself(small_disk, image_folder):
    config = load_config(write_benchmark(small_disk.parent / "b.toml", image_folder, MLP))
    cell = config.cells[0]
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 3
    data = RunData(rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), labels, np.arange(30), np.arange(30, 40),
                   ["a", "b", "c"], ([0.5] * 3, [0.25] * 3))  # fmt: skip
    accelerator = make_accelerator("no")
    run = setup(cell, data, accelerator)
    folder = small_disk / "runs" / "mlp" / "checkpoint"
    checkpoints = Checkpoints(folder, "mlp", cell.to_dict(), "no", every=1)
    notes: list[str] = []

    def log(event):
        notes.append(event["text"])

    checkpoints.save(run, accelerator, Progress(epoch=1), log)
    assert notes == [] and json.loads((folder / STATE).read_text())["epoch"] == 1

    _fill(small_disk, leave=1 << 20)  # less than a checkpoint of this MLP (about 9 MB)
    progress = Progress(epoch=2)
    checkpoints.save(run, accelerator, progress, log)
    [note] = notes
    assert note.startswith("checkpoint of mlp after epoch 2 not written: cannot write the checkpoint of mlp in ")
    assert "free on its disk" in note and progress.notes == [note]
    assert json.loads((folder / STATE).read_text())["epoch"] == 1  # the previous one, whole
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-1.pt", STATE]

    (small_disk / "fill").unlink()
    restored = checkpoints.resume(setup(cell, data, accelerator), accelerator, log)
    assert restored is not None and restored.epoch == 1 and notes[-1] == "resumed mlp from epoch 1"


def test_the_disk_is_checked_for_checkpoints_and_models_before_training(small_disk, image_folder, cli):
    body = MLP.replace("pieceboard_mlp", "resnet18")  # a 45 MB model; checkpoints of three times that
    bench = write_benchmark(small_disk.parent / "b.toml", image_folder, body)
    proc = cli("bench", bench, "--output", small_disk / "out", cwd=small_disk.parent)
    assert proc.returncode == 2
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("pieceboard: error:")]
    assert "cannot write the results, checkpoints and models of 1 cell(s)" in line and "free on its disk" in line
    assert not (small_disk / "out" / "runs").exists()
    dry = cli("bench", bench, "--output", small_disk / "out", "--dry-run", cwd=small_disk.parent)  # says the same
    assert dry.returncode == 2 and dry.stderr.strip() == line
    # Without checkpoints and kept models, the results alone fit.
    _with_benchmark_keys(bench, 'checkpoint_every = 0\nkeep_models = "none"')
    proc = cli("bench", bench, "--output", small_disk / "out", cwd=small_disk.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (small_disk / "out" / "runs" / "mlp").iterdir()) == [
        "predictions.csv", "result.json",
    ]  # fmt: skip
