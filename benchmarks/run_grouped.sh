#!/usr/bin/env bash
# Grouped NVFP4 expert GEMM benchmark: ours (benchmarks/grouped.js) and the PyTorch peers
# (benchmarks/peers/grouped.py) on the same GPU in one call, merged into one markdown table.
#
#   benchmarks/run_grouped.sh [OUT_DIR]        (default benchmarks/results)
#
# Extra arguments for both programs (e.g. --decode 1,8 --prefill 4096) go in GROUPED_BENCH_ARGS.
# PYTHON picks the interpreter with torch (default python3). Without torch, or if the peers fail,
# the table is still written with the peer columns as n/a. Without a CUDA GPU it measures
# nothing and exits with status 3.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
read -r -a EXTRA <<< "${GROUPED_BENCH_ARGS:-}"

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi

node benchmarks/grouped.js --out "$OUT" ${EXTRA[@]+"${EXTRA[@]}"}
OURS="$(ls -t "$OUT"/grouped_gemm-ours-*.json | head -n 1)"

PEERS=""
if "${PYTHON:-python3}" benchmarks/peers/grouped.py --out "$OUT" ${EXTRA[@]+"${EXTRA[@]}"}; then
  PEERS="$(ls -t "$OUT"/grouped_gemm-peers-*.json | head -n 1)"
else
  echo "run_grouped.sh: the PyTorch peers did not run; their columns will read n/a" >&2
fi

node benchmarks/grouped.js merge --ours "$OURS" ${PEERS:+--peers "$PEERS"} --out "$OUT"
