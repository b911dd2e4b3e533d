"""train.py: the training loop, exact evaluation, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pieceboard.batches import BatchLoader
from pieceboard.config import Cell, PieceboardError, TrainSettings
from pieceboard.device import make_accelerator
from pieceboard.train import NonFiniteLoss, RunData, evaluate, fit


def _data(n=40, size=8, classes=3):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    pixels = (labels[:, None, None, None] * 80 + rng.integers(0, 30, (n, size, size, 3))).astype(np.uint8)
    test = np.arange(0, n, 4)
    train = np.setdiff1d(np.arange(n), test)
    names = [f"c{i}" for i in range(classes)]
    return RunData(pixels, labels.astype(np.int64), train, test, names, ([0.5] * 3, [0.25] * 3))


def _cell(**settings):
    base = {"epochs": 2, "batch_size": 8, "image_size": 8, "precision": "no", "log_every": 1}
    return Cell("c", "c", "resnet18", "scratch", None, TrainSettings(**(base | settings)))


def test_fit_records_history_layout_and_logs():
    events = []
    outcome = fit(_cell(channels_last=False), _data(), make_accelerator("no"), log=events.append)
    assert [h["epoch"] for h in outcome.history] == [1, 2]
    assert outcome.n_test == 10 and outcome.n_train == 30 and len(outcome.predictions) == 10
    assert outcome.channels_last is False and outcome.precision == "no"
    assert outcome.params == outcome.trainable_params > 0 and outcome.gflops > 0
    train_events = [e for e in events if e["event"] == "train"]
    assert len(train_events) == 2 * 4 and all(np.isfinite(e["train/loss"]) for e in train_events)
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]


def test_divergence_fails_the_run():
    with pytest.raises(NonFiniteLoss):
        fit(_cell(lr=1e30, epochs=3), _data(), make_accelerator("no"))


def test_too_few_training_images_is_a_clear_error():
    data = _data(n=4)
    data.train_indices = data.train_indices[:1]
    with pytest.raises(PieceboardError, match="training split has 1 images"):
        fit(_cell(), data, make_accelerator("no"))


def test_evaluate_scores_each_test_image_once_and_checks_it():
    data = _data()
    accelerator = make_accelerator("no")
    model = accelerator.prepare(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)))
    loader = BatchLoader(data.pixels, data.labels, data.test_indices, 3, shuffle=False)
    positions, predictions, losses, confidence = evaluate(
        model, loader, accelerator, data.mean_std, data.test_indices, False
    )
    assert positions.tolist() == data.test_indices.tolist()
    assert len(predictions) == len(losses) == 10
    with pytest.raises(RuntimeError, match="evaluation scored 10 images"):
        evaluate(model, loader, accelerator, data.mean_std, np.arange(11), False)
