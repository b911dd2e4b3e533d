#!/usr/bin/env bash
# The data-path and model throughput ratios (docs/throughput.md), written to results/throughput.json.
#   bash benchmarks/throughput.sh            # default cases on a generated mixed-size PNG/JPEG folder
#   bash benchmarks/throughput.sh --full     # also 200 px
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/pieceboard throughput --output results/throughput.json "$@"
