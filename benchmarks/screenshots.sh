#!/usr/bin/env bash
# The screenshots in docs/report.md (docs/images/report-*.png), taken from the real report of benchmarks/report.toml
# in headless Chromium (Debian's chromium package), 960 CSS pixels wide at twice the pixel density, so that the docs
# site shows them at a readable size. About 10 minutes on a 2-core CPU. benchmarks/docs_figures.py --run calls it.
#   bash benchmarks/screenshots.sh [WORK]          # trains into WORK/results/report (default: the repository)
#   PYTHON=python3 bash benchmarks/screenshots.sh  # another interpreter than .venv/bin/python
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(cd "${1:-$repo}" && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
cd "$work"
"$python" -m pieceboard.bench "$repo/benchmarks/report.toml" --output results/report
"$python" -m pieceboard.cli report results/report
REPO="$repo" "$python" - <<'PY'
"""Render the page once, full height, and cut the sections out of it (after asking the browser where they are)."""
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

PAGE = Path("results/report/report.html").resolve()
IMAGES = Path(os.environ["REPO"]) / "docs" / "images"
WIDTH, SCALE = 960, 2  # CSS pixels, and device pixels per CSS pixel
# (file, element at the top, element below the part shown or a height in CSS pixels)
SHOTS = [
    ("report-leaderboard", "top", "details"),
    ("report-mistakes", "mistakes", 560),
    ("report-across-runs", "across-runs", 1060),
    ("report-run", "run-resnet18-scratch@32px-bs64", 830),
]
PROBE = """<script>window.addEventListener("load", () => {
  const top = {};
  for (const e of document.querySelectorAll("[id]")) top[e.id] = e.getBoundingClientRect().top + window.scrollY;
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({top, height: document.documentElement.scrollHeight});
  document.body.appendChild(probe);
});</script>"""


def chromium(profile, height, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
    size = [f"--window-size={WIDTH},{height}", f"--force-device-scale-factor={SCALE}"]
    command = ["chromium", *flags, *size, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


with tempfile.TemporaryDirectory() as tmp:
    probe = Path(tmp) / "probe.html"
    probe.write_text(PAGE.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium(f"{tmp}/a", 1000, "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    where = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    height = int(where["height"]) + 50
    full = Path(tmp) / "full.png"
    chromium(f"{tmp}/b", height, f"--screenshot={full}", "--virtual-time-budget=10000", PAGE.as_uri())
    page = Image.open(full).convert("RGB")
    for name, first, last in SHOTS:
        top = max(0, int(where["top"][first]) - 10)
        bottom = top + last if isinstance(last, int) else int(where["top"][last]) - 10
        part = page.crop((0, top * SCALE, WIDTH * SCALE, bottom * SCALE))
        path = IMAGES / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        part.quantize(256).save(path, optimize=True)  # 256 colours are plenty for text and plots
        print(path, part.size, path.stat().st_size // 1024, "KiB")
PY
