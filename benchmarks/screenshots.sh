#!/usr/bin/env bash
# The screenshots in docs/report.md (docs/images/report-*.png), taken from the real report of benchmarks/report.toml
# in headless Chromium (Debian's chromium package). About 10 minutes on a 2-core CPU.
#   bash benchmarks/screenshots.sh                 # trains into results/report (kept runs are reused)
#   PYTHON=python3 bash benchmarks/screenshots.sh  # another interpreter than .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -m pieceboard.bench benchmarks/report.toml --output results/report
"$python" -m pieceboard.cli report results/report
"$python" - <<'PY'
"""Render the page once, full height, and cut the sections out of it (after asking the browser where they are)."""
import json
import re
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

PAGE = Path("results/report/report.html").resolve()
WIDTH = 1900  # the whole leaderboard table, without a scroll bar
# (file, element at the top, width, height or the element below the part shown)
SHOTS = [
    ("report-leaderboard", "top", WIDTH, "across-runs"),
    ("report-across-runs", "across-runs", WIDTH, 1060),
    ("report-run", "run-resnet18-scratch@32px-bs64", 1450, 830),
]
PROBE = """<script>window.addEventListener("load", () => {
  const top = {};
  for (const e of document.querySelectorAll("[id]")) top[e.id] = e.getBoundingClientRect().top + window.scrollY;
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({top, height: document.documentElement.scrollHeight});
  document.body.appendChild(probe);
});</script>"""


def chromium(profile, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
    command = ["chromium", *flags, f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


with tempfile.TemporaryDirectory() as tmp:
    probe = Path(tmp) / "probe.html"
    probe.write_text(PAGE.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    height = 1000
    dom = chromium(f"{tmp}/a", "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    where = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    height = int(where["height"]) + 50
    full = Path(tmp) / "full.png"
    chromium(f"{tmp}/b", f"--screenshot={full}", "--virtual-time-budget=10000", PAGE.as_uri())
    page = Image.open(full).convert("RGB")
    for name, first, width, last in SHOTS:
        top = max(0, int(where["top"][first]) - 10)
        bottom = top + last if isinstance(last, int) else int(where["top"][last]) - 10
        part = page.crop((0, top, width, bottom))
        path = Path("docs/images") / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        part.quantize(256).save(path, optimize=True)  # 256 colours are plenty for text and plots
        print(path, part.size, path.stat().st_size // 1024, "KiB")
PY
