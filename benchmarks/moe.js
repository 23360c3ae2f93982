#!/usr/bin/env node
// moeForward on a DeepSeek-V3-shaped MoE block: hidden 7168, expert width 2048, top-8 of the
// routed experts in 8 groups keeping 4 (sigmoid, correction bias, scale 2.5), one shared expert
// of width 2048, NVFP4 weights (W4A16), at T = 1, 16, 128 and 4096 tokens.
//
// Routed experts: 256 by default, as in DeepSeek-V3 (--experts picks another count).
//
// Per T: the whole forward captured in one CUDA graph (masked layout with maxTokensPerExpert = T
// for T <= 128, the decode form; contiguous above), and the stage breakdown, each stage the same
// calls captured in a graph of its own: router GEMM, routing + layout, permute (contiguous form
// only), gate/up grouped GEMM (+ SwiGLU; masked form: gathering x's rows by the layout), down
// grouped GEMM, unpermute, shared expert (GEMM, SwiGLU, GEMM, the final add): as moeForward runs.
// Weight memory NVFP4 against BF16.
//
// The PyTorch peer (benchmarks/peers/moe.py, run from here unless --no-peer) times a BF16 MoE
// block of the same math (torch._grouped_mm where available, else a loop over experts) and
// computes, for the same inputs, the BF16 block's output with the original weights (before
// quantization) and with our NVFP4 weights dequantized. Tensors travel as raw .bin files with a
// JSON manifest in a temporary folder. The results JSON holds our times, the peer's and the
// error of moeForward against both BF16 outputs.
//
//   node benchmarks/moe.js [--out DIR] [--tokens 1,16,128,4096] [--experts 256] [--seed 1] [--no-peer]
//
// Without a CUDA GPU it exits with status 3 (harness.EXIT_NO_GPU).
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const h = require('./harness');

const HIDDEN = 7168;
const INNER = 2048;
const SHARED_INNER = 2048;
const TOP_K = 8;
const GROUPS = 8;
const TOPK_GROUPS = 4;
const SCALE = 2.5;
const TOKENS = [1, 16, 128, 4096];
const MASKED_MAX_T = 128;
const WEIGHT_STD = 0.02;
const WARMUP = 5;
const REPLAYS = 10;
const TRIALS = 20;

// ---- the layer ---------------------------------------------------------------------------

/** Normal bf16 values as a device tensor [rows, cols] (f32 on the host, rounded on upload). */
function normalPool(moe, rng, rows, cols, std, device) {
  const v = new Float32Array(rows * cols);
  for (let i = 0; i < v.length; i++) v[i] = rng.normal() * std;
  return moe.fromArray(v, { shape: [rows, cols], dtype: 'bf16', device });
}

/**
 * `count` matrices [N, K], each a window of rows of `pool` ([2N, K]) at a random offset,
 * quantized on their own (one global scale each): host bytes of the stacked NVFP4 parts.
 */
async function quantizeWindows(moe, rng, pool, count, N, K) {
  const data = Buffer.alloc((count * N * K) / 2);
  const scales = Buffer.alloc((count * N * K) / 16);
  const gs = new Float32Array(count);
  const offsets = [];
  for (let e = 0; e < count; e++) {
    const off = rng.int(N + 1);
    offsets.push(off);
    const win = pool.slice(off, off + N);
    const q = moe.quantizeNvfp4(win);
    data.set(await q.data.toBytes(), (e * N * K) / 2);
    scales.set(await q.scales.toBytes(), (e * N * K) / 16);
    gs[e] = (await q.globalScale.toArray())[0];
    q.dispose();
    win.dispose();
  }
  return { data, scales, gs, offsets, N, K, count };
}

function nvfp4Of(moe, q, stacked, device) {
  const lead = stacked ? [q.count, q.N] : [q.N];
  return moe.nvfp4FromCheckpoint(
    {
      weight: { data: q.data, shape: [...lead, q.K / 2] },
      weight_scale: { data: q.scales, shape: [...lead, q.K / 16], dtype: 'F8_E4M3' },
      weight_scale_2: stacked ? Array.from(q.gs) : q.gs[0],
    },
    { device },
  );
}

