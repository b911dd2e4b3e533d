"""leaderboard.py: ranking, rendering, and the summary over seeds with confidence intervals."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from pieceboard.leaderboard import Leaderboard
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


def test_seed_label_is_removed_only_for_the_seed_axis():
    results = [_result(f"mlp@lr0.01-seed{s}", s, 0.5 + s / 10, lr=0.01) for s in (1, 2)]
    results += [_result(f"mlp@lr0.1-seed{s}", s, 0.4, lr=0.1) for s in (1, 2)]
    groups = [e["group"] for e in Leaderboard.from_results(results).seeds]
    assert groups == ["mlp@lr0.01", "mlp@lr0.1"]
