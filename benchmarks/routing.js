#!/usr/bin/env node
// MoE routing at DeepSeek-V3's shape: 256 routed experts, top-8, noaux_tc gating (sigmoid,
// correction bias, 8 groups of which 4 are kept, scale 2.5), f32 router logits, at T = 1, 16,
// 128, 4096 and 16384 tokens. Cases: routeTopK alone; routeTopK + expertLayout in the
// contiguous form (align 128, the grouped GEMM's row tile); for T <= 128 also routeTopK +
// expertLayout in the masked form (maxTokensPerExpert = T, the decode form). Each case is
// captured in a CUDA graph, as a model step runs it, and timed with CUDA events over
// back-to-back replays: warm-up, then the median of repeated measurements. The inputs are a few
// KB to 16 MB and were just written by the router GEMM in a model, so they are not rotated out
// of L2.
//
//   node benchmarks/routing.js [--out DIR] [--peer FILE] [--seed N] [--tokens 1,16,...]
//
// --peer names the JSON written by benchmarks/peers/routing.py (same cases, PyTorch ops); its
// times join the table. benchmarks/run_routing.sh runs both. Without a CUDA GPU it exits with
// status 3 (harness.EXIT_NO_GPU).
'use strict';
const fs = require('node:fs');
const h = require('./harness');

const EXPERTS = 256;
const TOP_K = 8;
const GROUPS = 8;
const TOPK_GROUPS = 4;
const SCALE = 2.5;
const ALIGN = 128;
const TOKENS = [1, 16, 128, 4096, 16384];
const MASKED_MAX_T = 128;
const WARMUP = 10;
const INNER = 20; // replays between one pair of events
const REPS = 30;

function cases(T) {
  const c = [
    { name: 'route', layout: null },
    { name: `route + layout (align ${ALIGN})`, layout: { align: ALIGN } },
  ];
  if (T <= MASKED_MAX_T) c.push({ name: 'route + layout (masked)', layout: { maxTokensPerExpert: T } });
  return c;
}

async function runTokens(moe, device, T, stream, rng) {
  const opts = { device, stream };
  // router logits ~ N(0, 1) and a small correction bias, as a trained router gives
  const logits = moe.fromArray(Float32Array.from({ length: T * EXPERTS }, () => rng.normal()), { ...opts, shape: [T, EXPERTS] });
  const bias = moe.fromArray(Float32Array.from({ length: EXPERTS }, () => rng.normal() * 0.01), opts);
  const options = {
    k: TOP_K, scoring: 'sigmoid', groups: { count: GROUPS, topk: TOPK_GROUPS }, correctionBias: bias, scale: SCALE, stream,
    out: { ids: moe.empty([T, TOP_K], { ...opts, dtype: 'i32' }), weights: moe.empty([T, TOP_K], opts) },
  };
  const rows = [];
  for (const c of cases(T)) {
    await stream.synchronize();
    let layout;
    const graph = moe.captureGraph(stream, () => {
      const r = moe.routeTopK(logits, options);
      if (c.layout) layout = moe.expertLayout(r.ids, EXPERTS, { ...c.layout, stream });
    });
    const ms = h.median(await h.timeReplays(graph, stream, { warmup: WARMUP, replays: INNER, trials: REPS }));
    graph.dispose();
    const row = { case: c.name, T, ms };
    if (layout) {
      const [dropped] = await layout.dropped.toArray({ stream });
      const [usedRows] = await layout.usedRows.toArray({ stream });
      Object.assign(row, { usedRows, dropped });
      for (const t of ['counts', 'offsets', 'sourceIndex', 'rowIndex', 'usedRows', 'dropped', 'errors']) layout[t].dispose();
    }
    rows.push(row);
    console.error(`  ${c.name}, T=${T}: ${(ms * 1e3).toFixed(1)} us`);
  }
  for (const t of [logits, bias, options.out.ids, options.out.weights]) t.dispose();
  return rows;
}

/** The Markdown below the title: settings, our rows joined with the peer's cases, the note. */
function report(rows, peer) {
  const us = (ms) => (ms * 1e3).toFixed(1);
  const table = h.merge(rows, peer ? peer.cases : [], {
    key: ['case', 'T'],
    missing: '-',
    columns: [
      { title: 'case', cell: ({ ours }) => ours.case },
      { title: 'T', cell: ({ ours }) => ours.T },
      { title: 'our time (us)', cell: ({ ours }) => us(ours.ms) },
      { title: 'PyTorch time (us)', cell: ({ peer: p }) => p && us(p.ms) },
      { title: 'speedup', cell: ({ ours, peer: p }) => p && h.ratio(p.ms, ours.ms) },
    ],
  });
  return [
    `${EXPERTS} experts, top-${TOP_K}, noaux_tc: sigmoid scores, f32 correction bias, ${GROUPS} groups scored by their ` +
      `two best experts, ${TOPK_GROUPS} kept, weights renormalized and scaled by ${SCALE}; f32 logits.` +
      (peer ? ` PyTorch ${peer.torch}, ${peer.timing}.` : ''),
    '',
    ...table.lines,
    '',
    `Ours: the case's calls captured in one CUDA graph, median over replays. Layout: counts, offsets padded to ` +
      `${ALIGN} rows, the row -> (token, slot) map and its inverse (contiguous), or [experts, T] slots with ` +
      'counts and the dropped count (masked). PyTorch: the same math with torch ops (sigmoid, grouped topk, ' +
      'torch.topk, stable argsort, bincount, cumsum, scatter).',
  ];
}

async function main() {
  const args = h.parse({
    usage: 'usage: node benchmarks/routing.js [--out DIR] [--peer FILE] [--seed N] [--tokens 1,16,...]',
    options: {
      peer: { type: 'string', value: 'FILE', help: 'JSON of benchmarks/peers/routing.py, joined into the table' },
      seed: { type: 'string', value: 'N', default: '1', help: 'seed of the logits and the bias' },
      tokens: { type: 'string', value: 'T,...', default: TOKENS.join(','), help: 'token counts' },
    },
  });
  const seed = h.intArg(args.seed, 'seed');
  const tokens = h.numberList(args.tokens, 'tokens', (x) => Number.isInteger(x) && x >= 1);
  h.requireGpu();
  const moe = h.moe();
  const dev = moe.devices()[0];
  const stream = moe.createStream(dev.device);
  const rows = [];
  for (const T of tokens) rows.push(...(await runTokens(moe, dev.device, T, stream, new h.Rng(seed * 65536 + T))));
  stream.dispose();

  let peer;
  if (args.peer && fs.existsSync(args.peer)) peer = h.readJson(args.peer);
  else if (args.peer) console.error(`(no PyTorch results at ${args.peer}: the PyTorch columns stay empty)`);
  const lines = report(rows, peer);
  const title = `MoE routing (noaux_tc, ${EXPERTS} experts, top-${TOP_K}) on ${dev.name}`;
  console.log([title, '', ...lines].join('\n'));
  const result = {
    benchmark: 'routing',
    ...h.header(dev),
    settings: { experts: EXPERTS, k: TOP_K, groups: GROUPS, topkGroups: TOPK_GROUPS, scale: SCALE, align: ALIGN, warmup: WARMUP, inner: INNER, reps: REPS, seed, tokens },
    rows,
    peer: peer ?? null,
  };
  h.writeResults(args.out, `routing-${result.card}`, { result, title, lines });
}

if (require.main === module) h.run(main, { gpu: false });
module.exports = { report };