async function buildLayer(moe, device, experts, rng) {
  const pool13 = normalPool(moe, rng, 2 * 2 * INNER, HIDDEN, WEIGHT_STD, device);
  const pool2 = normalPool(moe, rng, 2 * HIDDEN, INNER, WEIGHT_STD, device);
  console.error(`  quantizing ${experts} experts ...`);
  const q = {
    w13: await quantizeWindows(moe, rng, pool13, experts, 2 * INNER, HIDDEN),
    w2: await quantizeWindows(moe, rng, pool2, experts, HIDDEN, INNER),
    sw13: await quantizeWindows(moe, rng, pool13, 1, 2 * SHARED_INNER, HIDDEN),
    sw2: await quantizeWindows(moe, rng, pool2, 1, HIDDEN, SHARED_INNER),
  };
  const routerW = new Float32Array(experts * HIDDEN);
  for (let i = 0; i < routerW.length; i++) routerW[i] = rng.normal() * WEIGHT_STD;
  const bias = new Float32Array(experts);
  for (let i = 0; i < experts; i++) bias[i] = rng.normal() * 0.01;
  const router = {
    weight: moe.fromArray(routerW, { shape: [experts, HIDDEN], dtype: 'bf16', device }),
    k: TOP_K,
    scoring: 'sigmoid',
    groups: { count: GROUPS, topk: TOPK_GROUPS },
    correctionBias: moe.fromArray(bias, { device }),
    scale: SCALE,
  };
  const ex = {
    w13: nvfp4Of(moe, q.w13, true, device),
    w2: nvfp4Of(moe, q.w2, true, device),
    shared: { w13: nvfp4Of(moe, q.sw13, false, device), w2: nvfp4Of(moe, q.sw2, false, device) },
  };
  return { router, experts: ex, q, pools: { pool13, pool2 } };
}

function weightMemory(layer, experts) {
  const nv = [layer.experts.w13, layer.experts.w2, layer.experts.shared.w13, layer.experts.shared.w2];
  const nvfp4 = nv.reduce((s, w) => s + w.byteLength + w.globalScale.byteLength, 0);
  const bf16 = 2 * (experts * 3 * INNER * HIDDEN + 3 * SHARED_INNER * HIDDEN);
  const router = layer.router.weight.byteLength;
  return { nvfp4Bytes: nvfp4 + router, bf16Bytes: bf16 + router, routerBytes: router, ratio: (bf16 + router) / (nvfp4 + router) };
}

// ---- timing ------------------------------------------------------------------------------

async function timeGraph(moe, stream, fn) {
  await stream.synchronize();
  const graph = moe.captureGraph(stream, fn);
  try {
    return h.median(await h.timeReplays(graph, stream, { warmup: WARMUP, replays: REPLAYS, trials: TRIALS }));
  } finally {
    graph.dispose();
  }
}

