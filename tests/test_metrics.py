"""Tests for pieceboard.metrics: every figure is checked against a reference written here from the definitions
(counts, binomial sums, t quantiles from tables), never against the scikit-learn or scipy call it wraps."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from pieceboard.metrics import (
    RESAMPLES,
    ClassificationMetrics,
    classification_metrics,
    mean_ci,
    most_confused,
    paired_f1_test,
    paired_t_pvalue,
    score_predictions,
)

NUM_CLASSES = 5
_RNG = np.random.default_rng(0)
_REFS = _RNG.integers(0, NUM_CLASSES, size=200)
# Roughly 60% correct, so every cell of the confusion matrix is exercised.
_PREDS = np.where(_RNG.random(200) < 0.6, _REFS, _RNG.integers(0, NUM_CLASSES, size=200))

CASES = {
    "random": (_PREDS, _REFS),
    # Class 3 never predicted: its precision is 0/0 and must count as 0 in the macro average.
    "never_predicted": (np.where(_PREDS == 3, 0, _PREDS), _REFS),
    # Class 4 absent from the references: recall is 0/0, support 0, and the class must still be listed.
    "never_in_references": (_PREDS, np.where(_REFS == 4, 1, _REFS)),
    # Class 2 in neither: scikit-learn would drop it without labels=range(num_classes).
    "absent_everywhere": (np.where(_PREDS == 2, 0, _PREDS), np.where(_REFS == 2, 1, _REFS)),
}


def _reference(predictions: np.ndarray, references: np.ndarray, num_classes: int) -> dict:
    """The figures from their definitions: count, then divide (0 where a denominator is 0)."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    for truth, guess in zip(references, predictions, strict=True):
        counts[truth, guess] += 1
    rows = []
    for k in range(num_classes):
        tp, predicted, actual = counts[k, k], counts[:, k].sum(), counts[k, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"precision": precision, "recall": recall, "f1": f1, "support": int(actual)})
    return {
        "accuracy": np.trace(counts) / counts.sum(),
        "precision_macro": np.mean([r["precision"] for r in rows]),
        "recall_macro": np.mean([r["recall"] for r in rows]),
        "f1_macro": np.mean([r["f1"] for r in rows]),
        "per_class": rows,
        "confusion_matrix": counts.tolist(),
    }


def _assert_matches_reference(result: dict, predictions: np.ndarray, references: np.ndarray, num_classes: int) -> None:
    expected = _reference(predictions, references, num_classes)
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert result[key] == pytest.approx(expected[key]), key
    for key in ("precision", "recall", "f1"):
        assert [row[key] for row in result["per_class"]] == pytest.approx([row[key] for row in expected["per_class"]])
    assert [row["support"] for row in result["per_class"]] == [row["support"] for row in expected["per_class"]]
    assert result["confusion_matrix"] == expected["confusion_matrix"]


@pytest.mark.parametrize("case", CASES)
def test_matches_the_definitions(case: str) -> None:
    predictions, references = CASES[case]
    result = classification_metrics(predictions, references, num_classes=NUM_CLASSES)

    _assert_matches_reference(result, predictions, references, NUM_CLASSES)
    assert len(result["per_class"]) == NUM_CLASSES
    assert [row["label"] for row in result["per_class"]] == [str(i) for i in range(NUM_CLASSES)]


def test_absent_classes_score_zero() -> None:
    predictions, references = CASES["absent_everywhere"]
    result = classification_metrics(predictions, references, num_classes=NUM_CLASSES)

    assert result["per_class"][2] == {"label": "2", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["confusion_matrix"][2] == [0] * NUM_CLASSES
    assert [row[2] for row in result["confusion_matrix"]] == [0] * NUM_CLASSES


def test_hand_checked_tiny_case() -> None:
    # refs  0 0 1 1, preds 0 1 1 1, and class 2 in neither.
    result = classification_metrics([0, 1, 1, 1], [0, 0, 1, 1], num_classes=3, class_names=["cat", "dog", "fox"])

    # class 0: tp 1, fp 0, fn 1 -> P 1, R 1/2, F1 2/3; class 1: tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 4/5; class 2: zeros.
    assert result["accuracy"] == pytest.approx(3 / 4)
    assert result["precision_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert result["recall_macro"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert result["f1_macro"] == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    rows = result["per_class"]
    assert [row["label"] for row in rows] == ["cat", "dog", "fox"]
    assert [row["precision"] for row in rows] == pytest.approx([1.0, 2 / 3, 0.0])
    assert [row["recall"] for row in rows] == pytest.approx([0.5, 1.0, 0.0])
    assert [row["f1"] for row in rows] == pytest.approx([2 / 3, 0.8, 0.0])
    assert [row["support"] for row in rows] == [2, 2, 0]
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_output_is_plain_json() -> None:
    predictions, references = CASES["never_predicted"]
    result = classification_metrics(predictions, references, num_classes=NUM_CLASSES, class_names=list("abcde"))

    assert json.loads(json.dumps(result)) == result
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert type(result[key]) is float
    for row in result["per_class"]:
        assert type(row["label"]) is str and type(row["support"]) is int
        assert all(type(row[key]) is float for key in ("precision", "recall", "f1"))
    assert all(type(cell) is int for row in result["confusion_matrix"] for cell in row)


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda a: a.tolist(), id="list"),
        pytest.param(lambda a: a, id="numpy-int64"),
        pytest.param(lambda a: a.astype(np.int32), id="numpy-int32"),
        pytest.param(torch.from_numpy, id="torch"),
    ],
)
def test_input_types(convert) -> None:
    predictions, references = CASES["random"]
    result = classification_metrics(convert(predictions), convert(references), num_classes=NUM_CLASSES)
    _assert_matches_reference(result, predictions, references, NUM_CLASSES)


