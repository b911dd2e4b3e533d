"""The faults two stress tests found (issues 11 and 22), each reproduced: every one ends in one clear line (exit 2) or
a recorded row, with nothing lost, nothing silently left undone and nothing left behind."""

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
from conftest import ONE_MLP, Background, children, wait_until, write_benchmark

BODY = ONE_MLP


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


# --- issue 22 ------------------------------------------------------------------------------------------------------


def _stored(out: Path) -> dict[str, bytes]:
    """Every result file of an output folder, by path: to show that nothing was retrained or overwritten."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "runs").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["split edited", "cut at a line break", "cut mid-line", "rows swapped"])
def test_a_damaged_manifest_csv_is_refused_and_no_result_is_retrained(tmp_path, image_folder, cli, damage):
    # Issue 22: the damaged file was taken as a new split and every intact result retrained and overwritten, exit 0.
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    assert cli("bench", bench, "--output", out, cwd=tmp_path).returncode == 0
    before = _stored(out)
    manifest = out / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    if damage == "split edited":
        row = next(i for i, line in enumerate(lines) if line.endswith(",test\n"))
        lines[row] = lines[row].replace(",test\n", ",train\n")
    elif damage == "cut at a line break":
        lines = lines[: len(lines) * 2 // 3]  # a whole class vanished this way
    elif damage == "cut mid-line":
        lines = lines[:10] + [lines[10][:5]]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    manifest.write_text("".join(lines))
    proc = cli("bench", bench, "--output", out, cwd=tmp_path)
    _one_line_exit_2(proc, str(manifest), "nothing is split or trained again")
    assert _stored(out) == before and manifest.read_text() == "".join(lines)  # the damage is left for the user


def test_a_manifest_from_before_the_digest_is_checked_row_by_row(tmp_path, image_folder, cli):
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    assert cli("bench", bench, "--output", out, cwd=tmp_path).returncode == 0
    meta = json.loads((out / "manifest.json").read_text())
    del meta["csv_sha256"]  # as older versions wrote it
    (out / "manifest.json").write_text(json.dumps(meta))
    assert cli("bench", bench, "--output", out, cwd=tmp_path).returncode == 0  # intact: kept, and its digest noted
    assert "csv_sha256" in json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(meta))
    lines = (out / "manifest.csv").read_text().splitlines(keepends=True)
    (out / "manifest.csv").write_text("".join(lines[:-3]))
    _one_line_exit_2(cli("bench", bench, "--output", out, cwd=tmp_path), "lists 33 images where the split has 36")


@pytest.mark.parametrize("key", ["class_names", "skipped", "fingerprints"])
def test_a_manifest_json_without_a_key_is_one_line(tmp_path, image_folder, cli, key):
    # Issue 22: KeyError tracebacks.
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    assert cli("bench", bench, "--output", out, cwd=tmp_path).returncode == 0
    meta = json.loads((out / "manifest.json").read_text())
    del meta[key]
    (out / "manifest.json").write_text(json.dumps(meta))
    _one_line_exit_2(cli("bench", bench, "--output", out, cwd=tmp_path), "manifest.json", f"'{key}' is missing")


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_left_alone(tmp_path, image_folder, cli):
    # Issue 22: the bench emptied the file the link pointed at, and ran (exit 0).
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".lock").symlink_to(precious)
    proc = cli("bench", bench, "--output", tmp_path / "out", cwd=tmp_path)
    _one_line_exit_2(proc, str(tmp_path / "out" / ".lock"), "symbolic link")
    assert precious.read_text() == "keep me\n" and not (tmp_path / "out" / "manifest.csv").exists()
    dry = cli("bench", bench, "--output", tmp_path / "out", "--dry-run", cwd=tmp_path)  # exits as the run would
    _one_line_exit_2(dry, str(tmp_path / "out" / ".lock"), "symbolic link")


def test_a_kept_cell_whose_predictions_disagree_is_rerun(tmp_path, image_folder, cli):
    # Issue 22: printed "kept ... (completed earlier)" and exited 0 while the leaderboard showed the row corrupt.
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    out = tmp_path / "out"
    assert cli("bench", bench, "--output", out, cwd=tmp_path).returncode == 0
    predictions = out / "runs" / "mlp" / "predictions.csv"
    good = predictions.read_text()
    header, first, *rest = good.splitlines(keepends=True)
    fields = first.rstrip("\n").split(",")  # index, path, label, prediction, confidence
    fields[3] = next(c for c in ("class_a", "class_b", "class_c") if c != fields[3])
    predictions.write_text("".join([header, ",".join(fields) + "\n", *rest]))
    proc = cli("bench", bench, "--output", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kept mlp" not in proc.stdout
    assert "rerun mlp: its stored result does not hold up" in proc.stdout and "predictions.csv: gives" in proc.stdout
    assert predictions.read_text() == good  # trained again with the same seed: the same predictions
    assert [row["status"] for row in json.loads((out / "leaderboard.json").read_text())] == ["completed"]


def test_a_refused_benchmark_leaves_no_output_folder_behind(tmp_path, cli):
    # Issue 22: an output folder holding only .lock was left after a bench refused its data.
    bench = write_benchmark(tmp_path / "b.toml", tmp_path / "missing", BODY)
    _one_line_exit_2(cli("bench", bench, "--output", tmp_path / "new" / "out", cwd=tmp_path), "is not a folder")
    assert not (tmp_path / "new" / "out").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is theirs: left in place
    _one_line_exit_2(cli("bench", bench, "--output", tmp_path / "mine", cwd=tmp_path), "is not a folder")
    assert (tmp_path / "mine").is_dir()


def test_weights_that_are_not_weights_stop_the_benchmark_before_training(tmp_path, image_folder, cli):
    # Issue 22: a text file, a pickled model or a folder passed the preflight and failed the cell with tracebacks.
    import torch

    (tmp_path / "notes.safetensors").write_text("not weights\n")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")  # a pickled module, not a state dict
    (tmp_path / "folder").mkdir()
    for weights, words in [
        ("notes.safetensors", ["is not a weights file"]),
        ("model.pth", ["holds a pickled Python object (torch.nn.modules.linear.Linear)"]),
        ("folder", ["is a folder"]),
    ]:
        body = BODY.replace('mode = "scratch"', f'mode = "finetune"\nweights = "{tmp_path / weights}"')
        bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
        proc = cli("bench", bench, "--output", tmp_path / "out", cwd=tmp_path)
        _one_line_exit_2(proc, "[[runs]] 'mlp': pieceboard_mlp: weights", *words)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_wandb_online_without_a_login_or_with_a_bad_project_is_one_line_before_training(
    tmp_path, image_folder, cli, monkeypatch, jobs
):
    # Issue 22: a traceback per worker and "WorkerDied ... out of memory", or a crash of the main process (--jobs 1).
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    bench = write_benchmark(tmp_path / "b.toml", image_folder, BODY)
    bench.write_text(bench.read_text().replace('wandb = "off"', 'wandb = "online"'))
    proc = cli("bench", bench, "--output", tmp_path / "out", "--jobs", jobs, cwd=tmp_path)
    _one_line_exit_2(proc, 'wandb = "online" needs a W&B login', '"offline"')
    if jobs == "1":  # the dry run makes the same check and exits as the run would
        dry = cli("bench", bench, "--output", tmp_path / "out", "--dry-run", cwd=tmp_path)
        _one_line_exit_2(dry, 'wandb = "online" needs a W&B login', '"offline"')
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    bad = ["--set", "benchmark.wandb_project=team/project"]
    proc = cli("bench", bench, "--output", tmp_path / "out", "--jobs", jobs, *bad, cwd=tmp_path)
    _one_line_exit_2(proc, "wandb_project 'team/project'", "(found /)")
    assert not (tmp_path / "out").exists()


def test_check_data_to_a_place_that_cannot_be_written_is_one_line_first(tmp_path, image_folder, cli):
    # Issue 22: FileNotFoundError traceback, after every image had been decoded.
    proc = cli("check-data", image_folder, "--json", "/proc/check.json", cwd=tmp_path)
    _one_line_exit_2(proc, "cannot write /proc/check.json")
    assert "images in" not in proc.stdout  # refused before the check, not after
