#!/usr/bin/env bash
# Runs the MTP verification benchmark and its PyTorch peer on the same GPU, one after the
# other, and prints one markdown table (ours next to PyTorch's). Results go to RESULTS_DIR
# (default benchmarks/results): mtp-pytorch-<card>.json from the peer, mtp-<card>.json/.md
# from ours. Needs the built addon (npm run build:native, or MOE_KERNELS_ADDON) and python3
# with PyTorch.
#
#   benchmarks/run_mtp.sh [RESULTS_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/benchmarks/results}"
mkdir -p "$out"
cd "$root"

# benchmarks load dist/: compile it where TypeScript is installed (a GPU host may carry a built dist/)
if [ -x node_modules/.bin/tsc ]; then node_modules/.bin/tsc -p tsconfig.json; fi
card="$(python3 -c 'import re, torch; print(re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-"))')"
peer="$out/mtp-pytorch-$card.json"
echo "PyTorch peer:" >&2
python3 benchmarks/peers/mtp.py --out "$peer" >&2
echo >&2
node benchmarks/mtp.js --out "$out" --peer "$peer"
