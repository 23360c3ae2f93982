#!/usr/bin/env bash
# Launch overhead benchmark (benchmarks/launch_overhead.js), its results charted. No PyTorch peer.
#
#   benchmarks/run_launch.sh [OUT_DIR]        (default benchmarks/results)
#
# Without a CUDA GPU it measures nothing and exits with status 3.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi
card="$(node benchmarks/harness.js card)"
node benchmarks/launch_overhead.js --out "$out"
node benchmarks/chart.js "$out/launch_overhead-$card.json" "$out/launch_overhead-$card.svg" || echo "run_launch.sh: no chart drawn (the results are written)" >&2
