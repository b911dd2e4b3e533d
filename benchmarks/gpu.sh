#!/usr/bin/env bash
# The GPU check, as one script: throughput, then the whole One Piece study (benchmarks/all.toml) on a generated folder
# of the original size, one cell at a time (cut at a time limit) and with --jobs auto (to the end), with the wall time,
# per-cell img/s and SM utilisation. About 8 minutes on one H200.
#
#   bash benchmarks/gpu.sh                      # writes into $OUT (the device tool's folder) or results/gpu
#
# On a machine without datasets, evaluate or pydantic (see ../shared/NOTES.md), first run, on a machine with pip:
#   bash benchmarks/gpu_wheels.sh               # cp312 wheels into .gpu-wheels/ (git-ignored), carried along
# and this script installs them with `pip --target .../site-packages` and puts that and src/ on PYTHONPATH.
#
# Knobs (environment): IMAGES (11700), JOBS1_LIMIT (seconds for the one-at-a-time run, 120), EXTRA_SET (more --set
# arguments, e.g. "defaults.epochs=1" for a quick look), THROUGHPUT_ARGS (more throughput options), PYTHON (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
IMAGES=${IMAGES:-11700}
JOBS1_LIMIT=${JOBS1_LIMIT:-120}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1

if [ -d .gpu-wheels ] && ! "$PYTHON" -c "import datasets, evaluate, pydantic" 2>/dev/null; then
  site=/tmp/pieceboard-gpu/site-packages   # dill pickles modules outside a folder of this name by value
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$site" .gpu-wheels/*.whl
  export PYTHONPATH="$site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 PIECEBOARD_CACHE=/tmp/pieceboard-gpu/cache
work=/tmp/pieceboard-gpu
mkdir -p "$work"

echo "== versions and device"
"$PYTHON" - <<'EOF'
import platform, torch, timm, accelerate, datasets
print("python", platform.python_version(), "torch", torch.__version__, "timm", timm.__version__,
      "accelerate", accelerate.__version__, "datasets", datasets.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
      "gpus", torch.cuda.device_count())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

echo "== throughput: default and 200 px cases"
"$PYTHON" -m pieceboard.cli throughput --full --output "$OUT/throughput.json" ${THROUGHPUT_ARGS:-}

echo "== a folder the size of the study: $IMAGES mixed JPEG/PNG images, 18 classes; random-init weights files"
"$PYTHON" - "$work" "$IMAGES" <<'EOF'
import sys
from multiprocessing import Pool
from pathlib import Path
import safetensors.torch, timm
from pieceboard.throughput import _write_photos

work, images = Path(sys.argv[1]), int(sys.argv[2])
folder = work / f"onepiece-{images}"
if not (folder / ".complete").exists():
    shards = 16
    with Pool(shards) as pool:  # each shard its own seed and file names: the classes get images from every shard
        pool.starmap(_write_photos, [(folder / f"shard{s}", images // shards, 18, s) for s in range(shards)])
    for shard in sorted(folder.glob("shard*")):  # class_k/<shard>-<file>, one class-folder tree
        for image in shard.glob("*/*"):
            target = folder / image.parent.name / f"{shard.name}-{image.name}"
            target.parent.mkdir(exist_ok=True)
            image.rename(target)
        for empty in shard.iterdir():
            empty.rmdir()
        shard.rmdir()
    (folder / ".complete").write_text("")
for name in ("resnet18", "mobilenetv3_large_100"):  # the timing of a pretrained row does not depend on its weights
    safetensors.torch.save_file(timm.create_model(name).state_dict(), str(work / f"{name}.safetensors"))
print(folder)
EOF
sets=(--set "data.path=$work/onepiece-$IMAGES" --set "runs.resnet18-linear-probe.weights=$work/resnet18.safetensors"
      --set "runs.resnet18-finetune.weights=$work/resnet18.safetensors"
      --set "runs.mobilenetv3-finetune.weights=$work/mobilenetv3_large_100.safetensors")
for extra in ${EXTRA_SET:-}; do sets+=(--set "$extra"); done

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }

echo "== all.toml, one cell at a time, cut after ${JOBS1_LIMIT}s"
rm -rf "$work/one"
start=$(date +%s.%N)
timeout --signal=TERM --kill-after=30 "$JOBS1_LIMIT" "$PYTHON" -m pieceboard.bench benchmarks/all.toml \
  --output "$work/one" --jobs 1 "${sets[@]}" | stamp | tee "$OUT/jobs1.log"
echo "jobs 1: $(grep -c ' done ' "$OUT/jobs1.log") cells done in $(awk "BEGIN {print $(date +%s.%N) - $start}") s"

echo "== all.toml, --jobs auto, to the end"
rm -rf "$work/auto"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi dmon -s u -d 1 -o T > "$OUT/dmon.txt" &
  dmon=$!
fi
start=$(date +%s.%N)
"$PYTHON" -m pieceboard.bench benchmarks/all.toml --output "$work/auto" "${sets[@]}" | stamp | tee "$OUT/auto.log"
end=$(date +%s.%N)
[ -n "${dmon:-}" ] && kill "$dmon"
echo "jobs auto: wall $(awk "BEGIN {print $end - $start}") s"
cp "$work/auto/leaderboard.json" "$OUT/leaderboard.json"

echo "== per cell, and SM utilisation while training"
"$PYTHON" - "$OUT" <<'EOF'
import json, statistics, sys, time
from pathlib import Path
out = Path(sys.argv[1])
rows = json.loads((out / "leaderboard.json").read_text())
for r in sorted(rows, key=lambda r: r["id"]):
    print(f"{r['id']:40s} {r['status']:9s} train {r.get('train_s') or 0:7.1f}s {r.get('train_img_s') or 0:8.0f} img/s "
          f"compile {r.get('compile_s') or 0:5.1f}s acc {r.get('accuracy') or 0:.3f}")
lines = (out / "auto.log").read_text().splitlines()
began = next((float(l.split()[0]) for l in lines if "training " in l and "at a time" in l), None)
ended = float(lines[-1].split()[0]) if lines else None
dmon = out / "dmon.txt"
if began and dmon.exists():
    sm = []
    for line in dmon.read_text().splitlines():
        parts = line.split()
        if line.startswith("#") or len(parts) < 4:
            continue
        t = time.mktime(time.strptime(time.strftime("%Y%m%d ") + parts[0], "%Y%m%d %H:%M:%S"))
        if began <= t <= ended:
            sm.append(float(parts[2]))  # time, gpu, sm, mem, ...
    if sm:
        print(f"SM utilisation while training: median {statistics.median(sm):.0f} %, mean {statistics.mean(sm):.0f} %"
              f" over {len(sm)} samples")
EOF
