"""Tests for pieceboard._io's folder lock: one writer per output folder, the holder named, a dead holder's lock taken.

Other processes are real ones (a holder started with subprocess); every wait is on a line they print or on their
exit, never on a clock.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pieceboard._console import PieceboardError
from pieceboard._io import LOCK, FolderInUse, StorageError, lock_folder

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 120  # only for a holder that never answers; nothing waits on it when things work

# Takes the lock, optionally forks a child that inherits it, says so, then waits until its stdin closes.
HOLDER = """
import os, sys
from pathlib import Path
from pieceboard._io import lock_folder
with lock_folder(Path(sys.argv[1]), "holder under test"):
    ready, told = os.pipe()
    child = os.fork() if sys.argv[2] == "fork" else 1
    if child == 0:
        os.write(told, b"1")  # os.fork() returned here: the handlers registered to run at a fork have run
        sys.stdin.read()
        os._exit(0)
    if child != 1:
        os.read(ready, 1)
    print(os.getpid(), child, flush=True)
    sys.stdin.read()
"""


def _since(started: str) -> str:
    return datetime.fromisoformat(started).strftime("%H:%M")


@pytest.fixture
def start_holder(tmp_path: Path) -> Iterator:
    """Start a process that holds the lock on a folder; returns (process, its pid, its forked child's pid or 1)."""
    started: list[subprocess.Popen[str]] = []
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}

    def start(folder: Path, fork: bool = False) -> tuple[subprocess.Popen[str], int, int]:
        command = [sys.executable, "-c", HOLDER, str(folder), "fork" if fork else "no"]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        started.append(proc)
        line = proc.stdout.readline()  # printed once the lock is held; empty if the holder failed
        assert line, f"the holder exited with {proc.wait(DEADLINE_S)} before taking the lock"
        pid, child = map(int, line.split())
        return proc, pid, child

    yield start
    for proc in started:
        proc.stdin.close()  # ends the holder and any child it forked
        proc.wait(DEADLINE_S)


def test_lock_creates_the_folder_and_records_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "new"
    with lock_folder(folder, "pieceboard bench demo.toml"):
        holder = json.loads((folder / LOCK).read_text(encoding="utf-8"))
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        assert holder["what"] == "pieceboard bench demo.toml"
        assert holder["command"] == shlex.join(sys.argv)
        assert datetime.fromisoformat(holder["started"]).tzinfo is not None
    # The file stays (removing it would let two writers lock two files), empty: nobody holds it.
    assert (folder / LOCK).read_text(encoding="utf-8") == ""


def test_lock_is_released_after_the_block_even_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), lock_folder(tmp_path, "first"):
        raise RuntimeError("boom")
    with lock_folder(tmp_path, "second"):
        assert json.loads((tmp_path / LOCK).read_text(encoding="utf-8"))["what"] == "second"


def test_second_writer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with lock_folder(tmp_path, "first writer"):
        started = json.loads((tmp_path / LOCK).read_text(encoding="utf-8"))["started"]
        with pytest.raises(FolderInUse) as info, lock_folder(tmp_path, "second writer"):
            pass
    assert str(info.value) == (
        f"{tmp_path} is in use by pid {os.getpid()} on host {socket.gethostname()} (first writer, since "
        f"{_since(started)}); wait for it to finish or use another output folder (--output)"
    )
    assert isinstance(info.value, PieceboardError)  # exit code 2, one line, like every input error


def test_second_process_is_refused_and_named(tmp_path: Path, start_holder) -> None:
    folder = tmp_path / "out"
    _, pid, _ = start_holder(folder)
    with pytest.raises(FolderInUse) as info, lock_folder(folder, "second writer"):
        pass
    message = str(info.value)
    assert message.startswith(f"{folder} is in use by pid {pid} on host {socket.gethostname()} (holder under test, ")
    assert "\n" not in message
    # The refused writer left the holder's record alone.
    assert json.loads((folder / LOCK).read_text(encoding="utf-8"))["pid"] == pid


