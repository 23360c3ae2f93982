#!/usr/bin/env node
// What crossing from JS to a kernel launch costs: an empty kernel launched from a C++ loop,
// from JS through the raw binding, and through a whole op (argument checks included).
// Only the enqueue is timed, in bursts short enough that the launch queue never fills.
//   node benchmarks/launch_overhead.js [--out DIR]
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const moe = require('../dist');

const BURST = 256;
const BURSTS = 400;

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

// The paths take turns burst by burst, so that clock and scheduling drift reach all alike.
async function measureAll(paths) {
  const stream = moe.defaultStream('cuda:0');
  const perCall = paths.map(() => []);
  for (let warm = 0; warm < 20; warm++) for (const p of paths) p.burst(stream);
  await stream.synchronize();
  for (let r = 0; r < BURSTS; r++) {
    for (let i = 0; i < paths.length; i++) {
      await stream.synchronize();
      perCall[i].push((paths[i].burst(stream) / BURST) * 1e6);
    }
  }
  await stream.synchronize();
  return paths.map((p, i) => ({ label: p.label, usPerCall: median(perCall[i]), usPerCallMin: Math.min(...perCall[i]) }));
}

function hostSeconds(fn) {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function main() {
  const outIndex = process.argv.indexOf('--out');
  const outDir = outIndex > 0 ? process.argv[outIndex + 1] : path.join(__dirname, 'results');
  const dev = moe.devices()[0];
  const x = moe.fromArray([1.5], { device: 'cuda:0' });
  const y = moe.empty([1], { dtype: 'bf16', device: 'cuda:0' });
  const rows = await measureAll([
    { label: 'C++ loop (kernel<<<>>> in native code)', burst: (s) => moe.diagnostics.launchEmptyLoop(BURST, s) },
    {
      label: 'JS -> empty kernel (diagnostics.launchEmpty)',
      burst: (s) =>
        hostSeconds(() => {
          for (let i = 0; i < BURST; i++) moe.diagnostics.launchEmpty(s);
        }),
    },
    {
      label: 'JS -> convert op, 1 element, out given',
      burst: (s) =>
        hostSeconds(() => {
          for (let i = 0; i < BURST; i++) moe.convert(x, 'bf16', { out: y, stream: s });
        }),
    },
  ]);
  const base = rows[0].usPerCall;
  const lines = [
    `Launch overhead on ${dev.name} (median of ${BURSTS} bursts of ${BURST} launches, enqueue time only)`,
    '',
    '| path | us per call | added vs C++ loop (us) |',
    '|---|---|---|',
    ...rows.map((r) => `| ${r.label} | ${r.usPerCall.toFixed(3)} | ${(r.usPerCall - base).toFixed(3)} |`),
  ];
  console.log(lines.join('\n'));
  const card = dev.name.replace(/[^A-Za-z0-9]+/g, '-').replace(/-+$/, '');
  fs.mkdirSync(outDir, { recursive: true });
  const result = { benchmark: 'launch_overhead', device: dev.name, date: new Date().toISOString(), node: process.version, burst: BURST, bursts: BURSTS, rows };
  fs.writeFileSync(path.join(outDir, `launch_overhead-${card}.json`), JSON.stringify(result, null, 2) + '\n');
  fs.writeFileSync(path.join(outDir, `launch_overhead-${card}.md`), lines.join('\n') + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
