"""leaderboard.py: ranking, rendering, the summary over seeds, and the columns derived from the stored files."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from rich.console import Console
from scipy import stats
from sklearn.metrics import f1_score

from _results import CLASSES, graded, write_manifest, write_run
from pieceboard.cli import main
from pieceboard.leaderboard import (
    ALPHA,
    COLUMNS,
    WRAPPED,
    Leaderboard,
    cells,
    degenerate,
    fit_columns,
    leaked_test_paths,
    pareto_front,
    step_down,
    time_to_accuracy,
)
from pieceboard.metrics import RESAMPLES, paired_f1_test
from pieceboard.results import RunResult, save_result


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
    # 30 discordant images, all for the leader: of 9999 random swaps, hardly any gives as large an F1 difference.
    assert rows["c"]["p_vs_best"] == pytest.approx(1 / (RESAMPLES + 1)) and rows["c"]["tied_with_best"] is False
    md = Leaderboard.from_dir(tmp_path).to_markdown()
    assert "| best |" in md and "tied p=1" in md and "p=0.0001" in md


def _indices(names):
    return np.array([CLASSES.index(name) for name in names])


def test_the_verdict_tests_macro_f1_the_ranked_figure(tmp_path):
    # The same accuracy, far apart in macro F1: the verdict must see the gap the ranking is made of.
    labels = ["cat"] * 50 + ["dog"] * 8 + ["fox"] * 8
    write_run(tmp_path, "balanced", labels, ["dog"] * 20 + ["cat"] * 30 + ["dog"] * 8 + ["fox"] * 8)
    write_run(tmp_path, "only-cats", labels, ["cat"] * 66)  # wrong on the 16 rare images, right on 20 more cats
    rows = _board(tmp_path)
    assert rows["balanced"]["accuracy"] < rows["only-cats"]["accuracy"]
    assert rows["balanced"]["rank"] == 1 and rows["only-cats"]["rank"] == 2
    test = paired_f1_test(_indices(labels), *(_indices(_predicted(tmp_path, r)) for r in ("balanced", "only-cats")), 3)
    assert rows["only-cats"]["p_vs_best_raw"] == rows["only-cats"]["p_vs_best"] == test.p_value < ALPHA


def _predicted(out, run_id):
    with open(out / "runs" / run_id / "predictions.csv", newline="") as f:
        return [row["prediction"] for row in csv.DictReader(f)]


def _random_board(out, rng, runs=6, n=40):
    labels = [CLASSES[i] for i in rng.integers(0, 3, size=n)]
    for r in range(runs):
        skill = rng.uniform(0.3, 0.95)
        predicted = [y if rng.random() < skill else CLASSES[rng.integers(0, 3)] for y in labels]
        write_run(out, f"run{r}", labels, predicted)
    return Leaderboard.from_dir(out).rows


@pytest.mark.parametrize("seed", range(12))
def test_order_and_verdict_never_contradict(tmp_path, seed):
    rows = _random_board(tmp_path, np.random.default_rng(seed))
    tested = [row for row in rows[1:] if row["p_vs_best"] is not None]
    assert len(tested) == len(rows) - 1
    f1 = [row["f1_macro"] for row in rows]
    assert f1 == sorted(f1, reverse=True)  # ranked by the tested figure
    p = [row["p_vs_best"] for row in tested]
    assert p == sorted(p, reverse=True)  # lower rank, never weaker evidence of being worse
    verdicts = [row["tied_with_best"] for row in tested]
    assert verdicts == sorted(verdicts, reverse=True)  # tied rows first, then worse rows: never a tied row below
    for row in tested:  # each shown p is its own test's, or a larger one from a row below (never a smaller one)
        assert row["p_vs_best"] >= row["p_vs_best_raw"]
        assert row["p_vs_best"] in [r["p_vs_best_raw"] for r in tested[tested.index(row) :]]
        assert row["tied_with_best"] == (row["p_vs_best"] >= ALPHA)


def test_step_down_removes_a_tied_row_below_a_worse_one():
    # The case of issue 17: p = 0.031 ranked above p = 0.38.
    rows = [
        {"id": "a", "p_vs_best_raw": 0.031},
        {"id": "b", "p_vs_best_raw": 0.38},
        {"id": "c", "p_vs_best_raw": 0.001},
    ]
    step_down(rows)
    assert [(r["p_vs_best"], r["tied_with_best"]) for r in rows] == [(0.38, True), (0.38, True), (0.001, False)]


def test_a_run_predicting_one_class_or_a_nan_loss_is_flagged(tmp_path, capsys):
    labels, good = graded(60, 50)
    write_run(tmp_path, "good", labels, good)
    write_run(tmp_path, "cats", labels, ["cat"] * 60)
    write_run(tmp_path, "nearly-cats", labels, ["cat"] * 58 + ["dog", "fox"])
    write_run(tmp_path, "nan", labels, good[:-1] + ["dog"])
    path = tmp_path / "runs" / "nan" / "result.json"
    stored = json.loads(path.read_text())
    stored["metrics"]["test_loss"] = math.nan
    path.write_text(json.dumps(stored))
    rows = _board(tmp_path)
    assert rows["good"]["flag"] is None
    assert rows["cats"]["flag"] == "one class (100%)" and rows["nearly-cats"]["flag"] == "one class (97%)"
    assert rows["nan"]["flag"] == "test loss nan" and rows["nan"]["status"] == "completed"
    assert main(["leaderboard", str(tmp_path), "--format", "md"]) == 0
    assert "| one class (100%) |" in capsys.readouterr().out


def test_a_test_split_of_mostly_one_class_is_not_flagged_for_predicting_it():
    def result(predicted_counts):  # 97 of 100 test images are class 0
        matrix = [[predicted_counts[0], 97 - predicted_counts[0]], [3 - predicted_counts[1], predicted_counts[1]]]
        return RunResult("r", "completed", {}, metrics={"test_loss": 0.1}, confusion_matrix=matrix)

    assert degenerate(result((97, 2))) is None  # predicts class 0 for 98 of 100: what a good model does here
    assert degenerate(result((97, 0))) == "one class (100%)"


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


@pytest.mark.parametrize("confidence", [False, True], ids=["4 columns", "with confidence"])
def test_predictions_cut_mid_line_say_so(tmp_path, confidence):
    # Issue 22: said "classes None are not the run's" (and a file with the confidence column failed on float(None)).
    labels, predicted = graded(30, 20)
    write_run(tmp_path, "cut", labels, predicted, confidence=[0.75] * 30 if confidence else None)
    path = tmp_path / "runs" / "cut" / "predictions.csv"
    lines = path.read_text().splitlines()
    cut = lines[8].rsplit(",", 1)[0]  # a copy that stopped inside the row of line 9, at a field's end
    path.write_text("\n".join([*lines[:8], cut]))
    row = _board(tmp_path)["cut"]
    fields = 5 if confidence else 4
    assert row["status"] == "corrupt" and "None" not in row["error"]
    assert row["error"].startswith(f"{path}: unreadable predictions (ValueError: line 9 does not have the {fields} ")
    assert row["error"].endswith("fields of its header (the file is cut or edited))")


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


def test_tuned_rows_show_their_choice_and_are_judged_on_the_budget(tmp_path):
    def tuning(chosen, trials=3, epochs=6):
        return {"budget": {"trials": trials, "epochs": epochs}, "chosen": chosen, "trial": "x", "trials": []}

    val = [
        {"epoch": 1, "val_accuracy": 0.4, "val_f1_macro": 0.3, "val_loss": 1.2, "train_loss": 1.0, "train_s": 1.0},
        {"epoch": 2, "val_accuracy": 0.8, "val_f1_macro": 0.7, "val_loss": 0.6, "train_loss": 0.5, "train_s": 2.0},
    ]
    scores = {"accuracy": 0.8, "f1_macro": 0.7, "val_loss": 0.6}
    for run_id in ("a", "b"):
        write_run(tmp_path, run_id, *graded(30, 20), history=val, val_metrics=scores, tuning=tuning({"lr": 0.01}))
    # c's trials chose another augmentation: that is not a difference in conditions, every row had the same choice.
    c = tuning({"lr": 0.1, "augment": ["hflip"]})
    write_run(tmp_path, "c", *graded(30, 20), config={"augment": ["hflip"]}, history=val, tuning=c)
    write_run(tmp_path, "d", *graded(30, 20), history=val, tuning=tuning({"lr": 0.01}, trials=2, epochs=4))
    rows = _board(tmp_path)
    assert [rows[k]["guardrail"] for k in "abc"] == [None] * 3
    assert rows["d"]["guardrail"] == "tuning budget trials 2, epochs 4 (most rows: trials 3, epochs 6)"
    assert rows["a"]["tuned"] == {"lr": 0.01} and rows["a"]["val_f1_macro"] == 0.7
    assert rows["c"]["val_f1_macro"] is None  # no val_metrics stored: shown as -
    # Time to accuracy comes from the validation curve: 95 % of its best (0.8) first reached in epoch 2, after 3 s.
    assert (rows["a"]["time_to_acc_s"], rows["a"]["epochs_to_acc"]) == (3.0, 2)
    table = Leaderboard.from_dir(tmp_path).to_markdown()
    assert "| tuned |" in table and "lr=0.1 augment=hflip" in table and "| val F1 |" in table


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


# --- the table in a terminal ---------------------------------------------------------------------------------------


def _study(out):
    """Six runs with long names, a leak check, a guardrail and a failed run: a leaderboard as wide as they come."""
    labels, _ = graded(60, 0)
    for i, n_right in enumerate((57, 55, 50, 41, 30, 22)):
        run_id = f"mobilenetv3_large_100-finetune@{50 * (i + 1)}px-bs{32 * (i % 2 + 1)}"
        config = {"image_size": 50 * (i + 1), "batch_size": 32 * (i % 2 + 1)} | ({"epochs": 3} if i == 4 else {})
        write_run(out, run_id, *graded(60, n_right), config, latency_ms=3.25 * (i + 1), peak_mem_mb=1200.0 + i)
    save_result(out, RunResult("diverges", "failed", {"run": "diverges"}, error="NonFiniteLoss: loss nan at step 1"))
    write_manifest(out, leaked=[f"img/{i:03d}.png" for i in range(5)])
    return Leaderboard.from_dir(out)


def _render(renderable, width):
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120, 160, 240])
def test_the_table_fits_the_terminal_and_never_cuts_a_figure(tmp_path, width):
    board = _study(tmp_path)
    text = _render(board.table(width=width), width)
    assert "…" not in text and max(map(len, text.splitlines())) <= width
    shown = fit_columns(COLUMNS, board.rows, width)
    keys = [column.key for column in shown]
    if width >= 120:  # the key columns, and a cost or two
        assert {"rank", "id", "accuracy", "clean_accuracy", "f1_macro", "p_vs_best", "latency_ms", "train_s"} <= set(
            keys
        )
    lines = text.splitlines()
    for row in board.rows:
        [line] = [line for line in lines if f" {row['id']} " in f"{line} "]
        for column, cell_text in zip(shown, cells(row, shown), strict=True):
            if column.key not in WRAPPED:
                assert cell_text in line, (column.key, cell_text, line)
    hidden = [c.key for c in COLUMNS if c.key not in keys and any(cells(row, [c]) != ["-"] for row in board.rows)]
    if hidden:  # named under the table (if they have something to show), with a failed row's reason
        assert ", ".join(hidden) in " ".join(text.split())
    if "status" not in keys:
        assert "diverges: failed: NonFiniteLoss: loss nan at step 1" in text
    assert "(most rows: 2)" in " ".join(text.split())  # the guardrail: as a column or below the table


def test_columns_option_picks_columns_by_name(tmp_path, capsys):
    _study(tmp_path)
    assert main(["leaderboard", str(tmp_path), "--columns", "id,F1,p_vs_best,peak_mem_mb", "--format", "md"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0] == "| run | F1 | vs best | peak MB |" and md[2].startswith("| mobilenetv3_large_100-finetune@50px")
    assert main(["leaderboard", str(tmp_path), "--columns", "id,f1_macro,p_vs_best", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert list(rows[1]) == ["id", "f1_macro", "p_vs_best", "tied_with_best"]
    assert main(["leaderboard", str(tmp_path), "--columns", "id,train_img_s,status"]) == 0
    out = capsys.readouterr().out
    assert "train img/s" in out and "clean acc" not in out and "failed: NonFiniteLoss" in out
    assert main(["leaderboard", str(tmp_path), "--columns", "id,nope"]) == 2
    err = capsys.readouterr().err
    assert "--columns: unknown column 'nope'" in err and "f1_macro" in err and err.count("\n") == 1


def test_markdown_and_json_keep_every_column(tmp_path):
    board = _study(tmp_path)
    header = board.to_markdown().splitlines()[0]
    assert header == "| " + " | ".join(column.header for column in COLUMNS) + " |"
    assert {column.key for column in COLUMNS if column.key != "rank"} <= set(json.loads(board.to_json())[0])


@pytest.mark.parametrize("seed", range(6))
def test_order_and_verdict_never_contradict_over_seeds(tmp_path, seed):
    rng = np.random.default_rng(seed)
    for g in range(5):
        _seed_runs(tmp_path, f"g{g}", {s: int(rng.integers(12, 30)) for s in range(3)}, {"lr": 0.1 * (g + 1)})
    summary = Leaderboard.from_dir(tmp_path).seeds
    f1 = [entry["f1_macro_mean"] for entry in summary]
    assert f1 == sorted(f1, reverse=True)
    tested = summary[1:]
    assert [e["p_vs_best"] for e in tested] == sorted((e["p_vs_best"] for e in tested), reverse=True)
    verdicts = [e["tied_with_best"] for e in tested]
    assert verdicts == sorted(verdicts, reverse=True)
    assert all(e["p_vs_best"] >= e["p_vs_best_raw"] for e in tested)
