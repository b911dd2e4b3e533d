"""`pieceboard check-data` and the leak figures every benchmark derives from the near-duplicate groups."""

from __future__ import annotations

import csv
import json

from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

import pieceboard
from conftest import make_augmented_folder, picture_of, write_benchmark
from pieceboard.dedup import NOT_FOUND
from pieceboard.leaderboard import Leaderboard


def test_check_data_reports_counts_bad_files_sizes_and_copies(tmp_path, cli):
    folder = make_augmented_folder(tmp_path / "aug", classes=3, pictures=4)
    (folder / "class_a" / "broken.png").write_bytes(b"not a png")
    (folder / "class_b" / "notes.txt").write_text("not an image")
    Image.open(folder / "class_c" / "00.png").save(folder / "class_c" / "00_copy.png")  # an identical file
    proc = cli("check-data", str(folder), "--json", "report.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 37 and report["classes"] == {"class_a": 12, "class_b": 12, "class_c": 13}
    assert [b["path"] for b in report["bad_files"]] == ["class_a/broken.png"]
    assert report["bad_files"][0]["action"] == "skipped" and "cannot decode" in report["bad_files"][0]["reason"]
    assert report["ignored"] == 1 and report["ignored_files"] == ["class_b/notes.txt"]
    assert 80 <= report["image_sizes"]["width"]["min"] <= report["image_sizes"]["width"]["max"] <= 140
    groups = report["duplicate_groups"]
    assert len(groups) == 12 and all(len({picture_of(p) for p in g}) == 1 for g in groups)
    assert ["class_c/00.png", "class_c/00_copy.png", "class_c/00_inv.png", "class_c/00_rot.png"] in groups
    assert report["exact_duplicate_groups"] == 1 and report["mixed_label_groups"] == []
    assert report["split"]["kind"] == "grouped" and report["cross_split_groups"] == []
    assert report["leaked_test_images"] == 0 and report["random_split_leaked_test_images"] > 0
    assert "near-duplicates: 12 groups" in proc.stdout and "broken.png" in proc.stdout
    assert f"not found by this check: {NOT_FOUND}" in " ".join(proc.stdout.split())
    assert report["not_found_by_check"] == NOT_FOUND


def test_check_data_of_a_benchmark_warns_about_small_maps_and_a_leaky_split(tmp_path, cli):
    folder = make_augmented_folder(tmp_path / "aug", classes=2, pictures=4)
    body = '[[runs]]\nname = "r"\nmodel = "resnet18"\nmode = "scratch"\n\n[matrix]\nimage_size = [50, 128]\n'
    bench = write_benchmark(tmp_path / "b.toml", folder, body)
    proc = cli("check-data", str(bench), "--set", "data.split=random", "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stride_warnings"] == [
        "resnet18 at 50 px ends on a 2x2 feature map: little spatial detail is left for the classifier (the "
        "original study's 50 px runs); a larger image_size usually scores higher"
    ]
    assert report["cross_split_groups"] and report["leaked_test_images"] == report["random_split_leaked_test_images"]
    assert "leak:" in proc.stdout and 'split = "grouped"' in proc.stdout


def test_check_data_of_an_unusable_folder_is_exit_2(tmp_path, cli):
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (9, 9)).save(tmp_path / "one" / "only" / "a.png")
    proc = cli("check-data", str(tmp_path / "one"), cwd=tmp_path)
    assert proc.returncode == 2 and "at least two" in proc.stderr and "Traceback" not in proc.stderr


def test_clean_accuracy_rederives_from_predictions_and_groups(tmp_path):
    folder = make_augmented_folder(tmp_path / "aug", classes=3, pictures=6, singles=6)
    body = '[defaults]\nepochs = 2\nbatch_size = 8\nimage_size = 16\n\n[[runs]]\nname = "mlp"\n'
    body += 'model = "pieceboard_mlp"\nmode = "scratch"\n'
    bench = write_benchmark(tmp_path / "b.toml", folder, body)
    out = tmp_path / "out"
    pieceboard.run(bench, output=out, overrides=["data.split=random"])
    meta = json.loads((out / "manifest.json").read_text())
    with open(out / "manifest.csv", newline="") as f:
        train = {r["path"] for r in csv.DictReader(f) if r["split"] == "train"}
    leaked = {p for g in meta["duplicate_groups"] for p in g if p not in train and set(g) & train}
    assert leaked == set(meta["leaked_test"]) and leaked and len(leaked) < len(train) / 3
    with open(out / "runs" / "mlp" / "predictions.csv", newline="") as f:
        clean = [r for r in csv.DictReader(f) if r["path"] not in leaked]
    y, p = [r["label"] for r in clean], [r["prediction"] for r in clean]
    [row] = json.loads((out / "leaderboard.json").read_text())
    assert row["leaked_test_images"] == len(leaked)
    assert row["clean_accuracy"] == accuracy_score(y, p)
    names = ["class_a", "class_b", "class_c"]
    assert abs(row["clean_f1_macro"] - f1_score(y, p, labels=names, average="macro", zero_division=0)) < 1e-12
    # A folder from before the leak check: the leaderboard finds the copies again from the images.
    (out / "manifest.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("leaked_test",)}))
    assert Leaderboard.from_dir(out).rows[0]["clean_accuracy"] == row["clean_accuracy"]


def test_check_data_of_a_folder_applies_data_settings_and_refuses_others(tmp_path, cli):
    # Issue 22: `check-data FOLDER --set ...` ignored the overrides without a word.
    folder = make_augmented_folder(tmp_path / "aug", classes=2, pictures=4)
    args = ["--set", "data.split=random", "--set", "data.test_fraction=0.5", "--json", "r.json"]
    proc = cli("check-data", str(folder), *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["split"] == {"kind": "random", "test_fraction": 0.5, "seed": 0}
    assert report["test_images"] == 12 and report["leaked_test_images"] > 0
    for item, words in [
        ("defaults.epochs=3", "only the [data] settings apply"),
        ("data.path=/elsewhere", "only the [data] settings apply"),
        ("data.test_fraction=2", "--set: [data]: key 'test_fraction': input should be less than 1 (got 2)"),
    ]:
        proc = cli("check-data", str(folder), "--set", item, cwd=tmp_path)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("pieceboard: error:")]
        assert proc.returncode == 2 and len(errors) == 1 and words in errors[0], proc.stderr