async function runTokens(moe, layer, T, E, stream, rng, bundle) {
  const device = stream.device;
  const opts = { device, stream };
  const xv = new Float32Array(T * HIDDEN);
  for (let i = 0; i < xv.length; i++) xv[i] = rng.normal();
  const x = moe.fromArray(xv, { ...opts, shape: [T, HIDDEN], dtype: 'bf16' });
  const masked = T <= MASKED_MAX_T;
  const form = masked ? { maxTokensPerExpert: T } : { align: 1 };
  const { router, experts } = layer;
  const ws = moe.createMoeWorkspace(T, router, experts, { ...form, stream });
  const out = moe.empty([T, HIDDEN], { ...opts, dtype: 'bf16' });

  const totalMs = await timeGraph(moe, stream, () => moe.moeForward(x, router, experts, { workspace: ws, out, stream }));

  // an eager run: the output and expert choice the peer is compared with
  moe.moeForward(x, router, experts, { workspace: ws, out, stream });
  const outBytes = await out.toBytes({ stream });
  const idsBytes = await ws.routing.ids.toBytes({ stream });
  const [dropped] = await ws.layout.dropped.toArray({ stream });
  fs.writeFileSync(path.join(bundle.dir, `x_${T}.bin`), await x.toBytes({ stream }));
  fs.writeFileSync(path.join(bundle.dir, `ours_${T}.bin`), outBytes);
  fs.writeFileSync(path.join(bundle.dir, `ours_ids_${T}.bin`), idsBytes);
  bundle.manifest.inputs[String(T)] = { x: { file: `x_${T}.bin`, dtype: 'bf16', shape: [T, HIDDEN] } };

  // the stages, each the same calls in a graph of its own, on a layout of real routing
  const { addInto } = require('../dist/moe/ops');
  const { routeTopK, expertLayout, permute, unpermute, groupedGemmNvfp4, gemmNvfp4, swiglu, routerLogits } = moe;
  const logits = moe.empty([T, E], opts);
  const ids = moe.empty([T, TOP_K], { ...opts, dtype: 'i32' });
  const weights = moe.empty([T, TOP_K], opts);
  const { weight: _w, ...routeOptions } = router;
  const route = () => routeTopK(logits, { ...routeOptions, stream, out: { ids, weights } });
  routerLogits(x, router.weight, { out: logits, stream });
  route();
  const layout = expertLayout(ids, E, { ...form, stream });
  const rowsA = masked ? undefined : moe.empty([layout.rows, HIDDEN], { ...opts, dtype: 'bf16' });
  const rowsB = moe.empty([layout.rows, HIDDEN], { ...opts, dtype: 'bf16' });
  const act = moe.empty([layout.rows, INNER], { ...opts, dtype: 'bf16' });
  const routed = moe.empty([T, HIDDEN], opts);
  const sGateUp = moe.empty([T, 2 * SHARED_INNER], { ...opts, dtype: 'bf16' });
  const sAct = moe.empty([T, SHARED_INNER], { ...opts, dtype: 'bf16' });
  const sOut = moe.empty([T, HIDDEN], opts);
  const gateUp = () =>
    masked
      ? groupedGemmNvfp4(x, experts.w13, layout, { epilogue: 'swiglu', gather: true, out: act, stream })
      : groupedGemmNvfp4(rowsA, experts.w13, layout, { epilogue: 'swiglu', out: act, stream });
  if (rowsA) permute(x, layout, { out: rowsA, stream });
  gateUp();
  const stages = {};
  stages.router = await timeGraph(moe, stream, () => routerLogits(x, router.weight, { out: logits, stream }));
  stages.routingLayout = await timeGraph(moe, stream, () => {
    route();
    expertLayout(ids, E, { ...form, stream });
  });
  if (rowsA) stages.permute = await timeGraph(moe, stream, () => permute(x, layout, { out: rowsA, stream }));
  stages.gateUp = await timeGraph(moe, stream, gateUp);
  stages.down = await timeGraph(moe, stream, () => groupedGemmNvfp4(act, experts.w2, layout, { out: rowsB, stream }));
  stages.unpermute = await timeGraph(moe, stream, () => unpermute(rowsB, layout, weights, { out: routed, stream }));
  stages.shared = await timeGraph(moe, stream, () => {
    gemmNvfp4(x, experts.shared.w13, { out: sGateUp, stream });
    swiglu(sGateUp, { out: sAct, stream });
    gemmNvfp4(sAct, experts.shared.w2, { out: sOut, stream });
    addInto(routed, sOut, out, stream);
  });
  const [usedRows] = await layout.usedRows.toArray({ stream });
  if (rowsA) rowsA.dispose();
  for (const t of [x, out, logits, ids, weights, rowsB, act, routed, sGateUp, sAct, sOut]) t.dispose();
  for (const k of ['counts', 'offsets', 'sourceIndex', 'rowIndex', 'usedRows', 'dropped', 'errors']) layout[k].dispose();
  ws.dispose();
  const stageSum = Object.values(stages).reduce((a, b) => a + b, 0);
  console.error(`  T=${T}: ${(totalMs * 1e3).toFixed(1)} us (stages sum ${(stageSum * 1e3).toFixed(1)} us)`);
  return { T, layout: masked ? `masked (${T} per expert)` : 'contiguous', ms: totalMs, stages, stageSumMs: stageSum, usedRows, dropped };
}

