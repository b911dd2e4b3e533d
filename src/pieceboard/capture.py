"""Graph capture of the train and eval steps: torch.compile (CUDA graphs on a GPU) for full batches, once it pays.

    capture = Capture(model, setting="auto", device=device, full_batch=32, steps=2920)
    loss = capture.step(lambda m: optimizer_step(m, ...), batch_len=32)

On a GPU a small model's step is bound by kernel launches and Python, not arithmetic: resnet18 took about 11 ms per
step at 50 and at 200 px alike on an H200. `torch.compile(mode="reduce-overhead")` replays the step as CUDA graphs
(3.2 ms, 2.9x faster) after a compile and warm-up of about 37 s per model and shape (both measured on an H200 with
torch 2.11, issue 9). So `graphs = "auto"` times a few eager steps first and captures only when the steps left would
save more than the capture costs: a 37 s compile does not pay for a 15 s cell.

Captured models see one shape only: the last, partial batch of an epoch runs eagerly on the same weights, so every
image is trained on and scored exactly as without capture. A capture that fails falls back to eager with a note.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from pieceboard.device import synchronize

CAPTURE_SPEEDUP = 2.9  # captured against eager step time, resnet18 on an H200 (see the module docstring)
CAPTURE_COST_S = 40.0  # compile and CUDA-graph warm-up of one model and shape, 37 s measured, rounded up
PROBE_STEPS = 8  # eager full-batch steps timed before `auto` decides (the first, with cuDNN autotuning, is dropped)


def pays(step_s: float, steps_left: int) -> bool:
    """Whether capturing saves more time over the remaining steps than it costs."""
    return steps_left * step_s * (1 - 1 / CAPTURE_SPEEDUP) > CAPTURE_COST_S


class Capture:
    """Decides whether to capture, compiles, and routes each batch to the captured or the eager model.

    Args:
        model: The prepared model (the eager one keeps serving partial batches).
        setting: The run's `graphs` setting: True, False or "auto" (GPU only, when `pays`).
        device: The run's device.
        full_batch: This process's images in a full batch.
        steps: Full-batch training steps in the whole run.
    """

    def __init__(self, model: nn.Module, setting: bool | str, device: torch.device, full_batch: int, steps: int):
        self.eager, self.device, self.full_batch = model, device, full_batch
        self.compiled: nn.Module | None = None
        self.compile_s = 0.0
        self.note: str | None = None  # why capture was skipped or abandoned, for the result
        self.steps_left = steps
        self.timings: list[float] = []
        self.deciding = setting == "auto" and device.type == "cuda"
        if setting is True:
            self._compile()
        elif setting == "auto" and device.type != "cuda":
            self.note = "graphs: eager on a CPU (auto captures on a GPU only)"

    def state_dict(self) -> dict:
        """What a checkpoint needs to carry on as this run would have: the decision so far and its costs."""
        return {
            "steps_left": self.steps_left, "timings": self.timings, "deciding": self.deciding,
            "captured": self.compiled is not None, "note": self.note, "compile_s": self.compile_s,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`: with `graphs = "auto"` on a GPU, the decision taken before is kept (a
        captured run compiles again, and `compile_s` adds that cost)."""
        self.steps_left, self.compile_s = state["steps_left"], state["compile_s"]
        if self.deciding:
            self.timings, self.deciding, self.note = list(state["timings"]), state["deciding"], state["note"]
            if state["captured"]:
                self._compile()

    def _compile(self) -> None:
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"  # CUDA graphs need a GPU
        self.compiled = torch.compile(self.eager, mode=mode, dynamic=False)
        self._first = True

    def model_for(self, batch_len: int) -> nn.Module:
        """The model for a batch of this size: captured for full batches once compiled."""
        return self.compiled if self.compiled is not None and batch_len == self.full_batch else self.eager

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """An evaluation forward pass with the right model (the caller has set eval mode and no_grad)."""
        model = self.model_for(len(x))
        if model is self.eager:
            return model(x)
        torch.compiler.cudagraph_mark_step_begin()
        try:
            return model(x)
        except Exception as exc:
            self.compiled = None
            self.note = f"graphs: capture failed in evaluation, eager instead ({type(exc).__name__})"
            return self.eager(x)

    def step(self, run_step: Callable[[nn.Module], torch.Tensor], batch_len: int) -> torch.Tensor:
        """Run one training step with the right model; time, decide and compile along the way."""
        full = batch_len == self.full_batch
        if full:
            self.steps_left -= 1
        if self.compiled is not None and full:
            return self._captured(run_step)
        if not (self.deciding and full):
            return run_step(self.eager)
        synchronize(self.device)
        started = time.perf_counter()
        loss = run_step(self.eager)
        synchronize(self.device)
        self.timings.append(time.perf_counter() - started)
        if len(self.timings) > PROBE_STEPS:
            self.deciding = False
            step_s = sorted(self.timings[1:])[len(self.timings) // 2]
            if pays(step_s, self.steps_left):
                self._compile()
            else:
                saved = f"{step_s * 1e3:.1f} ms/step x {self.steps_left} steps"
                self.note = f"graphs: eager (capture would not repay itself over {saved})"
        return loss

    def _captured(self, run_step: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # outputs of the previous replay are consumed by now
        if not self._first:
            return run_step(self.compiled)
        self._first = False
        started = time.perf_counter()
        try:
            loss = run_step(self.compiled)
            synchronize(self.device)
        except Exception as exc:  # a model or backend torch.compile cannot handle: train on, eagerly
            self.compiled = None
            self.note = f"graphs: capture failed, eager instead ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            return run_step(self.eager)
        self.compile_s += time.perf_counter() - started
        return loss
