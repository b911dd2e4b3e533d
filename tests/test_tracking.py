"""Weights & Biases: the mode is decided before init, one offline run per matrix cell, main process only."""

from __future__ import annotations

import json

import pytest

import pieceboard
from pieceboard.tracking import resolve_mode


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
