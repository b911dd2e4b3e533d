"""Shared fixtures: offline environment, a private cache, tiny image folders and benchmark files."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests never touch the network and never write into the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["PIECEBOARD_CACHE"] = str(tmp_path_factory.mktemp("pieceboard-cache"))


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, seed: int = 0) -> Path:
    """Class folders of small mixed-size PNG and JPEG images whose colour depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"class_{chr(ord('a') + k)}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(12, 28, size=2)
            base = np.zeros(3)
            base[k % 3] = 200
            pixels = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 24 MB tmpfs, for full disks (needs the right to mount, as root in a container has; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


# One tiny MLP cell: the body of the benchmark files of most fault tests.
ONE_MLP = """
[defaults]
epochs = 1
batch_size = 8
image_size = 8

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"
"""


def write_benchmark(path: Path, data_path: Path | str, body: str) -> Path:
    """A benchmark file with [benchmark] and [data] filled in and `body` (defaults, runs, matrix) after them."""
    # jobs = 1: the cells train in the test's benchmark process (tests/test_jobs.py covers worker processes).
    path.write_text(
        f'[benchmark]\nname = "t"\nwandb = "off"\njobs = 1\n\n[data]\npath = "{data_path}"\ntest_fraction = 0.25\n\n'
        f"{body}"
    )
    return path


def run_command(args: list[str], cwd: Path, env: dict[str, str] | None = None, deadline: float = 1200):
    """Run a command to its end in a session of its own; past the deadline its whole process group is killed and
    the test fails loudly (a deadline is a safety net, never what a test waits for)."""
    env = (os.environ | {"PYTHONWARNINGS": "ignore"}) if env is None else env
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, args))} still running after {deadline:.0f}s\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


class Background:
    """A command running in its own session while the test acts on it, reading its output line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None):
        env = (os.environ | {"PYTHONWARNINGS": "ignore"}) if env is None else env
        # A child of a background shell inherits an ignored SIGINT; give it the default, as a terminal would.
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._collect, daemon=True).start()

    @staticmethod
    def _pump(stream, lines) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _collect(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for(self, text: str, deadline: float = 900) -> str:
        """Block until a line of stdout contains `text`; fail loudly if the output ends or the deadline passes."""
        end = time.monotonic() + deadline
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"no line with {text!r} within {deadline:.0f}s; output so far:\n{''.join(self.seen)}")
            if line is None:
                pytest.fail(f"output ended before a line with {text!r}:\n{''.join(self.seen)}{''.join(self.stderr)}")
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, deadline: float = 900) -> tuple[int, str, str]:
        """Wait for the exit; returns (exit code, the rest of stdout, stderr)."""
        try:
            code = self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {deadline:.0f}s:\n{''.join(self.seen)}")
        rest = []
        while (line := self.lines.get()) is not None:
            rest.append(line)
        self.seen += rest
        return code, "".join(self.seen), "".join(self.stderr)

    def kill(self) -> None:
        """End the whole process group (the command, its workers and decoders)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def wait_until(condition, what: str, deadline: float = 120, poll: float = 0.1):
    """Poll `condition` until it returns something truthy; fail loudly at the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(poll)
    pytest.fail(f"{what}: not within {deadline:.0f}s")


def make_augmented_folder(root: Path, classes: int = 3, pictures: int = 6, seed: int = 0, singles: int = 0) -> Path:
    """Class folders of distinct synthetic pictures, each stored plain, turned 90 degrees and colour-inverted, like
    the One Piece set: `<class>/<i>.png`, `<i>_rot.png`, `<i>_inv.png` are one picture (same stem); then `singles`
    more pictures per class stored once (`<class>/single_<i>.png`)."""
    from PIL import ImageOps

    from _planted import random_scene, render

    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"class_{chr(ord('a') + k)}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(pictures):
            picture = render(random_scene(rng, side=(80, 140)))
            picture.save(folder / f"{i:02d}.png")
            picture.transpose(Image.Transpose.ROTATE_90).save(folder / f"{i:02d}_rot.png")
            ImageOps.invert(picture).save(folder / f"{i:02d}_inv.png")
        for i in range(singles):
            render(random_scene(rng, side=(80, 140))).save(folder / f"single_{i:02d}.png")
    return root


def picture_of(path: str) -> str:
    """The picture an augmented file is a copy of: its folder and stem without _rot/_inv."""
    folder, _, name = path.rpartition("/")
    return f"{folder}/{name.split('.')[0].removesuffix('_rot').removesuffix('_inv').removesuffix('_copy')}"


@pytest.fixture
def cli(capsys, monkeypatch):
    """The `pieceboard` command run in this process, as a user would run it, without a second start of torch:
    `cli("bench", FILE, "--output", DIR)` returns (exit code, stdout, stderr) as a CompletedProcess."""
    from pieceboard._console import STOP
    from pieceboard.cli import main

    def run(*argv, cwd: Path | None = None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse: --help, --version, a usage mistake
            code = exit_.code
        finally:  # the command installs its Ctrl-C handler; the test process keeps its own
            signal.signal(signal.SIGINT, handlers[0])
            signal.signal(signal.SIGTERM, handlers[1])
            STOP.clear()
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out.out, out.err)

    return run
