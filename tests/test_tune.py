"""tune.py and tuned benchmarks: trials on the validation split, equal budgets, the best trial chosen, test once."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest

import pieceboard
from conftest import run_command, write_benchmark
from pieceboard.config import Cell, TrainSettings
from pieceboard.leaderboard import Leaderboard
from pieceboard.results import RunResult, load_results
from pieceboard.tune import choose

BODY = """
[defaults]
epochs = 2
batch_size = 8
image_size = 8
precision = "no"
log_every = 1

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"

[[runs]]
name = "r18"
model = "resnet18"
mode = "scratch"

[tune]
lr = [3e-4, 3e-3, 3e-1]
trial_epochs = 1
"""


def _tuned(tmp_path, image_folder, body=BODY):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    bench.write_text(bench.read_text().replace("test_fraction = 0.25", "test_fraction = 0.25\nval_fraction = 0.25"))
    return bench


# --- choosing --------------------------------------------------------------------------------------------------


def _trial(lr: float) -> Cell:
    return Cell(f"c~lr{lr}", "c", "m", "scratch", None, TrainSettings(lr=lr, epochs=1), trial_of="c")


def _result(trial: Cell, f1: float, acc: float = 0.5, loss: float = 1.0, status: str = "completed") -> RunResult:
    scores = {"f1_macro": f1, "accuracy": acc, "val_loss": loss} if status == "completed" else {}
    return RunResult(id=trial.id, status=status, config={}, val_metrics=scores, error=None if scores else "boom")


def test_the_best_trial_on_validation_is_chosen():
    cell = Cell("c", "c", "m", "scratch", None, TrainSettings(lr=1e-3, epochs=5))
    trials = [_trial(lr) for lr in (1e-4, 1e-3, 1e-2, 1e-1)]
    budget = {"trials": 4, "epochs": 4}
    tuning = {
        "space": {"lr": [1e-4, 1e-3, 1e-2, 1e-1]},
        "trials": 4,
        "trial_epochs": 1,
        "search_seed": 0,
        "budget": budget,
    }
    results = {
        trials[0].id: _result(trials[0], 0.70),
        trials[1].id: _result(trials[1], 0.80, acc=0.80, loss=0.9),
        trials[2].id: _result(trials[2], 0.80, acc=0.80, loss=0.5),  # tied F1 and accuracy: the lower loss wins
        trials[3].id: _result(trials[3], 0.0, status="failed"),
    }
    choice = choose(cell, trials, results, tuning)
    assert choice.cell.settings.lr == 1e-2 and choice.cell.settings.epochs == 5  # the cell's own epochs
    assert choice.cell.id == "c" and choice.cell.trial_of is None
    record = choice.record
    assert record["chosen"] == {"lr": 1e-2} and record["trial"] == trials[2].id and record["val_f1_macro"] == 0.80
    assert record["budget"] == budget
    assert [t["status"] for t in record["trials"]] == ["completed"] * 3 + ["failed"]
    assert [t["values"] for t in record["trials"]] == [{"lr": lr} for lr in (1e-4, 1e-3, 1e-2, 1e-1)]
    # Failed trials are never chosen, even when nothing else completed: then there is nothing to train.
    failed = {t.id: _result(t, 0.0, status="failed") for t in trials}
    assert choose(cell, trials, failed, tuning).cell is None


# --- a tuned benchmark, end to end ------------------------------------------------------------------------------


def test_tuned_benchmark_chooses_on_validation_and_tests_once(tmp_path, image_folder, cli, monkeypatch):
    import pieceboard.train as train

    scored = []
    real = train.score
    monkeypatch.setattr(
        train, "score", lambda run, data, acc, split: scored.append(split) or real(run, data, acc, split)
    )
    bench = _tuned(tmp_path, image_folder)
    out = tmp_path / "out"
    proc = cli("bench", bench, "--output", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "each tuned on validation with 3 trials (3 epochs in all)" in proc.stdout
    # Two cells of 2 epochs, six trials of 1: validation after every epoch, the test split once per cell.
    assert scored.count("val") == 2 * 2 + 6 * 1 and scored.count("test") == 2

    with open(out / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    val_paths = sorted(r["path"] for r in manifest if r["split"] == "val")
    test_paths = sorted(r["path"] for r in manifest if r["split"] == "test")
    assert val_paths and test_paths and not set(val_paths) & set(test_paths)
    every = {r.id: r for r in load_results(out, trials=True)}
    assert sorted(every) == sorted(
        ["mlp", "r18", *(f"{run}~lr{lr}" for run in ("mlp", "r18") for lr in (3e-4, 3e-3, 0.3))]
    )
    budgets = set()
    for run in ("mlp", "r18"):
        final = every[run]
        trials = [every[f"{run}~lr{lr}"] for lr in (3e-4, 3e-3, 0.3)]
        for trial in trials:  # a trial is scored on validation only; its predictions are the validation split's
            assert trial.status == "completed" and trial.metrics == {} and trial.n_test == 0
            assert trial.config["trial_of"] == run and trial.config["epochs"] == 1
            with open(out / "runs" / trial.id / "predictions.csv", newline="") as f:
                assert sorted(r["path"] for r in csv.DictReader(f)) == val_paths
        best = max(
            trials, key=lambda t: (t.val_metrics["f1_macro"], t.val_metrics["accuracy"], -t.val_metrics["val_loss"])
        )
        assert final.tuning["chosen"] == {"lr": best.config["lr"]} and final.config["lr"] == best.config["lr"]
        assert final.tuning["val_f1_macro"] == best.val_metrics["f1_macro"]
        assert [t["val_f1_macro"] for t in final.tuning["trials"]] == [t.val_metrics["f1_macro"] for t in trials]
        assert final.config["epochs"] == 2 and final.n_test == len(test_paths) and final.n_val == len(val_paths)
        assert final.config["tune"] == {
            "space": {"lr": [3e-4, 3e-3, 0.3]},
            "trials": None,
            "trial_epochs": 1,
            "search_seed": 0,
            "budget": {"trials": 3, "epochs": 3},
        }
        assert "val_accuracy" in final.history[0] and "accuracy" not in final.history[0]  # validation curves
        with open(out / "runs" / run / "predictions.csv", newline="") as f:
            assert sorted(r["path"] for r in csv.DictReader(f)) == test_paths
        budgets.add(json.dumps(final.tuning["budget"]))
    assert budgets == {'{"trials": 3, "epochs": 3}'}  # the same budget for every run

    board = Leaderboard.from_dir(out)
    assert [row["id"] for row in board.rows] == sorted(["mlp", "r18"], key=lambda i: -every[i].metrics["f1_macro"])
    for row in board.rows:  # checked against predictions.csv, with the chosen values and the validation score
        assert row["status"] == "completed" and row["guardrail"] is None
        assert row["tuned"] == every[row["id"]].tuning["chosen"]
        assert row["val_f1_macro"] == every[row["id"]].val_metrics["f1_macro"]
    assert f"lr={every['mlp'].config['lr']}" in board.to_markdown() and "val F1" in board.to_markdown()
    # keep_models = "best": only the leader among the final runs keeps its model (a trial never does), and every
    # completed trial or cell left no checkpoint behind.
    assert [p.parent.name for p in out.glob("runs/*/model")] == [board.rows[0]["id"]]
    assert not list(out.glob("runs/*/checkpoint"))
    report = (out / "report.html").read_text()
    assert "mlp~lr0.0003" in report and "Tuned on the validation split: 3 trials, 3 epochs in all" in report

    # A rerun keeps the trials and the cells: nothing is trained again.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    scored.clear()
    again = cli("bench", bench, "--output", out, cwd=tmp_path)
    assert again.returncode == 0 and scored == [] and "kept mlp~lr0.0003" in again.stdout and "kept r18" in again.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}


def _trial_figures(out, run: str) -> tuple[dict, str]:
    """A trial's result.json without timings and notes, and its predictions.csv."""
    result = json.loads((out / "runs" / run / "result.json").read_text())
    assert result["status"] == "completed", result["error"]
    result["history"] = [{k: v for k, v in e.items() if k not in ("train_s", "elapsed_s")} for e in result["history"]]
    timing = {"train_s", "train_img_s", "eval_img_s", "cache_s", "data_wait_s", "latency_ms", "peak_mem_mb", "notes"}
    return {k: v for k, v in result.items() if k not in timing}, (out / "runs" / run / "predictions.csv").read_text()


