"""report.py and `pieceboard report`: plots and a self-contained report.html, checked in headless Chromium too."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from _results import CLASSES, graded, image_paths, write_run
from pieceboard.cli import main
from pieceboard.dedup import NOT_FOUND
from pieceboard.leaderboard import COLUMNS, Leaderboard
from pieceboard.report import (
    LeakCheck,
    axis_figure,
    axis_groups,
    curves_figure,
    quality_cost_figure,
    seeds_figure,
    train_loss_curve,
    verdict,
    write_report,
)
from pieceboard.results import RunResult, save_result

PNG = b"\x89PNG\r\n\x1a\n"


def _train_log(epochs: int = 2, steps: int = 5, every: int = 2, with_steps: bool = False) -> list[dict]:
    log = []
    for epoch in range(1, epochs + 1):
        for step in range(0, steps, every):
            entry = {"update": (epoch - 1) * steps + step + 1, "epoch": epoch, "step": step, "loss": 2.0 / epoch}
            log.append(entry | {"lr": 0.01} | ({"steps": steps} if with_steps else {}))
    return log


def _write_study(out: Path) -> None:
    """Two image sizes x three seeds, with latency and train logs; one failed run and one damaged result; the test
    images as files, and the leader's predictions with their confidence."""
    for size, n_right in ((8, 20), (12, 26)):
        for seed in range(3):
            run_id = f"mlp@{size}px-seed{seed}"
            config = {"image_size": size, "seed": seed}
            extra = {"latency_ms": size / 4, "peak_mem_mb": 100.0 + size, "train_log": _train_log()}
            # The leader (12 px, seed 2) is wrong on its last two images: the first of them with the higher confidence.
            confidence = [0.5] * 28 + [0.9, 0.6] if run_id == "mlp@12px-seed2" else None
            write_run(out, run_id, *graded(30, n_right + seed), config=config, confidence=confidence, **extra)
    root = out / "images"
    for i, path in enumerate(image_paths(30)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (8 * i, 100, 200)).save(root / path)
    meta = {"path": str(root), "split": "grouped", "class_names": CLASSES, "duplicate_groups": [], "leaked_test": []}
    (out / "manifest.json").write_text(json.dumps(meta))
    save_result(out, RunResult("diverges", "failed", {"run": "diverges"}, error="NonFiniteLoss: nan at step 1"))
    (out / "runs" / "damaged").mkdir()
    (out / "runs" / "damaged" / "result.json").write_text("{")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    _write_study(out)
    write_report(out)
    return out


