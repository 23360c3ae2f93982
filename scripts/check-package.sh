#!/usr/bin/env bash
# Installs the package as a user would: prebuilds made, `npm pack`, then `npm install <tarball>`
# in an empty project without running install scripts, and uses it from CommonJS and ESM.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
npm run prebuild --silent
tarball=$(npm pack --silent | tail -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"; rm -f "$root/$tarball"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts "$root/$tarball" >/dev/null
node -e "
const moe = require('@moe/kernels');
const x = moe.fromArray([1.1, 2.2], { dtype: 'f32', device: 'cpu' });
moe.convert(x, 'bf16').toArray().then((v) => {
  if (v[0] !== 1.1015625) throw new Error('unexpected ' + v[0]);
  console.log('CommonJS: ok, backends', moe.availableBackends().join(','));
});"
cat > esm.mjs <<'JS'
import { convert, fromArray } from '@moe/kernels';
const v = await convert(fromArray([3.3], { device: 'cpu' }), 'fp8e4m3').toArray();
if (v[0] !== 3.25) throw new Error('unexpected ' + v[0]);
console.log('ESM: ok');
JS
node esm.mjs
test -f node_modules/@moe/kernels/dist/index.d.ts && echo "types: ok"
# the benchmarks travel without their results; bench lists them and, without a GPU, exits 3
test ! -e node_modules/@moe/kernels/benchmarks/results
npx --no-install moe-kernels bench --list | grep -q '^nvfp4 ' && echo "bench --list: ok"
if ! node -e "process.exit(require('@moe/kernels').cudaAvailable() ? 0 : 1)"; then
  status=0
  npx --no-install moe-kernels bench 2>bench.err || status=$?
  if [ "$status" -ne 3 ]; then cat bench.err; echo "bench without a GPU: expected status 3, got $status" >&2; exit 1; fi
  echo "bench without a GPU: exits 3"
fi
