"""Classification metrics and multi-seed statistics.

The metric is an `evaluate.Metric` subclass that ships with pieceboard and is instantiated directly, so it works
offline: `evaluate.load("accuracy")` would need the Hugging Face Hub.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import evaluate
import numpy as np
from datasets.table import InMemoryTable
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

__all__ = [
    "ClassificationMetrics",
    "PairedF1Test",
    "classification_metrics",
    "mean_ci",
    "most_confused",
    "paired_f1_test",
    "paired_t_pvalue",
    "score_predictions",
]

_DESCRIPTION = """\
Single-label classification metrics computed with scikit-learn: accuracy, macro-averaged precision, recall and F1,
per-class precision, recall, F1 and support, and the confusion matrix. Every class in `range(num_classes)` counts,
including classes that are never predicted or never occur in the references (their scores are 0).
"""

_CITATION = """\
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: Predicted class indices, one per sample, in `[0, num_classes)`.
    references: True class indices, one per sample, in `[0, num_classes)`.
    num_classes: Number of classes; every index in `range(num_classes)` is scored.
    class_names: Optional names for the classes, in index order; used as the `label` of `per_class` entries.
        Defaults to the class indices as strings.

Returns:
    accuracy: Fraction of samples predicted correctly.
    precision_macro: Unweighted mean of the per-class precisions.
    recall_macro: Unweighted mean of the per-class recalls.
    f1_macro: Unweighted mean of the per-class F1 scores.
    per_class: One dict per class in index order with `label`, `precision`, `recall`, `f1` and `support`.
    confusion_matrix: `num_classes` x `num_classes` counts; rows are true classes, columns predicted classes.

Examples:
    >>> metric = ClassificationMetrics()
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], num_classes=2)["accuracy"]
    0.75