// ---- the comparison with BF16 --------------------------------------------------------------

function bf16ToF32(bytes) {
  const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  const u32 = new Uint32Array(u16.length);
  for (let i = 0; i < u16.length; i++) u32[i] = u16[i] << 16;
  return new Float32Array(u32.buffer);
}

function errorStats(ours, ref) {
  let d2 = 0;
  let r2 = 0;
  let o2 = 0;
  let dot = 0;
  let maxAbs = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = ours[i] - ref[i];
    d2 += d * d;
    r2 += ref[i] * ref[i];
    o2 += ours[i] * ours[i];
    dot += ours[i] * ref[i];
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  return {
    relL2: Math.sqrt(d2 / r2),
    maxAbs,
    refRms: Math.sqrt(r2 / ref.length),
    cosine: dot / Math.sqrt(o2 * r2),
  };
}

function compare(bundle, peer, tokens) {
  const rows = [];
  for (const T of tokens) {
    const p = peer.outputs && peer.outputs[String(T)];
    if (!p) continue;
    const read = (f) => fs.readFileSync(path.join(bundle.dir, f));
    const ours = bf16ToF32(read(`ours_${T}.bin`));
    const original = bf16ToF32(read(p.original));
    const dequantized = bf16ToF32(read(p.dequantized));
    const ourIds = new Int32Array(read(`ours_ids_${T}.bin`).buffer.slice(0));
    const peerIds = new Int32Array(read(p.ids).buffer.slice(0));
    let same = 0;
    for (let t = 0; t < T; t++) {
      const a = new Set(ourIds.subarray(t * TOP_K, (t + 1) * TOP_K));
      if (peerIds.subarray(t * TOP_K, (t + 1) * TOP_K).every((e) => a.has(e))) same++;
    }
    rows.push({
      T,
      vsBf16Original: errorStats(ours, original),
      vsBf16Dequantized: errorStats(ours, dequantized),
      bf16DequantizedVsOriginal: errorStats(dequantized, original),
      tokensSameExperts: same / T,
    });
  }
  return rows;
}

// fs.writeFileSync takes at most 2^31 - 1 bytes per call; the 256-expert w13 codes are 3.8e9
function writeLarge(file, bytes) {
  const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fd = fs.openSync(file, 'w');
  try {
    for (let at = 0; at < view.byteLength; ) at += fs.writeSync(fd, view, at, Math.min(1 << 30, view.byteLength - at));
  } finally {
    fs.closeSync(fd);
  }
}

function writeBundle(bundle, layer) {
  const m = bundle.manifest;
  const file = (name, bytes, dtype, shape) => {
    writeLarge(path.join(bundle.dir, `${name}.bin`), bytes);
    m.tensors[name] = { file: `${name}.bin`, dtype, shape };
  };
  const nv = (name, q, stacked) => {
    const lead = stacked ? [q.count, q.N] : [q.N];
    file(`${name}.data`, q.data, 'u8', [...lead, q.K / 2]);
    file(`${name}.scales`, q.scales, 'fp8e4m3', [...lead, q.K / 16]);
    file(`${name}.global`, Buffer.from(q.gs.buffer), 'f32', [q.count]);
    m.windows[name] = q.offsets;
  };
  nv('w13', layer.q.w13, true);
  nv('w2', layer.q.w2, true);
  nv('shared_w13', layer.q.sw13, false);
  nv('shared_w2', layer.q.sw2, false);
}

