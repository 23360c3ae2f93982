#!/usr/bin/env node
// NVFP4 GEMM (W4A16, bf16 out) at DeepSeek-V3 shapes, timed with CUDA events, plus a
// device-to-device copy bandwidth from this package's own side as a cross-check.
//
//   node benchmarks/nvfp4.js [--out DIR] [--shapes 4096x7168,...] [--m 1,4,...] [--trials 20]
//   node benchmarks/nvfp4.js merge --ours FILE --peers FILE [--out DIR]
//
// Method. Each (shape, M) is timed as a CUDA graph of R back-to-back launches, so that host
// launch overhead (larger than a decode kernel) never leaves the GPU idle inside the timed
// region; R is picked so a replay takes a few milliseconds. The launches rotate over S >= 3
// weight sets whose total size is at least 4x the L2 cache, so weights come from DRAM as they
// do in a real model. Time per GEMM = median over trials of (replay time / R).
// `merge` joins this program's JSON with benchmarks/peers/gemm.py's into one markdown table.
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const SHAPES = ['4096x7168', '7168x2048', '2048x7168', '24576x1536', '7168x16384'];
const MS = [1, 4, 16, 64, 256, 1024, 4096, 16384];
const DECODE_MAX_M = 64;

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function parseShapes(s) {
  return s.split(',').map((x) => {
    const [N, K] = x.split('x').map(Number);
    if (!Number.isInteger(N) || !Number.isInteger(K) || K % 16 !== 0) throw new Error(`--shapes: bad shape ${x} (NxK, K % 16 == 0)`);
    return { N, K };
  });
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

function cardName(name) {
  return name.replace(/[^A-Za-z0-9]+/g, '-').replace(/-+$/, '');
}

// Random finite bf16 bit patterns with magnitudes in [2^-8, 1).
function randomBf16Bits(n) {
  const raw = new Uint16Array(n);
  crypto.randomFillSync(raw);
  for (let i = 0; i < n; i++) {
    const r = raw[i];
    raw[i] = (r & 0x8000) | ((0x77 + ((r >> 7) & 7)) << 7) | (r & 0x7f);
  }
  return raw;
}

// ---- timing --------------------------------------------------------------------------------

async function timeGraph(moe, stream, launch, launches, trials) {
  const graph = moe.captureGraph(stream, () => {
    for (let i = 0; i < launches; i++) launch(i);
  });
  try {
    graph.replay(stream); // warm
    await stream.synchronize();
    const start = new moe.Event('cuda:0', { timing: true });
    const end = new moe.Event('cuda:0', { timing: true });
    const perLaunchMs = [];
    for (let t = 0; t < trials; t++) {
      start.record(stream);
      graph.replay(stream);
      end.record(stream);
      await end.wait();
      perLaunchMs.push(start.elapsedMs(end) / launches);
    }
    start.dispose();
    end.dispose();
    return perLaunchMs;
  } finally {
    graph.dispose();
  }
}

async function copyBandwidth(moe, stream) {
  const bytes = 1 << 30;
  const x = moe.zeros([bytes], { dtype: 'u8', device: 'cuda:0', stream });
  const start = new moe.Event('cuda:0', { timing: true });
  const end = new moe.Event('cuda:0', { timing: true });
  const samples = [];
  for (let i = 0; i < 23; i++) {
    start.record(stream);
    const pending = x.copyTo('cuda:0', { stream });
    end.record(stream);
    const y = await pending;
    await end.wait();
    if (i >= 3) samples.push(start.elapsedMs(end));
    y.dispose();
  }
  x.dispose();
  const ms = median(samples);
  // read + write traffic, the figure a DRAM-bound kernel is measured against
  return { bytes, ms, tbs: (2 * bytes) / (ms * 1e-3) / 1e12 };
}

async function bench() {
  const moe = require('../dist');
  const outDir = arg('out', path.join(__dirname, 'results'));
  const shapes = parseShapes(arg('shapes', SHAPES.join(',')));
  const ms = arg('m', MS.join(',')).split(',').map(Number);
  const trials = Number(arg('trials', '20'));
  const dev = moe.devices()[0];
  const stream = moe.createStream('cuda:0');
  const l2 = dev.l2CacheBytes || 50 << 20;

  const copy = await copyBandwidth(moe, stream);
  console.log(`${dev.name}: device-to-device copy ${copy.tbs.toFixed(3)} TB/s (2 x 1 GiB / ${copy.ms.toFixed(3)} ms)`);

  const rows = [];
  for (const { N, K } of shapes) {
    const dataBytes = (N * K) / 2;
    const scaleBytes = (N * K) / 16;
    const weightBytes = dataBytes + scaleBytes;
    const sets = Math.min(32, Math.max(3, Math.ceil((4 * l2) / weightBytes)));
    const data = crypto.randomFillSync(new Uint8Array(dataBytes));
    const scales = crypto.randomFillSync(new Uint8Array(scaleBytes)).map((b) => 0x30 + (b & 15)); // 0.5 .. 1.9
    const weights = [];
    for (let s = 0; s < sets; s++) {
      weights.push(
        moe.nvfp4FromCheckpoint(
          {
            weight: { data, shape: [N, K / 2] },
            weight_scale: { data: scales, shape: [N, K / 16] },
            weight_scale_2: 0.01,
          },
          { device: 'cuda:0', stream },
        ),
      );
    }
    const maxM = Math.max(...ms);
    const a = moe.fromBytes(randomBf16Bits(maxM * K), { dtype: 'bf16', shape: [maxM, K], device: 'cuda:0', stream });
    for (const M of ms) {
      const am = a.slice(0, M);
      const out = moe.empty([M, N], { dtype: 'bf16', device: 'cuda:0', stream });
      const launch = (i) => moe.gemmNvfp4(am, weights[i % sets], { out, stream });
      for (let i = 0; i < 3; i++) launch(i); // first-use allocations and module loading
      await stream.synchronize();
      const estimate = median(await timeGraph(moe, stream, launch, sets, 3));
      // a few ms per replay; at most 200 launches (a captured split-K GEMM keeps its workspace)
      const launches = Math.max(sets, Math.min(200, Math.ceil(3 / estimate / sets) * sets));
      const samples = await timeGraph(moe, stream, launch, launches, trials);
      const t = median(samples);
      const row = {
        shape: `${N}x${K}`, N, K, M,
        ms: t,
        msMin: Math.min(...samples),
        weightBytes,
        tbs: weightBytes / (t * 1e-3) / 1e12,
        tflops: (2 * M * N * K) / (t * 1e-3) / 1e12,
        sets, launches, trials,
      };
      rows.push(row);
      console.log(
        `N=${N} K=${K} M=${M}: ${(t * 1e3).toFixed(2)} us  ${row.tbs.toFixed(3)} TB/s  ${row.tflops.toFixed(1)} TFLOP/s` +
          `  (${launches} launches x ${trials} trials, ${sets} weight sets)`,
      );
      am.dispose();
      out.dispose();
    }
    a.dispose();
    for (const w of weights) w.dispose();
    moe.emptyCache('cuda:0');
  }

  const result = {
    benchmark: 'nvfp4_gemm',
    variant: 'W4A16, bf16 activations, bf16 out',
    device: dev.name,
    date: new Date().toISOString(),
    node: process.version,
    method: 'CUDA graph of R launches rotating over S weight sets (>= 4x L2), CUDA events, median over trials of replay time / R',
    l2CacheBytes: l2,
    copy,
    rows,
  };
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `nvfp4_gemm-ours-${cardName(dev.name)}.json`);
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  console.log(`wrote ${file}`);
}