def test_lock_of_a_killed_holder_is_taken_over(tmp_path: Path, start_holder) -> None:
    proc, pid, _ = start_holder(tmp_path)
    os.kill(pid, signal.SIGKILL)
    proc.wait(DEADLINE_S)
    # Its record is still in the file, but the OS released its flock: the lock is free.
    assert json.loads((tmp_path / LOCK).read_text(encoding="utf-8"))["pid"] == pid
    with lock_folder(tmp_path, "after the kill"):
        assert json.loads((tmp_path / LOCK).read_text(encoding="utf-8"))["pid"] == os.getpid()


def test_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path: Path, start_holder) -> None:
    # A worker forked while the lock was held (a decoder, say) inherits the descriptor; if it kept it, it would keep
    # the folder locked after its parent was killed.
    proc, pid, child = start_holder(tmp_path, fork=True)
    os.kill(pid, signal.SIGKILL)
    proc.wait(DEADLINE_S)
    os.kill(child, 0)  # the child lives on (it ends when the fixture closes its stdin)
    with lock_folder(tmp_path, "after the kill"):
        pass


def test_output_path_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(PieceboardError) as info, lock_folder(tmp_path / "file", "w"):
        pass
    assert str(info.value) == f"cannot write {tmp_path / 'file'}: it is a file, not a folder"


# --- issue 22 ------------------------------------------------------------------------------------------------------


def test_a_lock_file_that_is_a_link_or_no_file_is_refused_and_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "someone-elses.txt"
    target.write_text("precious\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK).symlink_to(target)
    with pytest.raises(StorageError) as info, lock_folder(tmp_path / "out", "w"):
        pass
    assert str(info.value) == (
        f"cannot write {tmp_path / 'out' / LOCK}: it is a symbolic link, which pieceboard does not follow here; "
        f"remove it"
    )
    assert target.read_text() == "precious\n"
    (tmp_path / "out" / LOCK).unlink()
    os.mkfifo(tmp_path / "out" / LOCK)
    with pytest.raises(StorageError, match="it is not a plain file; remove it"), lock_folder(tmp_path / "out", "w"):
        pass


def test_a_folder_the_lock_created_is_removed_when_the_block_fails_before_writing_anything(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), lock_folder(tmp_path / "new" / "out", "refused"):
        raise RuntimeError("bad input")
    assert not (tmp_path / "new" / "out").exists()
    with pytest.raises(RuntimeError), lock_folder(tmp_path / "kept", "wrote something"):
        (tmp_path / "kept" / "manifest.csv").write_text("x")
        raise RuntimeError("failed later")
    assert (tmp_path / "kept" / "manifest.csv").exists() and (tmp_path / "kept" / LOCK).exists()


def test_a_lock_file_removed_by_its_holder_is_not_a_lock(tmp_path: Path, monkeypatch) -> None:
    # A waiting writer that opened the file before its holder removed it must not lock the removed file.
    import pieceboard._io as io

    path = tmp_path / LOCK
    path.write_text("")
    opened = []
    real_open = os.open

    def open_then_lose_it(name, flags, mode=0o777):
        fd = real_open(name, flags, mode)
        if not opened:  # the first open sees the old file; its holder then removes it
            opened.append(fd)
            os.unlink(name)
        return fd

    monkeypatch.setattr(io.os, "open", open_then_lose_it)
    with lock_folder(tmp_path, "second"):
        assert path.exists() and json.loads(path.read_text(encoding="utf-8"))["what"] == "second"


def test_the_space_check_shows_figures_that_differ(tmp_path: Path, monkeypatch) -> None:
    # Issue 22: "needs about 2.0 MB and 2.0 MB are free".
    import shutil

    from pieceboard._io import require_space

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2_080_000))
    with pytest.raises(StorageError) as info:
        require_space(tmp_path, 2_100_000, "the results")
    assert "it needs about 2050.8 KB and only 2031.2 KB are free on its disk" in str(info.value)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2_099_990))
    with pytest.raises(StorageError, match="needs about 2,100,000 bytes and only 2,099,990 bytes are free"):
        require_space(tmp_path, 2_100_000, "the results")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    with pytest.raises(StorageError, match="needs about 3.0 MB and only 1.0 MB are free"):
        require_space(tmp_path, 3 << 20, "the results")
