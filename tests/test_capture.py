"""capture.py: when to capture, which batches go through the captured model, and the fall back to eager."""

from __future__ import annotations

import pytest
import torch

from pieceboard import capture
from pieceboard.capture import CAPTURE_COST_S, CAPTURE_SPEEDUP, PROBE_STEPS, Capture, pays


class Compiled(torch.nn.Module):
    """What a fake torch.compile returns: the same model, counting its calls (or failing, when told to)."""

    def __init__(self, model: torch.nn.Module, fail: bool = False):
        super().__init__()
        self.model, self.fail, self.calls = model, fail, 0

    def forward(self, x):
        if self.fail:
            raise RuntimeError("backend cannot compile this model")
        self.calls += 1
        return self.model(x)


@pytest.fixture
def fake_compile(monkeypatch):
    made = []

    def compile_(model, mode, dynamic, fail=False):
        made.append(Compiled(model, fail=getattr(compile_, "fail", False)))
        return made[-1]

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    monkeypatch.setattr(capture, "synchronize", lambda device: None)
    return compile_, made


def _step(model):
    return model(torch.ones(4, 3)).sum()


def test_capture_pays_when_the_steps_left_save_more_than_it_costs():
    saved_per_step = 0.011 * (1 - 1 / CAPTURE_SPEEDUP)
    assert not pays(0.011, int(CAPTURE_COST_S / saved_per_step) - 10)  # resnet18 on an H200, a short cell
    assert pays(0.011, int(CAPTURE_COST_S / saved_per_step) + 10)


def test_full_batches_go_through_the_captured_model_partial_ones_eagerly(fake_compile):
    _, made = fake_compile
    model = torch.nn.Linear(3, 2)
    run = Capture(model, True, torch.device("cpu"), full_batch=4, steps=10)
    for batch_len in (4, 4, 3, 4):
        assert run.model_for(batch_len) is (made[0] if batch_len == 4 else model)
        run.step(_step, batch_len)
    assert made[0].calls == 3 and run.compile_s >= 0 and run.note is None
    assert run.infer(torch.ones(4, 3)).shape == (4, 2) and made[0].calls == 4
    assert run.infer(torch.ones(1, 3)).shape == (1, 2) and made[0].calls == 4  # a partial test batch: eager


def test_a_capture_that_fails_trains_on_eagerly_with_a_note(fake_compile):
    compile_, _ = fake_compile
    compile_.fail = True
    model = torch.nn.Linear(3, 2)
    run = Capture(model, True, torch.device("cpu"), full_batch=4, steps=10)
    loss = run.step(_step, 4)
    assert torch.allclose(loss, _step(model)) and run.compiled is None
    assert run.note.startswith("graphs: capture failed, eager instead (RuntimeError: backend cannot compile")


def test_auto_is_eager_on_a_cpu(fake_compile):
    _, made = fake_compile
    run = Capture(torch.nn.Linear(3, 2), "auto", torch.device("cpu"), full_batch=4, steps=10**6)
    for _ in range(PROBE_STEPS + 3):
        run.step(_step, 4)
    assert made == [] and run.note == "graphs: eager on a CPU (auto captures on a GPU only)"


@pytest.mark.parametrize("step_s, steps, captured", [(0.011, 50_000, True), (0.011, 500, False)])
def test_auto_on_a_gpu_times_eager_steps_then_decides(fake_compile, monkeypatch, step_s, steps, captured):
    _, made = fake_compile
    clock = iter(range(10**6))
    monkeypatch.setattr(capture.time, "perf_counter", lambda: next(clock) * step_s)  # each step reads it twice
    run = Capture(torch.nn.Linear(3, 2), "auto", torch.device("cuda"), full_batch=4, steps=steps)
    for _ in range(PROBE_STEPS + 1):
        run.step(_step, 4)
    assert bool(made) is captured
    if not captured:
        assert run.note == f"graphs: eager (capture would not repay itself over 11.0 ms/step x {steps - 9} steps)"