// ---- merge ---------------------------------------------------------------------------------

function fmtUs(ms) {
  return ms === undefined || ms === null ? 'n/a' : (ms * 1e3).toFixed(1);
}

function merge() {
  const ours = JSON.parse(fs.readFileSync(arg('ours'), 'utf8'));
  const peersFile = arg('peers');
  let peers;
  if (peersFile && fs.existsSync(peersFile)) peers = JSON.parse(fs.readFileSync(peersFile, 'utf8'));
  const outDir = arg('out', path.dirname(arg('ours')));
  const peerRow = (shape, M) => (peers ? peers.rows.find((r) => r.shape === shape && r.M === M) : undefined);
  const ceilingCopy = peers && peers.copy ? peers.copy.tbs : ours.copy.tbs;

  const lines = [];
  lines.push(`# NVFP4 GEMM on ${ours.device}`);
  lines.push('');
  lines.push(`W4A16: bf16 activations [M, K] x NVFP4 weight [N, K] -> bf16 [M, N]. ${ours.method}.`);
  lines.push(
    `Copy bandwidth (device-to-device, read + write): ${peers && peers.copy ? `${peers.copy.tbs.toFixed(3)} TB/s (torch)` : 'n/a (torch)'}, ` +
      `${ours.copy.tbs.toFixed(3)} TB/s (ours, tensor.copyTo).`,
  );
  if (peers) {
    lines.push(`Peers: PyTorch ${peers.torch} (CUDA ${peers.cuda}) on ${peers.device}; FP8 is torch._scaled_mm with ${peers.fp8Note}.`);
  } else {
    lines.push('Peers: not run (benchmarks/peers/gemm.py produced no results).');
  }
  lines.push('');
  lines.push('M <= 64: TB/s = (weight + scale bytes) / time, % of the copy bandwidth. M > 64: TFLOP/s = 2MNK / time, % of cuBLAS BF16 on the same problem.');
  lines.push('');
  lines.push('| shape N x K | M | ours (us) | TB/s or TFLOP/s | % of ceiling | cuBLAS BF16 (us) | FP8 (us) | speedup vs BF16 |');
  lines.push('|---|---|---|---|---|---|---|---|');
  const merged = [];
  for (const r of ours.rows) {
    const p = peerRow(r.shape, r.M);
    const bf16 = p && p.bf16Ms != null ? p.bf16Ms : undefined;
    const fp8 = p && p.fp8Ms != null ? p.fp8Ms : undefined;
    const decode = r.M <= DECODE_MAX_M;
    let figure, pct;
    if (decode) {
      figure = `${r.tbs.toFixed(2)} TB/s`;
      pct = (100 * r.tbs) / ceilingCopy;
    } else {
      figure = `${r.tflops.toFixed(0)} TFLOP/s`;
      pct = bf16 !== undefined ? (100 * bf16) / r.ms : undefined;
    }
    const speedup = bf16 !== undefined ? bf16 / r.ms : undefined;
    merged.push({ ...r, bf16Ms: bf16 ?? null, fp8Ms: fp8 ?? null, fp8Mode: p ? p.fp8Mode ?? null : null, percentOfCeiling: pct ?? null, speedupVsBf16: speedup ?? null, regime: decode ? 'decode' : 'prefill' });
    lines.push(
      `| ${r.N} x ${r.K} | ${r.M} | ${fmtUs(r.ms)} | ${figure} | ${pct === undefined ? 'n/a' : pct.toFixed(0) + '%'} | ${fmtUs(bf16)} | ` +
        `${fmtUs(fp8)}${p && p.fp8Mode && p.fp8Mode.includes('padded') ? '*' : ''} | ${speedup === undefined ? 'n/a' : speedup.toFixed(2) + 'x'} |`,
    );
  }

  if (merged.some((r) => r.fp8Mode && r.fp8Mode.includes('padded'))) {
    lines.push('');
    lines.push('\\* FP8 with M padded to a multiple of 16: torch._scaled_mm refused this M as it is.');
  }

  // The targets the issue sets, counted over the rows they apply to.
  const count = (rows, ok) => `${rows.filter(ok).length} of ${rows.length}`;
  const decodeRows = merged.filter((r) => r.regime === 'decode');
  const prefillRows = merged.filter((r) => r.regime === 'prefill' && r.percentOfCeiling !== null);
  const small = merged.filter((r) => [1, 4, 16].includes(r.M) && r.speedupVsBf16 !== null);
  lines.push('');
  lines.push('Targets:');
  lines.push(`- decode (M <= 64) at >= 85% of copy bandwidth: ${count(decodeRows, (r) => r.percentOfCeiling >= 85)}`);
  lines.push(`- >= 4x over cuBLAS BF16 at M = 1, 4, 16: ${small.length ? count(small, (r) => r.speedupVsBf16 >= 4) : 'n/a'}`);
  lines.push(`- prefill at >= 90% of cuBLAS BF16 TFLOP/s: ${prefillRows.length ? count(prefillRows, (r) => r.percentOfCeiling >= 90) : 'n/a'}`);

  const card = cardName(ours.device);
  fs.mkdirSync(outDir, { recursive: true });
  const md = path.join(outDir, `nvfp4_gemm-${card}.md`);
  const json = path.join(outDir, `nvfp4_gemm-${card}.json`);
  fs.writeFileSync(md, lines.join('\n') + '\n');
  fs.writeFileSync(
    json,
    JSON.stringify({ benchmark: 'nvfp4_gemm', device: ours.device, date: ours.date, method: ours.method, copy: { ours: ours.copy, torch: peers ? peers.copy : null }, peers: peers ? { torch: peers.torch, cuda: peers.cuda, fp8Note: peers.fp8Note } : null, rows: merged }, null, 2) + '\n',
  );
  console.log(lines.join('\n'));
  console.log(`wrote ${md} and ${json}`);
}

(process.argv[2] === 'merge' ? Promise.resolve().then(merge) : bench()).catch((e) => {
  console.error(e);
  process.exit(1);
});