"""


class ClassificationMetrics(evaluate.Metric):
    """Accuracy, macro precision/recall/F1, per-class scores and confusion matrix for single-label classification.

    Unlike `evaluate.Metric`, predictions and references are kept in memory by default and no cache directory is
    created, so instantiating the metric is cheap and touches neither the network nor the disk.

    Args:
        config_name: Passed to `evaluate.Metric`.
        keep_in_memory: Keep the accumulated predictions in memory rather than in Arrow cache files. Defaults to
            True for a single process; distributed use (`num_process > 1`) needs the files, so it then defaults to
            False and `cache_dir` should be on a shared file system.
        **kwargs: Passed to `evaluate.Metric` (`cache_dir`, `num_process`, `process_id`, `experiment_id`, ...).
    """

    def __init__(self, config_name: str | None = None, keep_in_memory: bool | None = None, **kwargs: Any) -> None:
        if keep_in_memory is None:
            # evaluate refuses keep_in_memory with several processes, since they exchange data through files.
            keep_in_memory = kwargs.get("num_process", 1) == 1
        super().__init__(config_name=config_name, keep_in_memory=keep_in_memory, **kwargs)

    def _build_data_dir(self) -> str:
        # evaluate always creates <cache_dir>/<name>/<config> (by default under ~/.cache/huggingface/metrics), even
        # when everything stays in memory; in that case the path is never written to, so skip creating it.
        if self.keep_in_memory:
            return os.path.join(self._data_dir_root, self.name, self.config_name)
        return super()._build_data_dir()

    def _finalize(self) -> None:
        if not self.keep_in_memory:
            super()._finalize()
            return
        # evaluate reads the rows back with Dataset.from_buffer, whose fingerprint dill-pickles the Arrow table; when
        # pyarrow is installed outside a folder named site-packages (pip install --target, zipapps, some PYTHONPATH
        # layouts) dill pickles pyarrow's module state by value and every metric fails (PicklingError MonthDayNano).
        # These rows are read once and never cached, so they need no fingerprint: give the Dataset a fixed one.
        self.writer.finalize()
        self.writer = None
        table = InMemoryTable.from_buffer(self.buf_writer.getvalue())
        self.data = datasets.Dataset(table, fingerprint="pieceboard-classification-metrics")

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            # numpy rather than Python lists: scikit-learn converts lists anyway, and large test sets are common.
            format="numpy",
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(
        self,
        predictions: Any,
        references: Any,
        num_classes: int,
        class_names: list[str] | None = None,
    ) -> dict[str, Any]:
        return score_predictions(predictions, references, num_classes, class_names)


def score_predictions(
    predictions: Any, references: Any, num_classes: int, class_names: list[str] | None = None
) -> dict[str, Any]:
    """The computation behind `ClassificationMetrics`, without evaluate's Arrow round trip.

    For figures derived again and again from stored predictions (the leaderboard's checks, clean accuracy,
    `pieceboard compare`), where building an Arrow table per call would dominate. Same arguments and result as
    `classification_metrics`, but the inputs must already be 1-D integer arrays or lists.

    Raises:
        ValueError: As `classification_metrics`.
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    references = np.asarray(references, dtype=np.int64)
    _validate(predictions, references, num_classes, class_names)  # add_batch callers are not checked before

    labels = list(range(num_classes))
    # zero_division=0: a class that is never predicted (precision) or never present (recall) scores 0 instead
    # of warning; passing labels keeps such classes in the macro averages and in the per-class table.
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=labels, average=None, zero_division=0
    )
    matrix = confusion_matrix(references, predictions, labels=labels)
    names = class_names if class_names is not None else [str(i) for i in labels]
    per_class = [
        {
            "label": names[i],
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in labels
    ]
    # tolist() and float()/int() turn numpy scalars into Python ones so the result is JSON-serialisable.
    return {
        "accuracy": float(accuracy_score(references, predictions)),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def _validate(predictions: np.ndarray, references: np.ndarray, num_classes: int, class_names: list[str] | None) -> None:
    # scikit-learn would silently drop out-of-range labels from some figures but not from accuracy, so refuse them.
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
    if predictions.size == 0:
        raise ValueError("no predictions to score")
    for name, values in (("predictions", predictions), ("references", references)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{values.min()}, {values.max()}]")


def _to_int_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, possibly on a GPU; avoids importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be one class index per sample (1-D), got shape {array.shape}; argmax logits first"
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def classification_metrics(
    predictions: Any,
    references: Any,
    num_classes: int,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Scores class predictions against references with `ClassificationMetrics`.

    Args:
        predictions: Predicted class indices, one per sample (list, numpy array or torch tensor on any device).
        references: True class indices, one per sample, in the same forms.
        num_classes: Number of classes; every index in `range(num_classes)` is scored.
        class_names: Optional names for the classes, in index order.

    Returns:
        JSON-serialisable dict with `accuracy`, `precision_macro`, `recall_macro`, `f1_macro`, `per_class` and
        `confusion_matrix`; see `ClassificationMetrics`.

    Raises:
        ValueError: If the inputs are empty, not 1-D integer indices, differ in length, or hold an index outside
            `[0, num_classes)`, or if `class_names` does not have `num_classes` names.
    """
    predictions = _to_int_array(predictions, "predictions")
    references = _to_int_array(references, "references")
    # Arrow would reject an empty or ragged batch with an encoding error; _compute then checks the values.
    if predictions.size == 0 or predictions.shape != references.shape:
        _validate(predictions, references, num_classes, class_names)
    return ClassificationMetrics().compute(
        predictions=predictions, references=references, num_classes=num_classes, class_names=class_names
    )


def mean_ci(
    values: Sequence[float], confidence: float = 0.95, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of the mean, e.g. of one metric over several seeds.

    Args:
        values: Observations, at least one.
        confidence: Coverage of the interval, strictly between 0 and 1.
        bounds: The range the quantity lives in, e.g. `(0, 1)` for accuracy or `(0, inf)` for a loss. The interval
            is clipped to it: with few values the t quantile is large and the raw interval can reach impossible
            values (an accuracy above 1), which say nothing more than the bound itself.

    Returns:
        `(mean, low, high)`. With a single value there is no spread to estimate, so `low` and `high` are
        `float("nan")` rather than a misleading zero-width interval. When all values are equal the interval is
        `(mean, mean)`.

    Raises:
        ValueError: If `values` is empty or `confidence` is not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(array.mean())
    if array.size == 1:
        return mean, math.nan, math.nan
    sem = float(stats.sem(array))
    if sem == 0.0:
        # scipy returns nan for a zero scale, but identical values genuinely have a zero-width interval.
        return mean, mean, mean
    low, high = stats.t.interval(confidence, df=array.size - 1, loc=mean, scale=sem)
    return mean, float(max(low, bounds[0])), float(min(high, bounds[1]))


RESAMPLES = 9999  # random swaps of the paired F1 test: the smallest p it can give is 1 / (RESAMPLES + 1) = 1e-4
SEED = 0  # of those swaps: the same predictions always give the same p
_CHUNK = 1000  # swaps drawn and scored at once: bounds the memory at _CHUNK x (discordant images) numbers


@dataclass(frozen=True)
class PairedF1Test:
    """A paired permutation test of the macro-F1 difference of two classifiers on the same test images."""

    f1_a: float  # macro F1 of A
    f1_b: float  # macro F1 of B
    a_only: int  # images A classified correctly and B did not
    b_only: int  # images B classified correctly and A did not
    discordant: int  # images where A and B predict different classes (only those can change the difference)
    resamples: int  # swaps scored: every one of the 2**discordant when that is at most RESAMPLES, else RESAMPLES
    exact: bool  # whether every swap was scored (then p_value is exact)
    p_value: float  # two-sided; 1.0 when A and B predict the same class for every image


def _macro_f1(tp: np.ndarray, predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Macro F1 from per-class counts (last axis), as scikit-learn's `zero_division=0`: 2 TP / (predicted + true)."""
    denominator = predicted + true
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0).mean(axis=-1)


def paired_f1_test(
    references: Any,
    predictions_a: Any,
    predictions_b: Any,
    num_classes: int,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedF1Test:
    """Do two classifiers differ in macro F1 on the same test images? A paired permutation test over images.

    Under the null hypothesis the two classifiers are exchangeable: for each image, which of its two predictions
    came from A is a coin flip. The test swaps the two predictions of each image at random, recomputes the macro-F1
    difference, and counts how often it is at least as large (in absolute value) as the observed one: the
    approximate randomisation test that Yeh (2000, "More accurate tests for the statistical significance of result
    differences", COLING) and Dror et al. (2018, "The hitchhiker's guide to testing statistical significance in
    natural language processing", ACL) recommend for F1, which, unlike accuracy, is not a sum over images. Images
    where both predict the same class are unchanged by a swap; with at most log2(`resamples`) of the others, every
    swap is scored and the p value is exact, otherwise `resamples` random swaps give `(1 + hits) / (1 + resamples)`
    (Phipson and Smyth 2010: never 0).

    Each swap changes only per-class counts (true positives and predictions), so all swaps are one matrix product
    of the swap signs with the discordant images' count changes. scipy.stats.permutation_test, which recomputes the
    statistic from whole prediction vectors, gave the same p value 50 times slower (3.5 s against 0.07 s for 2,000
    images and 18 classes, measured on 2 cores): too slow for a leaderboard of 20 rows.

    Args:
        references: True class indices, one per image.
        predictions_a: A's predicted class indices, image for image.
        predictions_b: B's, image for image.
        num_classes: Number of classes; every one counts in the macro average, as in `score_predictions`.
        resamples: Random swaps when the exact test would need more.
        seed: Seed of the random swaps.

    Returns:
        Both macro F1s, the discordant counts and the two-sided p value.

    Raises:
        ValueError: As `score_predictions`, for either classifier.
    """
    y = np.asarray(references, dtype=np.int64)
    a = np.asarray(predictions_a, dtype=np.int64)
    b = np.asarray(predictions_b, dtype=np.int64)
    _validate(a, y, num_classes, None)
    _validate(b, y, num_classes, None)
    true = np.bincount(y, minlength=num_classes).astype(np.float64)

    def counts(predicted: np.ndarray) -> np.ndarray:  # per class: true positives, then predictions
        hits = np.bincount(predicted[predicted == y], minlength=num_classes)
        return np.concatenate([hits, np.bincount(predicted, minlength=num_classes)]).astype(np.float64)

    base_a, base_b = counts(a), counts(b)
    f1_a, f1_b = (float(_macro_f1(c[:num_classes], c[num_classes:], true)) for c in (base_a, base_b))
    a_only, b_only = int(np.sum((a == y) & (b != y))), int(np.sum((b == y) & (a != y)))
    where = np.flatnonzero(a != b)
    n = len(where)
    if n == 0:
        return PairedF1Test(f1_a, f1_b, a_only, b_only, 0, 1, True, 1.0)
    # What swapping image i moves from A's counts to B's (and back): B's prediction replaces A's.
    rows = np.arange(n)
    change = np.zeros((n, 2 * num_classes))
    pa, pb, yi = a[where], b[where], y[where]
    np.add.at(change, (rows, pb), (pb == yi).astype(np.float64))
    np.add.at(change, (rows, pa), -(pa == yi).astype(np.float64))
    np.add.at(change, (rows, num_classes + pb), 1.0)
    np.add.at(change, (rows, num_classes + pa), -1.0)

    def differences(swaps: np.ndarray) -> np.ndarray:  # swaps: (k, n) of 0/1
        moved = swaps @ change
        ca, cb = base_a + moved, base_b - moved
        k = num_classes
        return _macro_f1(ca[:, :k], ca[:, k:], true) - _macro_f1(cb[:, :k], cb[:, k:], true)

    observed = abs(f1_a - f1_b)
    tolerance = 1e-12 * max(1.0, observed)  # the same difference summed in another order
    exact = 2**n <= resamples
    hits = 0
    if exact:
        total = 2**n
        for start in range(0, total, _CHUNK):
            codes = np.arange(start, min(start + _CHUNK, total))
            swaps = ((codes[:, None] >> rows[None, :]) & 1).astype(np.float64)
            hits += int(np.sum(np.abs(differences(swaps)) >= observed - tolerance))
        return PairedF1Test(f1_a, f1_b, a_only, b_only, n, total, True, min(1.0, hits / total))
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        swaps = rng.integers(0, 2, size=(min(_CHUNK, resamples - start), n)).astype(np.float64)
        hits += int(np.sum(np.abs(differences(swaps)) >= observed - tolerance))
    return PairedF1Test(f1_a, f1_b, a_only, b_only, n, resamples, False, (1 + hits) / (1 + resamples))


def most_confused(matrix: Sequence[Sequence[int]], names: list[str], top: int) -> list[dict[str, Any]]:
    """The most frequent mistakes of a confusion matrix (rows true, columns predicted), largest first.

    Returns:
        Up to `top` entries `{"label": true class, "predicted": predicted class, "count": images}`, only counts
        above 0; equal counts in class order.
    """
    counts = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(counts, 0)
    flat = np.argsort(-counts, axis=None, kind="stable")[:top]  # stable: equal counts stay in class order
    pairs = [np.unravel_index(i, counts.shape) for i in flat]
    return [{"label": names[t], "predicted": names[p], "count": int(counts[t, p])} for t, p in pairs if counts[t, p]]


def paired_t_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test of equal means, e.g. one metric of two configurations over the same seeds.

    Args:
        a: One value per pair.
        b: The matching values, pair for pair.

    Returns:
        The p value: 1.0 when every difference is zero, 0.0 when every difference is the same non-zero value (the
        t statistic is then infinite).

    Raises:
        ValueError: If the sequences differ in length or hold fewer than two pairs.
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired t-test needs at least two pairs of equal length, got {len(a)} and {len(b)}")
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if np.ptp(diffs) == 0.0:
        # scipy warns about catastrophic cancellation here and returns nan (all zero) or 0 (all equal, non-zero).
        return 1.0 if diffs[0] == 0.0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)