async function main() {
  const args = h.parse({
    usage: 'usage: node benchmarks/moe.js [--out DIR] [--tokens 1,16,128,4096] [--experts 256] [--seed 1] [--no-peer] [--python python3]',
    options: {
      tokens: { type: 'string', value: 'T,...', default: TOKENS.join(','), help: 'token counts' },
      experts: { type: 'string', value: 'E', default: '256', help: 'routed experts (a multiple of 8)' },
      seed: { type: 'string', value: 'N', default: '1', help: 'seed of the weights and inputs' },
      'no-peer': { type: 'boolean', help: 'skip the PyTorch peer' },
      python: { type: 'string', value: 'EXE', default: process.env.PYTHON || 'python3', help: 'interpreter with PyTorch' },
    },
  });
  const tokens = h.numberList(args.tokens, 'tokens', (x) => Number.isInteger(x) && x >= 1);
  const E = h.intArg(args.experts, 'experts', GROUPS);
  if (E % GROUPS !== 0) throw new h.UsageError(`--experts: expected a multiple of ${GROUPS}, got ${E}`);
  const seed = h.intArg(args.seed, 'seed');
  h.requireGpu();
  const moe = h.moe();
  const dev = moe.devices()[0];
  const stream = moe.createStream(dev.device);
  const rng = new h.Rng(seed);
  const bundle = { dir: fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-')), manifest: { tensors: {}, windows: {}, inputs: {} } };
  try {
    console.error(`building the layer (${E} experts) ...`);
    const layer = await buildLayer(moe, dev.device, E, rng);
    const memory = weightMemory(layer, E);
    const rows = [];
    for (const T of tokens) rows.push(await runTokens(moe, layer, T, E, stream, new h.Rng(seed * 65536 + T), bundle));

    let peer = null;
    let comparison = [];
    if (!args['no-peer']) {
      writeBundle(bundle, layer);
      bundle.manifest.settings = { hidden: HIDDEN, inner: INNER, sharedInner: SHARED_INNER, experts: E, k: TOP_K, groups: GROUPS, topkGroups: TOPK_GROUPS, scale: SCALE, tokens };
      const routerW = await layer.router.weight.toBytes();
      fs.writeFileSync(path.join(bundle.dir, 'router.bin'), routerW);
      bundle.manifest.tensors.router = { file: 'router.bin', dtype: 'bf16', shape: [E, HIDDEN] };
      fs.writeFileSync(path.join(bundle.dir, 'bias.bin'), await layer.router.correctionBias.toBytes());
      bundle.manifest.tensors.bias = { file: 'bias.bin', dtype: 'f32', shape: [E] };
      fs.writeFileSync(path.join(bundle.dir, 'pool13.bin'), await layer.pools.pool13.toBytes());
      bundle.manifest.tensors.pool13 = { file: 'pool13.bin', dtype: 'bf16', shape: layer.pools.pool13.shape };
      fs.writeFileSync(path.join(bundle.dir, 'pool2.bin'), await layer.pools.pool2.toBytes());
      bundle.manifest.tensors.pool2 = { file: 'pool2.bin', dtype: 'bf16', shape: layer.pools.pool2.shape };
      h.writeJson(path.join(bundle.dir, 'manifest.json'), bundle.manifest);
      // the peer gets the GPU to itself
      for (const w of [layer.experts.w13, layer.experts.w2, layer.experts.shared.w13, layer.experts.shared.w2]) w.dispose();
      for (const t of [layer.router.weight, layer.router.correctionBias, layer.pools.pool13, layer.pools.pool2]) t.dispose();
      await stream.synchronize();
      moe.emptyCache(dev.device);
      const peerJson = path.join(bundle.dir, 'peer.json');
      try {
        execFileSync(args.python, [path.join(__dirname, 'peers', 'moe.py'), '--bundle', bundle.dir, '--out', peerJson], { stdio: ['ignore', 'inherit', 'inherit'] });
        peer = h.readJson(peerJson);
        comparison = compare(bundle, peer, tokens);
      } catch (e) {
        console.error(`(the PyTorch peer did not run: ${e.message.split('\n')[0]}; its columns stay empty)`);
      }
    }

    const us = (ms) => (ms === undefined || ms === null ? undefined : (ms * 1e3).toFixed(1));
    const table = h.merge(rows, peer ? peer.cases : [], {
      key: ['T'],
      missing: '-',
      columns: [
        { title: 'T', cell: ({ ours }) => ours.T },
        { title: 'layout', cell: ({ ours }) => ours.layout },
        { title: 'moeForward (us)', cell: ({ ours }) => us(ours.ms) },
        { title: 'router', cell: ({ ours }) => us(ours.stages.router) },
        { title: 'routing+layout', cell: ({ ours }) => us(ours.stages.routingLayout) },
        { title: 'permute', cell: ({ ours }) => (ours.stages.permute === undefined ? 'none (gather)' : us(ours.stages.permute)) },
        { title: 'gate/up', cell: ({ ours }) => us(ours.stages.gateUp) },
        { title: 'down', cell: ({ ours }) => us(ours.stages.down) },
        { title: 'unpermute', cell: ({ ours }) => us(ours.stages.unpermute) },
        { title: 'shared', cell: ({ ours }) => us(ours.stages.shared) },
        { title: 'PyTorch BF16 (us)', cell: ({ peer: p }) => p && us(p.ms) },
        { title: 'speedup', cell: ({ ours, peer: p }) => p && h.ratio(p.ms, ours.ms) },
      ],
    });
    const errTable = h.markdownTable(
      [
        { title: 'T', cell: (r) => r.T },
        { title: 'vs BF16 original weights: rel L2', cell: (r) => r.vsBf16Original.relL2.toExponential(2) },
        { title: 'cosine', cell: (r) => r.vsBf16Original.cosine.toFixed(5) },
        { title: 'vs BF16 dequantized weights: rel L2', cell: (r) => r.vsBf16Dequantized.relL2.toExponential(2) },
        { title: 'BF16 dequantized vs original: rel L2', cell: (r) => r.bf16DequantizedVsOriginal.relL2.toExponential(2) },
        { title: 'tokens with the same experts', cell: (r) => `${(100 * r.tokensSameExperts).toFixed(0)}%` },
      ],
      comparison,
    );
    const gib = (b) => (b / 2 ** 30).toFixed(2);
    const lines = [
      `Hidden ${HIDDEN}, ${E} routed experts of width ${INNER} (top-${TOP_K}, ${GROUPS} groups keeping ${TOPK_GROUPS}, sigmoid, ` +
        `bias, scale ${SCALE}), one shared expert of width ${SHARED_INNER}; NVFP4 weights (W4A16), random N(0, ${WEIGHT_STD}) before ` +
        `quantization, x ~ N(0, 1).` + (peer ? ` PyTorch ${peer.torch}, ${peer.timing}, ${peer.grouped}.` : ''),
      '',
      ...table.lines,
      '',
      `Weight memory: NVFP4 ${gib(memory.nvfp4Bytes)} GiB, BF16 ${gib(memory.bf16Bytes)} GiB (${memory.ratio.toFixed(2)}x; the bf16 router included in both).`,
      '',
      ...(comparison.length ? ['Output against the BF16 block on the same input:', '', ...errTable, ''] : []),
      'Times: the median over replays of a CUDA graph; the stages are the same calls, each in its own graph, so their ' +
        'sum includes one graph launch gap per stage that the whole-forward graph does not have.',
    ];
    const title = `MoE block forward (moeForward, NVFP4) on ${dev.name}`;
    console.log([title, '', ...lines].join('\n'));
    const result = {
      benchmark: 'moe',
      ...h.header(dev),
      settings: { hidden: HIDDEN, inner: INNER, sharedInner: SHARED_INNER, experts: E, k: TOP_K, groups: GROUPS, topkGroups: TOPK_GROUPS, scale: SCALE, maskedMaxT: MASKED_MAX_T, warmup: WARMUP, replays: REPLAYS, trials: TRIALS, seed, tokens },
      memory,
      rows,
      comparison,
      peer,
    };
    h.writeResults(args.out, `moe-${result.card}`, { result, title, lines });
  } finally {
    stream.dispose();
    fs.rmSync(bundle.dir, { recursive: true, force: true });
  }
}

if (require.main === module) h.run(main, { gpu: false });
