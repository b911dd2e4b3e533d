"""Kept models (runs/<id>/model) and `pieceboard predict`: timm loads them in a fresh process, and predictions on a
cell's test images are those of its predictions.csv."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from rich.console import Console

import pieceboard
from conftest import make_image_folder, run_command, write_benchmark
from pieceboard._io import StorageError
from pieceboard.models import save_model_folder
from pieceboard.predict import Transform

# One run per kind of model folder: the MLP (registered by pieceboard), a convnet in fp32 (resnet18 at 16 px, where a
# CPU trains it in fp32) and a convnet in bf16 where the CPU has it (resnet18 at 32 px).
BODY = """
[defaults]
epochs = 2
batch_size = 8
log_every = 4

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"
image_size = 16
precision = "no"

[[runs]]
name = "r18-16"
model = "resnet18"
mode = "scratch"
image_size = 16

[[runs]]
name = "r18-32"
model = "resnet18"
mode = "scratch"
image_size = 32
"""
RUNS = ("mlp", "r18-16", "r18-32")


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, output folder) of a benchmark that kept every model."""
    root = tmp_path_factory.mktemp("predict")
    folder = make_image_folder(root / "images", classes=3, per_class=16)
    bench = write_benchmark(root / "b.toml", folder, BODY)
    overrides = ['benchmark.keep_models="all"']
    results = pieceboard.run(bench, output=root / "out", overrides=overrides, console=Console(quiet=True))
    assert [r.status for r in results] == ["completed"] * 3
    return folder, root / "out"


def _expected(output: Path, run: str) -> dict[str, str]:
    """{image path: predicted class} of a cell's predictions.csv."""
    with open(output / "runs" / run / "predictions.csv", newline="") as f:
        return {row["path"]: row["prediction"] for row in csv.DictReader(f)}


def _model_dir(output: Path, run: str) -> Path:
    return output / "runs" / run / "model"


