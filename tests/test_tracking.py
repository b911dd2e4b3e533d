"""Weights & Biases: the mode is decided before init, one offline run per matrix cell, main process only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import pieceboard
from conftest import ONE_MLP, Background, run_command, wait_until, write_benchmark
from pieceboard.tracking import Tracker, resolve_mode

BODY = ONE_MLP


@pytest.mark.parametrize(
    "setting, env, expected",
    [
        ("off", {"WANDB_API_KEY": "x"}, "off"),
        ("offline", {}, "offline"),
        ("online", {}, "online"),
        ("auto", {"WANDB_MODE": "offline", "WANDB_API_KEY": "x"}, "offline"),
        ("auto", {"WANDB_MODE": "disabled"}, "off"),
        ("auto", {"WANDB_API_KEY": "x"}, "online"),
        ("auto", {}, "offline"),
    ],
)
def test_mode_is_decided_before_init(monkeypatch, tmp_path, setting, env, expected):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_mode(setting) == expected


def test_netrc_login_means_online(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    assert resolve_mode("auto") == "online"


def test_offline_run_per_cell(tmp_path, image_folder, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = {
        "benchmark": {"name": "wb", "wandb": "offline", "jobs": 1},
        "data": {"path": str(image_folder)},
        "defaults": {"epochs": 1, "batch_size": 8, "image_size": 8, "log_every": 1},
        "runs": [{"name": "mlp", "model": "pieceboard_mlp", "mode": "scratch"}],
        "matrix": {"seed": [0, 1]},
    }
    results = pieceboard.run(config, output=tmp_path / "out")
    assert [r.status for r in results] == ["completed", "completed"]
    seeds = json.loads((tmp_path / "out" / "leaderboard_seeds.json").read_text())
    assert [e["group"] for e in seeds] == ["mlp"] and seeds[0]["seeds"] == [0, 1]
    runs = sorted((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    for run in runs:
        files = list(run.glob("run-*.wandb"))
        assert len(files) == 1 and files[0].stat().st_size > 0


# --- issue 22 and issue 19 (item 4) --------------------------------------------------------------------------------


def test_the_start_says_where_runs_go_and_how_to_turn_wandb_off(tmp_path, image_folder, cli, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    bench.write_text(bench.read_text().replace('wandb = "off"', 'wandb = "offline"'))
    proc = cli("bench", bench, "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = Path("out") / "wandb"  # as the user named the output folder
    expected = (
        f"W&B offline: runs are written to {where}; upload them with `wandb sync {where}/offline-run-*`; "
        '[benchmark] wandb = "off" turns W&B off'
    )
    assert [line for line in proc.stdout.splitlines() if line.startswith("W&B")] == [expected]
    assert len(list((tmp_path / where).glob("offline-run-*"))) == 1
    online = Tracker("online", "proj", tmp_path / "o", "g").describe()
    assert online == f"W&B online: runs go to project 'proj' (files under {tmp_path / 'o' / 'wandb'}); " + (
        '[benchmark] wandb = "off" turns W&B off'
    )
    assert Tracker("off", "proj", tmp_path, "g").describe() is None
    assert "W&B" not in cli("bench", write_benchmark(tmp_path / "c.toml", image_folder, BODY), cwd=tmp_path).stdout


def test_wandb_failing_at_start_costs_no_cell(tmp_path, image_folder, cli, monkeypatch):
    # Issue 22: W&B failing at start crashed the main process (--jobs 1: nothing recorded) or every worker.
    from pieceboard import tracking

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # logged in, as far as the preflight can tell
    monkeypatch.delenv("WANDB_MODE", raising=False)
    real_init = tracking.Tracker._init

    def init(self, wandb, run_id, config):
        if self.mode == "online":  # what an unreachable server or a key it refuses does
            raise wandb.errors.CommError("Error communicating with wandb process")
        return real_init(self, wandb, run_id, config)

    monkeypatch.setattr(tracking.Tracker, "_init", init)
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY + "\n[matrix]\nseed = [0, 1]\n")
    bench.write_text(bench.read_text().replace('wandb = "off"', 'wandb = "online"'))
    proc = cli("bench", bench, "--output", "out", "--jobs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: W&B")]
    assert warnings == [
        "warning: W&B could not start online (CommError: Error communicating with wandb process); the runs are "
        "logged offline instead: upload them with `wandb sync out/wandb/offline-run-*`"
    ]  # once, not once per cell
    assert len(list((tmp_path / "out" / "wandb").glob("offline-run-*"))) == 2

    warned = []
    tracker = Tracker("offline", "p", tmp_path / "t", "g", warn=warned.append)
    monkeypatch.setattr(tracking.Tracker, "_init", lambda *args: (_ for _ in ()).throw(OSError("disk gone")))
    tracker.start("cell", {})
    tracker.log({"event": "train", "update": 1, "train/loss": 1.0, "train/lr": 0.1})
    tracker.finish({"accuracy": 1.0})
    assert warned == ["W&B could not start (OSError: disk gone); the cells are trained without W&B logging"]
    assert tracker.mode == "off" and tracker.run is None


def test_a_killed_benchmark_leaves_no_wandb_folders_in_the_temp_dir(tmp_path, image_folder):
    # Issue 22: kill -9 with W&B offline left empty tmp*wandb-media and tmp*wandb-artifacts folders in /tmp for good
    # (wandb makes them when it is imported, as timm does in every benchmark process, and removes them at a normal
    # exit only).
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = os.environ | {"TMPDIR": str(temp), "PYTHONWARNINGS": "ignore"}
    env.pop("WANDB_MODE", None)
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY.replace("epochs = 1", "epochs = 100000"))
    bench.write_text(bench.read_text().replace('wandb = "off"', 'wandb = "offline"'))
    command = [sys.executable, "-m", "pieceboard.bench", str(bench), "--output", "out"]
    proc = Background(command, cwd=tmp_path, env=env)
    proc.wait_for("training 1 cell(s)")
    wait_until(lambda: list((tmp_path / "out" / "wandb").glob("offline-run-*")), "the W&B run started", deadline=900)
    proc.kill()
    proc.finish()
    assert [p.name for p in temp.glob("*wandb*")] == []
    [left] = temp.glob("pieceboard-*")  # the killed process's own folder, named by host and pid
    assert left.name.endswith(f".{proc.proc.pid}")
    assert sorted(p.name.rpartition("wandb-")[2] for p in left.iterdir()) == ["artifacts", "media"]
    # The next benchmark removes what the killed one left, and leaves nothing of its own.
    write_benchmark(tmp_path / "c.toml", image_folder, BODY)  # W&B off: timm imports wandb all the same
    done = run_command([sys.executable, "-m", "pieceboard.bench", str(tmp_path / "c.toml"), "--output", "out2"],
                       cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in temp.glob("*wandb*")] == [] and list(temp.glob("pieceboard-*")) == []
