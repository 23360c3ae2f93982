#!/usr/bin/env node
// MTP draft verification (verifyDrafts) at DeepSeek-V3's shapes: B = 256 and B = 1 requests,
// n = 3 drafts, V = 129280, bf16 logits; greedy and rejection sampling, with and without draft
// probabilities (f32) and top-k / top-p. Each case is captured in a CUDA graph (as a decode
// step runs) and timed with CUDA events over back-to-back replays: warm-up, then the median of
// repeated measurements. GB/s counts the bytes of the logits given (target logits, plus draft
// probs where given); the ceiling is a device-to-device copy measured in the same run, counted
// as bytes read plus written, the DRAM traffic a read-only kernel competes with.
//
//   node benchmarks/mtp.js [--out DIR] [--peer FILE]
//
// --peer names the JSON written by benchmarks/peers/mtp.py (same cases, PyTorch); its times
// join the table. benchmarks/run_mtp.sh runs both.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const moe = require('../dist');

const DEVICE = 'cuda:0';
const N_DRAFTS = 3;
const VOCAB = 129280;
const TEMPERATURE = 0.7;
const TOP_K = 50;
const TOP_P = 0.9;
const WARMUP = 10;
const INNER = 20; // replays between one pair of events
const REPS = 30;

const CASES = [
  { name: 'greedy', mode: 'greedy', probs: false, filter: false },
  { name: 'rejection', mode: 'rejection', probs: false, filter: false },
  { name: 'rejection + draft probs', mode: 'rejection', probs: true, filter: false },
  { name: 'rejection + top-k/top-p', mode: 'rejection', probs: false, filter: true },
  { name: 'rejection + draft probs + top-k/top-p', mode: 'rejection', probs: true, filter: true },
];
const BATCHES = [256, 1];

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

// xorshift32 and Box-Muller: fast enough for 10^8 values, reproducible.
function uniforms(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
}

function normals(seed) {
  const u = uniforms(seed);
  let spare = null;
  return () => {
    if (spare !== null) {
      const v = spare;
      spare = null;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(u()));
    const t = 2 * Math.PI * u();
    spare = r * Math.sin(t);
    return r * Math.cos(t);
  };
}

/** bf16 bit patterns of N(0, sigma^2) logits, rounded to nearest even, and each row's argmax. */
function randomLogits(rows, vocab, sigma, seed) {
  const g = normals(seed);
  const bits = new Uint16Array(rows * vocab);
  const argmax = new Int32Array(rows);
  const f = new Float32Array(1);
  const w = new Uint32Array(f.buffer);
  for (let r = 0; r < rows; r++) {
    let best = -Infinity;
    for (let x = 0; x < vocab; x++) {
      f[0] = g() * sigma;
      const b = (w[0] + 0x7fff + ((w[0] >>> 16) & 1)) >>> 16;
      bits[r * vocab + x] = b;
      w[0] = b << 16;
      if (f[0] > best) {
        best = f[0];
        argmax[r] = x;
      }
    }
  }
  return { bits, argmax };
}

function randomProbs(rows, vocab, seed) {
  const g = normals(seed);
  const q = new Float32Array(rows * vocab);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let x = 0; x < vocab; x++) {
      const v = Math.exp(g());
      q[r * vocab + x] = v;
      s += v;
    }
    for (let x = 0; x < vocab; x++) q[r * vocab + x] /= s;
  }
  return q;
}

async function copyBandwidth(stream) {
  const bytes = 1 << 30;
  const src = moe.empty([bytes], { dtype: 'u8', device: DEVICE, stream });
  const start = new moe.Event(DEVICE, { timing: true });
  const end = new moe.Event(DEVICE, { timing: true });
  // copyTo resolves at once for a same-device copy: the copy itself stays queued on `stream`
  const once = async () => (await src.copyTo(DEVICE, { stream })).dispose();
  for (let i = 0; i < 3; i++) await once();
  const times = [];
  for (let r = 0; r < 10; r++) {
    start.record(stream);
    for (let i = 0; i < 5; i++) await once();
    end.record(stream);
    await end.wait();
    times.push(start.elapsedMs(end) / 5);
  }
  src.dispose();
  const ms = median(times);
  return { bytes, ms, gbPerS: (2 * bytes) / (ms * 1e-3) / 1e9 };
}

async function timeGraph(graph, stream) {
  const start = new moe.Event(DEVICE, { timing: true });
  const end = new moe.Event(DEVICE, { timing: true });
  for (let i = 0; i < WARMUP; i++) graph.replay(stream);
  await stream.synchronize();
  const times = [];
  for (let r = 0; r < REPS; r++) {
    start.record(stream);
    for (let i = 0; i < INNER; i++) graph.replay(stream);
    end.record(stream);
    await end.wait();
    times.push(start.elapsedMs(end) / INNER);
  }
  start.dispose();
  end.dispose();
  return median(times);
}

