#!/usr/bin/env bash
# Runs the MTP verification benchmark and its PyTorch peer on the same GPU, one after the
# other, and prints one markdown table (ours next to PyTorch's). Results go to RESULTS_DIR
# (default benchmarks/results): mtp-pytorch-<card>.json from the peer, mtp-<card>.json/.md/.svg
# from ours. Needs the built addon (npm run build:native, or MOE_KERNELS_ADDON); PYTHON picks
# the interpreter with PyTorch (default python3). Without PyTorch, or if the peer fails, the
# PyTorch columns stay empty. Without a CUDA GPU it measures nothing and exits with status 3.
#
#   benchmarks/run_mtp.sh [RESULTS_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
mkdir -p "$out"
cd "$root"

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi
card="$(node benchmarks/harness.js card)"
peer="$out/mtp-pytorch-$card.json"
echo "PyTorch peer:" >&2
"${PYTHON:-python3}" benchmarks/peers/mtp.py --out "$peer" >&2 || echo "run_mtp.sh: the PyTorch peer did not run" >&2
echo >&2
node benchmarks/mtp.js --out "$out" --peer "$peer"
node benchmarks/chart.js "$out/mtp-$card.json" "$out/mtp-$card.svg" || echo "run_mtp.sh: no chart drawn (the results are written)" >&2
