#!/usr/bin/env bash
# Runs the MoE block benchmark; benchmarks/moe.js runs its PyTorch peer itself (same layer and
# inputs, passed through a temporary folder) and writes moe-<card>.json/.md to RESULTS_DIR
# (default benchmarks/results). PYTHON picks the interpreter with PyTorch (default python3);
# without PyTorch the peer's columns stay empty. Without a CUDA GPU it exits with status 3.
#
#   benchmarks/run_moe.sh [RESULTS_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
mkdir -p "$out"
cd "$root"

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi
node benchmarks/moe.js --out "$out" --python "${PYTHON:-python3}"