async function runBatch(B, stream) {
  const n = N_DRAFTS, V = VOCAB;
  const opts = { device: DEVICE, stream };
  const target = randomLogits(B * (n + 1), V, 2, 0x9e3779b9 ^ B);
  const targetLogits = moe.fromBytes(target.bits, { ...opts, dtype: 'bf16', shape: [B, n + 1, V] });
  // drafts: the row's argmax 60% of the time, otherwise another token
  const u = uniforms(17 + B);
  const drafts = new Int32Array(B * n);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < n; i++) drafts[b * n + i] = u() < 0.6 ? target.argmax[b * (n + 1) + i] : Math.floor(u() * V);
  }
  const draftTokens = moe.fromArray(drafts, { ...opts, dtype: 'i32', shape: [B, n] });
  const draftProbs = moe.fromArray(randomProbs(B * n, V, 99 + B), { ...opts, dtype: 'f32', shape: [B, n, V] });
  const perRequest = (ctor, dtype, fill) => moe.fromArray(new ctor(B).fill(fill), { ...opts, dtype, shape: [B] });
  const seeds = moe.fromArray(BigInt64Array.from({ length: B }, (_, b) => BigInt(b) * 2654435761n), { ...opts, dtype: 'i64', shape: [B] });
  const offsets = perRequest(BigInt64Array, 'i64', 0n);
  const out = {
    tokens: moe.empty([B, n + 1], { ...opts, dtype: 'i32' }),
    numAccepted: moe.empty([B], { ...opts, dtype: 'i32' }),
    inThinking: moe.empty([B], { ...opts, dtype: 'i32' }),
  };
  const rows = [];
  for (const c of CASES) {
    const params = { mode: perRequest(Int32Array, 'i32', moe.VERIFY_MODES[c.mode]), seed: seeds, offset: offsets };
    if (c.mode === 'rejection') params.temperature = perRequest(Float32Array, 'f32', TEMPERATURE);
    if (c.filter) {
      params.topK = perRequest(Int32Array, 'i32', TOP_K);
      params.topP = perRequest(Float32Array, 'f32', TOP_P);
    }
    const options = { targetLogits, draftTokens, params, out, stream };
    if (c.probs) options.draftProbs = draftProbs;
    await stream.synchronize();
    const graph = moe.captureGraph(stream, () => void moe.verifyDrafts(options));
    const ms = await timeGraph(graph, stream);
    graph.dispose();
    const accepted = await out.numAccepted.toArray({ stream });
    const meanAccepted = accepted.reduce((a, x) => a + x, 0) / B;
    const bytes = targetLogits.byteLength + (c.probs ? draftProbs.byteLength : 0);
    rows.push({ case: c.name, B, n, V, ms, bytes, gbPerS: bytes / (ms * 1e-3) / 1e9, meanTokensPerStep: meanAccepted });
    for (const t of Object.values(params)) if (t !== seeds && t !== offsets) t.dispose();
  }
  for (const t of [targetLogits, draftTokens, draftProbs, seeds, offsets, ...Object.values(out)]) t.dispose();
  return rows;
}

async function main() {
  const outDir = arg('--out', path.join(__dirname, 'results'));
  const peerFile = arg('--peer', undefined);
  const dev = moe.devices()[0];
  const stream = moe.createStream(DEVICE);
  const copy = await copyBandwidth(stream);
  const rows = [];
  for (const B of BATCHES) rows.push(...(await runBatch(B, stream)));
  stream.dispose();

  let peer;
  if (peerFile && fs.existsSync(peerFile)) peer = JSON.parse(fs.readFileSync(peerFile, 'utf8'));
  else if (peerFile) console.error(`(no PyTorch results at ${peerFile}: the PyTorch columns stay empty)`);
  const peerRow = (r) => peer && peer.cases.find((p) => p.case === r.case && p.B === r.B);
  const us = (ms) => (ms * 1e3).toFixed(1);
  const lines = [
    `MTP draft verification on ${dev.name}: n = ${N_DRAFTS}, V = ${VOCAB}, bf16 logits, T = ${TEMPERATURE}, ` +
      `top-k ${TOP_K} / top-p ${TOP_P} where named, draft probs f32. Copy bandwidth ${copy.gbPerS.toFixed(0)} GB/s ` +
      `(1 GiB device-to-device, read + write).` +
      (peer ? ` PyTorch ${peer.torch}, ${peer.timing}.` : ''),
    '',
    '| case | B | our time (us) | GB/s | % of copy bw | PyTorch time (us) | speedup |',
    '|---|---|---|---|---|---|---|',
    ...rows.map((r) => {
      const p = peerRow(r);
      return (
        `| ${r.case} | ${r.B} | ${us(r.ms)} | ${r.gbPerS.toFixed(0)} | ${((100 * r.gbPerS) / copy.gbPerS).toFixed(1)}% | ` +
        `${p ? us(p.ms) : '-'} | ${p ? `${(p.ms / r.ms).toFixed(2)}x` : '-'} |`
      );
    }),
    '',
    'Ours: one verifyDrafts call captured in a CUDA graph, median over replays. GB/s: bytes of the target ' +
      'logits plus the draft probs where given, over our time; the kernels read every target row up to each ' +
      "request's draft length, but of the draft probs only the probabilities of the drafts and the one row " +
      'they sample the correction from.',
  ];
  console.log(lines.join('\n'));
  const card = dev.name.replace(/[^A-Za-z0-9]+/g, '-').replace(/-+$/, '');
  fs.mkdirSync(outDir, { recursive: true });
  const result = {
    benchmark: 'mtp',
    device: dev.name,
    date: new Date().toISOString(),
    node: process.version,
    copy,
    settings: { n: N_DRAFTS, V: VOCAB, temperature: TEMPERATURE, topK: TOP_K, topP: TOP_P, warmup: WARMUP, inner: INNER, reps: REPS },
    rows,
    peer: peer ?? null,
  };
  fs.writeFileSync(path.join(outDir, `mtp-${card}.json`), JSON.stringify(result, null, 2) + '\n');
  fs.writeFileSync(path.join(outDir, `mtp-${card}.md`), lines.join('\n') + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
