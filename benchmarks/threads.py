"""CPU threads per training process, idle and under a competing load: why `threads = "auto"` is 1 on a CPU.

    .venv/bin/python benchmarks/threads.py [--seconds 6] [--output results/threads.json]

For each case (model, image size) it times pieceboard's training step (train.setup + train_step, the same code a
benchmark runs) in a fresh process with 1 thread and with every core, first on an otherwise idle machine, then while
other processes keep every core busy (a shared machine, or a second benchmark). It also times two single-thread
processes side by side (what `--jobs 2 --threads 1` does) against one process with every core. Figures are images
per second; ratios are against one thread in the same condition, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = [("pieceboard_mlp", 32), ("resnet18", 32), ("resnet18", 64)]

MEASURE = r"""
import json, sys, time
import numpy as np, torch
from pieceboard.config import Cell, TrainSettings
from pieceboard.device import make_accelerator, resolve_precision
from pieceboard.models import probe
from pieceboard.train import RunData, setup, train_step
model, size, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
pixels = rng.integers(0, 256, size=(512, size, size, 3), dtype=np.uint8)
labels = np.arange(512) % 10
idx = np.arange(512)
data = RunData(pixels, labels, idx, idx, [str(i) for i in range(10)], ([0.5] * 3, [0.25] * 3))
traits = probe(model, size)
precision = resolve_precision("auto", "cpu", traits.depthwise, traits.strided_conv_on_one_pixel)
settings = TrainSettings(batch_size=64, image_size=size, precision=precision, scheduler="none")
accelerator = make_accelerator(precision)
run = setup(Cell("c", "c", model, "scratch", None, settings), data, accelerator)
batches = list(run.train_loader)
step = lambda b: train_step(run.model, run.optimizer, accelerator, b[0], b[1], run.mean_std, run.channels_last)
for b in batches[:3]:
    step(b)
images, start, i = 0, time.perf_counter(), 0
while time.perf_counter() - start < seconds:
    step(batches[i % len(batches)]); images += 64; i += 1
print(json.dumps({"img_s": images / (time.perf_counter() - start), "threads": torch.get_num_threads()}))
"""


def _spin(stop: multiprocessing.Event) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _measure(model: str, size: int, threads: int, seconds: float, copies: int = 1) -> float:
    """Images per second summed over `copies` processes that each train with `threads` threads."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MEASURE, model, str(size), str(seconds)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(copies)
    ]
    return sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["img_s"] for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--output", default="results/threads.json")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    report = {"cores": cores, "cases": []}
    for model, size in CASES:
        case = {"model": model, "image_size": size}
        for load in ("idle", "busy"):
            stop = multiprocessing.Event()
            count = cores if load == "busy" else 0
            spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(count)]
            for s in spinners:
                s.start()
            one = _measure(model, size, 1, args.seconds)
            every = _measure(model, size, cores, args.seconds)
            side_by_side = _measure(model, size, 1, args.seconds, copies=cores)
            stop.set()
            for s in spinners:
                s.join()
            case[load] = {
                "one_thread_img_s": one,
                "all_threads_img_s": every,
                "all_threads_vs_one": every / one,
                "one_thread_per_core_img_s": side_by_side,
                "side_by_side_vs_all_threads": side_by_side / every,
            }
            print(f"{model}@{size}px {load}: 1 thread {one:.0f} img/s, {cores} threads {every:.0f} img/s "
                  f"({every / one:.2f}x), {cores} x 1 thread side by side {side_by_side:.0f} img/s")  # fmt: skip
        report["cases"].append(case)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output} at {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
