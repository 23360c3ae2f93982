#!/usr/bin/env bash
# Runs the routing benchmark and its PyTorch peer on the same GPU, one after the
# other, and prints one markdown table (ours next to PyTorch's). Results go to RESULTS_DIR
# (default benchmarks/results): routing-pytorch-<card>.json from the peer, routing-<card>.json/.md
# from ours. Needs the built addon (npm run build:native, or MOE_KERNELS_ADDON); PYTHON picks
# the interpreter with PyTorch (default python3). Without PyTorch, or if the peer fails, the
# PyTorch columns stay empty. Without a CUDA GPU it measures nothing and exits with status 3.
#
#   benchmarks/run_routing.sh [RESULTS_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
mkdir -p "$out"
cd "$root"

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi
card="$(node benchmarks/harness.js card)"
peer="$out/routing-pytorch-$card.json"
echo "PyTorch peer:" >&2
"${PYTHON:-python3}" benchmarks/peers/routing.py --out "$peer" >&2 || echo "run_routing.sh: the PyTorch peer did not run" >&2
echo >&2
node benchmarks/routing.js --out "$out" --peer "$peer"
