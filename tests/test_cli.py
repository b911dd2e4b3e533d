"""Tests for the `pieceboard` command: a light `import pieceboard`, `--version`, `--help`, and `prefetch` offline.

What a command imports is checked in a fresh interpreter (this one has torch loaded already); `prefetch` is checked
against a local server that answers nothing, so the test does not depend on the machine's network, and counts the
requests it receives rather than timing them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import huggingface_hub.constants
import pytest

import pieceboard
from pieceboard.cli import main

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "accelerate", "datasets", "evaluate", "wandb", "sklearn", "numpy", "pydantic")

# Runs the `pieceboard` entry point on each command line in-process, then reports exit codes and heavy imports.
PROBE = """
import json, sys
from pieceboard.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as exc:
        codes.append(exc.code)
heavy = [name for name in json.loads(sys.argv[2]) if name in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""

TWO_PRETRAINED = """\
[data]
path = "builtin:digits"

[[runs]]
name = "r18"
model = "resnet18"

[[runs]]
name = "mnv3"
model = "mobilenetv3_large_100"
mode = "linear_probe"

[[runs]]
name = "r18-again"
model = "resnet18"
lr = 0.01

[[runs]]
name = "scratch"
model = "resnet34"
mode = "scratch"
"""


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(paths)} | (env or {})
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)


def test_import_pieceboard_loads_neither_torch_nor_timm() -> None:
    proc = _python("-c", "import pieceboard, sys; print('torch' in sys.modules, 'timm' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_exports_resolve_lazily_and_are_listed() -> None:
    assert set(pieceboard.__all__) == {*pieceboard._EXPORTS, "__version__"}
    assert set(pieceboard.__all__) <= set(dir(pieceboard))
    from pieceboard.bench import run
    from pieceboard.config import load_config

    assert pieceboard.run is run and pieceboard.load_config is load_config
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = pieceboard.nope


def test_help_and_version_import_nothing_heavy() -> None:
    argvs = [["--help"], ["--version"], ["leaderboard", "--help"], ["prefetch", "--help"], ["throughput", "--help"]]
    argvs.append(["predict", "--help"])
    proc = _python("-c", PROBE, json.dumps(argvs), json.dumps(HEAVY))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {"codes": [0] * len(argvs), "heavy": []}
    assert "usage: pieceboard" in proc.stdout and "Traceback" not in proc.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"pieceboard {version('pieceboard')} (Python {sys.version.split()[0]}; torch ")
    assert f"timm {version('timm')}" in line and f"accelerate {version('accelerate')}" in line


# --- prefetch without a network ------------------------------------------------------------------------------


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    path = tmp_path / "two.toml"
    path.write_text(TWO_PRETRAINED, encoding="utf-8")
    return path


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_prefetch_in_offline_mode_says_so_once_per_model(
    bench_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("prefetch touched the network in offline mode")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert main(["prefetch", str(bench_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    endpoint = huggingface_hub.constants.ENDPOINT
    assert _lines(captured.err) == [
        f"pieceboard: error: mobilenetv3_large_100: pretrained weights timm/mobilenetv3_large_100.ra_in1k are not in "
        f"the cache and {endpoint} cannot be reached (HF_HUB_OFFLINE is set); set weights = "
        '"path/to/model.safetensors" in its run, or copy models--timm--mobilenetv3_large_100.ra_in1k from the cache '
        f"of a machine that is online into {hub}",
        f"resnet18: pretrained weights timm/resnet18.a1_in1k are not in the cache and {endpoint} cannot be reached "
        '(HF_HUB_OFFLINE is set); set weights = "path/to/model.safetensors" in its run, or copy '
        f"models--timm--resnet18.a1_in1k from the cache of a machine that is online into {hub}",
    ]


class _SilentServer:
    """A local server that reads each request and hangs up without an answer, counting what it was asked."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            with conn:
                if self.done.is_set():
                    return
                self.requests.append(conn.recv(4096).decode("latin-1").split("\r\n", 1)[0])

    def close(self) -> None:
        self.done.set()
        socket.create_connection(self.sock.getsockname()).close()  # wakes accept() up to see `done`
        self.thread.join()
        self.sock.close()


def test_prefetch_with_the_hub_unreachable_asks_once_and_names_each_model(bench_file: Path, tmp_path: Path) -> None:
    # Before: ~40 "Retrying in Ns" lines and minutes of back-off per model before the error.
    server = _SilentServer()
    try:
        env = {
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": server.url,
            "HF_HOME": str(tmp_path / "hf"),
            "TORCH_HOME": str(tmp_path / "torch"),
            "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1",
        }
        proc = _python("-m", "pieceboard.cli", "prefetch", str(bench_file), env=env)
    finally:
        server.close()
    assert proc.returncode == 2, proc.stderr
    assert server.requests == ["HEAD / HTTP/1.1"]  # one probe for both models, no retries, no download attempted
    lines = _lines(proc.stderr)
    assert [line.removeprefix("pieceboard: error: ").split(":", 1)[0] for line in lines] == [
        "mobilenetv3_large_100",
        "resnet18",
    ]
    for line in lines:
        assert f"{server.url} cannot be reached (Remote end closed connection without response)" in line
        assert 'set weights = "path/to/model.safetensors" in its run' in line
    assert "Traceback" not in proc.stderr and "Retry" not in proc.stderr
    assert proc.stdout == ""