def test_a_trial_resumes_from_its_checkpoint_like_a_cell(tmp_path, image_folder, cli):
    # Recipes with state of their own (the moving average, the policy's random stream, mixup's draws): a resumed
    # trial must carry them to end with an uninterrupted trial's figures.
    recipes = 'augment = ["randaugment", "hflip"]\nmixup = 0.4\nema = 0.9\n'
    body = BODY.replace('[[runs]]\nname = "r18"\nmodel = "resnet18"\nmode = "scratch"\n', "")
    body = body.replace("trial_epochs = 1", "trial_epochs = 3").replace("log_every = 1\n", f"log_every = 1\n{recipes}")
    bench = _tuned(tmp_path, image_folder, body)
    bench.write_text(bench.read_text().replace("jobs = 1\n", "jobs = 1\nkeep_checkpoints = true\n"))
    assert cli("bench", bench, "--output", "ref", cwd=tmp_path).returncode == 0
    trial = "mlp~lr0.003"
    assert json.loads((tmp_path / "ref" / "runs" / trial / "checkpoint" / "state.json").read_text())["epoch"] == 2

    # As a trial killed after its checkpoint of epoch 2 leaves its folder: the checkpoint, no result.
    shutil.copytree(tmp_path / "ref", tmp_path / "out")
    for name in ("result.json", "predictions.csv"):
        (tmp_path / "out" / "runs" / trial / name).unlink()
    proc = cli("bench", bench, "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed {trial} from epoch 2" in proc.stdout and "kept mlp (completed earlier)" in proc.stdout
    assert _trial_figures(tmp_path / "out", trial) == _trial_figures(tmp_path / "ref", trial)
    notes = json.loads((tmp_path / "out" / "runs" / trial / "result.json").read_text())["notes"]
    assert "resumed from the checkpoint of epoch 2" in notes


def test_a_kept_trial_whose_predictions_disagree_is_rerun(tmp_path, image_folder, cli):
    # A trial's predictions.csv is on the validation split: it is checked against its validation figures, and a
    # trial whose file disagrees is trained again (as a cell is) before its cell is chosen.
    body = BODY.replace('[[runs]]\nname = "r18"\nmodel = "resnet18"\nmode = "scratch"\n', "")
    bench = _tuned(tmp_path, image_folder, body)
    out = tmp_path / "out"
    assert cli("bench", bench, "--output", out, cwd=tmp_path).returncode == 0
    trial = "mlp~lr0.003"
    predictions = out / "runs" / trial / "predictions.csv"
    good = predictions.read_text()
    header, first, *rest = good.splitlines(keepends=True)
    fields = first.rstrip("\n").split(",")  # index, path, label, prediction, confidence
    fields[3] = next(c for c in ("class_a", "class_b", "class_c") if c != fields[3])
    predictions.write_text("".join([header, ",".join(fields) + "\n", *rest]))
    dry = cli("bench", bench, "--output", out, "--dry-run", cwd=tmp_path)
    rows = {line.split()[1]: line for line in dry.stdout.splitlines() if "mlp" in line}
    assert "rerun (predictions.csv disagrees" in rows[trial] and "run after its trials" in rows["mlp"], dry.stdout
    assert "kept" in rows["mlp~lr0.0003"]
    proc = cli("bench", bench, "--output", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"rerun {trial}: its stored result does not hold up" in proc.stdout
    assert f"{trial}/predictions.csv: gives" in proc.stdout
    assert predictions.read_text() == good  # trained again with the same seed: the same predictions
    assert "kept mlp (completed earlier)" in proc.stdout  # the same choice: the tested cell stands


def test_side_by_side_workers_choose_the_same(tmp_path, image_folder, cli):
    bench = _tuned(
        tmp_path, image_folder, BODY.replace('[[runs]]\nname = "r18"\nmodel = "resnet18"\nmode = "scratch"\n', "")
    )
    one = cli("bench", bench, "--output", "one", "--jobs", "1", cwd=tmp_path)
    two = run_command(
        [sys.executable, "-m", "pieceboard.bench", str(bench), "--output", "two", "--jobs", "2"], cwd=tmp_path
    )
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert "training 3 cell(s), 2 at a time" in two.stdout
    for folder in ("one", "two"):
        assert len(list((tmp_path / folder / "runs").iterdir())) == 4
    a, b = (json.loads((tmp_path / f / "runs" / "mlp" / "result.json").read_text()) for f in ("one", "two"))
    assert a["tuning"]["chosen"] == b["tuning"]["chosen"] and a["metrics"] == b["metrics"]


def test_a_cell_whose_trials_all_fail_is_recorded_failed(tmp_path, image_folder, cli):
    body = BODY.replace("lr = [3e-4, 3e-3, 3e-1]", "lr = [1e30, 1e31]").replace(
        '[[runs]]\nname = "r18"\nmodel = "resnet18"\nmode = "scratch"\n', ""
    )
    proc = cli("bench", _tuned(tmp_path, image_folder, body), "--output", "out", cwd=tmp_path)
    assert proc.returncode == 1
    result = json.loads((tmp_path / "out" / "runs" / "mlp" / "result.json").read_text())
    assert result["status"] == "failed" and result["error"].startswith("TuningFailed: none of the 2 trials completed")
    assert "NonFiniteLoss" in result["error"] and result["tuning"]["chosen"] is None
    assert Leaderboard.from_dir(tmp_path / "out").rows[0]["status"] == "failed"


def test_dry_run_lists_the_trials_and_what_waits_for_them(tmp_path, image_folder, cli):
    bench = _tuned(tmp_path, image_folder)
    proc = cli("bench", bench, "--output", "out", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0
    rows = [line for line in proc.stdout.splitlines() if "mlp" in line]
    assert [line.split()[1] for line in rows] == ["mlp~lr0.0003", "mlp~lr0.003", "mlp~lr0.3", "mlp"]
    assert "run after its trials" in rows[-1] and "2 cells, 6 trials" in proc.stdout


def test_drop_path_on_a_model_without_it_is_refused_before_training(tmp_path, image_folder):
    bench = _tuned(tmp_path, image_folder, BODY.replace("lr = [3e-4, 3e-3, 3e-1]", "drop_path = [0, 0.1]"))
    with pytest.raises(pieceboard.PieceboardError, match="'mlp': key 'drop_path': pieceboard_mlp has no stochastic"):
        pieceboard.run(bench, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_old_results_are_kept_when_new_settings_hold_their_old_values(tmp_path, image_folder, cli):
    body = BODY.split("[tune]")[0].replace('[[runs]]\nname = "r18"\nmodel = "resnet18"\nmode = "scratch"\n', "")
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    assert cli("bench", bench, "--output", "out", cwd=tmp_path).returncode == 0
    path = tmp_path / "out" / "runs" / "mlp" / "result.json"
    stored = json.loads(path.read_text())
    for key in ("crop_scale", "mixup", "cutmix", "label_smoothing", "ema", "clip_grad", "drop_path"):
        del stored["config"][key]  # as a result written before these settings existed
    del stored["config"]["data"]["val_fraction"]
    path.write_text(json.dumps(stored))
    again = cli("bench", bench, "--output", "out", cwd=tmp_path)
    assert "kept mlp" in again.stdout
    changed = cli("bench", bench, "--output", "out", "--set", "defaults.label_smoothing=0.1", cwd=tmp_path)
    assert "kept mlp" not in changed.stdout and np.isfinite(json.loads(path.read_text())["metrics"]["f1_macro"])
