#!/usr/bin/env bash
# Runs the expert-parallel benchmark (dispatch and combine on 2 GPUs of one host) and its PyTorch
# peer (NCCL all_to_all_single on the same bytes, 2 processes), one after the other, and prints
# one markdown table. Results go to RESULTS_DIR (default benchmarks/results):
# ep-pytorch-<card>.json from the peer, ep-<card>.json/.md from ours. Needs the built addon (npm
# run build:native, or MOE_KERNELS_ADDON); PYTHON picks the interpreter with PyTorch (default
# python3). Without PyTorch, or if the peer fails, the NCCL columns stay empty. Without 2 CUDA
# GPUs it measures nothing and exits with status 3. NCCL_NVLS_ENABLE stays 0.
#
#   benchmarks/run_ep.sh [RESULTS_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
mkdir -p "$out"
cd "$root"
export NCCL_NVLS_ENABLE=0

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi
card="$(node benchmarks/harness.js card)"
peer="$out/ep-pytorch-$card.json"
echo "PyTorch peer:" >&2
# bounded, so that a stuck peer leaves time for ours
timeout 55 "${PYTHON:-python3}" benchmarks/peers/ep.py --out "$peer" --timeout 40 >&2 || echo "run_ep.sh: the PyTorch peer did not run" >&2
echo >&2
node benchmarks/ep.js --out "$out" --peer "$peer"