def test_plots_are_written_and_embedded(study):
    names = sorted(p.name for p in (study / "plots").glob("*.png"))
    runs = [f"mlp@{size}px-seed{seed}" for size in (8, 12) for seed in range(3)]
    expected = ["axis-image_size.png", "quality-latency_ms.png", "quality-train_s.png", "seeds.png"]
    expected += [f"run-{run}-{kind}.png" for run in runs for kind in ("confusion", "curves")]
    assert names == sorted(expected)
    for path in (study / "plots").glob("*.png"):
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 5000, path.name
    page = (study / "report.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(expected)
    assert re.findall(r'(?:src|href)="(?!data:|#)', page) == []  # nothing fetched when the page is viewed
    assert '<table id="leaderboard">' in page and '<table id="seeds">' in page
    assert "failed: NonFiniteLoss: nan at step 1" in page and "corrupt:" in page
    assert page.count('class="per-class"') == 6
    assert '<table id="details">' in page  # every column of the terminal table, in two tables that fit the page
    headers = re.findall(r"<th>(.*?)</th>", page.split('<table id="details">')[0].split('<table id="leaderboard">')[1])
    details = re.findall(r"<th>(.*?)</th>", page.split('<table id="details">')[1].split("</table>")[0])
    assert {html.unescape(h) for h in headers + details} == {c.header for c in COLUMNS}


def test_the_page_opens_with_the_verdict_in_words(study):
    page = (study / "report.html").read_text(encoding="utf-8")
    body = page.split("<body>")[1]
    first = re.search(r'<p class="verdict lead">(.*?)</p>', body).group(1)
    assert body.index('id="verdict"') < body.index('id="leaderboard"')
    assert first.startswith("mlp@12px-seed2 leads: macro F1 0.9")
    assert "ms per image" in first and "s of training" in first
    meta = json.loads((study / "manifest.json").read_text())
    sentences = verdict(Leaderboard.from_dir(study), LeakCheck.from_meta(meta))
    assert sentences[0] == html.unescape(first)
    assert any(
        s.startswith("Every other run is worse than the leader") or s.startswith("Tied with it") for s in sentences
    )
    assert "2 run(s) did not complete: damaged (corrupt: " in " ".join(sentences)
    assert sentences[-1].startswith("Leak check: 0 groups of near-duplicate pictures")
    # A clean verdict never hides what the check cannot see.
    assert sentences[-1].endswith(f"that the check can see. The check does not find {NOT_FOUND}.")


def test_verdict_names_ties_gaps_flags_and_the_leak(tmp_path):
    labels, good = graded(60, 55)
    write_run(tmp_path, "leader", labels, good, latency_ms=5.0, n_test=60)
    write_run(tmp_path, "twin", *graded(60, 54), latency_ms=1.0)  # tied, and cheaper
    write_run(tmp_path, "weak", *graded(60, 20), latency_ms=1.0)
    write_run(tmp_path, "cats", labels, ["cat"] * 60)
    meta = {"split": "random", "duplicate_groups": [["a", "b"]] * 4, "cross_split_groups": [["a", "b"]] * 3}
    meta["leaked_test"] = ["img/000.png", "img/001.png", "img/002.png"]
    lines = verdict(Leaderboard.from_dir(tmp_path), LeakCheck.from_meta(meta))
    assert lines[0] == "leader leads: macro F1 0.9166, accuracy 0.9167; 5.00 ms per image and 2.0 s of training."
    assert lines[1].startswith("Tied with it (this benchmark does not tell them apart at the 5% level): twin (macro")
    assert lines[2].startswith("The cheapest of these to run is twin: macro F1 0.9000, accuracy 0.9000; 1.00 ms")
    gap = Leaderboard.from_dir(tmp_path).rows[0]["f1_macro"] - Leaderboard.from_dir(tmp_path).rows[2]["f1_macro"]
    assert lines[3].startswith(
        f"The other runs are worse than the leader (p < 0.05); the best of them, weak, by {gap:.4f}"
    )
    assert lines[4] == "Look at these before trusting them: cats (one class (100%))."
    assert lines[5] == (
        "Leak check: 3 groups of near-duplicate pictures straddle the split (random): 3 of 60 test images have a "
        f"copy in train, which inflates accuracy; clean accuracy leaves them out. The check does not find {NOT_FOUND}."
    )
    assert verdict(Leaderboard.from_dir(tmp_path), None)[-1].startswith(
        "This folder was split before pieceboard looked"
    )


def test_the_gallery_shows_the_leaders_mistakes_most_confident_first(study):
    page = (study / "report.html").read_text(encoding="utf-8")
    gallery = page.split('<h2 id="mistakes">')[1].split("<h2")[0]
    assert '<h3 id="mistakes-mlp@12px-seed2">Mistakes of mlp@12px-seed2</h3>' in gallery
    assert "2 of 30 test images wrong; the 2 shown are most confident first." in gallery
    titles = re.findall(r'<figure class="mistake" title="(.*?)">', gallery)
    assert titles == ["img/028.png", "img/029.png"]  # confidence 0.9, then 0.6
    assert "true <b>dog</b><br>predicted <b>fox</b> (90%)" in gallery  # image 28: a dog (28 % 3 = 1) taken for a fox
    thumbs = re.findall(r'<img class="thumb" src="data:image/png;base64,([^"]+)"', gallery)
    assert len(thumbs) == 2
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as thumb:
        assert thumb.size == (40, 30) and thumb.getpixel((0, 0)) == (8 * 28, 100, 200)  # the right image, whole
    assert '<td class="text">dog</td><td class="text">fox</td><td>1</td>' in gallery  # most confused pairs


def test_mistakes_of_a_chosen_run_and_of_an_old_folder(study, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(study, out)
    meta = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(meta | {"path": str(out / "images")}))
    assert main(["report", str(out), "--mistakes", "mlp@8px-seed0"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Mistakes of mlp@12px-seed2" in page and "Mistakes of mlp@8px-seed0" in page
    # mlp@8px-seed0 has no confidence column (a folder written before it): its mistakes come in file order.
    section = page.split("Mistakes of mlp@8px-seed0")[1].split("<h2")[0]
    assert "10 of 30 test images wrong; the 10 shown are in file order (no confidence stored)." in section
    assert re.findall(r'title="(.*?)"', section)[:2] == ["img/020.png", "img/021.png"]
    shutil.rmtree(out / "images")  # the data folder moved away: the page still opens, and says so
    assert main(["report", str(out)]) == 0
    assert "image not found" in (out / "report.html").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["report", str(out), "--mistakes", "diverges"]) == 2
    assert "--mistakes diverges: not a completed run of" in capsys.readouterr().err


def _figures(study):
    board = Leaderboard.from_dir(study)
    done = [board.results[row["id"]] for row in board.rows if row["status"] == "completed"]
    axes = axis_groups(done)
    yield quality_cost_figure(board.rows, "latency_ms", "latency")
    yield seeds_figure(board.seeds)
    yield from (axis_figure(axis, panels, list(axes)) for axis, panels in axes.items())
    yield curves_figure(done[0])


def test_every_panel_has_a_legend(study):
    for figure in _figures(study):
        for axes in figure.axes:
            assert axes.get_legend() is not None, axes.get_title() or figure.get_suptitle()


def test_a_log_axis_is_labelled_in_plain_numbers():
    rows = [
        {"status": "completed", "rank": i + 1, "f1_macro": 0.9 - i / 10, "train_s": s}
        for i, s in enumerate([0.3, 3, 40])
    ]
    figure = quality_cost_figure(rows, "train_s", "training seconds")
    figure.canvas.draw()
    [axes] = figure.axes
    assert axes.get_xscale() == "log"
    labels = [t.get_text() for t in axes.get_xticklabels() if t.get_visible() and t.get_text()]
    assert labels and all(re.fullmatch(r"[0-9.]+", label) for label in labels), labels
    assert [t.get_text() for t in axes.xaxis.get_minorticklabels() if t.get_text()] == []


def test_report_command_and_stale_plots(study, capsys):
    stale = study / "plots" / "run-gone-curves.png"
    stale.write_bytes(PNG)
    assert main(["report", str(study)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {study / 'report.html'}"
    assert not stale.exists()  # a picture of a run that is no longer there would mislead
    assert main(["report", str(study / "nope")]) == 2
    assert "no runs/ folder here" in capsys.readouterr().err


def test_train_loss_is_placed_on_an_epoch_axis():
    expected = [0.2, 0.6, 1.0, 1.2, 1.6, 2.0]  # steps 0, 2, 4 of 5 in each of 2 epochs
    for log in (_train_log(), _train_log(with_steps=True)):
        xs, ys = train_loss_curve(RunResult("r", "completed", {}, train_log=log))
        assert xs == pytest.approx(expected) and ys == [2.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    one_epoch = RunResult("r", "completed", {}, train_log=_train_log(epochs=1))
    assert train_loss_curve(one_epoch)[0] == pytest.approx([0.2, 0.6, 1.0])
    history = [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.4}]
    assert train_loss_curve(RunResult("r", "completed", {}, history=history)) == ([1, 2], [0.9, 0.4])


def test_axis_groups_pair_runs_that_differ_in_one_key():
    def result(model, size, batch, seed=0):
        config = {"run": model, "model": model, "image_size": size, "batch_size": batch, "seed": seed, "data": {}}
        return RunResult(f"{model}@{size}-{batch}-{seed}", "completed", config)

    results = [result("mlp", s, b) for s in (8, 12) for b in (4, 8)] + [result("mlp", 8, 4, seed=1)]
    results.append(result("cnn", 16, 4))  # no other cnn, no other model at 16 px: no partner on any axis
    groups = axis_groups(results)
    assert sorted(groups) == ["batch_size", "image_size"]  # seed, run and data are never an axis

    def counts(axis):
        return sorted(sorted((value, len(members)) for value, members in g.items()) for g in groups[axis])

    assert counts("batch_size") == [[("4", 1), ("8", 1)], [("4", 2), ("8", 1)]]  # two seeds at 8 px, batch 4
    assert counts("image_size") == [[("12", 1), ("8", 1)], [("12", 1), ("8", 2)]]
    apart = [result("mlp", 8, 4), result("mlp", 8, 4, seed=1)]
    apart[0].config["graphs"], apart[1].config["graphs"] = True, False
    assert axis_groups(apart) == {}  # graphs changes how a cell runs, not what it trains: never an axis


# --- headless Chromium ---------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Added to a copy of the page: after load, write what the browser actually shows into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: images.length,
    decoded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    visible: images.filter((i) => i.getBoundingClientRect().width > 90).length,
    thumbnails: [...document.querySelectorAll("img.thumb")].filter((i) => i.naturalWidth > 0).length,
    rows: document.querySelectorAll("#leaderboard tr").length,
    runs: [...document.querySelectorAll("#leaderboard td a")].map((a) => a.textContent),
    first: document.querySelector("h1").nextElementSibling.id,
    width: document.documentElement.clientWidth,
    widest: Math.max(...[...document.querySelectorAll("table")].map((t) => t.getBoundingClientRect().right)),
    tables: [...document.querySelectorAll("table[id]")].map((t) => `${t.id} ${t.getBoundingClientRect().right}`),
    scroll: document.documentElement.scrollWidth,
  });
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, which `make test` installs where it can; without it the test is skipped, saying so."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed: `make test` installs it with apt-get where it can (as root)")
    return found


def _render(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_report_shows_the_leaderboard_and_the_images_in_chromium(study, chromium, tmp_path):
    page = (study / "report.html").read_text(encoding="utf-8")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    args = ["--dump-dom", "--virtual-time-budget=10000", "--window-size=1280,900", probe_page.as_uri()]
    proc = _render(chromium, tmp_path / "profile", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    shown = json.loads(found.group(1).replace("&quot;", '"'))
    assert shown["images"] == shown["decoded"] == shown["visible"] == 16 + 2  # the plots, the leader's 2 mistakes
    assert shown["thumbnails"] == 2 and shown["first"] == "verdict"  # the page opens with the verdict in words
    assert shown["widest"] <= shown["width"] and shown["scroll"] <= shown["width"], shown["tables"]  # none runs off
    assert shown["rows"] == 1 + 8  # header, six completed, one failed, one corrupt
    board = Leaderboard.from_dir(study)
    assert shown["runs"] == [row["id"] for row in board.rows if row["status"] == "completed"]

    shot = tmp_path / "top.png"
    proc = _render(
        chromium,
        tmp_path / "profile2",
        f"--screenshot={shot}",
        "--window-size=1280,900",
        study.as_uri() + "/report.html",
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 900)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # text and table, not a blank page


# --- writers that overlap (issue 22) -------------------------------------------------------------------------------


def test_a_report_started_before_a_newer_one_never_overwrites_it(tmp_path, monkeypatch):
    # Issue 22: a `pieceboard report` that began before a benchmark's end and finished after it wrote its older page
    # over the newer one and deleted the new cell's plots.
    import fcntl
    import threading

    import pieceboard.report as report

    out = tmp_path / "out"
    write_run(out, "old", *graded(30, 20))
    drawing = threading.Event()  # the older writer has read the results (only "old") and is drawing
    newer_went = threading.Event()  # the newer writer finished, or waits for the older one: either way it went first
    real_plots, real_flock = report._plots, fcntl.flock

    def slow_plots(board):
        if threading.current_thread().name == "older":
            drawing.set()
            newer_went.wait()
        return real_plots(board)

    def flock(fd, operation):
        if threading.current_thread().name == "newer" and not operation & fcntl.LOCK_NB:
            newer_went.set()  # about to wait for the lock
        return real_flock(fd, operation)

    def newer_report():
        write_report(out, Leaderboard.from_dir(out))
        newer_went.set()

    monkeypatch.setattr(report, "_plots", slow_plots)
    monkeypatch.setattr(fcntl, "flock", flock)
    older = threading.Thread(target=write_report, args=(out,), name="older")
    older.start()
    drawing.wait()
    write_run(out, "new", *graded(30, 25))  # the benchmark stores a new cell and writes its report
    newer = threading.Thread(target=newer_report, name="newer")
    newer.start()
    older.join()
    newer.join()
    assert (out / "plots" / "run-new-curves.png").is_file()
    assert 'id="run-new"' in (out / "report.html").read_text(encoding="utf-8")


def test_a_folder_where_a_plot_goes_is_one_line(tmp_path, capsys):
    # Issue 22: IsADirectoryError traceback, from `pieceboard report` and at the end of a benchmark.
    out = tmp_path / "out"
    write_run(out, "r", *graded(30, 20))
    (out / "plots" / "run-r-curves.png").mkdir(parents=True)
    assert main(["report", str(out)]) == 2
    plot = out / "plots" / "run-r-curves.png"
    assert capsys.readouterr().err.strip() == f"pieceboard: error: cannot write {plot}: is a folder, not a file"
    (out / "plots" / "run-r-curves.png").rmdir()
    (out / "plots" / "stale.png").mkdir()  # a folder with a plot's name is not a stale plot: left alone
    assert main(["report", str(out)]) == 0 and (out / "plots" / "stale.png").is_dir()
