"""The faults a stress test found (issue 11), each reproduced: every one ends in one clear line (exit 2) or a recorded
skip, with nothing lost and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import pieceboard
from conftest import Background, children, wait_until, write_benchmark

BODY = """
[defaults]
epochs = 1
batch_size = 8
image_size = 8

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"
"""


def _bench(bench: Path, output: Path | str, *more: str) -> list[str]:
    return [sys.executable, "-m", "pieceboard.bench", str(bench), "--output", str(output), *more]


def _with_data(bench: Path, line: str) -> Path:
    """The benchmark file with one more line in its [data] table."""
    bench.write_text(bench.read_text().replace("test_fraction = 0.25", f"test_fraction = 0.25\n{line}"))
    return bench


def _one_line_exit_2(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pieceboard: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs the right to mount, as root in a container has; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_second_writer_of_one_output_folder_is_refused(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY.replace("epochs = 1", "epochs = 100000"))
    first = Background(_bench(bench, tmp_path / "out"), cwd=tmp_path)
    first.wait_for("training 1 cell(s)")
    second = cli("bench", bench, "--output", tmp_path / "out", "--set", "data.split_seed=7", cwd=tmp_path)
    _one_line_exit_2(second, "is in use by pid", str(first.proc.pid))
    first.kill()
    first.finish()
    # The holder is gone (kill -9): its lock is taken over, and the run resumes.
    again = cli("bench", bench, "--output", tmp_path / "out", "--set", "defaults.epochs=1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]


def test_output_that_cannot_be_a_folder_is_one_line_before_any_decoding(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    _one_line_exit_2(cli("bench", bench, "--output", tmp_path / "b.toml", cwd=tmp_path), "it is a file, not a folder")
    _one_line_exit_2(cli("bench", bench, "--output", "/proc/pieceboard-out", cwd=tmp_path), "/proc/pieceboard-out")
    cache_file = _with_data(write_benchmark(tmp_path / "c.toml", image_folder, BODY), f'cache_dir = "{bench}"')
    _one_line_exit_2(
        cli("bench", cache_file, "--output", tmp_path / "out2", cwd=tmp_path), "it is a file, not a folder"
    )
    assert not (tmp_path / "out2" / "manifest.csv").exists()


def test_full_disks_are_one_line_and_leave_nothing_partial(tmp_path, image_folder, small_disk, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY.replace("image_size = 8", "image_size = 160"))
    _with_data(bench, f'cache_dir = "{small_disk}"')
    proc = cli("bench", bench, "--output", tmp_path / "out", cwd=tmp_path)  # the cache needs more than 2 MB
    _one_line_exit_2(proc, "cannot write the image cache", "[data] cache_dir")
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []  # no partial pixels.npy, no staging folder
    assert not (tmp_path / "out" / "runs").exists()

    (small_disk / "fill").write_bytes(b"\0" * (2 * 2**20 - 64 * 1024))  # the output disk is (nearly) full
    bench.write_text(bench.read_text().replace(f'cache_dir = "{small_disk}"', f'cache_dir = "{tmp_path / "c"}"'))
    proc = cli("bench", bench, "--output", small_disk / "out", cwd=tmp_path)
    _one_line_exit_2(proc, "free on its disk")
    assert not (small_disk / "out" / "runs").exists()  # found before training, not after


def test_a_kill_during_the_image_check_leaves_no_decoder_and_no_staging(tmp_path, cli):
    # Large noisy JPEGs decode slowly: the image check takes long enough to be interrupted.
    for name in ("a", "b"):
        (tmp_path / "big" / name).mkdir(parents=True)
        for i in range(100):
            Image.effect_noise((1000, 1000), 64).save(tmp_path / "big" / name / f"{i}.jpg", quality=95)
    bench = write_benchmark(tmp_path / "b.toml", tmp_path / "big", BODY)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = Background(_bench(bench, tmp_path / f"out-{sig.name}"), cwd=tmp_path)
        pid = proc.proc.pid
        decoders = wait_until(lambda pid=pid: len(kids := children(pid)) >= 2 and kids, "decoders started")
        proc.proc.send_signal(sig)
        code, _, stderr = proc.finish()
        assert code == (130 if sig == signal.SIGTERM else -signal.SIGKILL), stderr[-2000:]
        wait_until(lambda gone=decoders: not any(Path(f"/proc/{p}").exists() for p in gone), "decoders gone")
    # The next start removes what the killed one left and works.
    done = cli("bench", bench, "--output", tmp_path / "out-SIGKILL", "--set", "defaults.image_size=8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    cache = Path(os.environ["PIECEBOARD_CACHE"]) / "pixels"
    assert not [p for p in cache.iterdir() if p.name.endswith(".staging")]


def test_images_edited_after_results_were_kept_are_refused(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    assert cli("bench", bench, "--output", tmp_path / "out", cwd=tmp_path).returncode == 0
    os.utime(image_folder / "class_a" / "img_000.png")  # touched, same content: fine
    assert cli("bench", bench, "--output", tmp_path / "out", cwd=tmp_path).returncode == 0
    Image.new("RGB", (9, 9), (1, 2, 3)).save(image_folder / "class_a" / "img_000.png")
    proc = cli("bench", bench, "--output", tmp_path / "out", cwd=tmp_path)
    _one_line_exit_2(proc, "changed content since the split was made", "class_a/img_000.png")


def test_a_file_name_that_is_not_utf8_is_skipped_with_a_warning(tmp_path, image_folder, cli):
    bad = os.fsdecode(b"bad\xff.png")
    Image.new("RGB", (9, 9)).save(os.path.join(image_folder, "class_b", bad))
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    proc = cli("bench", bench, "--output", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0 and "not valid UTF-8" in proc.stdout, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["reason"] for s in meta["skipped"]] == ["the file name is not valid UTF-8"]


@pytest.mark.parametrize("content", ["", "garbage", "[1, 2]", "null", '{"status": "completed"}'])
def test_a_damaged_result_is_rerun(tmp_path, image_folder, content):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    pieceboard.run(bench, output=out)
    (out / "runs" / "mlp" / "result.json").write_text(content)
    assert pieceboard.load_results(out)[0].status == "corrupt"
    [again] = pieceboard.run(bench, output=out)
    assert again.status == "completed" and pieceboard.load_results(out)[0].status == "completed"


def test_files_honour_the_umask(tmp_path, image_folder):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    env = os.environ | {"PIECEBOARD_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        f"umask 002 && {sys.executable} -m pieceboard.bench {bench} --output {tmp_path / 'out'}",
        shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in [tmp_path / "out" / "manifest.csv", tmp_path / "out" / "runs" / "mlp" / "result.json"]:
        assert path.stat().st_mode & 0o777 == 0o664, path
    pixels = next((tmp_path / "cache" / "pixels").iterdir())
    assert pixels.stat().st_mode & 0o777 == 0o775 and (pixels / "pixels.npy").stat().st_mode & 0o777 == 0o664
