#!/usr/bin/env bash
# pyproject.toml's dependency floors, checked: a fresh venv with the lowest version of every runtime dependency that
# pyproject allows (`>=X` installed as `==X`), then a short benchmark through the command line and the tests of the
# modules that lean on those versions most. About 10 minutes on 2 cores, with PyPI reachable.
#   bash benchmarks/floors.sh [VENV]          # default VENV: /tmp/pieceboard-floors (replaced)
#   PYTHON=python3.11 bash benchmarks/floors.sh
# torch and torchvision are the exception: their floors (torch 2.6) would be downloads of several GB, so the venv takes
# the pair that lies on this machine's disk (TORCH, TORCHVISION; default 2.14.1 and 0.29.1, as the project's venv).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-/tmp/pieceboard-floors}
python=${PYTHON:-python3}
torch=${TORCH:-2.14.1}
torchvision=${TORCHVISION:-0.29.1}
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "torch==$torch" "torchvision==$torchvision" 2> >(grep -v "^WARNING: Location" >&2)
floors=$("$venv/bin/python" - "$repo/pyproject.toml" <<'PY'
"""Every runtime dependency's floor as a pin, e.g. numpy>=2.0 -> numpy==2.0; torch and torchvision left open."""
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
for spec in dependencies:
    requirement, _, marker = spec.partition(";")
    if marker and "python_version < '3.11'" in marker:
        continue  # tomli: only below 3.11
    name, floor = re.fullmatch(r"([A-Za-z0-9_.\[\]-]+)>=([0-9.]+)", requirement.strip()).groups()
    print(name if name in ("torch", "torchvision") else f"{name}=={floor}")
PY
)
# shellcheck disable=SC2086
"$venv/bin/pip" install -q "$repo" $floors pytest pytest-xdist 2> >(grep -v "^WARNING: Location" >&2)
"$venv/bin/pip" check
echo "installed:"
"$venv/bin/pip" list 2>/dev/null | grep -iE "^(torch|torchvision|timm|accelerate|datasets|evaluate|wandb|rich|pydantic|scikit-learn|scipy|safetensors|pillow|numpy|matplotlib) "
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$repo/tests" "$repo/benchmarks" "$work/"
cd "$work"
export PIECEBOARD_CACHE="$work/cache" WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
"$venv/bin/python" - <<'PY'
"""A small folder of class folders (each picture also turned and inverted, as the demo's) and a benchmark of it."""
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from conftest import make_augmented_folder, write_benchmark

folder = make_augmented_folder(Path("images"), classes=3, pictures=6, singles=8)
body = """
[defaults]
epochs = 2
batch_size = 8

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"

[[runs]]
name = "resnet18"
model = "resnet18"
mode = "scratch"

[matrix]
image_size = [16, 24]
"""
write_benchmark(Path("smoke.toml"), folder, body)
PY
"$venv/bin/pieceboard" bench smoke.toml --output out
"$venv/bin/pieceboard" leaderboard out --columns id,f1_macro,p_vs_best --format md
"$venv/bin/pieceboard" compare out mlp@16px resnet18@16px
"$venv/bin/pieceboard" report out
test -s out/report.html
"$venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 tests/test_metrics.py tests/test_leaderboard.py \
  tests/test_compare.py tests/test_config.py tests/test_report.py tests/test_dedup.py tests/test_tracking.py
echo "floors: every check passed"
