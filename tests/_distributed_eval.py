"""Run under torchrun by test_distributed.py: exact evaluation at awkward test-set sizes.

ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/_distributed_eval.py OUT.json
"""

import json
import sys

import numpy as np
import torch

from pieceboard.batches import BatchLoader
from pieceboard.device import make_accelerator
from pieceboard.train import evaluate

accelerator = make_accelerator("no")
world, batch = accelerator.num_processes, 4
pixels = np.random.default_rng(0).integers(0, 256, size=(64, 4, 4, 3), dtype=np.uint8)
labels = np.arange(64) % 3
model = accelerator.prepare(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)))
report = {"world": world}
for n in (1, 7, world * batch + 1):
    test = np.arange(5, 5 + n)
    loader = BatchLoader(pixels, labels, test, batch, shuffle=False, rank=accelerator.process_index, world=world)
    positions, predictions, losses, _ = evaluate(model, loader, accelerator, ([0.5] * 3, [0.25] * 3), test)
    report[str(n)] = {"positions": positions.tolist(), "predictions": len(predictions), "losses": len(losses)}
if accelerator.is_main_process:
    with open(sys.argv[1], "w") as f:
        json.dump(report, f)
