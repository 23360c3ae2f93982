#!/usr/bin/env bash
# One decode step of the demo's slice (benchmarks/decode_step.js: NVFP4 + MTP-3, with the BF16
# floor from the copy bandwidth), then its PyTorch BF16 peer (benchmarks/peers/decode_step.py),
# merged into decode_step-<card>.json/.md in OUT_DIR (default benchmarks/results).
#
#   benchmarks/run_decode_step.sh [OUT_DIR]
#
# DECODE_STEP_ARGS go to both programs (e.g. "--layers 4 --batch 1,16,64,256"). PYTHON picks the
# interpreter with torch (default python3; `false` skips the peer). Without torch, or if the peer
# fails, its columns read n/a. Without a CUDA GPU it measures nothing and exits with status 3.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"
read -r -a EXTRA <<< "${DECODE_STEP_ARGS:-}"

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi
card="$(node benchmarks/harness.js card)"
ours="$out/decode_step-ours-$card.json"
peer="$out/decode_step-pytorch-$card.json"
node benchmarks/decode_step.js --out "$out" ${EXTRA[@]+"${EXTRA[@]}"}

# the peer runs after ours has exited: the GPU's memory is its own
rm -f "$peer"
echo "PyTorch BF16 peer:" >&2
"${PYTHON:-python3}" benchmarks/peers/decode_step.py --out "$peer" ${EXTRA[@]+"${EXTRA[@]}"} >&2 || echo "run_decode_step.sh: the PyTorch peer did not run; its columns read n/a" >&2
PEER_ARGS=()
if [ -f "$peer" ]; then PEER_ARGS=(--peer "$peer"); fi
node benchmarks/decode_step.js merge --ours "$ours" ${PEER_ARGS[@]+"${PEER_ARGS[@]}"} --out "$out"
# the chart is optional: without vega it is skipped with a message
node benchmarks/chart.js "$out/decode_step-$card.json" "$out/decode_step-$card.svg" || echo "run_decode_step.sh: no chart drawn" >&2