@pytest.mark.parametrize("run", RUNS)
def test_predict_on_the_test_images_gives_predictions_csv(benchmark, run, cli, tmp_path):
    folder, output = benchmark
    proc = cli("predict", _model_dir(output, run), folder, "--json", tmp_path / "p.json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 48 and [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    got = {Path(r["path"]).relative_to(folder).as_posix(): r for r in rows}
    expected = _expected(output, run)
    assert len(expected) == 12
    assert {path: got[path]["class"] for path in expected} == expected
    with open(output / "runs" / run / "predictions.csv", newline="") as f:
        confidence = {row["path"]: float(row["confidence"]) for row in csv.DictReader(f)}
    for path, value in confidence.items():  # the same probability, up to the float sums of another batch grouping
        assert got[path]["probability"] == pytest.approx(value, abs=1e-3), path
    names = json.loads((output / "runs" / run / "result.json").read_text())["per_class"]
    for row in rows:
        assert 0 < row["probability"] <= 1 and names[row["index"]]["label"] == row["class"]
        assert row["top"] == [{k: row[k] for k in ("class", "index", "probability")}]
        assert f"{row['path']}: {row['class']} {row['probability']:.4f}" in proc.stdout
    precision = json.loads((_model_dir(output, run) / "config.json").read_text())["pieceboard"]["precision"]
    assert precision == json.loads((output / "runs" / run / "result.json").read_text())["precision"]


def test_top_k_ranks_every_class(benchmark, cli, tmp_path):
    folder, output = benchmark
    image = next(folder.glob("class_b/*.png"))
    proc = cli("predict", _model_dir(output, "r18-32"), image, "--top", "3", "--json", tmp_path / "p.json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads((tmp_path / "p.json").read_text())
    probabilities = [entry["probability"] for entry in row["top"]]
    assert sorted(entry["index"] for entry in row["top"]) == [0, 1, 2]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, abs=1e-5)
    assert row["top"][0]["class"] == row["class"]


SCRIPT = """
import json, sys, tempfile
import timm
import torch
from PIL import Image

folder, images, mlp = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "mlp"
if mlp:
    import pieceboard.models  # registers pieceboard_mlp with timm
assert "pieceboard" in sys.modules or not mlp
model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
config = timm.data.resolve_data_config({}, model=model)
transform = timm.data.create_transform(**config)
batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in images])
with torch.no_grad():
    classes = model(batch).argmax(dim=1).tolist()
names = model.pretrained_cfg["label_names"]
# What push_to_hf_hub uploads is what save_for_hf writes: it must load again with the same classes and preprocessing.
with tempfile.TemporaryDirectory() as copy:
    timm.models.save_for_hf(model, copy, safe_serialization=True)
    again = timm.create_model(f"local-dir:{copy}", pretrained=True).eval()
    assert again.pretrained_cfg["label_names"] == names
    assert timm.data.resolve_data_config({}, model=again) == config
    with torch.no_grad():
        assert torch.equal(again(batch), model(batch))
config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
print(json.dumps({"classes": [names[i] for i in classes], "config": config}))
"""


@pytest.mark.parametrize("run", ["mlp", "r18-16"])  # the fp32 cells: plain timm runs in fp32
def test_a_kept_model_loads_with_plain_timm_in_a_fresh_process(benchmark, run):
    folder, output = benchmark
    expected = _expected(output, run)
    images = [str(folder / path) for path in expected]
    script = [sys.executable, "-c", SCRIPT, str(_model_dir(output, run)), json.dumps(images), run]
    proc = run_command(script, cwd=output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    assert answer["classes"] == list(expected.values())  # timm's own preprocessing: the same classes
    transform = json.loads((output / "runs" / run / "result.json").read_text())["transform"]
    size = 16
    assert answer["config"] == {
        "input_size": [3, size, size], "interpolation": "bilinear", "mean": transform["mean"], "std": transform["std"],
        "crop_pct": 1.0, "crop_mode": "squash",
    }  # fmt: skip


def test_load_model_gives_the_model_and_its_transform(benchmark):
    folder, output = benchmark
    model, transform = pieceboard.load_model(_model_dir(output, "r18-16"), device="cpu")
    assert transform.image_size == 16 and not model.training
    expected = _expected(output, "r18-16")
    with torch.no_grad():
        logits = model(torch.stack([transform(folder / path) for path in expected]))
    names = ["class_a", "class_b", "class_c"]
    assert [names[i] for i in logits.argmax(dim=1).tolist()] == list(expected.values())
    path = next(iter(expected))
    with Image.open(folder / path) as image:
        assert torch.equal(transform(image), transform(folder / path))  # a PIL image or a file: the same tensor
    assert transform(folder / path).shape == (3, 16, 16)


def test_bad_images_are_skipped_and_wrong_folders_are_one_line(benchmark, cli, tmp_path):
    folder, output = benchmark
    images = tmp_path / "mixed"
    images.mkdir()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(images / "red.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not listed: not an image extension")
    proc = cli("predict", _model_dir(output, "mlp"), images)
    assert proc.returncode == 1
    [skipped] = proc.stderr.splitlines()
    assert skipped.startswith(f"skipped {images / 'broken.jpg'}: cannot decode image")
    assert proc.stdout.startswith(f"{images / 'red.png'}: ")

    for wrong, words in (
        (output, "a benchmark keeps its models in runs/<id>/model"),
        (output / "runs" / "mlp", "did you mean"),
        (tmp_path / "missing", "no such folder"),
    ):
        proc = cli("predict", wrong, images)
        assert proc.returncode == 2
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("pieceboard: error:") and words in line, line
    proc = cli("predict", _model_dir(output, "mlp"), tmp_path / "nothing.png")
    assert proc.returncode == 2 and "nothing.png: no such file or folder" in proc.stderr


def test_only_the_leaders_model_is_kept_by_default(tmp_path, image_folder, cli):
    body = """
[defaults]
epochs = 2
batch_size = 8
image_size = 8

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"

[matrix]
lr = [0.001, 0.000001]
"""
    bench = write_benchmark(tmp_path / "b.toml", image_folder, body)
    proc = cli("bench", bench, "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    leader = board[0]["id"]
    assert board[0]["model_dir"] == f"runs/{leader}/model" and board[1]["model_dir"] is None
    assert sorted(p.parent.name for p in (tmp_path / "out" / "runs").glob("*/model")) == [leader]
    assert f"model of the leader: out/runs/{leader}/model" in proc.stdout
    assert f"runs/{leader}/model" in (tmp_path / "out" / "report.html").read_text()

    proc = cli("bench", bench, "--output", "none", "--set", 'benchmark.keep_models="none"', cwd=tmp_path)
    assert proc.returncode == 0
    assert not list((tmp_path / "none" / "runs").glob("*/model")) and "model of the leader" not in proc.stdout
    assert all(row["model_dir"] is None for row in json.loads((tmp_path / "none" / "leaderboard.json").read_text()))
    # Kept cells are not trained again for a model: the leader has none, and the benchmark says how to get one.
    proc = cli("bench", bench, "--output", "none", cwd=tmp_path)
    leader = json.loads((tmp_path / "none" / "leaderboard.json").read_text())[0]["id"]
    assert proc.returncode == 0 and f"kept {leader} (completed earlier)" in proc.stdout
    assert f"the leader {leader} has no model folder (it completed in an earlier command that kept none)" in proc.stdout


def test_a_model_that_does_not_fit_is_one_line_and_nothing_partial(small_disk, monkeypatch):
    import timm

    model = timm.create_model("resnet18", num_classes=3)  # 45 MB of weights on a 24 MB disk
    folder = small_disk / "runs" / "r18" / "model"
    args = (folder, "resnet18", ["a", "b", "c"], 32, ([0.5] * 3, [0.25] * 3), {"run": "r18"})
    with pytest.raises(StorageError) as raised:  # found before writing
        save_model_folder(model, *args)
    assert re.fullmatch(
        rf"cannot write the model of r18 in {re.escape(str(folder.parent))}: it needs about 4\d\.\d MB and only "
        r"2\d\.\d MB are free on its disk; free some space or choose another folder",
        str(raised.value),
    )
    assert list(folder.parent.iterdir()) == []  # no folder, no staging folder
    # The disk filling up while the folder is written (after the check): the same one line, nothing left behind.
    monkeypatch.setattr("pieceboard.models.require_space", lambda *args: None)
    with pytest.raises(StorageError) as raised:
        save_model_folder(model, *args)
    assert str(raised.value).startswith(f"cannot write {folder}: ") and "No space left on device" in str(raised.value)
    assert list(folder.parent.iterdir()) == []


def test_transform_matches_the_decode_once_cache(benchmark):
    from pieceboard._image import load_rgb

    folder, _ = benchmark
    path = next(folder.glob("class_a/*.jpg"))
    transform = Transform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert (transform.pixels(path) == load_rgb(path, 16)).all()
    expected = (torch.tensor(load_rgb(path, 16)).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert torch.allclose(transform(path), expected, atol=1e-5)


def test_a_kept_model_folder_given_as_weights_names_its_file_which_passes_the_check(benchmark):
    # The weights preflight of issue 22 meets the model folders of issue 18: a folder names the file to give, and
    # that file, a fine-tuning start for another benchmark, passes the check at its image size, and only there.
    from pieceboard.config import MLP_NAME
    from pieceboard.models import MODEL_WEIGHTS, WeightsError, resolve_weights

    _, output = benchmark
    for run, model in (("mlp", MLP_NAME), ("r18-16", "resnet18")):
        folder = _model_dir(output, run)
        with pytest.raises(WeightsError) as info:
            resolve_weights(model, "finetune", str(folder), image_size=16)
        assert str(info.value) == f"{model}: weights {folder} is a folder; set weights to {folder / MODEL_WEIGHTS}"
        assert resolve_weights(model, "finetune", str(folder / MODEL_WEIGHTS), image_size=16) == str(
            folder / MODEL_WEIGHTS
        )
    with pytest.raises(WeightsError, match=r"does not fit pieceboard_mlp at image_size 8: 1 tensor\(s\) of another"):
        resolve_weights(MLP_NAME, "linear_probe", str(_model_dir(output, "mlp") / MODEL_WEIGHTS), image_size=8)
