"""End to end: benchmark file -> runs -> result files -> leaderboard, through the real command line."""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

import pieceboard
from conftest import Background, run_command, write_benchmark
from pieceboard.bench import BLIND_SPOT
from pieceboard.dedup import NOT_FOUND
from pieceboard.leaderboard import Leaderboard

BODY = """
[defaults]
epochs = 2
batch_size = 8
lr = 0.003
log_every = 2

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"

[matrix]
image_size = [8, 12]
"""


def _recompute(predictions_csv, class_names):
    with open(predictions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    y, p = [r["label"] for r in rows], [r["prediction"] for r in rows]
    kw = {"labels": class_names, "average": "macro", "zero_division": 0}
    return rows, {
        "accuracy": accuracy_score(y, p),
        "precision_macro": precision_score(y, p, **kw),
        "recall_macro": recall_score(y, p, **kw),
        "f1_macro": f1_score(y, p, **kw),
    }


def test_bench_end_to_end_and_figures_rederive(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    proc = cli("bench", str(bench), "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mlp@8px" in proc.stdout and "mlp@12px" in proc.stdout
    assert "warning: the test split has 9 images: one image moves accuracy by 11.1 points" in proc.stdout
    # The leak check found no copies here, and says what it cannot see.
    assert f"{BLIND_SPOT} {NOT_FOUND}" in " ".join(proc.stdout.split())
    for name in ("manifest.csv", "leaderboard.json", "leaderboard.csv", "leaderboard.md", "report.html"):
        assert (out / name).is_file()
    with open(out / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    test_paths = sorted(r["path"] for r in manifest if r["split"] == "test")
    class_names = sorted({r["label"] for r in manifest})
    board = json.loads((out / "leaderboard.json").read_text())
    assert [row["status"] for row in board] == ["completed", "completed"]
    for row in board:
        result = json.loads((out / "runs" / row["id"] / "result.json").read_text())
        assert result["status"] == "completed" and result["error"] is None
        assert result["n_test"] == len(test_paths) == 9
        assert len(result["history"]) == 2 and result["history"][-1]["epoch"] == 2
        assert result["config"]["image_size"] == row["image_size"]
        assert result["params"] > 0 and result["eval_img_s"] > 0
        # The costs agree with what was done, whatever the machine's speed: 27 training images, 2 epochs.
        assert result["n_train"] == 27 and sum(h["train_s"] for h in result["history"]) == pytest.approx(
            result["train_s"]
        )
        assert result["train_img_s"] == pytest.approx(27 * 2 / result["train_s"])
        assert result["environment"]["processes"] == 1
        digest = hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()[:16]
        assert result["config"]["data"]["manifest_sha256"] == digest  # ties the result to its split
        rows, figures = _recompute(out / "runs" / row["id"] / "predictions.csv", class_names)
        assert sorted(r["path"] for r in rows) == test_paths
        for key, value in figures.items():
            assert row[key] == pytest.approx(value, abs=1e-12), key
            assert result["metrics"][key] == pytest.approx(value, abs=1e-12), key
        cm = np.array(result["confusion_matrix"])
        assert cm.sum() == 9 and np.trace(cm) == round(figures["accuracy"] * 9)


def test_failed_run_does_not_stop_the_others_and_rerun_keeps_finished_ones(tmp_path, image_folder, cli):
    body = BODY.replace("[matrix]\nimage_size = [8, 12]", "") + (
        '\n[[runs]]\nname = "diverges"\nmodel = "pieceboard_mlp"\nmode = "scratch"\nlr = 1e30\n'
    )
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    out = tmp_path / "out"
    proc = cli("bench", bench, "--output", out, "--set", "defaults.image_size=8", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = {r.id: r for r in pieceboard.load_results(out)}
    assert results["mlp"].status == "completed"
    assert results["diverges"].status == "failed" and "NonFiniteLoss" in results["diverges"].error
    board = Leaderboard.from_dir(out)
    assert [r["id"] for r in board.rows] == ["mlp", "diverges"] and board.rows[1]["rank"] is None
    assert "failed: NonFiniteLoss" in board.to_markdown()

    stamp = (out / "runs" / "mlp" / "result.json").stat().st_mtime_ns
    proc = cli("bench", bench, "--output", out, "--set", "defaults.image_size=8", cwd=tmp_path)
    assert "kept mlp" in proc.stdout
    assert (out / "runs" / "mlp" / "result.json").stat().st_mtime_ns == stamp  # not trained again
    # a changed setting is a different experiment: the cell runs again
    cli("bench", bench, "--output", out, "--set", "defaults.image_size=8", "--set", "runs.mlp.epochs=1", cwd=tmp_path)
    assert (out / "runs" / "mlp" / "result.json").stat().st_mtime_ns != stamp
    assert len(json.loads((out / "runs" / "mlp" / "result.json").read_text())["history"]) == 1


def test_leaderboard_command_renders_stored_results(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    pieceboard.run(bench, output=out)
    rows = json.loads(cli("leaderboard", out, "--format", "json", cwd=tmp_path).stdout)
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows == json.loads((out / "leaderboard.json").read_text())
    md = cli("leaderboard", str(out), "--format", "md", cwd=tmp_path).stdout
    assert md.splitlines()[0].startswith("| # | run | model |") and "mlp@8px" in md
    table = cli("leaderboard", str(out), cwd=tmp_path)
    assert table.returncode == 0 and "mlp@12px" in table.stdout and "train img/s" in table.stdout
    csv_rows = list(csv.DictReader(cli("leaderboard", out, "--format", "csv", cwd=tmp_path).stdout.splitlines()))
    assert float(csv_rows[0]["f1_macro"]) == pytest.approx(rows[0]["f1_macro"])
    missing = cli("leaderboard", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr


def test_library_api_is_deterministic(tmp_path, image_folder):
    config = {
        "benchmark": {"name": "api", "wandb": "off"},
        "data": {"path": str(image_folder)},
        "defaults": {"epochs": 2, "batch_size": 8, "image_size": 8, "precision": "no", "augment": ["hflip", "crop"]},
        "runs": [{"name": "mlp", "model": "pieceboard_mlp", "mode": "scratch"}],
    }
    first = pieceboard.run(config, output=tmp_path / "a")
    second = pieceboard.run(config, output=tmp_path / "b")
    assert first[0].status == "completed"
    assert [h["train_loss"] for h in first[0].history] == [h["train_loss"] for h in second[0].history]
    assert first[0].metrics == second[0].metrics


def test_missing_pretrained_weights_stop_before_training(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    body = '[[runs]]\nname = "r18"\nmodel = "resnet18"\nmode = "finetune"\n'
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    # In a new process: huggingface_hub reads its cache variables when it is imported.
    argv = [sys.executable, "-m", "pieceboard.bench", str(bench), "--output", str(tmp_path / "out")]
    proc = run_command(argv, cwd=tmp_path)
    assert proc.returncode == 2
    assert "resnet18" in proc.stderr and "pieceboard prefetch" in proc.stderr and "weights =" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "runs").exists()


def test_batch_of_one_is_refused_before_training(tmp_path, image_folder):
    body = '[defaults]\nbatch_size = 1\n\n[[runs]]\nname = "mlp"\nmodel = "pieceboard_mlp"\nmode = "scratch"\n'
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    with pytest.raises(pieceboard.PieceboardError, match="batch_size 1 gives fewer than 2 images"):
        pieceboard.run(bench, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_builtin_is_a_user_error(tmp_path, cli):
    body = '[[runs]]\nname = "mlp"\nmodel = "pieceboard_mlp"\nmode = "scratch"\n'
    bench = write_benchmark(tmp_path / "b.toml", "builtin:nope", body)
    proc = cli("bench", str(bench), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown built-in dataset 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "term", "kill-9"])
def test_killed_benchmark_keeps_finished_runs_and_resumes(tmp_path, image_folder, sig, cli):
    # "quick" finishes at once; "long" is still training when the signal arrives (waited for as an output line).
    body = BODY.replace("[matrix]\nimage_size = [8, 12]", "").replace('name = "mlp"', 'name = "quick"') + (
        '\n[[runs]]\nname = "long"\nmodel = "pieceboard_mlp"\nmode = "scratch"\nepochs = 100000\n'
    )
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "pieceboard.bench", str(bench), "--output", str(out), "--jobs", "2"]
    proc = Background([*args, "--set", "defaults.image_size=8"], cwd=tmp_path)
    proc.wait_for("done quick")
    proc.proc.send_signal(sig)
    code, stdout, stderr = proc.finish()
    results = {r.id: r.status for r in pieceboard.load_results(out)}
    assert results["quick"] == "completed"
    if sig != signal.SIGKILL:
        assert code == 130 and "finished runs are kept" in stderr, (code, stdout, stderr)
        assert results["long"] == "skipped" and (out / "leaderboard.json").exists()
    first = out / "runs" / "quick" / "result.json"
    stamp = first.stat().st_mtime_ns
    rerun = cli("bench", *args[3:], "--set", "defaults.image_size=8", "--set", "runs.long.epochs=1", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "kept quick" in rerun.stdout and first.stat().st_mtime_ns == stamp
    assert {r.status for r in pieceboard.load_results(out)} == {"completed"}


def test_dry_run_lists_cells_and_what_would_be_kept(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    fresh = cli("bench", str(bench), "--output", str(out), "--dry-run", cwd=tmp_path)
    assert fresh.returncode == 0 and not out.exists()  # nothing written
    assert [line.split()[1] for line in fresh.stdout.splitlines() if "mlp@" in line] == ["mlp@8px", "mlp@12px"]
    assert all(line.rstrip(" │").endswith("run") for line in fresh.stdout.splitlines() if "mlp@" in line)
    pieceboard.run(bench, output=out, overrides=["matrix.image_size=[8]"])
    again = cli("bench", str(bench), "--output", str(out), "--dry-run", cwd=tmp_path)
    rows = {line.split()[1]: line for line in again.stdout.splitlines() if "mlp@" in line}
    assert "kept" in rows["mlp@8px"] and " run " in rows["mlp@12px"] + " "


def test_a_batch_larger_than_the_training_split_is_a_warning(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY.replace("batch_size = 8", "batch_size = 64"))
    proc = cli("bench", bench, "--output", "out", "--set", "matrix.image_size=[8]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: batch_size 64 (mlp) is larger than the 27 training images: one step per epoch" in proc.stdout


def test_dry_run_exits_as_the_run_would(tmp_path, image_folder, cli):
    body = BODY + '\n[[runs]]\nname = "tuned"\nmodel = "pieceboard_mlp"\nmode = "finetune"\n'  # no published weights
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    dry = cli("bench", str(bench), "--output", "out", "--dry-run", cwd=tmp_path)
    run = cli("bench", str(bench), "--output", "out", cwd=tmp_path)
    assert dry.returncode == run.returncode == 2
    message = f"pieceboard: error: {bench}: [[runs]] 'tuned': pieceboard_mlp: has no published pretrained weights"
    assert run.stderr.startswith(message) and dry.stderr.startswith(message)
    assert dry.stderr.count("\n") == 1 and "stops the run" in dry.stdout  # one line per problem, not per cell
    missing = write_benchmark(tmp_path / "m.toml", tmp_path / "nope", BODY)
    dry = cli("bench", str(missing), "--output", "out", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 2 and f"data.path: {tmp_path / 'nope'} is not a folder" in dry.stderr
    good = cli("bench", str(write_benchmark(tmp_path / "g.toml", image_folder, BODY)), "--output", "out", "--dry-run")
    assert good.returncode == 0 and good.stderr == ""


def test_dry_run_sees_a_folder_in_use(tmp_path, image_folder, cli):
    from pieceboard._io import lock_folder

    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    with lock_folder(out, "pieceboard bench other.toml"):
        dry = cli("bench", str(bench), "--output", str(out), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 2 and f"{out} is in use by pid" in dry.stderr and "other.toml" in dry.stderr
    assert cli("bench", str(bench), "--output", str(out), "--dry-run", cwd=tmp_path).returncode == 0  # released


def test_a_mistake_in_the_file_is_told_before_torch_loads_and_on_one_line(tmp_path, image_folder):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY.replace("epochs = 2", "epocs = 2"))
    expected = f"pieceboard: error: {bench}: [defaults]: unknown key 'epocs'; did you mean 'epochs'?\n"
    for command in (["-m", "pieceboard.cli", "bench"], ["-m", "pieceboard.bench"]):
        proc = run_command([sys.executable, "-X", "importtime", *command, str(bench)], cwd=tmp_path)
        assert proc.returncode == 2 and proc.stdout == ""
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
        assert "pieceboard.config" in imported and not {"torch", "timm", "accelerate"} & imported
        assert [line for line in proc.stderr.splitlines() if not line.startswith("import time")] == [expected.strip()]


def test_a_data_folder_mistake_is_one_line_with_nothing_before_it(tmp_path):
    bench = write_benchmark(tmp_path / "b.toml", tmp_path / "nope", BODY)
    proc = run_command([sys.executable, "-m", "pieceboard.cli", "bench", str(bench)], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""  # no empty line from the progress display
    assert proc.stderr == f"pieceboard: error: data.path: {tmp_path / 'nope'} is not a folder\n"
