#!/usr/bin/env bash
# One round on a GPU host: the whole test suite, the sanitizers, every benchmark with its peer.
# Logs and results go to OUT (default /tmp/gpu-round); a summary is printed last.
#   scripts/gpu-round.sh [OUT]        (after `source .device/env.sh` on a host without Node.js)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu-round}"
mkdir -p "$out"
vitest=(node node_modules/vitest/vitest.mjs run)
summary=()
note() { summary+=("$1"); echo "$1"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
note "GPU: $(head -n 1 "$out/gpu.txt")"

timeout 600 "${vitest[@]}" --reporter=verbose > "$out/tests.log" 2>&1
note "tests: rc=$? passed=$(grep -c '✓' "$out/tests.log") failed=$(grep -c '×' "$out/tests.log") cuda-passed=$(grep '✓' "$out/tests.log" | grep -c 'cuda')"

# memcheck on every file's CUDA cases; racecheck on the kernels that share memory between threads
for f in convert tensor runtime nvfp4 mtp; do
  timeout 600 compute-sanitizer --tool memcheck --target-processes all "${vitest[@]}" "test/$f.test.ts" > "$out/memcheck-$f.log" 2>&1
  note "memcheck $f: rc=$? $(grep -h 'ERROR SUMMARY' "$out/memcheck-$f.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
done
for f in nvfp4 mtp; do
  timeout 600 compute-sanitizer --tool racecheck --target-processes all "${vitest[@]}" "test/$f.test.ts" -t 'CUDA and the CPU' > "$out/racecheck-$f.log" 2>&1
  note "racecheck $f: rc=$? $(grep -h 'RACECHECK SUMMARY\|ERROR SUMMARY' "$out/racecheck-$f.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
done

node benchmarks/launch_overhead.js --out "$out/results" > "$out/launch.log" 2>&1
note "launch overhead: rc=$?"
bash benchmarks/run_nvfp4.sh "$out/results" > "$out/nvfp4.log" 2>&1
note "nvfp4 benchmark: rc=$?"
bash benchmarks/run_mtp.sh "$out/results" > "$out/mtp.log" 2>&1
note "mtp benchmark: rc=$?"

printf '\n== summary ==\n'
printf '%s\n' "${summary[@]}"
