#!/usr/bin/env bash
# NVFP4 GEMM benchmark: ours (benchmarks/nvfp4.js) and the PyTorch peers (benchmarks/peers/nvfp4.py)
# on the same GPU in one call, merged into one markdown table and charted.
#
#   benchmarks/run_nvfp4.sh [OUT_DIR]        (default benchmarks/results)
#
# Extra arguments for both programs (e.g. --m 1,16 --shapes 4096x7168) go in NVFP4_BENCH_ARGS.
# PYTHON picks the interpreter with torch (default python3). Without torch, or if the peers fail,
# the table is still written with the peer columns as n/a. Without a CUDA GPU it measures
# nothing and exits with status 3.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
read -r -a EXTRA <<< "${NVFP4_BENCH_ARGS:-}"

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi

node benchmarks/nvfp4.js --out "$OUT" ${EXTRA[@]+"${EXTRA[@]}"}
OURS="$(ls -t "$OUT"/nvfp4_gemm-ours-*.json | head -n 1)"

PEERS=""
if "${PYTHON:-python3}" benchmarks/peers/nvfp4.py --out "$OUT" ${EXTRA[@]+"${EXTRA[@]}"}; then
  PEERS="$(ls -t "$OUT"/nvfp4_gemm-peers-*.json | head -n 1)"
else
  echo "run_nvfp4.sh: the PyTorch peers did not run; their columns will read n/a" >&2
fi

node benchmarks/nvfp4.js merge --ours "$OURS" ${PEERS:+--peers "$PEERS"} --out "$OUT"
MERGED="$OUT/$(basename "$OURS" | sed 's/^nvfp4_gemm-ours-/nvfp4_gemm-/')"
node benchmarks/chart.js "$MERGED" "${MERGED%.json}.svg" || echo "run_nvfp4.sh: no chart drawn (the results are written)" >&2
