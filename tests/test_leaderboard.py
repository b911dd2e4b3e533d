"""leaderboard.py: ranking, rendering, the summary over seeds, and the columns derived from the stored files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from _results import CLASSES, graded, write_manifest, write_run
from pieceboard.cli import main
from pieceboard.leaderboard import Leaderboard, leaked_test_paths, pareto_front, time_to_accuracy
from pieceboard.results import RunResult


def _result(run_id, seed, f1, acc=None, status="completed", lr=0.001):
    config = {"run": run_id.split("@")[0], "model": "resnet18", "mode": "scratch", "image_size": 32,
              "batch_size": 8, "epochs": 2, "seed": seed, "lr": lr}  # fmt: skip
    if status != "completed":
        return RunResult(id=run_id, status=status, config=config, error="NonFiniteLoss: boom")
    metrics = {"accuracy": acc if acc is not None else f1, "f1_macro": f1, "precision_macro": f1,
               "recall_macro": f1, "test_loss": 1 - f1, "train_loss": 0.5}  # fmt: skip
    return RunResult(id=run_id, status=status, config=config, metrics=metrics, params=1000, train_s=2.0,
                     train_img_s=100.0, eval_img_s=400.0, precision="bf16")  # fmt: skip


def test_ranking_puts_failures_last_with_reasons():
    board = Leaderboard.from_results(
        [_result("a", 0, 0.7), _result("b", 0, 0.9), _result("c", 0, 0.0, status="failed"), _result("d", 0, 0.7, 0.8)]
    )
    assert [r["id"] for r in board.rows] == ["b", "d", "a", "c"]  # ties on F1 broken by accuracy
    assert [r["rank"] for r in board.rows] == [1, 2, 3, None]
    md = board.to_markdown()
    assert "failed: NonFiniteLoss: boom" in md and md.count("\n") == 6
    assert board.seeds == [] and board.seed_table() is None


def test_seed_summary_gives_mean_and_student_t_interval(tmp_path):
    f1 = {"mlp": [0.80, 0.84, 0.82], "cnn": [0.90, 0.88, 0.95]}
    results = [_result(f"{name}@32px-seed{s}", s, v) for name, values in f1.items() for s, v in enumerate(values)]
    results.append(_result("solo@32px-seed0", 0, 0.99))  # one seed only: no interval, not summarised
    board = Leaderboard.from_results(results)
    summary = board.seeds
    assert [e["group"] for e in summary] == ["cnn@32px", "mlp@32px"]
    assert [e["rank"] for e in summary] == [1, 2]
    cnn = summary[0]
    assert cnn["seeds"] == [0, 1, 2]
    low, high = stats.t.interval(0.95, 2, loc=sum(f1["cnn"]) / 3, scale=stats.sem(f1["cnn"]))
    assert cnn["f1_macro_mean"] == pytest.approx(0.91)
    assert (cnn["f1_macro_ci_low"], cnn["f1_macro_ci_high"]) == pytest.approx((low, high))
    assert cnn["test_loss_mean"] == pytest.approx(0.09)
    board.write(tmp_path)
    assert json.loads((tmp_path / "leaderboard_seeds.json").read_text()) == summary
    assert board.seed_table() is not None


def test_seeds_kept_from_another_graphs_setting_stay_in_one_group():
    results = [_result(f"mlp@32px-seed{s}", s, 0.8 + s / 100) for s in range(3)]
    results[0].config["graphs"] = True  # how the cell ran, not what it trained
    [entry] = Leaderboard.from_results(results).seeds
    assert entry["seeds"] == [0, 1, 2]


def test_seed_label_is_removed_only_for_the_seed_axis():
    results = [_result(f"mlp@lr0.01-seed{s}", s, 0.5 + s / 10, lr=0.01) for s in (1, 2)]
    results += [_result(f"mlp@lr0.1-seed{s}", s, 0.4, lr=0.1) for s in (1, 2)]
    groups = [e["group"] for e in Leaderboard.from_results(results).seeds]
    assert groups == ["mlp@lr0.01", "mlp@lr0.1"]


# --- derived columns from result folders written directly (no training) -------------------------------------------


def _board(out, **kwargs):
    return {row["id"]: row for row in Leaderboard.from_dir(out, **kwargs).rows}


def test_identical_runs_are_tied_and_a_much_worse_run_is_not(tmp_path):
    labels, good = graded(60, 50)
    write_run(tmp_path, "a", labels, good)
    write_run(tmp_path, "b", labels, good)  # same predictions: nothing discordant
    write_run(tmp_path, "c", *graded(60, 20))  # right on 20 of the leader's 50, never where the leader is wrong
    rows = _board(tmp_path)
    assert rows["a"]["rank"] == 1 and rows["a"]["p_vs_best"] is None
    assert rows["b"]["p_vs_best"] == 1.0 and rows["b"]["tied_with_best"] is True
    # 30 discordant images, all for the leader: mid-p = 2 P(X <= 0) - P(X = 0) = 0.5**30.
    assert rows["c"]["p_vs_best"] == pytest.approx(0.5**30) and rows["c"]["tied_with_best"] is False
    md = Leaderboard.from_dir(tmp_path).to_markdown()
    assert "| best |" in md and "tied p=1" in md and "p=9.3e-10" in md


def test_clean_accuracy_rescored_without_leaked_test_images(tmp_path):
    labels, predicted = graded(60, 50)
    write_run(tmp_path, "a", labels, predicted)
    paths = [f"img/{i:03d}.png" for i in range(60)]
    write_manifest(tmp_path, leaked=paths[:10] + ["img/not-in-this-split.png"])
    row = _board(tmp_path)["a"]
    assert row["leaked_test_images"] == 10
    assert row["clean_accuracy"] == pytest.approx(40 / 50)
    f1 = f1_score(labels[10:], predicted[10:], labels=CLASSES, average="macro", zero_division=0)
    assert row["clean_f1_macro"] == pytest.approx(f1)
    assert row["accuracy"] == pytest.approx(50 / 60)
    header = Leaderboard.from_dir(tmp_path).to_markdown().splitlines()[0]
    assert "| acc | clean acc |" in header
    write_manifest(tmp_path)  # an older folder: no leak check recorded
    assert leaked_test_paths(tmp_path) is None
    assert [_board(tmp_path)["a"][k] for k in ("leaked_test_images", "clean_accuracy", "clean_f1_macro")] == [None] * 3


def _valid_result(run_id="bad"):
    return {"id": run_id, "status": "completed", "config": {}, "metrics": {"accuracy": 0.5}}


MALFORMED = {
    "garbage": "{not json at all",
    "empty": "",
    "list": "[1, 2]",
    "null": "null",
    "missing id": json.dumps({k: v for k, v in _valid_result().items() if k != "id"}),
    "metrics null": json.dumps(_valid_result() | {"metrics": None}),
    "string for a number": json.dumps(_valid_result() | {"params": "many"}),
    "another folder's id": json.dumps(_valid_result("elsewhere")),
}


@pytest.mark.parametrize("form", MALFORMED)
def test_malformed_result_is_a_corrupt_row_with_its_reason(tmp_path, capsys, form):
    write_run(tmp_path, "good", *graded(30, 20))
    (tmp_path / "runs" / "bad").mkdir()
    (tmp_path / "runs" / "bad" / "result.json").write_text(MALFORMED[form])
    rows = _board(tmp_path)
    assert rows["good"]["rank"] == 1 and rows["good"]["status"] == "completed"
    bad = rows["bad"]
    assert bad["status"] == "corrupt" and bad["rank"] is None and "result.json" in bad["error"]
    assert main(["leaderboard", str(tmp_path), "--format", "json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["completed", "corrupt"]
    assert main(["leaderboard", str(tmp_path)]) == 0
    assert "corrupt:" in capsys.readouterr().out


def test_figures_that_disagree_with_predictions_make_a_corrupt_row(tmp_path):
    for run_id in ("edited", "close", "no-predictions", "foreign-class"):
        write_run(tmp_path, run_id, *graded(30, 20))
    path = tmp_path / "runs" / "edited" / "result.json"
    path.write_text(path.read_text().replace('"accuracy": 0.6666666666666666', '"accuracy": 0.7'))
    path = tmp_path / "runs" / "close" / "result.json"  # within 1e-9: rounding, not an edit
    path.write_text(path.read_text().replace('"accuracy": 0.6666666666666666', '"accuracy": 0.6666666666666667'))
    (tmp_path / "runs" / "no-predictions" / "predictions.csv").unlink()
    path = tmp_path / "runs" / "foreign-class" / "predictions.csv"
    path.write_text(path.read_text().replace(",cat\n", ",gnu\n", 1))
    rows = _board(tmp_path)
    assert rows["close"]["status"] == "completed"
    edited = rows["edited"]
    assert edited["status"] == "corrupt" and "edited/predictions.csv" in edited["error"]
    assert "accuracy 0.666667, but result.json says 0.7" in edited["error"]
    assert rows["no-predictions"]["status"] == "corrupt"
    assert "no-predictions/predictions.csv: unreadable" in rows["no-predictions"]["error"]
    assert "gnu" in rows["foreign-class"]["error"] and rows["foreign-class"]["status"] == "corrupt"


def test_time_to_accuracy_from_the_history():
    history = [{"epoch": e, "accuracy": a, "train_s": float(e)} for e, a in enumerate([0.2, 0.5, 0.76, 0.8, 0.79], 1)]
    assert time_to_accuracy(history) == (6.0, 3)  # 0.95 x 0.8 = 0.76, first reached in epoch 3 after 1 + 2 + 3 s
    assert time_to_accuracy(history, 0.5) == (3.0, 2)
    assert time_to_accuracy(history, 1.0) == (10.0, 4)
    assert time_to_accuracy([h | {"train_s": None} for h in history]) == (None, 3)
    assert time_to_accuracy([]) == (None, None)


def test_time_to_accuracy_columns_and_fraction(tmp_path, capsys):
    history = [{"epoch": e, "accuracy": a, "train_s": 2.0} for e, a in enumerate([0.3, 0.6, 0.62], 1)]
    write_run(tmp_path, "a", *graded(30, 20), history=history)
    assert (_board(tmp_path)["a"]["time_to_acc_s"], _board(tmp_path)["a"]["epochs_to_acc"]) == (4.0, 2)
    assert _board(tmp_path, acc_fraction=1.0)["a"]["epochs_to_acc"] == 3
    assert main(["leaderboard", str(tmp_path), "--format", "md", "--acc-fraction", "1"]) == 0
    assert "6.0s ep 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["leaderboard", str(tmp_path), "--acc-fraction", "1.5"])


def test_pareto_front_on_a_known_set():
    points = [(0.9, 10), (0.8, 5), (0.85, 20), (0.7, 1), (0.7, 6), (0.9, 10)]
    assert pareto_front(points) == [True, True, False, True, False, True]


def test_pareto_column_uses_f1_and_latency(tmp_path):
    write_run(tmp_path, "big", *graded(30, 28), latency_ms=9.0)
    write_run(tmp_path, "small", *graded(30, 20), latency_ms=1.0)
    write_run(tmp_path, "slow", *graded(30, 15), latency_ms=5.0, peak_mem_mb=120.0)
    write_run(tmp_path, "old", *graded(30, 10))  # written before latency was measured
    rows = _board(tmp_path)
    assert [rows[k]["pareto"] for k in ("big", "small", "slow", "old")] == [True, True, False, None]
    assert rows["slow"]["peak_mem_mb"] == 120.0 and rows["old"]["latency_ms"] is None


def test_guardrails_name_what_differs_from_most_rows(tmp_path):
    transform = {"resize": "bilinear", "normalize": "dataset", "mean": [0.5] * 3, "std": [0.2] * 3}
    for run_id in ("a", "b"):
        write_run(tmp_path, run_id, *graded(30, 20), transform=transform)
    # The dataset's statistics differ at another image size: the same transform, not flagged.
    write_run(tmp_path, "c", *graded(30, 20), transform=transform | {"mean": [0.4] * 3})
    write_run(tmp_path, "d", *graded(30, 20), config={"epochs": 3, "data": {"manifest_sha256": "split-b"}})
    write_run(tmp_path, "e", *graded(30, 20), config={"augment": ["hflip"]}, transform=transform)
    write_run(tmp_path, "f", *graded(30, 20), transform=transform | {"normalize": "pretrained"})
    rows = _board(tmp_path)
    assert [rows[k]["guardrail"] for k in "abc"] == [None] * 3
    assert rows["d"]["guardrail"] == "split split-b (most rows: split-a); epochs 3 (most rows: 2)"
    assert rows["e"]["guardrail"] == "augment hflip (most rows: none)"
    expected = "eval transform resize bilinear, normalize pretrained (most rows: resize bilinear, normalize dataset)"
    assert rows["f"]["guardrail"] == expected  # d has no transform (an older result): not judged on it
    assert rows["d"]["p_vs_best"] is not None  # same test images, so still tested; the guardrail says why to doubt it


def _seed_runs(out, name, f1_by_seed, config=None):
    for seed, n_right in f1_by_seed.items():
        write_run(
            out, f"{name}@8px-seed{seed}", *graded(30, n_right), config={"seed": seed, "run": name} | (config or {})
        )


def test_seed_intervals_respect_their_range_and_need_three_seeds(tmp_path):
    _seed_runs(tmp_path, "top", {0: 30, 1: 30, 2: 27}, {"lr": 0.1})  # accuracy 1, 1, 0.9: raw interval above 1
    _seed_runs(tmp_path, "pair", {0: 20, 1: 25}, {"lr": 0.2})
    board = Leaderboard.from_dir(tmp_path)
    top, pair = board.seeds
    assert top["group"] == "top@8px" and top["accuracy_ci_high"] == 1.0 and top["interval_note"] is None
    raw = stats.t.interval(0.95, 2, loc=np.mean([1, 1, 0.9]), scale=stats.sem([1, 1, 0.9]))
    assert raw[1] > 1 and top["accuracy_ci_low"] == pytest.approx(raw[0])
    assert top["test_loss_ci_low"] == 0.0  # losses 0, 0, 0.1: a negative bound clipped to 0
    assert pair["accuracy_ci_low"] is None and pair["accuracy_ci_high"] is None
    assert pair["interval_note"] == "n=2: too few seeds for an interval"
    assert pair["accuracy_mean"] == pytest.approx(0.75)
    assert "[n=2: too few seeds for an interval]" in board.to_markdown(seeds=True)


def test_seed_verdict_is_a_paired_t_test_over_matching_seeds(tmp_path):
    a, b = {0: 28, 1: 27, 2: 29}, {0: 18, 1: 18, 2: 19}
    _seed_runs(tmp_path, "a", a, {"lr": 0.1})
    _seed_runs(tmp_path, "b", b, {"lr": 0.2})
    _seed_runs(tmp_path, "c", {3: 10, 4: 12}, {"lr": 0.3})  # no seed in common with the leader: no test
    summary = {e["group"]: e for e in Leaderboard.from_dir(tmp_path).seeds}
    rows = sorted(_board(tmp_path).values(), key=lambda row: row["seed"])
    f1 = {name: [row["f1_macro"] for row in rows if row["run"] == name] for name in "ab"}  # paired by seed
    assert summary["a@8px"]["p_vs_best"] is None and summary["a@8px"]["rank"] == 1
    assert summary["b@8px"]["p_vs_best"] == pytest.approx(stats.ttest_rel(f1["a"], f1["b"]).pvalue)
    assert summary["b@8px"]["tied_with_best"] is False
    assert summary["c@8px"]["p_vs_best"] is None


def test_seed_summary_in_every_format(tmp_path, capsys):
    _seed_runs(tmp_path, "a", {0: 28, 1: 27, 2: 29})
    board = Leaderboard.from_dir(tmp_path)
    board.write(tmp_path)
    assert json.loads((tmp_path / "leaderboard_seeds.json").read_text()) == board.seeds
    with open(tmp_path / "leaderboard_seeds.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert json.loads(row["seeds"]) == [0, 1, 2] and float(row["f1_macro_mean"]) == pytest.approx(
        board.seeds[0]["f1_macro_mean"]
    )
    assert (tmp_path / "leaderboard_seeds.md").read_text().startswith("| # | runs | seeds | acc | F1 |")
    for fmt, check in (("json", json.loads), ("csv", str), ("md", str)):
        assert main(["leaderboard", str(tmp_path), "--seeds", "--format", fmt]) == 0
        assert "a@8px" in str(check(capsys.readouterr().out))
    assert main(["leaderboard", str(tmp_path), "--seeds"]) == 0
    table = capsys.readouterr().out
    assert "over seeds" in table and "a@8px-seed0" not in table
    assert main(["leaderboard", str(tmp_path)]) == 0
    assert "a@8px-seed0" in capsys.readouterr().out  # without --seeds the table shows both, as before


def test_seeds_option_without_a_seed_axis_is_a_user_error(tmp_path, capsys):
    write_run(tmp_path, "a", *graded(30, 20))
    assert main(["leaderboard", str(tmp_path), "--seeds", "--format", "json"]) == 2
    err = capsys.readouterr().err
    assert "no configuration completed with two or more seeds" in err and "Traceback" not in err
