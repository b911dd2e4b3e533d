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


def test_a_really_compiled_step_trains_like_eager_steps_on_the_cpu():
    # torch.compile's default CPU backend (inductor), not a fake: the captured run's full batches and the eager run
    # must leave the same weights after a few steps, partial batches included (they run eagerly on the same weights).
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)

    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator))
        for n in (8,) * 5 + (5, 8)
    ]

    def train(model, optimizer, forward):
        for x, y in batches:
            optimizer.zero_grad()
            loss = forward(lambda m, x=x, y=y: torch.nn.functional.cross_entropy(m(x), y), len(x))
            loss.backward()
            optimizer.step()

    eager, eager_optimizer = make()
    train(eager, eager_optimizer, lambda run_step, n: run_step(eager))
    model, optimizer = make()
    run = Capture(model, True, torch.device("cpu"), full_batch=8, steps=6)
    train(model, optimizer, run.step)
    assert run.compiled is not None and run.note is None and run.compile_s > 0  # compiled for real, not abandoned
    for captured, plain in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(run.infer(batches[0][0]), eager.eval()(batches[0][0]), rtol=1e-5, atol=1e-6)
