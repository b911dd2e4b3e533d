#!/usr/bin/env bash
# Smoke test of a fresh install on several Pythons (optional, not in CI: each new venv downloads torch, several GB).
#   bash benchmarks/python_versions.sh                      # 3.12 and 3.13: pythonX.Y on PATH, else pyenv's newest
#   bash benchmarks/python_versions.sh 3.11 /opt/py/bin/python3.14
# For each Python: a venv in $PIECEBOARD_VENVS (default /tmp/pieceboard-python-versions; kept, so a rerun downloads
# nothing), `pip install .` of this checkout, `pieceboard --version` and `--help`, then the demo benchmark for one
# epoch at 8 px with W&B off. Ends with a summary line per Python; the exit code is 1 if any of them failed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venvs=${PIECEBOARD_VENVS:-/tmp/pieceboard-python-versions}

find_python() {  # a path, or X.Y: pythonX.Y if it runs (pyenv's shims exist but refuse inactive versions), else pyenv's
    if [[ "$1" == */* ]]; then echo "$1"; return; fi
    if "python$1" -c "" 2>/dev/null; then command -v "python$1"; return; fi
    ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".*/bin/python 2>/dev/null | sort -V | tail -n 1
}

smoke() {  # $1: a Python interpreter; prints what it does, returns non-zero at the first step that fails
    local python=$1 version venv
    version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') || return
    venv="$venvs/$version"
    echo "== Python $version: $venv"
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv" || return
    "$venv/bin/python" -m pip install --quiet "$repo" || return
    "$venv/bin/pieceboard" --version || return
    "$venv/bin/pieceboard" --help > /dev/null || return
    rm -rf "$venv/results-demo"  # a rerun would keep the earlier cells instead of training them
    # One thread: on a shared machine, OpenMP threads waiting on busy cores slow training down many times over.
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 "$venv/bin/python" -m pieceboard.bench "$repo/benchmarks/demo.toml" \
        --output "$venv/results-demo" --set defaults.epochs=1 --set 'matrix.image_size=[8]' --set benchmark.wandb=off
}

[[ $# -gt 0 ]] || set -- 3.12 3.13
summary=()
status=0
for wanted in "$@"; do
    python=$(find_python "$wanted")
    if [[ -z "$python" ]]; then
        summary+=("$wanted: not found (install it, e.g. pyenv install $wanted)")
        status=1
    elif smoke "$python"; then
        summary+=("$wanted: ok ($python)")
    else
        summary+=("$wanted: FAILED ($python)")
        status=1
    fi
done
printf '%s\n' "${summary[@]}"
exit "$status"
