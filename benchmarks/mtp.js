#!/usr/bin/env node
// MTP draft verification (verifyDrafts) at DeepSeek-V3's shapes: B = 256 and B = 1 requests,
// n = 3 drafts, V = 129280, bf16 logits; greedy and rejection sampling, with and without draft
// probabilities (f32) and top-k / top-p. Each case is captured in a CUDA graph (as a decode
// step runs) and timed with CUDA events over back-to-back replays: warm-up, then the median of
// repeated measurements. GB/s counts the bytes of the logits given (target logits, plus draft
// probs where given); the ceiling is a device-to-device copy measured in the same run, counted
// as bytes read plus written, the DRAM traffic a read-only kernel competes with.
//
//   node benchmarks/mtp.js [--out DIR] [--peer FILE] [--seed N]
//
// --peer names the JSON written by benchmarks/peers/mtp.py (same cases, PyTorch); its times
// join the table. benchmarks/run_mtp.sh runs both. Without a CUDA GPU it exits with status 3
// (harness.EXIT_NO_GPU).
'use strict';
const fs = require('node:fs');
const h = require('./harness');

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

/** bf16 bit patterns of N(0, sigma^2) logits, rounded to nearest even, and each row's argmax. */
function randomLogits(rows, vocab, sigma, rng) {
  const bits = new Uint16Array(rows * vocab);
  const argmax = new Int32Array(rows);
  const f = new Float32Array(1);
  const w = new Uint32Array(f.buffer);
  for (let r = 0; r < rows; r++) {
    let best = -Infinity;
    for (let x = 0; x < vocab; x++) {
      f[0] = rng.normal() * sigma;
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

function randomProbs(rows, vocab, rng) {
  const q = new Float32Array(rows * vocab);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let x = 0; x < vocab; x++) {
      const v = Math.exp(rng.normal());
      q[r * vocab + x] = v;
      s += v;
    }
    for (let x = 0; x < vocab; x++) q[r * vocab + x] /= s;
  }
  return q;
}

async function runBatch(moe, device, B, stream, rng) {
  const n = N_DRAFTS, V = VOCAB;
  const opts = { device, stream };
  const target = randomLogits(B * (n + 1), V, 2, rng);
  const targetLogits = moe.fromBytes(target.bits, { ...opts, dtype: 'bf16', shape: [B, n + 1, V] });
  // drafts: the row's argmax 60% of the time, otherwise another token
  const drafts = new Int32Array(B * n);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < n; i++) drafts[b * n + i] = rng.float() < 0.6 ? target.argmax[b * (n + 1) + i] : rng.int(V);
  }
  const draftTokens = moe.fromArray(drafts, { ...opts, dtype: 'i32', shape: [B, n] });
  const draftProbs = moe.fromArray(randomProbs(B * n, V, rng), { ...opts, dtype: 'f32', shape: [B, n, V] });
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
    // one verifyDrafts call per graph, as a decode step runs it
    const graph = moe.captureGraph(stream, () => void moe.verifyDrafts(options));
    const ms = h.median(await h.timeReplays(graph, stream, { warmup: WARMUP, replays: INNER, trials: REPS }));
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

/** The Markdown below the title: settings, our rows joined with the peer's cases, the note. */
function report(rows, copy, peer) {
  const us = (ms) => (ms * 1e3).toFixed(1);
  const table = h.merge(rows, peer ? peer.cases : [], {
    key: ['case', 'B'],
    missing: '-',
    columns: [
      { title: 'case', cell: ({ ours }) => ours.case },
      { title: 'B', cell: ({ ours }) => ours.B },
      { title: 'our time (us)', cell: ({ ours }) => us(ours.ms) },
      { title: 'GB/s', cell: ({ ours }) => ours.gbPerS.toFixed(0) },
      { title: '% of copy bw', cell: ({ ours }) => `${((100 * ours.gbPerS) / copy.gbPerS).toFixed(1)}%` },
      { title: 'PyTorch time (us)', cell: ({ peer: p }) => p && us(p.ms) },
      { title: 'speedup', cell: ({ ours, peer: p }) => p && h.ratio(p.ms, ours.ms) },
    ],
  });
  return [
    `n = ${N_DRAFTS}, V = ${VOCAB}, bf16 logits, T = ${TEMPERATURE}, ` +
      `top-k ${TOP_K} / top-p ${TOP_P} where named, draft probs f32. Copy bandwidth ${copy.gbPerS.toFixed(0)} GB/s ` +
      `(1 GiB device-to-device, read + write).` +
      (peer ? ` PyTorch ${peer.torch}, ${peer.timing}.` : ''),
    '',
    ...table.lines,
    '',
    'Ours: one verifyDrafts call captured in a CUDA graph, median over replays. GB/s: bytes of the target ' +
      'logits plus the draft probs where given, over our time; the kernels read every target row up to each ' +
      "request's draft length, but of the draft probs only the probabilities of the drafts and the one row " +
      'they sample the correction from.',
  ];
}

async function main() {
  const args = h.parse({
    usage: 'usage: node benchmarks/mtp.js [--out DIR] [--peer FILE] [--seed N]',
    options: {
      peer: { type: 'string', value: 'FILE', help: 'JSON of benchmarks/peers/mtp.py, joined into the table' },
      seed: { type: 'string', value: 'N', default: '1', help: 'seed of the logits, drafts and draft probs' },
    },
  });
  const seed = h.intArg(args.seed, 'seed');
  h.requireGpu();
  const moe = h.moe();
  const dev = moe.devices()[0];
  const stream = moe.createStream(dev.device);
  const copy = await h.copyBandwidth(stream);
  const rows = [];
  for (const B of BATCHES) rows.push(...(await runBatch(moe, dev.device, B, stream, new h.Rng(seed * 4096 + B))));
  stream.dispose();

  let peer;
  if (args.peer && fs.existsSync(args.peer)) peer = h.readJson(args.peer);
  else if (args.peer) console.error(`(no PyTorch results at ${args.peer}: the PyTorch columns stay empty)`);
  const lines = report(rows, copy, peer);
  const title = `MTP draft verification on ${dev.name}`;
  console.log([title, '', ...lines].join('\n'));
  const result = {
    benchmark: 'mtp',
    ...h.header(dev),
    copy,
    settings: { n: N_DRAFTS, V: VOCAB, temperature: TEMPERATURE, topK: TOP_K, topP: TOP_P, warmup: WARMUP, inner: INNER, reps: REPS, seed },
    rows,
    peer: peer ?? null,
  };
  h.writeResults(args.out, `mtp-${result.card}`, { result, title, lines });
}

if (require.main === module) h.run(main, { gpu: false });
module.exports = { report };
