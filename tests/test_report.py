"""report.py and `pieceboard report`: plots and a self-contained report.html, checked in headless Chromium too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from _results import graded, write_run
from pieceboard.cli import main
from pieceboard.leaderboard import Leaderboard
from pieceboard.report import axis_groups, train_loss_curve, write_report
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
    """Two image sizes x three seeds, with latency and train logs; one failed run and one damaged result."""
    for size, n_right in ((8, 20), (12, 26)):
        for seed in range(3):
            run_id = f"mlp@{size}px-seed{seed}"
            config = {"image_size": size, "seed": seed}
            extra = {"latency_ms": size / 4, "peak_mem_mb": 100.0 + size, "train_log": _train_log()}
            write_run(out, run_id, *graded(30, n_right + seed), config=config, **extra)
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
    visible: images.filter((i) => i.getBoundingClientRect().width > 100).length,
    rows: document.querySelectorAll("#leaderboard tr").length,
    runs: [...document.querySelectorAll("#leaderboard td a")].map((a) => a.textContent),
  });
  document.body.appendChild(probe);
});
</script>"""


def _apt_install_chromium() -> str:
    """Install Debian's chromium package; returns what went wrong, or an empty string."""
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    proc = None
    for command in (install, ["apt-get", "update"], install):  # the package lists may be missing or stale
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if command is install and proc.returncode == 0:
            return ""
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get where missing and allowed, else the test is skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed, and installing it needs apt-get as root (apt-get install chromium)")
    problem = _apt_install_chromium()
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"chromium is not installed, and apt-get could not install it: {problem}")
    return found


def _render(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_report_shows_the_leaderboard_and_the_images_in_chromium(study, chromium, tmp_path):
    page = (study / "report.html").read_text(encoding="utf-8")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = _render(chromium, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=10000", probe_page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    shown = json.loads(found.group(1).replace("&quot;", '"'))
    assert shown["images"] == shown["decoded"] == shown["visible"] == 16
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
