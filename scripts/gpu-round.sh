#!/usr/bin/env bash
# A round on a GPU host: the test suite, the sanitizers, every benchmark with its peer.
# Logs and results go to OUT; a summary is printed last. Steps: tests bench memcheck racecheck
# (default: all; a round can be split over several calls).
#   scripts/gpu-round.sh OUT [STEP...]        (on a GPU host, with the addon and dist/ built)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu-round}"
shift || true
steps="${*:-tests bench memcheck racecheck}"
mkdir -p "$out"
vitest=(node node_modules/vitest/vitest.mjs run)
summary=()
note() { summary+=("$1"); echo "$1"; }
has() { [[ " $steps " == *" $1 "* ]]; }

note "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)"

if has tests; then
  timeout 300 "${vitest[@]}" --reporter=verbose > "$out/tests.log" 2>&1
  note "tests: rc=$? passed=$(grep -c '✓' "$out/tests.log") failed=$(grep -c '×' "$out/tests.log") cuda-passed=$(grep '✓' "$out/tests.log" | grep -c 'cuda')"
fi
if has bench; then
  node benchmarks/launch_overhead.js --out "$out/results" > "$out/launch.log" 2>&1
  note "launch overhead: rc=$?"
  bash benchmarks/run_nvfp4.sh "$out/results" > "$out/nvfp4.log" 2>&1
  note "nvfp4 benchmark: rc=$?"
  bash benchmarks/run_mtp.sh "$out/results" > "$out/mtp.log" 2>&1
  note "mtp benchmark: rc=$?"
  bash benchmarks/run_routing.sh "$out/results" > "$out/routing.log" 2>&1
  note "routing benchmark: rc=$?"
  bash benchmarks/run_grouped.sh "$out/results" > "$out/grouped.log" 2>&1
  note "grouped benchmark: rc=$?"
  bash benchmarks/run_moe.sh "$out/results" > "$out/moe.log" 2>&1
  note "moe benchmark: rc=$?"
fi
# memcheck on every file's cases; racecheck on the kernels that share memory between threads
if has memcheck; then
  for f in ${MEMCHECK_FILES:-convert tensor runtime nvfp4 mtp routing grouped}; do
    timeout "${SANITIZER_TIMEOUT:-400}" compute-sanitizer --tool memcheck --target-processes all "${vitest[@]}" "test/$f.test.ts" > "$out/memcheck-$f.log" 2>&1
    note "memcheck $f: rc=$? $(grep -h 'ERROR SUMMARY' "$out/memcheck-$f.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';') $(grep -h 'Tests ' "$out/memcheck-$f.log")"
  done
fi
if has racecheck; then
  for f in ${RACECHECK_FILES:-nvfp4 mtp routing grouped}; do
    # small shapes: racecheck slows a kernel by orders of magnitude
    case $f in
      nvfp4) filter='W4A16|W4A4|swizzle|quantize' ;;
      mtp) filter='V=1000|V=4099|V = 37' ;;
      routing) filter='routeTopK \[cuda\]|expertLayout \[cuda\]|permute / unpermute \[cuda\]' ;;
      grouped) filter='every kernel the heuristic picks' ;;
      *) filter='.' ;;
    esac
    timeout "${SANITIZER_TIMEOUT:-400}" compute-sanitizer --tool racecheck --target-processes all "${vitest[@]}" "test/$f.test.ts" -t "$filter" > "$out/racecheck-$f.log" 2>&1
    note "racecheck $f: rc=$? $(grep -h 'RACECHECK SUMMARY\|ERROR SUMMARY' "$out/racecheck-$f.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';') $(grep -h 'Tests ' "$out/racecheck-$f.log")"
  done
fi

printf '\n== summary ==\n'
printf '%s\n' "${summary[@]}"
