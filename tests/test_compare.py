"""compare.py and `pieceboard compare`: two runs class by class, with the paired test of macro F1, on known
predictions."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from rich.console import Console
from sklearn.metrics import precision_recall_fscore_support

from _results import CLASSES, write_run
from pieceboard import PieceboardError
from pieceboard.cli import main
from pieceboard.compare import compare, find_run, load_run, tables
from pieceboard.leaderboard import Leaderboard
from pieceboard.metrics import RESAMPLES, paired_f1_test
from pieceboard.results import RunResult, save_result

LABELS = [CLASSES[i % 3] for i in range(90)]  # 30 cats, 30 dogs, 30 foxes
DOGS = [i for i, y in enumerate(LABELS) if y == "dog"]
FOXES = [i for i, y in enumerate(LABELS) if y == "fox"]


def _predicted(mistakes: dict[int, str]) -> list[str]:
    return [mistakes.get(i, y) for i, y in enumerate(LABELS)]


# A takes 12 foxes for cats. B takes 20 dogs for foxes and 5 foxes (also wrong for A) for dogs.
A = _predicted({i: "cat" for i in FOXES[:12]})
B = _predicted({i: "fox" for i in DOGS[:20]} | {i: "dog" for i in FOXES[:5]})


@pytest.fixture
def runs(tmp_path):
    write_run(tmp_path, "a", LABELS, A)
    write_run(tmp_path, "b", LABELS, B)
    return tmp_path


def test_known_predictions(runs):
    result = compare(load_run(runs / "runs" / "a"), load_run(runs / "runs" / "b"))
    # Only A right: the 20 dogs B misses. Only B right: foxes 5..11, which A takes for cats and B gets.
    assert (result["a_only_correct"], result["b_only_correct"]) == (20, 7)
    index = {name: i for i, name in enumerate(CLASSES)}
    codes = [[index[name] for name in names] for names in (LABELS, A, B)]
    test = paired_f1_test(*codes, len(CLASSES))  # the leaderboard's verdict, on the same images
    assert result["discordant"] == test.discordant == 32 and result["resamples"] == RESAMPLES
    assert result["p_value"] == test.p_value < 0.05 and result["exact"] is False
    assert (result["f1_macro_a"], result["f1_macro_b"]) == pytest.approx((test.f1_a, test.f1_b))
    assert (
        result["verdict"] == f"a is better than b: macro F1 {test.f1_a:.4f} vs {test.f1_b:.4f}, p = {test.p_value:.2g}"
    )
    assert result["test"] == "paired permutation test of macro F1 over the test images: 9999 random swaps, seed 0"
    board = {row["id"]: row for row in Leaderboard.from_dir(runs).rows}
    assert board["b"]["p_vs_best_raw"] == result["p_value"]  # compare and the leaderboard give one answer
    assert (result["accuracy_a"], result["accuracy_b"]) == pytest.approx((78 / 90, 65 / 90))
    for side, predicted in (("a", A), ("b", B)):
        precision, recall, f1, support = precision_recall_fscore_support(LABELS, predicted, labels=CLASSES)
        assert [e[f"precision_{side}"] for e in result["per_class"]] == pytest.approx(precision.tolist())
        assert [e[f"recall_{side}"] for e in result["per_class"]] == pytest.approx(recall.tolist())
        assert [e[f"f1_{side}"] for e in result["per_class"]] == pytest.approx(f1.tolist())
        assert [e["support"] for e in result["per_class"]] == support.tolist()
    assert [e["f1_diff"] for e in result["per_class"]] == pytest.approx(
        [e["f1_a"] - e["f1_b"] for e in result["per_class"]]
    )
    assert (result["a_wins"], result["b_wins"]) == (["dog", "fox"], ["cat"])
    assert result["confused_a"] == [{"label": "fox", "predicted": "cat", "count": 12}]
    assert result["confused_b"] == [
        {"label": "dog", "predicted": "fox", "count": 20},
        {"label": "fox", "predicted": "dog", "count": 5},
    ]
    reverse = compare(load_run(runs / "runs" / "b"), load_run(runs / "runs" / "a"))
    assert reverse["verdict"] == result["verdict"] and reverse["p_value"] == result["p_value"]


def test_identical_runs_are_not_shown_apart(runs):
    write_run(runs, "a2", LABELS, A)
    result = compare(load_run(runs / "runs" / "a"), load_run(runs / "runs" / "a2"))
    assert result["p_value"] == 1.0 and result["a_wins"] == result["b_wins"] == []
    f1 = result["f1_macro_a"]
    assert result["verdict"] == f"a and a2 are not shown apart: macro F1 {f1:.4f} vs {f1:.4f}, p = 1 (needs p < 0.05)"
    assert result["exact"] and result["discordant"] == 0


def test_command_prints_tables_and_json(runs, capsys):
    assert main(["compare", str(runs), "a", "b"]) == 0
    out = capsys.readouterr().out
    assert "a is better than b: macro F1 0.8" in out and "fox -> cat: 12" in out
    assert "A wins on: dog, fox" in out and "B wins on: cat" in out
    assert main(["compare", str(runs), "a", "b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == compare(load_run(runs / "runs" / "a"), load_run(runs / "runs" / "b"))


def test_a_run_from_another_folder_with_the_same_split(runs, tmp_path_factory, capsys):
    other = tmp_path_factory.mktemp("other")
    write_run(other, "a", LABELS, B)
    assert main(["compare", str(runs), "a", str(other / "runs" / "a"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["a"], result["b"]) == ("a (A)", "a (B)")  # same id in both folders: told apart
    assert result["a_only_correct"] == 20


def test_a_run_folder_copied_out_of_its_output_folder(runs, tmp_path_factory, capsys):
    copy = tmp_path_factory.mktemp("copied") / "b"
    shutil.copytree(runs / "runs" / "b", copy)  # no runs/ above it, no manifest beside it
    assert main(["compare", str(runs), "a", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["a_only_correct"] == 20


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda out: None, "no such run (runs here: a, b)"),
        (
            lambda out: write_run(out, "c", LABELS, B, config={"data": {"manifest_sha256": "split-b"}}),
            "different splits",
        ),
        (lambda out: write_run(out, "c", LABELS[:60], B[:60]), "not scored on the same test images"),
        (lambda out: save_result(out, RunResult("c", "failed", {}, error="NonFiniteLoss: nan")), "the run is failed"),
    ],
    ids=["unknown", "other split", "other images", "failed"],
)
def test_mistakes_are_one_line_and_exit_2(runs, capsys, make, message):
    make(runs)
    assert main(["compare", str(runs), "a", "c"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_damaged_predictions_are_named(runs):
    (runs / "runs" / "b" / "predictions.csv").write_text("index,path,label,prediction\n0,img/000.png,cat,dog\n")
    with pytest.raises(PieceboardError, match="b/predictions.csv: gives accuracy"):
        load_run(find_run(runs, "b"))


@pytest.mark.parametrize("width", [60, 80, 100])
def test_the_per_class_table_fits_the_terminal_and_never_cuts_a_figure(runs, width):
    comparison = compare(load_run(runs / "runs" / "a"), load_run(runs / "runs" / "b"))
    console = Console(width=width, file=io.StringIO(), record=True)
    for part in tables(comparison, width):
        console.print(part)
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= width
    fox = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("fox"))
    f1 = next(e for e in comparison["per_class"] if e["label"] == "fox")
    assert f"{f1['f1_a']:.4f}" in fox and f"{f1['f1_b']:.4f}" in fox and f"{f1['f1_diff']:+.4f}" in fox
    if width < 80:
        assert "not shown at this width" in " ".join(text.split()) and "--json has every figure" in text
