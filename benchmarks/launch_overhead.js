#!/usr/bin/env node
// What crossing from JS to a kernel launch costs. Each op's JS path (argument checks included)
// is timed against the same launcher called from a C++ loop with the same arguments
// (diagnostics.cppLaunchLoop), and an empty kernel from JS against one from C++. Only the
// enqueue is timed, in bursts short enough that the launch queue never fills.
// A second table times eager loops of 700 gemmNvfp4 calls end to end (GPU work included)
// from JS and from C++: what a server without graphs sees.
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

/** The same calls, each replaced by BURST launches of its launcher from C++. */
function fromCpp(moe, call) {
  return (stream) => moe.diagnostics.cppLaunchLoop(BURST, () => call(stream));
}

// The ops the table covers, each with what it needs allocated once.
function ops(moe) {
  const rng = new h.Rng(7);
  const dev = 'cuda:0';
  const bf16 = (shape) => moe.fromBytes(rng.bf16Bits(shape.reduce((a, b) => a * b, 1)), { dtype: 'bf16', shape, device: dev });
  const x1 = moe.fromArray([1.5], { device: dev });
  const y1 = moe.empty([1], { dtype: 'bf16', device: dev });
  const w = moe.quantizeNvfp4(bf16([4096, 7168]));
  const a1 = bf16([1, 7168]);
  const out1 = moe.empty([1, 4096], { dtype: 'bf16', device: dev });
  const a16 = bf16([16, 7168]);
  const out16 = moe.empty([16, 4096], { dtype: 'bf16', device: dev });
  const xq = bf16([1, 7168]);
  const gs = moe.fromArray([0.01], { device: dev });
  const q = moe.quantizeNvfp4(xq, { globalScale: gs });
  const B = 1, n = 3, V = 129280;
  const logits = bf16([B, n + 1, V]);
  const drafts = moe.fromArray(new Int32Array(B * n).map(() => rng.int(V)), { dtype: 'i32', shape: [B, n], device: dev });
  const mode = moe.fromArray(new Int32Array(B), { dtype: 'i32', device: dev });
  const out = {
    tokens: moe.empty([B, n + 1], { dtype: 'i32', device: dev }),
    numAccepted: moe.empty([B], { dtype: 'i32', device: dev }),
    inThinking: moe.empty([B], { dtype: 'i32', device: dev }),
  };
  return {
    gemm1: (s) => moe.gemmNvfp4(a1, w, { out: out1, stream: s }),
    gemm16: (s) => moe.gemmNvfp4(a16, w, { out: out16, stream: s }),
    quantize: (s) => moe.quantizeNvfp4(xq, { globalScale: gs, out: q, stream: s }),
    verifyGreedy: (s) => moe.verifyDrafts({ targetLogits: logits, draftTokens: drafts, params: { mode }, out, stream: s }),
    convert: (s) => moe.convert(x1, 'bf16', { out: y1, stream: s }),
  };
}

function paths(moe, o) {
  const table = [
    { name: 'C++ loop: empty kernel', burst: (s) => moe.diagnostics.launchEmptyLoop(BURST, s) },
    { name: 'JS: empty kernel (diagnostics.launchEmpty)', burst: fromJs((s) => moe.diagnostics.launchEmpty(s)), baseline: 'C++ loop: empty kernel' },
  ];
  const named = [
    ['gemmNvfp4 W4A16 4096x7168, M = 1, out given', o.gemm1],
    ['quantizeNvfp4 [1, 7168], global scale and out given', o.quantize],
    ['verifyDrafts greedy, B = 1, n = 3, tensor params, out given', o.verifyGreedy],
    ['convert, 1 element, out given', o.convert],
  ];
  for (const [name, call] of named) {
    table.push({ name: `C++ loop: ${name}`, burst: fromCpp(moe, call) });
    table.push({ name: `JS: ${name}`, burst: fromJs(call), baseline: `C++ loop: ${name}` });
  }
  return table;
}

const EAGER_CALLS = 700;
const EAGER_TRIALS = 15;

/** Wall time per call of EAGER_CALLS back-to-back calls, GPU work included, JS against C++. */
async function measureEager(moe, o) {
  const stream = moe.defaultStream('cuda:0');
  const cases = [
    ['gemmNvfp4 W4A16 4096x7168, M = 1', o.gemm1],
    ['gemmNvfp4 W4A16 4096x7168, M = 16', o.gemm16],
  ];
  const rows = [];
  for (const [name, call] of cases) {
    const js = [];
    const cpp = [];
    const timeLoop = async (loop) => {
      await stream.synchronize();
      const t0 = process.hrtime.bigint();
      loop();
      await stream.synchronize();
      return Number(process.hrtime.bigint() - t0) / 1e3 / EAGER_CALLS;
    };
    for (let t = 0; t < EAGER_TRIALS + 2; t++) {
      const a = await timeLoop(() => {
        for (let i = 0; i < EAGER_CALLS; i++) call(stream);
      });
      const b = await timeLoop(() => moe.diagnostics.cppLaunchLoop(EAGER_CALLS, () => call(stream)));
      if (t >= 2) {
        js.push(a);
        cpp.push(b);
      }
    }
    const usJs = h.median(js);
    const usCpp = h.median(cpp);
    rows.push({ label: name, usPerCallJs: usJs, usPerCallCpp: usCpp, ratio: usJs / usCpp });
  }
  return rows;
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
  const o = ops(moe);
  const rows = await measureAll(moe, paths(moe, o));
  const eager = await measureEager(moe, o);
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
    '',
    `Eager loops: ${EAGER_CALLS} back-to-back calls, wall time per call until the stream is idle (median of ${EAGER_TRIALS}).`,
    '',
    ...h.markdownTable(
      [
        { title: 'op', cell: (r) => r.label },
        { title: 'JS (us per call)', cell: (r) => r.usPerCallJs.toFixed(2) },
        { title: 'C++ (us per call)', cell: (r) => r.usPerCallCpp.toFixed(2) },
        { title: 'JS / C++', cell: (r) => r.ratio.toFixed(3) },
      ],
      eager,
    ),
  ];
  console.log([title, '', ...lines].join('\n'));
  const result = { benchmark: 'launch_overhead', ...h.header(dev), burst: BURST, bursts: BURSTS, rows, eagerCalls: EAGER_CALLS, eager };
  h.writeResults(args.out, `launch_overhead-${result.card}`, { result, title, lines });
}

if (require.main === module) h.run(main, { gpu: false });
module.exports = { measureAll, BURST };
