"""`pieceboard throughput`: the report's fields and ratios on a small generated folder (no timing asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from pieceboard import throughput
from pieceboard.data import scan_folder
from pieceboard.throughput import generate_folder, measure_case

FIELDS = {
    "model", "image_size", "batch_size", "precision", "train_img_s", "synthetic_img_s", "baseline_img_s",
    "pipeline_efficiency", "speedup_vs_baseline", "stall_fraction", "eval_img_s", "timm_eval_img_s", "eval_parity",
    "cache_img_s",
}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return generate_folder(tmp_path_factory.mktemp("tp") / "mixed", images=24, classes=3)


def test_generated_folder_is_mixed_and_made_once(folder):
    scan = scan_folder(folder)
    paths = scan.paths
    assert len(paths) == 24 and sorted(set(scan.classes)) == ["class_0", "class_1", "class_2"]
    assert {p.rsplit(".", 1)[1] for p in paths} == {"png", "jpg"}
    stamp = (folder / "class_0" / "00000.jpg").stat().st_mtime_ns
    generate_folder(folder, images=24, classes=3)
    assert (folder / "class_0" / "00000.jpg").stat().st_mtime_ns == stamp


def test_timed_counts_images_and_waiting_on_a_fake_clock(monkeypatch):
    # Each batch takes 1 s to arrive and each step 3 s: 4 images per 4 s, a quarter of the time waiting.
    clock = [0.0]
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock[0])

    def batches():
        while True:
            clock[0] += 1.0
            yield (None, [0, 0, 0, 0])

    def step(batch):
        clock[0] += 3.0
        return torch.zeros(())

    rate, waited, elapsed = throughput._timed(batches(), step, lambda: None, warmup=2, seconds=20.0, min_steps=3)
    assert elapsed == 20.0 and waited == 5.0  # five timed steps reach 20 s; warm-up steps are not counted
    assert rate == pytest.approx(20 / 20.0)


def test_interleaved_rounds_drop_a_stall_on_one_side(monkeypatch):
    # Steps take 1 s on both sides, except one ceiling step that stalls for 100 s: the median over the rounds keeps
    # the ratio at 1 where a single measurement of each side would put the ceiling over 30 times below the loader.
    clock, calls = [0.0], [0]
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock[0])

    def batches():
        while True:
            yield (None, [0, 0])

    def step(batch):
        calls[0] += 1
        clock[0] += 101.0 if calls[0] == 4 else 1.0  # the second timed step of the first ceiling round
        return torch.zeros(())

    timing = throughput._Timing(warmup=2, seconds=6.0, min_steps=3)
    ceiling, ours, waited, elapsed = throughput._interleaved(batches(), batches(), step, lambda: None, timing)
    assert ceiling == ours == pytest.approx(2.0)
    assert waited == 0.0 and elapsed == pytest.approx(6.0)  # three rounds of 2 s for the loader


def test_measure_case_trains_the_benchmark_model(folder):
    r = measure_case("pieceboard_mlp", 16, 8, folder, precision="no", seconds=0.05, warmup=1, min_steps=2,
                     workers=(0,))  # fmt: skip
    assert r.precision == "no" and r.baseline_workers == 0 and not r.channels_last
    for value in (r.train_img_s, r.synthetic_img_s, r.baseline_img_s, r.eval_img_s, r.timm_eval_img_s, r.cache_img_s):
        assert value > 0
    assert 0 <= r.stall_fraction < 1


def test_throughput_command_writes_json(folder, tmp_path, cli):
    out = tmp_path / "tp.json"
    args = ["throughput", "--data", folder, "--case", "pieceboard_mlp@16", "--batch-size", "8", "--seconds", "0.05",
            "--precision", "no", "--output", out]  # fmt: skip
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["images"] == 24 and len(report["cases"]) == 1
    assert set(report["cases"][0]) >= FIELDS
    assert report["cases"][0]["model"] == "pieceboard_mlp" and report["cases"][0]["image_size"] == 16
    assert "pieceboard_mlp" in proc.stdout and "speedup" in proc.stdout
    bad = cli(*args[:3], "--case", "nonet@16")
    assert bad.returncode == 2 and "nonet" in bad.stderr


def test_seconds_per_measurement_default_to_the_device(monkeypatch):
    assert throughput.default_seconds() == 4.0  # the test machine is a CPU
    monkeypatch.setattr(throughput, "device_type", lambda: "cuda")
    assert throughput.default_seconds() == 2.0