def test_metric_class_accumulates_batches() -> None:
    predictions, references = CASES["never_in_references"]
    metric = ClassificationMetrics()
    for start in range(0, len(predictions), 64):
        metric.add_batch(predictions=predictions[start : start + 64], references=references[start : start + 64])
    result = metric.compute(num_classes=NUM_CLASSES)

    _assert_matches_reference(result, predictions, references, NUM_CLASSES)
    # The metric is reusable once compute has emptied it.
    again = metric.compute(predictions=predictions, references=references, num_classes=NUM_CLASSES)
    assert again == result


def test_metric_writes_no_cache_files(tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    metric = ClassificationMetrics(cache_dir=str(cache_dir))
    metric.compute(predictions=[0, 1], references=[1, 1], num_classes=2)

    assert metric.keep_in_memory
    assert not cache_dir.exists()


def test_works_with_packages_outside_site_packages(tmp_path) -> None:
    # `pip install --target DIR` (or a zipapp) puts pyarrow in a folder not named site-packages; dill, which
    # datasets uses for fingerprints, then pickles pyarrow's modules by value and used to fail every metric.
    import datasets as datasets_package

    def link_or_copy(source: str, target: str) -> None:
        try:  # hard links: cheap, and unlike symlinks their path is not resolved back into site-packages
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    lib = tmp_path / "lib"
    site = Path(datasets_package.__file__).parents[1]
    shutil.copytree(site / "pyarrow", lib / "pyarrow", copy_function=link_or_copy)
    script = textwrap.dedent(
        """
        import json, pyarrow
        from pieceboard.metrics import classification_metrics
        print(json.dumps([pyarrow.__file__, classification_metrics([0, 1, 1], [0, 1, 0], num_classes=2)["accuracy"]]))
        """
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    where, accuracy = json.loads(completed.stdout.strip().splitlines()[-1])
    assert where.startswith(str(lib)) and "site-packages" not in where
    assert accuracy == pytest.approx(2 / 3)


def test_works_offline_in_fresh_interpreter(tmp_path) -> None:
    # evaluate and datasets read the offline switches at import, so the in-process test alone cannot prove them.
    hf_home = tmp_path / "hf_home"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(hf_home),
    }
    env.pop("HF_METRICS_CACHE", None)
    script = textwrap.dedent(
        """
        import json
        from pieceboard.metrics import classification_metrics
        print(json.dumps(classification_metrics([0, 1, 1, 2], [0, 1, 0, 2], num_classes=3)))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )

    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(0.75)
    assert not (hf_home / "metrics").exists()


@pytest.mark.parametrize(
    ("predictions", "references", "kwargs", "message"),
    [
        ([0, 3], [0, 1], {}, r"predictions must lie in \[0, 3\)"),
        ([0, 1], [-1, 1], {}, r"references must lie in \[0, 3\)"),
        ([0, 1, 2], [0, 1], {}, "differ in shape"),
        ([], [], {}, "no predictions"),
        ([[0.1, 0.9]], [1], {}, "1-D"),
        ([0.0, 1.0], [0, 1], {}, "integer class indices"),
        ([0, 1], [0, 1], {"class_names": ["a", "b"]}, "class_names has 2 names"),
    ],
)
def test_invalid_inputs(predictions, references, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(predictions, references, num_classes=3, **kwargs)


def test_metric_class_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="must lie in"):
        ClassificationMetrics().compute(predictions=[0, 5], references=[0, 1], num_classes=2)


# Two-sided Student-t quantiles t(1 - (1 - confidence) / 2, df) from a printed table.
T_QUANTILES = {(0.9, 4): 2.131846786, (0.95, 4): 2.776445105, (0.99, 4): 4.604094871, (0.95, 2): 4.302652730}


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_is_mean_plus_minus_t_times_the_standard_error(confidence: float) -> None:
    values = [0.81, 0.79, 0.84, 0.80, 0.83]
    mean, low, high = mean_ci(values, confidence=confidence)

    # mean 0.814; squared deviations sum to 0.00172, so the sample variance is 0.00043 and the standard error of
    # the mean sqrt(0.00043 / 5).
    half_width = T_QUANTILES[(confidence, 4)] * math.sqrt(0.00043 / 5)
    assert (mean, low, high) == pytest.approx((0.814, 0.814 - half_width, 0.814 + half_width), abs=1e-9)
    assert all(type(x) is float for x in (mean, low, high))


def test_mean_ci_hand_checked() -> None:
    # mean 3, sample sd sqrt(2.5), sem 1/sqrt(2), t(0.975, df=4) = 2.7764451...
    mean, low, high = mean_ci([1, 2, 3, 4, 5])
    half_width = 2.7764451051977987 / math.sqrt(2)
    assert (mean, low, high) == pytest.approx((3.0, 3.0 - half_width, 3.0 + half_width))


def test_mean_ci_single_value_has_nan_bounds() -> None:
    mean, low, high = mean_ci([0.7])
    assert mean == 0.7
    assert math.isnan(low) and math.isnan(high)


def test_mean_ci_identical_values_zero_width() -> None:
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("values", "confidence"), [([], 0.95), ([1.0, 2.0], 0.0), ([1.0, 2.0], 1.0)])
def test_mean_ci_rejects_bad_input(values, confidence) -> None:
    with pytest.raises(ValueError):
        mean_ci(values, confidence=confidence)


def test_mean_ci_is_clipped_to_the_range() -> None:
    values = [0.99, 1.0, 0.9]  # three seeds near the top: the raw t interval passes 1
    centre = sum(values) / 3
    half_width = T_QUANTILES[(0.95, 2)] * math.sqrt(sum((v - centre) ** 2 for v in values) / 2 / 3)
    mean, low, high = mean_ci(values, bounds=(0.0, 1.0))
    assert centre + half_width > 1 and high == 1.0 and low == pytest.approx(centre - half_width)
    assert mean_ci([0.01, 0.2, 0.02], bounds=(0.0, math.inf))[1] == 0.0


def test_score_predictions_is_what_the_metric_computes() -> None:
    predictions, references = CASES["never_predicted"]
    names = [f"c{i}" for i in range(NUM_CLASSES)]
    assert score_predictions(predictions, references, NUM_CLASSES, names) == classification_metrics(
        predictions, references, num_classes=NUM_CLASSES, class_names=names
    )


def _f1(predicted, references, num_classes=NUM_CLASSES) -> float:
    return score_predictions(predicted, references, num_classes)["f1_macro"]


def _counted_f1(references, predicted, num_classes) -> float:
    """Macro F1 from the confusion matrix, 2 TP / (predicted + true) per class; fast enough for thousands of calls."""
    matrix = np.bincount(references * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, -1)
    tp, denominator = np.diag(matrix), matrix.sum(axis=0) + matrix.sum(axis=1)
    return float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))


def _brute_force_p(references, a, b, num_classes) -> float:
    """Every one of the 2**n swaps of the two predictions of the n images."""
    observed = abs(_counted_f1(references, a, num_classes) - _counted_f1(references, b, num_classes))
    hits = []
    for swap in itertools.product([False, True], repeat=len(references)):
        swap = np.array(swap)
        x, y = np.where(swap, b, a), np.where(swap, a, b)
        hits.append(
            abs(_counted_f1(references, x, num_classes) - _counted_f1(references, y, num_classes)) >= observed - 1e-12
        )
    return float(np.mean(hits))


@pytest.mark.parametrize("seed", range(4))
def test_paired_f1_test_is_exact_on_few_discordant_images(seed) -> None:
    rng = np.random.default_rng(seed)
    references = rng.integers(0, 3, size=10)
    a = np.where(rng.random(10) < 0.7, references, rng.integers(0, 3, size=10))
    b = np.where(rng.random(10) < 0.4, references, rng.integers(0, 3, size=10))
    test = paired_f1_test(references, a, b, 3)
    assert test.exact and test.resamples == 2**test.discordant == 2 ** int(np.sum(a != b))
    assert test.p_value == pytest.approx(_brute_force_p(references, a, b, 3))
    assert (test.f1_a, test.f1_b) == pytest.approx((_f1(a, references, 3), _f1(b, references, 3)))


def test_paired_f1_test_tests_macro_f1_not_accuracy() -> None:
    # 100 images of class 0, 12 of class 1. A calls 12 class-0 images class 1; B never says class 1. Each is right
    # on 100 images, on different ones (12 against 12 discordant: McNemar's p is 1), but B's macro F1 is far lower.
    references = np.array([0] * 100 + [1] * 12)
    a = references.copy()
    a[:12] = 1
    b = np.zeros_like(references)
    assert np.mean(a == references) == np.mean(b == references)
    test = paired_f1_test(references, a, b, 2)
    assert test.f1_a > test.f1_b + 0.3 and test.a_only == test.b_only == 12
    assert test.p_value < 0.01 and not test.exact and test.resamples == RESAMPLES


def test_paired_f1_test_is_reproducible_and_symmetric() -> None:
    references, a = _REFS, _PREDS
    b = np.where(_RNG.random(200) < 0.5, references, _RNG.integers(0, NUM_CLASSES, size=200))
    first = paired_f1_test(references, a, b, NUM_CLASSES)
    assert paired_f1_test(references, a, b, NUM_CLASSES) == first  # seeded: the same p every time
    assert paired_f1_test(references, b, a, NUM_CLASSES).p_value == first.p_value
    assert 1 / (RESAMPLES + 1) <= first.p_value < 0.05 and first.discordant == int(np.sum(a != b))
    identical = paired_f1_test(references, a, a, NUM_CLASSES)
    assert (identical.p_value, identical.discordant, identical.exact) == (1.0, 0, True)
    with pytest.raises(ValueError, match="differ in shape"):
        paired_f1_test(references, a, b[:10], NUM_CLASSES)


def test_paired_f1_test_matches_scipy_permutation_test() -> None:
    rng = np.random.default_rng(7)
    references = rng.integers(0, 3, size=60)
    a = np.where(rng.random(60) < 0.8, references, rng.integers(0, 3, size=60))
    b = np.where(rng.random(60) < 0.6, references, rng.integers(0, 3, size=60))

    assert _counted_f1(references, a, 3) == pytest.approx(_f1(a, references, 3))  # the same F1 as scikit-learn's

    def statistic(x, y):
        return _counted_f1(references, x, 3) - _counted_f1(references, y, 3)

    scipy_p = stats.permutation_test(
        (a, b), statistic, permutation_type="samples", n_resamples=4000, random_state=0
    ).pvalue
    ours = paired_f1_test(references, a, b, 3, resamples=4000)
    assert ours.p_value == pytest.approx(scipy_p, abs=0.02)  # two Monte Carlo estimates of one p value


def test_most_confused_pairs() -> None:
    matrix = [[5, 2, 0], [3, 4, 3], [0, 1, 9]]
    assert most_confused(matrix, ["a", "b", "c"], 3) == [
        {"label": "b", "predicted": "a", "count": 3},
        {"label": "b", "predicted": "c", "count": 3},
        {"label": "a", "predicted": "b", "count": 2},
    ]
    assert most_confused([[4, 0], [0, 4]], ["a", "b"], 5) == []


def test_paired_t_by_hand_and_constant_differences() -> None:
    a, b = [0.91, 0.88, 0.95, 0.90], [0.85, 0.86, 0.89, 0.84]
    # Differences 0.06, 0.02, 0.06, 0.06: mean 0.05, sample sd 0.02, standard error 0.01, so t = 5 with 3 degrees of
    # freedom, whose distribution function has a closed form: F(t) = 1/2 + (theta + sin(theta) cos(theta)) / pi with
    # theta = atan(t / sqrt(3)).
    theta = math.atan(5 / math.sqrt(3))
    two_sided = 2 * (0.5 - (theta + math.sin(theta) * math.cos(theta)) / math.pi)
    assert paired_t_pvalue(a, b) == pytest.approx(two_sided, rel=1e-9)
    assert two_sided == pytest.approx(0.0154, abs=5e-5)
    assert paired_t_pvalue([0.5, 0.6], [0.5, 0.6]) == 1.0
    assert paired_t_pvalue([0.5, 0.6], [0.4, 0.5]) == 0.0
    with pytest.raises(ValueError, match="at least two pairs"):
        paired_t_pvalue([0.5], [0.4])
