#!/usr/bin/env node
// What crossing from JS to a kernel launch costs: an empty kernel launched from a C++ loop,
// from JS through the raw binding, and through a whole op (argument checks included).
// Only the enqueue is timed, in bursts short enough that the launch queue never fills.
//   node benchmarks/launch_overhead.js [--out DIR]
// Without a CUDA GPU it exits with status 3 (harness.EXIT_NO_GPU).
//
// The paths are a table: each is { name, burst(stream) => host seconds for BURST launches },
// and optionally `baseline`, the name of the path its added cost is counted against (default:
// the first path). A C++ baseline for an op is one more entry, and its JS path names it.
'use strict';
const h = require('./harness');

const BURST = 256;
const BURSTS = 400;

function hostSeconds(fn) {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** A burst of BURST calls of call(stream) from JS, timed on the host. */
function fromJs(call) {
  return (stream) =>
    hostSeconds(() => {
      for (let i = 0; i < BURST; i++) call(stream);
    });
}

function paths(moe) {
  const x = moe.fromArray([1.5], { device: 'cuda:0' });
  const y = moe.empty([1], { dtype: 'bf16', device: 'cuda:0' });
  return [
    { name: 'C++ loop (kernel<<<>>> in native code)', burst: (s) => moe.diagnostics.launchEmptyLoop(BURST, s) },
    { name: 'JS -> empty kernel (diagnostics.launchEmpty)', burst: fromJs((s) => moe.diagnostics.launchEmpty(s)) },
    { name: 'JS -> convert op, 1 element, out given', burst: fromJs((s) => moe.convert(x, 'bf16', { out: y, stream: s })) },
  ];
}

// The paths take turns burst by burst, so that clock and scheduling drift reach all alike.
async function measureAll(moe, table) {
  for (const p of table) {
    if (p.baseline !== undefined && !table.some((b) => b.name === p.baseline)) throw new Error(`path "${p.name}": no baseline path named "${p.baseline}"`);
  }
  const stream = moe.defaultStream('cuda:0');
  const perCall = table.map(() => []);
  for (let warm = 0; warm < 20; warm++) for (const p of table) p.burst(stream);
  await stream.synchronize();
  for (let r = 0; r < BURSTS; r++) {
    for (let i = 0; i < table.length; i++) {
      await stream.synchronize();
      perCall[i].push((table[i].burst(stream) / BURST) * 1e6);
    }
  }
  await stream.synchronize();
  const rows = table.map((p, i) => ({
    label: p.name,
    usPerCall: h.median(perCall[i]),
    usPerCallMin: Math.min(...perCall[i]),
    baseline: p.baseline ?? table[0].name,
  }));
  for (const r of rows) r.addedUs = r.usPerCall - rows.find((b) => b.label === r.baseline).usPerCall;
  return rows;
}

async function main() {
  const args = h.parse({ usage: 'usage: node benchmarks/launch_overhead.js [--out DIR]' });
  h.requireGpu();
  const moe = h.moe();
  const dev = moe.devices()[0];
  const rows = await measureAll(moe, paths(moe));
  const title = `Launch overhead on ${dev.name}`;
  const lines = [
    `Median of ${BURSTS} bursts of ${BURST} launches, enqueue time only.`,
    '',
    ...h.markdownTable(
      [
        { title: 'path', cell: (r) => r.label },
        { title: 'us per call', cell: (r) => r.usPerCall.toFixed(3) },
        { title: 'added (us)', cell: (r) => r.addedUs.toFixed(3) },
        { title: 'added over', cell: (r) => (r.label === r.baseline ? '(baseline)' : r.baseline) },
      ],
      rows,
    ),
  ];
  console.log([title, '', ...lines].join('\n'));
  const result = { benchmark: 'launch_overhead', ...h.header(dev), burst: BURST, bursts: BURSTS, rows };
  h.writeResults(args.out, `launch_overhead-${result.card}`, { result, title, lines });
}

if (require.main === module) h.run(main, { gpu: false });
module.exports = { measureAll, BURST };
